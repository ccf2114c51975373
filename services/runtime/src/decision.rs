//! The one shape of a service's decision, and the one step that applies it.
//!
//! Every service decides purely — `(its records, the input, now_ms) -> Decision<W>` — where
//! `W` is its own typed record writes (fx-krw's changed saga, account and house records,
//! fx-usd's credit, account and house, fx-trade's order record). The adapter around the
//! decision is then the same three steps everywhere: load the records, decide,
//! [`Decision::apply`]. Admin operations (an operator's intervention, a deposit) take the same
//! path.

use events::Event;

use crate::{Handled, JournalEntry, Records, TxResult};

/// A service's typed record writes: what one decision changes in its state records.
pub trait Writes {
    /// Writes the changed records through `records`, inside the caller's transaction.
    fn write<R: Records>(&self, records: &R) -> TxResult<()>;
}

/// No record changes (a decision that only emits, such as a re-emit).
impl Writes for () {
    fn write<R: Records>(&self, _records: &R) -> TxResult<()> {
        Ok(())
    }
}

/// The writes of a decision that may change nothing (`None`: no record changes).
impl<W: Writes> Writes for Option<W> {
    fn write<R: Records>(&self, records: &R) -> TxResult<()> {
        match self {
            Some(w) => w.write(records),
            None => Ok(()),
        }
    }
}

/// What one decision wants done, all in one transaction: the record writes, then the journal
/// lines, then the events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<W> {
    /// What becomes of the consumed message (or the admin operation).
    pub handled: Handled,
    /// The service's record writes.
    pub writes: W,
    /// Journal entries to append, in order.
    pub journal: Vec<JournalEntry>,
    /// Events to append to the outbox, in order.
    pub events: Vec<Event>,
}

impl<W: Default> Decision<W> {
    /// Nothing to do: a duplicate, a late word, an event the service ignores.
    pub fn ignored() -> Decision<W> {
        Decision::new(Handled::Ignored, W::default())
    }

    /// The message breaks the contract: dead-lettered with this reason, nothing written.
    pub fn dead_letter(reason: &'static str, message: impl Into<String>) -> Decision<W> {
        Decision::new(
            Handled::DeadLetter {
                reason,
                message: message.into(),
            },
            W::default(),
        )
    }

    /// Applied with no record change: only these events (an operator's re-emit).
    pub fn emitting(events: Vec<Event>) -> Decision<W> {
        Decision {
            events,
            ..Decision::new(Handled::Applied, W::default())
        }
    }

    /// Not now: redelivered after `delay_ms`, nothing written.
    pub fn retry(delay_ms: u64) -> Decision<W> {
        Decision::new(Handled::RetryAfter { delay_ms }, W::default())
    }
}

impl<W> Decision<W> {
    /// A decision with these writes and no journal lines or events yet.
    pub fn new(handled: Handled, writes: W) -> Decision<W> {
        Decision {
            handled,
            writes,
            journal: Vec::new(),
            events: Vec::new(),
        }
    }

    /// True when the decision changes nothing: applying it writes nothing (a dead letter or a
    /// retry, whatever else it carries).
    pub fn writes_nothing(&self) -> bool {
        matches!(
            self.handled,
            Handled::DeadLetter { .. } | Handled::RetryAfter { .. }
        )
    }

    /// Applies the decision inside the caller's transaction: the record writes, then the
    /// journal (a second line for one operation aborts the whole unit), then the events, each
    /// caused by `causation_id`. A dead letter or a retry writes nothing, by construction: the
    /// runtime's contract is that the message leaves no trace, and a redelivery decides again.
    /// Returns what to tell the runtime.
    pub fn apply<R: Records>(
        &self,
        records: &R,
        causation_id: &str,
        now_ms: u64,
    ) -> TxResult<Handled>
    where
        W: Writes,
    {
        if !self.writes_nothing() {
            self.writes.write(records)?;
            records.journal_and_emit(&self.journal, &self.events, causation_id, now_ms)?;
        }
        Ok(self.handled.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use events::{Krw, KrwDeposited, SagaId, UserId};

    /// One record, `key` = `value`.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    struct Put(Option<(String, String)>);

    impl Writes for Put {
        fn write<R: Records>(&self, records: &R) -> TxResult<()> {
            match &self.0 {
                Some((k, v)) => records.put(k, v),
                None => Ok(()),
            }
        }
    }

    fn saga() -> SagaId {
        SagaId::parse("0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11").unwrap()
    }

    /// A decision that writes a record, a journal line and an event, under `handled`.
    fn everything(handled: Handled) -> Decision<Put> {
        // Built from its stored form, which every version of the entry reads.
        let entry: JournalEntry = serde_json::from_value(serde_json::json!({
            "saga_id": saga(), "op": "deposit", "currency": "KRW", "debit": "external",
            "credit": "user:alice:available", "amount": "100", "at_ms": 1
        }))
        .unwrap();
        Decision {
            handled,
            writes: Put(Some(("rec".into(), "v".into()))),
            journal: vec![entry],
            events: vec![Event::KrwDeposited(KrwDeposited {
                saga_id: saga(),
                user_id: UserId::parse("alice").unwrap(),
                krw_amount: Krw::parse("100").unwrap(),
                actor: "admin".into(),
            })],
        }
    }

    /// What `decision` leaves in a fresh store: (record, journal lines, outbox entries).
    fn applied(decision: &Decision<Put>) -> (Option<String>, usize, usize) {
        let store = Store::temporary().unwrap();
        let handled = store
            .transact(|tx| decision.apply(&*tx, "cause", 1))
            .unwrap();
        assert_eq!(handled, decision.handled);
        (
            store.get::<String>("rec").unwrap(),
            store.journal_entries().unwrap().len(),
            store.outbox_stats(1).unwrap().0,
        )
    }

    #[test]
    fn an_applied_decision_writes_its_records_journal_and_events() {
        assert_eq!(
            applied(&everything(Handled::Applied)),
            (Some("v".into()), 1, 1)
        );
    }

    #[test]
    fn a_dead_letter_or_a_retry_writes_nothing_whatever_it_carries() {
        let dead = Handled::DeadLetter {
            reason: "bad",
            message: "no".into(),
        };
        let retry = Handled::RetryAfter { delay_ms: 5 };
        for handled in [dead, retry] {
            assert_eq!(
                applied(&everything(handled.clone())),
                (None, 0, 0),
                "{handled:?}"
            );
        }
    }

    #[test]
    fn the_common_constructors_carry_no_effects() {
        for d in [
            Decision::<Put>::ignored(),
            Decision::dead_letter("bad", "no"),
            Decision::retry(5),
        ] {
            assert_eq!((d.writes.0, d.journal.len(), d.events.len()), (None, 0, 0));
        }
        assert_eq!(
            Decision::<Put>::retry(5).handled,
            Handled::RetryAfter { delay_ms: 5 }
        );
    }
}
