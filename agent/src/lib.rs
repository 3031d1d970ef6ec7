//! Tollgate's agent as a library: the `tollgate` binary (daemon and CLI) is a thin `main` over
//! it, and a second binary (the CNI plugin) can use `api` and `model` without the daemon.
//!
//! Layers, each using only the ones below it:
//! - `api::types`: request and response bodies of the HTTP API (no daemon dependency);
//! - `model`: port specs, rates, policies, pools and the state, parsed with `FromStr`;
//! - `node`: the operations, each one `tx::transact` (validate, apply, commit, undo);
//! - `store`: where the state is kept (`Store` trait: file store, in-memory store);
//! - `datapath`: what the kernel does (`Datapath` trait: aya + netlink, in-memory);
//! - `server`: the API routes and `/metrics` over the node (axum), and the daemon's start-up.
//!
//! Beside `store`: `cluster`, the cluster store (networks, node membership and address blocks
//! in etcd, for `--cluster`), which `node` calls and which uses only `model`.
//!
//! Beside them: `api::client` and `commands` (the CLI side; `cli_docs`: its completions and man
//! pages), `cni` (the CNI plugin, a client
//! of the API), `netlink` and `netns` (used by
//! the kernel datapath, the demo and `reset`).

pub mod api;
pub mod cli;
pub mod cli_docs;
pub mod cluster;
pub mod cni;
pub mod commands;
pub mod datapath;
pub mod demo;
pub mod error;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod reset;
pub mod server;
pub mod store;
