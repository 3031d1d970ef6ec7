//! The model: what users ask for, as typed values that parse from their command-line form
//! (`FromStr`) and check themselves. Pure: no I/O, no daemon; the API types, the CLI and the
//! node operations all build on it.

pub mod cni;
pub mod network;
pub mod policy;
pub mod pool;
pub mod ports;
pub mod rate;
pub mod state;

pub use network::{Network, DEFAULT_NETWORK};
pub use policy::{Action, Match, Policy, Rule, RuleProto, RuleSpec, Stance};
pub use pool::{Pool, Slot, SLOT_PREFIX};
pub use ports::{AddSpec, DelSpec, PortMapping, Proto};
pub use rate::{Limit, Rate, Size};
pub use state::{CniAttachment, CniKey, Container, PortChange, State, DEFAULT_IFNAME};
