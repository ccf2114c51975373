//! The wire contract of the FX exchange saga.
//!
//! Everything that crosses NATS is defined here and nowhere else: the event catalog
//! ([`Event`], [`EventKind`]), money ([`Krw`], [`Usd`], [`Rate`]), identifiers ([`UserId`],
//! [`SagaId`]), subjects (`fx.<domain>.<event>.<user_id>`) and the one decode error
//! ([`DecodeError`]). Services never exchange anything else. docs/events.md shows one golden
//! example per event; a test decodes each of them.

mod error;
mod event;
pub mod fnv;
mod ids;
mod kind;
mod money;
pub mod partition;

pub use error::DecodeError;
pub use event::*;
pub use ids::{IdError, SagaId, UserId};
pub use kind::{EventKind, Subject, SUBJECT_PREFIX};
pub use money::{Krw, MoneyError, Rate, Usd};
pub use partition::{partition_of, PartitionError, Partitioning, MAX_PARTITIONS};

/// Header names on every emitted event (see docs/events.md).
pub mod headers {
    /// Broker-side dedup key; equals the deterministic event id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The saga's id, so tools can filter without parsing bodies.
    pub const SAGA_ID: &str = "Fx-Saga-Id";
    /// The id of the event that caused this one.
    pub const CAUSATION_ID: &str = "Fx-Causation-Id";
    /// W3C trace context; the trace id is the saga UUID's 128 bits.
    pub const TRACEPARENT: &str = "traceparent";
}
