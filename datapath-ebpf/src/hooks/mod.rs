//! Program entry points, one file per attach point. Each entry is a thin wrapper that maps the
//! `try_*` result to the program's return code.

mod from_container;
mod from_container_new;
mod from_overlay;
mod from_uplink;
mod sock;
mod to_container;
