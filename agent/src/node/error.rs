//! Errors of the node operations, with the kind the API turns into a status code.

use std::fmt;

/// What went wrong, as far as a client is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or asks for something impossible (400).
    BadInput,
    /// A container (or a map, rule, link, limit of it) that does not exist (404).
    NotFound,
    /// The request clashes with what exists (409).
    Conflict,
    /// The store cannot be reached (503).
    Unavailable,
    /// Anything else: the kernel refused, I/O failed (500).
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
        return Err($crate::node::error::Error::new(
            $crate::node::error::Kind::$kind,
            format!($($arg)*),
        ))
    };
}
pub(crate) use fail;
