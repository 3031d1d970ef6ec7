//! The node operations' errors: the crate's (`crate::error`), shared with the cluster store.

pub(crate) use crate::error::fail;
pub use crate::error::{Error, Kind, KindExt, Result};
