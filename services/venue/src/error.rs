//! What can go wrong in fx-venue, by what failed.

use runtime::durable::{OpenError, SyncError};

/// Why fx-venue could not start, keep an execution, or make it durable.
#[derive(Debug, thiserror::Error)]
pub enum VenueServerError {
    /// A setting is malformed or out of range (names the variable).
    #[error(transparent)]
    Config(#[from] runtime::RuntimeError),
    /// The order book's store could not be opened (corrupt, locked by another process, or
    /// what sled created could not be fsynced).
    #[error("cannot open the order book in {dir}: {source}")]
    Open {
        /// The store's directory.
        dir: String,
        /// What failed.
        source: OpenError,
    },
    /// sled failed to read or write the order book.
    #[error("order book store: {0}")]
    Store(#[from] sled::Error),
    /// A record in the order book does not decode: the store was changed by something else.
    #[error("order book record {key} is corrupt: {message}")]
    Corrupt {
        /// The record's key, as text.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A flush could not be made durable (fsync failed). Sticky: every later flush fails too.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A flush failed earlier: nothing executed since can be confirmed until the disk is
    /// checked and the service restarted.
    #[error("the order book cannot be made durable: {0}")]
    NotDurable(String),
    /// The flush thread could not start, or is gone (it panicked, or the server is stopping).
    #[error("the flush thread is gone: {0}")]
    Flusher(String),
    /// The HTTP listener could not be bound or served.
    #[error("http on {addr}: {message}")]
    Http {
        /// The address.
        addr: String,
        /// What the OS said.
        message: String,
    },
}

/// fx-venue's result.
pub type Result<T, E = VenueServerError> = std::result::Result<T, E>;
