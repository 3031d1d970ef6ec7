//! Errors of the cluster store, with a kind the node layer turns into a status code
//! (`Unavailable` is 503: the store cannot be reached, nothing was changed).

use std::fmt;

/// What went wrong, as far as a client is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or asks for something impossible (400).
    BadInput,
    /// A network (or a block) that does not exist (404).
    NotFound,
    /// The request clashes with what the store holds: a name taken, an overlapping subnet, a
    /// block of another node, a network still in use, a subnet without a free block (409).
    Conflict,
    /// The store cannot be reached, or did not answer in time (503).
    Unavailable,
    /// The store answered something this code cannot read (500).
    Internal,
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub err: anyhow::Error,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, msg: impl fmt::Display) -> Self {
        Self {
            kind,
            err: anyhow::anyhow!("{msg}"),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.err)
    }
}

impl std::error::Error for Error {}

/// `return Err(Error::new(kind, format!(...)))`.
macro_rules! fail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::cluster::error::Error::new(
            $crate::cluster::error::Kind::$kind,
            format!($($arg)*),
        ))
    };
}
pub(crate) use fail;

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
