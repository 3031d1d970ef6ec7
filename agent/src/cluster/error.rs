//! Errors of the cluster store: the crate's (`crate::error`, the same the node operations
//! return), and how etcd client errors map to their kinds.

pub(crate) use crate::error::fail;
pub use crate::error::{Error, Kind, Result};

/// The kind of an etcd client error: transport failures, timeouts and the server's
/// "unavailable" answers (no leader, request timed out, shutting down) mean the store cannot be
/// reached; anything else is a bug or a store this code does not understand.
pub(crate) fn etcd_kind(e: &etcd_client::Error) -> Kind {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        // What etcd-client says when a keep-alive finds its lease expired.
        E::LeaseKeepAliveError(m) if m.contains("not found") => Kind::NotFound,
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            Kind::Unavailable
        }
        E::GRpcStatus(s) => match s.code() {
            // "etcdserver: requested lease not found".
            Code::NotFound => Kind::NotFound,
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::AlreadyExists
            | Code::DataLoss
            | Code::Internal => Kind::Internal,
            _ => Kind::Unavailable,
        },
        _ => Kind::Internal,
    }
}
