//! The daemon's HTTP API: its types (`types`, shared by every client) and the client the CLI
//! uses (`client`). The server side is `crate::server`.

pub mod client;
pub mod fdpass;
pub mod types;

pub use client::Client;
