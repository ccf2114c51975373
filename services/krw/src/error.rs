//! The crate's one error type. Decisions return it; the adapter turns it into an aborted
//! transaction (nothing written), because every variant means stored records contradict each
//! other and moving money on top of that would make things worse.

use events::SagaId;
use runtime::RuntimeError;

/// Why a decision refused to go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KrwError {
    /// The saga's records contradict each other (e.g. a hold larger than the held balance, or a
    /// hold whose account is missing). A bug or a corrupted store: investigate with `audit`.
    #[error("saga {saga_id}: records are inconsistent: {message}")]
    Inconsistent {
        /// The saga being decided.
        saga_id: SagaId,
        /// What contradicts what.
        message: String,
    },
}

impl From<KrwError> for RuntimeError {
    fn from(e: KrwError) -> RuntimeError {
        RuntimeError::Handler(e.to_string())
    }
}
