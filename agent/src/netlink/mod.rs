//! rtnetlink access: links, addresses and routes. Every function takes a `Handle` bound to
//! the namespace it acts in (see `connect`).

pub mod addr;
pub mod link;
pub mod route;

use anyhow::{Context, Result};
use rtnetlink::Handle;

/// Opens a netlink connection in the calling thread's namespace and drives it on the current
/// tokio runtime.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Runs `f` with a netlink handle inside the namespace at `path` (on a private thread with its
/// own runtime, so the daemon's namespace is untouched).
pub fn with_handle_in<T, F, Fut>(path: &std::path::Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    crate::netns::run_in(path, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for the namespace worker")?;
        rt.block_on(async move {
            let handle = connect()?;
            f(handle).await
        })
    })
}
