//! The participant runtime: what every service of the FX saga stands on.
//!
//! - [`Store`]: the service's sled store (state, journal, outbox, inbox) with one transaction
//!   per handled event and a group-commit flush that gates both acks and publishing.
//! - [`Records`]: the read/write surface service code uses, implemented by the sled
//!   transaction and by the deterministic simulation.

mod config;
mod error;
mod fault;
mod participant;
mod store;

pub use config::{env_or, env_parse, NatsConfig, RuntimeConfig, StreamSettings};
pub use error::{Result, RuntimeError};
pub use fault::{no_faults, FaultAction, FaultHook, FaultPoint};
pub use participant::{Handled, Participant};
pub use store::{abort, outbox_entry, JournalEntry, OutboxEntry, Records, Store, Tx, TxResult};
