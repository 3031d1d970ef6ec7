//! Harness for Tollgate's privileged integration tests: sandboxes made of network namespaces
//! that each test creates (unique names with the test name and PID), a daemon per sandbox
//! running with `--netns`, the real `tollgate` CLI, and small TCP/UDP peers running on
//! threads that entered a namespace. Everything is removed in `Drop`, also on panic.

pub mod net;
pub mod sandbox;

pub use net::*;
pub use sandbox::*;
