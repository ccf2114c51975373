//! The participant runtime: what every service of the FX saga stands on.
//!
//! - [`Store`]: the service's sled store (state, journal, outbox, inbox) with one transaction
//!   per run of a batch (each event rolling back alone) and a group-commit flush that gates
//!   both acks and publishing.
//! - [`Records`]: the read/write surface service code uses, implemented by the sled
//!   transaction and by the deterministic simulation.
//! - [`ReadRecords`]: read-only access to the committed records, for `prepare`.
//! - [`Decision`]: the one shape of a service's pure decision (its typed record [`Writes`],
//!   journal lines, events), and [`Decision::apply`], the one step that writes it.
//! - [`Participant`]: what a service implements; [`Runtime`] runs it: a durable pull consumer
//!   with group commit, the relay (outbox to JetStream, pipelined), inbox pruning, and the
//!   `/healthz` `/readyz` `/metrics` server.
//! - [`durable`]: the fsyncs that make a sled store survive a power cut, which sled's own flush
//!   does not.
//! - [`ledger`]: the journal's typed currencies, accounts and ops, and what every audit
//!   shares: the lenient reading of stored entries, the journal replay, the report shape.
//! - [`broker`]: connecting with retry, provisioning `FX` and `FX_DLQ`, dead letters.
//! - [`jemalloc!`]: installs jemalloc as a binary's global allocator (see [`allocator`]).

pub mod admin;
pub mod allocator;
pub mod broker;
mod config;
pub mod core;
mod decision;
pub mod durable;
mod error;
mod fault;
pub mod intervention;
pub mod ledger;
mod participant;
mod runtime;
mod serve;
mod store;
pub mod telemetry;
pub mod trace;

pub use broker::{connect, provision, ProvisionReport, DLQ_STREAM, STREAM};
pub use config::{env_or, env_parse, NatsConfig, RuntimeConfig, StreamSettings};
pub use decision::{Decision, Writes};
pub use error::{Result, RuntimeError};
pub use fault::{crash_at, no_faults, FaultAction, FaultHook, FaultPoint};
pub use participant::{Handled, Participant};
pub use runtime::{consumer_config, durable_name, publish_message, system_clock, Clock, Runtime};
pub use store::{
    abort, aborted, outbox_entry, Footprint, JournalEntry, OutboxEntry, ReadRecords, Records,
    SagaGroup, SagaKey, Store, StoreOptions, TreeFootprint, Tx, TxResult, CHECKPOINT_ENTRIES,
};
/// The allocator [`jemalloc!`] installs.
pub use tikv_jemallocator::Jemalloc;
pub use trace::traceparent;
