//! The contract between the runtime and a service: what it consumes and how it handles one
//! event inside one store transaction.

use std::future::Future;

use events::{DecodeError, Event, EventKind};

use crate::{ReadRecords, Records, TxResult};

/// What became of one consumed message. A closed set: the runtime knows exactly what to do
/// with the broker for each (ack, dead-letter then term, or nak with a delay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// State changed and/or events were emitted. Ack after the flush.
    Applied,
    /// Nothing to do: a duplicate, a late final word, an event this service ignores now.
    /// Ack after the flush.
    Ignored,
    /// The message breaks the contract; copy it whole to `FX_DLQ` with this reason, then
    /// terminate it. Nothing may have been written.
    DeadLetter {
        /// Stable snake_case code, e.g. `saga_id_conflict`.
        reason: &'static str,
        /// What was wrong, for a person.
        message: String,
    },
    /// Not now: nak with this delay and handle it again later. Nothing may have been written.
    RetryAfter {
        /// Delay before redelivery, in ms.
        delay_ms: u64,
    },
}

/// A service of the choreography, run by [`crate::Runtime`].
///
/// `handle` must be deterministic in its inputs (the records, the event, `now_ms` and what
/// `prepare` returned): it may run twice on a transaction conflict, and the deterministic
/// simulation runs the same code.
pub trait Participant: Send + Sync + 'static {
    /// What `prepare` hands to `handle` (e.g. a venue quote); `()` for most services.
    type Prepared: Send + Sync + 'static;

    /// Short name: the durable consumer (`fx-<name>`), the DLQ subject token, the metric label.
    fn name(&self) -> &'static str;

    /// Event kinds this service consumes (its consumer's `filter_subjects`).
    fn consumes(&self) -> &'static [EventKind];

    /// Side-effecting work before the transaction (a venue call). Runs once per delivery,
    /// duplicates included (the inbox check is inside the transaction).
    ///
    /// `records` is the service's committed state, so a side effect can be skipped when the
    /// records already settle the event (fx-trade never calls the venue for a saga it has
    /// answered). It holds everything earlier messages *of the same saga* wrote; messages of
    /// other sagas in the same batch may still be uncommitted (they share the batch's
    /// transaction), so decide only on the event's own saga's records. Read it synchronously,
    /// before the first `.await`: the returned future must be `Send` and must not hold
    /// `records` (which is not required to be `Sync`).
    fn prepare<V: ReadRecords>(
        &self,
        records: &V,
        event: &Event,
        now_ms: u64,
    ) -> impl Future<Output = Self::Prepared> + Send;

    /// Most `prepare`s the runtime runs at once. A prepare that finishes at its first poll (no
    /// IO) is not counted; one that waits (a venue call) runs as its own task, so that a slow
    /// or hung call holds back only its own saga. The default, 1, runs them one at a time.
    fn prepare_concurrency(&self) -> usize {
        1
    }

    /// Handles one decoded event: the services load their records through `records`, decide
    /// purely (a [`crate::Decision`]) and apply the decision ([`crate::Decision::apply`]:
    /// record writes, journal, events; nothing for a dead letter or a retry).
    fn handle<R: Records>(
        &self,
        records: &R,
        event: &Event,
        prepared: &Self::Prepared,
        now_ms: u64,
    ) -> TxResult<Handled>;

    /// Handles a message that did not decode. The default dead-letters it with the decode
    /// error's reason; fx-krw overrides it to answer a readable but invalid request with
    /// `krw.rejected`.
    fn undecodable<R: Records>(
        &self,
        _records: &R,
        _subject: &str,
        _payload: &[u8],
        error: &DecodeError,
        _now_ms: u64,
    ) -> TxResult<Handled> {
        Ok(Handled::DeadLetter {
            reason: error.reason(),
            message: error.to_string(),
        })
    }
}
