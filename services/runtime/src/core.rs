//! The runtime's core, without IO: what happens to a consumed message between the broker and
//! the store, and which outbox entries the relay may publish. The NATS consumer loop
//! ([`crate::Runtime`]) and the deterministic simulation (`tests/src/sim`) both drive these same
//! steps, over the [`Storage`] interface (sled in the services, memory in the simulation):
//!
//! 1. [`commit_run`]: handle messages of distinct sagas, each in its own all-or-nothing unit
//!    of one store transaction: the inbox check, the participant, the inbox mark
//!    ([`handle_message`]). A message the participant dead-letters or asks to retry leaves
//!    nothing behind, whatever it wrote ([`MessageTx::discard`]).
//! 2. [`answer`]: what to tell the broker about each message (ack, nak with a delay, or
//!    dead-letter then terminate), decided from its outcome alone.
//! 3. [`Group`]: holds those answers until the driver has flushed the store, then hands them
//!    back, dead letters first. Nothing reaches the broker about a message before the effects
//!    of its handling are durable: a crash before the flush loses the effects *and* the
//!    answers, and the broker redelivers.
//! 4. [`Relay`]: which outbox entries may be published (only flushed ones), and which records
//!    may go once the broker has acknowledged a window ([`Relay::settled`]).
//!
//! The drivers do the IO in between: pulling and preparing messages, the flush, publishing,
//! acks. [`Mutation`] breaks a rule of steps 3 or 4 on purpose; only the simulation's self-test
//! sets it, to show that the simulation's checks catch what the rule prevents.

use events::{DecodeError, Event, EventKind};

use crate::{Handled, OutboxEntry, Participant, Records, Result, RuntimeError, TxResult};

/// A store transaction as the core needs it for one message: the service's records plus the
/// inbox of consumed event ids, and a way to drop what the message wrote.
pub trait MessageTx: Records {
    /// True when an event with this id was already handled (and not yet pruned).
    fn seen(&self, event_id: &str) -> TxResult<bool>;
    /// Records that the event was handled, at `now_ms` (for pruning).
    fn mark_seen(&self, event_id: &str, now_ms: u64) -> TxResult<()>;
    /// Drops every write, journal line and event of this message so far: what it leaves
    /// behind when it is dead-lettered or retried.
    fn discard(&self);
}

/// The store interface the core commits through and the relay reads: implemented by
/// [`crate::Store`] (sled), which the simulation drives too (through a wrapper that notes the
/// journal in commit order).
pub trait Storage {
    /// The view of one message's unit of a transaction.
    type Tx<'t>: MessageTx
    where
        Self: 't;

    /// Runs `f` once per item, in order, in one transaction: each item sees what the items
    /// before it wrote and rolls back alone (its error in its slot of the result) while the
    /// others commit. `Err` only for a storage failure, which fails every item. `f` may run
    /// more than once (on a conflict), so it must not have side effects outside the `Tx`.
    fn transact_each<I, T>(
        &self,
        items: &[I],
        f: impl Fn(&mut Self::Tx<'_>, &I) -> TxResult<T>,
    ) -> Result<Vec<Result<T>>>;

    /// One transaction of one unit (an admin operation, a timer's step).
    fn transact<T>(&self, f: impl Fn(&mut Self::Tx<'_>) -> TxResult<T>) -> Result<T> {
        self.transact_each(&[()], |tx, ()| f(tx))?
            .pop()
            .expect("one result per item")
    }

    /// Outbox entries of the records with keys at or below `up_to`, oldest first, each with
    /// its record's key: whole records, until at least `max` entries (at least one record).
    fn outbox_batch(&self, up_to: u64, max: usize) -> Result<Vec<(u64, OutboxEntry)>>;

    /// Removes published outbox records by key.
    fn outbox_remove(&self, keys: &[u64]) -> Result<()>;

    /// The highest outbox key committed, flushed or not (what [`Mutation::PublishBeforeFlush`]
    /// lets the relay read up to).
    fn outbox_committed(&self) -> Result<u64>;
}

/// A rule of the core broken on purpose, for the simulation's self-test: with it, the
/// simulation must find a broken invariant. The runtime never sets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The relay may publish outbox entries as soon as they commit, before the flush.
    PublishBeforeFlush,
    /// Messages are answered (acked, nak'ed, dead-lettered) as soon as they are handled,
    /// before the flush.
    AckBeforeFlush,
}

/// One message as the core handles it.
#[derive(Debug)]
pub enum Input<'a, Pr> {
    /// A decoded event and what the participant's `prepare` made of it.
    Decoded {
        /// The event.
        event: &'a Event,
        /// The prepared value (a venue quote).
        prepared: &'a Pr,
    },
    /// A message that does not decode.
    Undecodable {
        /// Its subject.
        subject: &'a str,
        /// Its body.
        payload: &'a [u8],
        /// Why it does not decode.
        error: &'a DecodeError,
    },
    /// Its `prepare` panicked (a bug): the message is retried later, loudly.
    PreparePanicked(&'a str),
}

/// What handling one message came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The participant's answer.
    Handled(Handled),
    /// The inbox had seen the event id: nothing was done.
    Duplicate,
}

/// What the broker is told about one message, once the driver may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Acknowledge: the broker forgets it.
    Ack,
    /// Redeliver after this delay.
    Nak {
        /// Delay before redelivery, in ms.
        delay_ms: u64,
    },
    /// Copy it whole to `FX_DLQ` with this reason, then terminate it. If the copy cannot be
    /// stored, the driver naks instead ([`store_failed_nak_ms`]), so nothing is lost.
    DeadLetter {
        /// Stable snake_case code.
        reason: &'static str,
        /// What was wrong, for a person.
        message: String,
    },
}

/// Nak delays for a transient store failure, and for a handler bug that must not lose the
/// event: doubling from the first to the last per delivery.
pub const TRANSIENT_NAK_MIN_MS: u64 = 100;
/// See [`TRANSIENT_NAK_MIN_MS`].
pub const TRANSIENT_NAK_MAX_MS: u64 = 30_000;

/// The nak delay after a transient failure of a message delivered `delivered` times.
pub fn transient_nak_ms(delivered: u64) -> u64 {
    let exp = (delivered.max(1) - 1).min(16) as u32;
    (TRANSIENT_NAK_MIN_MS << exp).min(TRANSIENT_NAK_MAX_MS)
}

/// The nak delay when a dead letter could not be stored (the message stays on the stream).
pub fn store_failed_nak_ms() -> u64 {
    transient_nak_ms(2)
}

/// Handles one message inside its unit of a transaction: the inbox check, the participant,
/// the inbox mark. `None`-like [`Outcome::Duplicate`] when the event id was handled before.
///
/// Requests (`exchange.requested`) are deduplicated by fx-krw's per-saga record, not by event
/// id: a user's retry with a different body must reach the participant to be refused as a
/// conflict. A dead-lettered or retried message leaves nothing behind, by construction.
pub fn handle_message<P: Participant, T: MessageTx>(
    participant: &P,
    tx: &T,
    input: &Input<'_, P::Prepared>,
    now_ms: u64,
) -> TxResult<Outcome> {
    let (event, prepared) = match input {
        Input::Decoded { event, prepared } => (*event, *prepared),
        Input::Undecodable {
            subject,
            payload,
            error,
        } => {
            let h = participant.undecodable(tx, subject, payload, error, now_ms)?;
            return Ok(Outcome::Handled(keep_only_applied(tx, h)));
        }
        Input::PreparePanicked(e) => {
            return crate::abort(RuntimeError::PreparePanicked((*e).to_owned()))
        }
    };
    let event_id = event.id();
    let use_inbox = event.kind() != EventKind::ExchangeRequested;
    if use_inbox && tx.seen(&event_id)? {
        return Ok(Outcome::Duplicate);
    }
    let h = keep_only_applied(tx, participant.handle(tx, event, prepared, now_ms)?);
    if use_inbox && matches!(h, Handled::Applied | Handled::Ignored) {
        tx.mark_seen(&event_id, now_ms)?;
    }
    Ok(Outcome::Handled(h))
}

/// The participant contract's rule, enforced here rather than trusted: a message that is
/// dead-lettered or retried writes nothing.
fn keep_only_applied<T: MessageTx>(tx: &T, h: Handled) -> Handled {
    if matches!(h, Handled::DeadLetter { .. } | Handled::RetryAfter { .. }) {
        tx.discard();
    }
    h
}

/// Step 1: commits one run of messages (of distinct sagas: the driver keeps a saga's second
/// message back until its first has committed) in one transaction over `store`. Each message
/// gets its outcome, or its error (rolled back alone); a storage failure fails them all.
pub fn commit_run<P: Participant, S: Storage>(
    participant: &P,
    store: &S,
    run: &[(Input<'_, P::Prepared>, u64)],
) -> Vec<Result<Outcome>> {
    match store.transact_each(run, |tx, (input, now_ms)| {
        handle_message(participant, &*tx, input, *now_ms)
    }) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let message = e.to_string();
            run.iter()
                .map(|_| Err(RuntimeError::StoreFailed(message.clone())))
                .collect()
        }
    }
}

/// Step 2: what the broker is told about a message, from its outcome and how many times it
/// was delivered. A failure (a storage error, or a bug in a handler) is never final: the
/// message is nak'ed with a growing delay, so the event is not lost.
pub fn answer(outcome: &Result<Outcome>, delivered: u64) -> Answer {
    match outcome {
        Ok(Outcome::Handled(Handled::Applied | Handled::Ignored) | Outcome::Duplicate) => {
            Answer::Ack
        }
        Ok(Outcome::Handled(Handled::RetryAfter { delay_ms })) => Answer::Nak {
            delay_ms: *delay_ms,
        },
        Ok(Outcome::Handled(Handled::DeadLetter { reason, message })) => Answer::DeadLetter {
            reason,
            message: message.clone(),
        },
        Err(_) => Answer::Nak {
            delay_ms: transient_nak_ms(delivered),
        },
    }
}

/// Step 3: the answers of a group commit, held until the flush. `M` is the driver's handle on
/// a message (a JetStream message, a simulated delivery).
#[derive(Debug)]
pub struct Group<M> {
    held: Vec<(M, Answer)>,
    mutation: Option<Mutation>,
}

impl<M> Default for Group<M> {
    fn default() -> Self {
        Group::new(None)
    }
}

impl<M> Group<M> {
    /// An empty group; `mutation` is for the simulation's self-test only.
    pub fn new(mutation: Option<Mutation>) -> Self {
        Group {
            held: Vec::new(),
            mutation,
        }
    }

    /// Books a handled message. Returns what the driver may tell the broker now: nothing,
    /// since the effects are not durable yet (everything, under [`Mutation::AckBeforeFlush`]).
    pub fn handled(&mut self, msg: M, answer: Answer) -> Vec<(M, Answer)> {
        if self.mutation == Some(Mutation::AckBeforeFlush) {
            return vec![(msg, answer)];
        }
        self.held.push((msg, answer));
        Vec::new()
    }

    /// Messages booked and not yet answered.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when no message waits for the flush.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The booked messages, for a driver that must look at them before the flush (a
    /// simulated redelivery of one still in flight).
    pub fn held(&self) -> impl Iterator<Item = &M> {
        self.held.iter().map(|(m, _)| m)
    }

    /// Call after the flush that made the group's effects durable: every booked answer, in
    /// the order to send them. Dead letters come first: each is stored in `FX_DLQ` before any
    /// message of the group is acked, and only after the flush, because the verdict may rest
    /// on state this group wrote (a conflicting request beside the accepted one): if a crash
    /// undid that state, the redelivery must be able to decide again.
    pub fn flushed(&mut self) -> Vec<(M, Answer)> {
        let mut out = std::mem::take(&mut self.held);
        // A stable sort: dead letters first, the rest in delivery order.
        out.sort_by_key(|(_, a)| !matches!(a, Answer::DeadLetter { .. }));
        out
    }

    /// A crash: the booked answers are lost with the unflushed effects; returns the messages,
    /// which the broker will redeliver.
    pub fn crashed(&mut self) -> Vec<M> {
        self.held.drain(..).map(|(m, _)| m).collect()
    }
}

/// Step 4: the relay's rules. Publishes only what is flushed: an event that went out while
/// the effects that decided it were lost in a crash would be a decision nobody made.
#[derive(Clone, Copy, Debug, Default)]
pub struct Relay {
    mutation: Option<Mutation>,
}

impl Relay {
    /// The relay's rules; `mutation` is for the simulation's self-test only.
    pub fn new(mutation: Option<Mutation>) -> Relay {
        Relay { mutation }
    }

    /// The next window of entries to publish, at most about `window` (whole records), given
    /// the store's flushed watermark.
    pub fn batch<S: Storage>(
        &self,
        store: &S,
        flushed: u64,
        window: usize,
    ) -> Result<Vec<(u64, OutboxEntry)>> {
        store.outbox_batch(self.up_to(store, flushed)?, window.max(1))
    }

    /// The last outbox key the relay may publish, given the store's flushed watermark.
    pub fn up_to<S: Storage>(&self, store: &S, flushed: u64) -> Result<u64> {
        match self.mutation {
            Some(Mutation::PublishBeforeFlush) => store.outbox_committed(),
            _ => Ok(flushed),
        }
    }

    /// The records that may go once the first `acked` entries of `batch` have their PubAck
    /// (in order): a record goes only when every entry of it is acknowledged; the acknowledged
    /// part of a record cut short is published again with it (the broker drops the
    /// duplicates by `Nats-Msg-Id`).
    pub fn settled(batch: &[(u64, OutboxEntry)], acked: usize) -> Vec<u64> {
        let acked = acked.min(batch.len());
        let mut done: Vec<u64> = batch[..acked].iter().map(|(k, _)| *k).collect();
        done.dedup();
        if let Some((cut, _)) = batch.get(acked) {
            done.retain(|k| k != cut);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> OutboxEntry {
        OutboxEntry {
            subject: "fx.krw.held.u".into(),
            event_id: id.into(),
            saga_id: events::SagaId::from(uuid::Uuid::from_u128(1)),
            causation_id: "c".into(),
            payload: "{}".into(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn a_record_goes_only_when_all_its_entries_are_acknowledged() {
        let batch = vec![(1, entry("a")), (1, entry("b")), (2, entry("c"))];
        assert_eq!(Relay::settled(&batch, 3), vec![1, 2]);
        assert_eq!(Relay::settled(&batch, 2), vec![1]);
        assert_eq!(
            Relay::settled(&batch, 1),
            Vec::<u64>::new(),
            "record 1 cut short"
        );
        assert_eq!(Relay::settled(&batch, 0), Vec::<u64>::new());
    }

    #[test]
    fn answers_wait_for_the_flush_and_dead_letters_go_first() {
        let mut g = Group::new(None);
        assert!(g.handled(1, Answer::Ack).is_empty());
        let dead = Answer::DeadLetter {
            reason: "r",
            message: "m".into(),
        };
        assert!(g.handled(2, dead.clone()).is_empty());
        assert!(g.handled(3, Answer::Nak { delay_ms: 5 }).is_empty());
        assert_eq!(g.len(), 3);
        let out = g.flushed();
        assert_eq!(
            out,
            vec![
                (2, dead),
                (1, Answer::Ack),
                (3, Answer::Nak { delay_ms: 5 })
            ]
        );
        assert!(g.is_empty());
    }

    #[test]
    fn the_ack_before_flush_mutation_answers_at_once() {
        let mut g = Group::new(Some(Mutation::AckBeforeFlush));
        assert_eq!(g.handled(1, Answer::Ack), vec![(1, Answer::Ack)]);
        assert!(g.flushed().is_empty());
    }

    #[test]
    fn failures_are_retried_with_a_growing_delay_and_never_acked() {
        let failed: Result<Outcome> = Err(RuntimeError::StoreFailed("disk".into()));
        assert_eq!(answer(&failed, 1), Answer::Nak { delay_ms: 100 });
        assert_eq!(answer(&failed, 3), Answer::Nak { delay_ms: 400 });
        assert_eq!(answer(&failed, 40), Answer::Nak { delay_ms: 30_000 });
        assert_eq!(answer(&Ok(Outcome::Duplicate), 1), Answer::Ack);
    }
}
