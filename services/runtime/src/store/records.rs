//! What service code sees of the store: [`Records`], read and write inside one handled event's
//! unit of a transaction, and [`ReadRecords`], the committed records read outside any
//! transaction (all `prepare` may see). Both are traits because the sled store ([`super::Tx`],
//! [`super::Store`]) and the deterministic simulation's wrapper of that store implement them. Also the transaction's result type and its abort helpers.

use events::Event;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::ConflictableTransactionError;

use super::JournalEntry;
use crate::{Result, RuntimeError};

/// Result inside a store transaction; `?` works on sled errors and on `abort(..)`.
pub type TxResult<T> = std::result::Result<T, ConflictableTransactionError<RuntimeError>>;

/// Aborts the current transaction with `err` (it is rolled back and returned by `transact`).
pub fn abort<T>(err: RuntimeError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(err))
}

/// What an aborted unit of a transaction returns to its caller: the abort's error, or the
/// store's own failure.
pub fn aborted(e: ConflictableTransactionError<RuntimeError>) -> RuntimeError {
    match e {
        ConflictableTransactionError::Abort(e) => e,
        ConflictableTransactionError::Storage(e) => RuntimeError::Store(e),
        other => RuntimeError::StoreFailed(format!("{other:?}")),
    }
}

/// Read-only access to a service's committed records outside any transaction: what
/// [`crate::Participant::prepare`] sees before it calls the outside world (fx-trade reads
/// `order:<saga_id>` so that a saga it already answered never reaches the venue again).
///
/// Committed, not necessarily flushed: a record read here may still be lost in a crash, but then
/// the message that wrote it is redelivered and prepared again against what survived.
///
/// Deliberately not `Sync`-bound: `prepare` reads what it needs before its first `.await`, so
/// its future never holds the store (and never acts on a read taken before a slow venue call).
pub trait ReadRecords {
    /// Reads a raw state record.
    fn read_raw(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Reads and decodes a state record.
    fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>>
    where
        Self: Sized,
    {
        self.read_raw(key)?.map(|v| decode(key, &v)).transpose()
    }

    /// The keys of the state records that start with `prefix`, in key order, streamed (a
    /// timer reads an index with it and stops at the first entry not yet due).
    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = Result<String>> + 'a
    where
        Self: Sized;
}

/// What a service's event handling may read and write: the per-saga and per-account records,
/// the journal and the outbox. Implemented by the sled transaction ([`super::Tx`]) and by the
/// deterministic simulation's wrapper of it.
pub trait Records {
    /// Reads a raw state record.
    fn get_raw(&self, key: &str) -> TxResult<Option<Vec<u8>>>;
    /// Writes a raw state record.
    fn put_raw(&self, key: &str, value: Vec<u8>) -> TxResult<()>;
    /// Deletes a state record (e.g. an expiry index entry).
    fn remove(&self, key: &str) -> TxResult<()>;
    /// Appends a journal entry; aborts with `JournalConflict` if (saga, op) already has one.
    fn journal(&self, entry: &JournalEntry) -> TxResult<()>;
    /// Appends an event to the outbox.
    fn emit(&self, event: &Event, causation_id: &str, now_ms: u64) -> TxResult<()>;

    /// A decision's ledger lines and events, in the order every service writes them: the
    /// journal first (a second line for one operation aborts the whole unit), then the events,
    /// each caused by `causation_id`.
    fn journal_and_emit(
        &self,
        journal: &[JournalEntry],
        events: &[Event],
        causation_id: &str,
        now_ms: u64,
    ) -> TxResult<()> {
        for entry in journal {
            self.journal(entry)?;
        }
        for event in events {
            self.emit(event, causation_id, now_ms)?;
        }
        Ok(())
    }

    /// Reads and decodes a state record.
    fn get<T: DeserializeOwned>(&self, key: &str) -> TxResult<Option<T>>
    where
        Self: Sized,
    {
        match self.get_raw(key)? {
            Some(v) => match decode(key, &v) {
                Ok(t) => Ok(Some(t)),
                Err(e) => abort(e),
            },
            None => Ok(None),
        }
    }

    /// Encodes and writes a state record.
    fn put<T: Serialize>(&self, key: &str, value: &T) -> TxResult<()>
    where
        Self: Sized,
    {
        self.put_raw(
            key,
            serde_json::to_vec(value).expect("state records serialize"),
        )
    }
}

impl From<RuntimeError> for ConflictableTransactionError<RuntimeError> {
    fn from(e: RuntimeError) -> Self {
        ConflictableTransactionError::Abort(e)
    }
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| RuntimeError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}
