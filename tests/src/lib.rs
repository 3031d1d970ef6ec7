//! Harness for Tollgate's privileged integration tests: sandboxes made of network namespaces
//! that each test creates (unique names with the test name and PID), a daemon per sandbox
//! running with `--netns`, the real `tollgate` CLI, and small TCP/UDP peers running on
//! threads that entered a namespace; real podman and containerd in a sandbox (`runtime`); a real
//! etcd in a namespace of its own (`etcd`); several daemons in cluster mode on one underlay
//! (`cluster`).
//! Everything is removed in `Drop`, also on panic.

pub mod cluster;
pub mod cni;
pub mod etcd;
pub mod net;
pub mod runtime;
pub mod sandbox;

pub use net::*;
pub use sandbox::*;

/// `sandbox!(name)` / `sandbox!(name, &["--flag", ...])`: a `Sandbox` for the calling test, or
/// an early return (with the reason printed) where privileged tests cannot run.
#[macro_export]
macro_rules! sandbox {
    ($name:expr) => {
        $crate::sandbox!($name, &[])
    };
    ($name:expr, $flags:expr) => {{
        if !$crate::can_run() {
            return;
        }
        $crate::Sandbox::with_flags($name, $flags).expect("sandbox")
    }};
}
