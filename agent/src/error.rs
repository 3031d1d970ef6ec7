//! Errors of the node operations and the cluster store, with the kind the API turns into a
//! status code (`Unavailable` is 503: the store cannot be reached, nothing was changed).

use std::fmt;

/// What went wrong, as far as a client is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or asks for something impossible (400).
    BadInput,
    /// A container (or a map, rule, link, limit of it), a network or a block that does not
    /// exist (404).
    NotFound,
    /// The request clashes with what exists: a name taken, an overlapping subnet, a block of
    /// another node, a network still in use, a subnet without a free block (409).
    Conflict,
    /// The store (the state file, or the cluster's etcd) cannot be reached or did not answer
    /// in time (503).
    Unavailable,
    /// Anything else: the kernel refused, I/O failed, the store answered something this code
    /// cannot read (500).
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
}

impl Error {
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }
}

impl std::error::Error for Error {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.err)
    }
}

impl From<anyhow::Error> for Error {
    fn from(err: anyhow::Error) -> Self {
        Self {
            kind: Kind::Internal,
            err,
        }
    }
}

/// Tags an anyhow result with a kind.
pub trait KindExt<T> {
    fn kind(self, kind: Kind) -> Result<T>;
}

impl<T> KindExt<T> for anyhow::Result<T> {
    fn kind(self, kind: Kind) -> Result<T> {
        self.map_err(|err| Error { kind, err })
    }
}

/// `return Err(Error::new(kind, format!(...)))`.
macro_rules! fail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::new(
            $crate::error::Kind::$kind,
            format!($($arg)*),
        ))
    };
}
pub(crate) use fail;
