//! The simulation's store: the runtime's own [`runtime::Store`] (sled, in a temporary
//! directory) with its group commit, log, state in memory, checkpoint, trim and recovery,
//! driven from the scheduler's one thread: the flush blocks it ([`Store::flush_blocking`]), a
//! crash is taken in place ([`Store::crash_in_place`]: what was flushed survives, what was
//! committed after it is lost, and memory is rebuilt from the trees and the log as a restart
//! rebuilds it), and checkpoints run when the scheduler says, never in the background, so a
//! seed replays exactly.
//!
//! Beside it, the one thing the store does not keep: the journal in commit order (its trees
//! are in key order), so that a replay can check that no balance went negative at any point
//! in the history, not only at the end. Entries a crash lost are dropped from it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use events::Event;
use runtime::core::{MessageTx, Storage};
use runtime::{JournalEntry, OutboxEntry, ReadRecords, Records, Store, StoreOptions, Tx, TxResult};
use serde::de::DeserializeOwned;

/// A snapshot of a node's records, as the checks read them.
#[derive(Clone, Debug, Default)]
pub struct Data {
    /// The service's own records, JSON-encoded.
    pub state: BTreeMap<String, Vec<u8>>,
    /// The journal, keyed `<saga_id>:<op>`.
    pub journal: BTreeMap<String, JournalEntry>,
    /// The same journal entries in commit order.
    pub journal_log: Vec<JournalEntry>,
}

impl Data {
    /// Reads and decodes one state record. A record that does not decode is a bug in the
    /// simulation or the service, so it panics with the key.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.state.get(key).map(|v| {
            serde_json::from_slice(v).unwrap_or_else(|e| panic!("record {key:?} decodes: {e}"))
        })
    }

    /// Every state record whose key starts with `prefix`, in key order, decoded.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Vec<(String, T)> {
        self.keys(prefix)
            .map(|k| {
                let v = self.get(k).expect("scanned key exists");
                (k.to_owned(), v)
            })
            .collect()
    }

    /// Every state key that starts with `prefix`, in key order.
    pub fn keys<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.state
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(prefix))
    }
}

/// A node's store: the runtime's, and its journal in commit order.
pub struct SimStore {
    store: Store,
    journal_log: RefCell<Vec<JournalEntry>>,
}

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStore")
            .field("flushed_up_to", &self.flushed_up_to())
            .field("journal_entries", &self.journal_log.borrow().len())
            .finish()
    }
}

impl Default for SimStore {
    fn default() -> SimStore {
        let options = StoreOptions {
            // The scheduler checkpoints ([`SimStore::checkpoint`]); the background one never
            // starts.
            checkpoint_entries: usize::MAX,
            ..StoreOptions::default()
        };
        SimStore {
            store: Store::temporary_with(options).expect("a temporary sled store opens"),
            journal_log: RefCell::default(),
        }
    }
}

impl SimStore {
    /// The runtime's store itself (audits, reads).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The group-commit point: makes every committed transaction durable and raises the
    /// watermark the relay publishes up to. Returns how many outbox entries it released.
    pub fn flush(&self) -> usize {
        let before = self.flushed_up_to();
        let after = self.store.flush_blocking().expect("the store flushes");
        self.outbox_between(before, after).len()
    }

    /// A crash: what was committed after the last flush is lost, but for the oldest
    /// `survivors` group commits of it, which reached the disk before the process died.
    /// Returns how many log records (group commits) were lost.
    pub fn crash(&self, survivors: usize) -> usize {
        let lost = self
            .store
            .crash_in_place(survivors)
            .expect("the store recovers");
        if lost > 0 {
            let kept: std::collections::BTreeSet<String> = self
                .store
                .journal_entries()
                .expect("the journal reads")
                .iter()
                .map(JournalEntry::key)
                .collect();
            self.journal_log
                .borrow_mut()
                .retain(|e| kept.contains(&e.key()));
        }
        lost
    }

    /// The background checkpoint, run now: memory into the trees (durable at the next flush,
    /// which also trims the log it covers).
    pub fn checkpoint(&self) {
        self.store.checkpoint().expect("the checkpoint writes");
    }

    /// A checkpoint that dies half way (the state tree written, the journal and inbox trees
    /// not): the store refuses everything after it until [`SimStore::crash`] restarts it.
    pub fn checkpoint_dying_half_way(&self) {
        use runtime::FaultPoint;
        self.store
            .set_faults(runtime::crash_at(FaultPoint::DuringCheckpoint));
        let died = self.store.checkpoint();
        self.store.set_faults(runtime::no_faults());
        assert!(
            matches!(
                died,
                Ok(()) | Err(runtime::RuntimeError::Crashed(FaultPoint::DuringCheckpoint))
            ),
            "{died:?}"
        );
    }

    /// The flushed watermark (what the relay may publish up to).
    pub fn flushed_up_to(&self) -> u64 {
        *self.store.watermark().borrow()
    }

    /// True when nothing committed is waiting for a flush.
    pub fn is_flushed(&self) -> bool {
        self.store.outbox_committed().expect("reads") == self.flushed_up_to()
    }

    /// Forgets every consumed event id (inbox pruning once the retention has passed). Returns
    /// how many ids the inbox had.
    pub fn prune_inbox(&self) -> usize {
        self.store.prune_inbox(u64::MAX).expect("the inbox prunes")
    }

    /// Group commits since the store opened (a handled message that changed nothing adds none).
    pub fn commits(&self) -> u64 {
        self.store.commits()
    }

    /// Outbox entries committed since the last flush, in commit order.
    pub fn unflushed_outbox(&self) -> Vec<OutboxEntry> {
        self.outbox_between(self.flushed_up_to(), u64::MAX)
    }

    /// Outbox entries of the log records after `after` up to `up_to`, in order.
    fn outbox_between(&self, after: u64, up_to: u64) -> Vec<OutboxEntry> {
        self.store
            .outbox_batch(up_to, usize::MAX)
            .expect("the outbox reads")
            .into_iter()
            .filter(|(id, _)| *id > after)
            .map(|(_, e)| e)
            .collect()
    }

    /// Outbox entries with keys up to `up_to` (the flushed watermark: what the relay may
    /// publish).
    pub fn outbox_len_up_to(&self, up_to: u64) -> usize {
        self.store
            .outbox_batch(up_to, usize::MAX)
            .expect("the outbox reads")
            .len()
    }

    /// The records as the store reads them now; what a crash keeps once they are flushed (the
    /// checks read them after a flush, or at quiescence).
    pub fn durable(&self) -> Data {
        let state = self
            .store
            .keys_with_prefix("")
            .map(|k| {
                let k = k.expect("keys read");
                let v = self.store.read_raw(&k).expect("reads").expect("listed");
                (k, v)
            })
            .collect();
        let journal_log = self.journal_log.borrow().clone();
        let journal = journal_log.iter().map(|e| (e.key(), e.clone())).collect();
        Data {
            state,
            journal,
            journal_log,
        }
    }
}

/// The core commits through the runtime's store; the journal entries of every item that
/// commits are noted in commit order on the way.
impl Storage for SimStore {
    type Tx<'t> = SimTx<'t>;

    fn transact_each<I, T>(
        &self,
        items: &[I],
        f: impl Fn(&mut SimTx<'_>, &I) -> TxResult<T>,
    ) -> runtime::Result<Vec<runtime::Result<T>>> {
        let committed: RefCell<Vec<JournalEntry>> = RefCell::default();
        let results = self.store.transact_each(items, |tx, item| {
            let mut sim = SimTx {
                inner: tx,
                journaled: RefCell::default(),
            };
            let out = f(&mut sim, item);
            if out.is_ok() {
                committed.borrow_mut().extend(sim.journaled.into_inner());
            }
            out
        })?;
        self.journal_log.borrow_mut().extend(committed.into_inner());
        Ok(results)
    }

    fn outbox_batch(&self, up_to: u64, max: usize) -> runtime::Result<Vec<(u64, OutboxEntry)>> {
        self.store.outbox_batch(up_to, max)
    }

    fn outbox_remove(&self, keys: &[u64]) -> runtime::Result<()> {
        self.store.outbox_remove(keys)
    }

    fn outbox_committed(&self) -> runtime::Result<u64> {
        self.store.outbox_committed()
    }
}

/// What `prepare` and the timers read: the committed records.
impl ReadRecords for SimStore {
    fn read_raw(&self, key: &str) -> runtime::Result<Option<Vec<u8>>> {
        self.store.read_raw(key)
    }

    fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = runtime::Result<String>> + 'a {
        self.store.keys_with_prefix(prefix)
    }
}

/// The store's own transaction, noting the journal entries it writes.
pub struct SimTx<'a> {
    inner: &'a Tx<'a>,
    journaled: RefCell<Vec<JournalEntry>>,
}

impl MessageTx for SimTx<'_> {
    fn seen(&self, event_id: &str) -> TxResult<bool> {
        self.inner.seen(event_id)
    }

    fn mark_seen(&self, event_id: &str, now_ms: u64) -> TxResult<()> {
        self.inner.mark_seen(event_id, now_ms)
    }

    fn discard(&self) {
        self.journaled.borrow_mut().clear();
        self.inner.discard();
    }
}

impl Records for SimTx<'_> {
    fn get_raw(&self, key: &str) -> TxResult<Option<Vec<u8>>> {
        self.inner.get_raw(key)
    }

    fn put_raw(&self, key: &str, value: Vec<u8>) -> TxResult<()> {
        self.inner.put_raw(key, value)
    }

    fn remove(&self, key: &str) -> TxResult<()> {
        self.inner.remove(key)
    }

    fn journal(&self, entry: &JournalEntry) -> TxResult<()> {
        self.inner.journal(entry)?;
        self.journaled.borrow_mut().push(entry.clone());
        Ok(())
    }

    fn emit(&self, event: &Event, causation_id: &str, now_ms: u64) -> TxResult<()> {
        self.inner.emit(event, causation_id, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::SagaId;
    use runtime::ledger::{Account, Currency, Op};
    use rust_decimal::Decimal;

    fn entry(op: Op) -> JournalEntry {
        let alice = events::UserId::parse("alice").unwrap();
        JournalEntry::new(
            SagaId::from(uuid::Uuid::from_u128(1)),
            op,
            Currency::Krw,
            (Account::Available(alice.clone()), Account::Held(alice)),
            Decimal::ONE,
            0,
        )
    }

    #[test]
    fn an_aborted_transaction_leaves_nothing_and_a_second_journal_entry_aborts() {
        let s = SimStore::default();
        s.transact(|tx| tx.journal(&entry(Op::Hold))).unwrap();
        let err = s.transact(|tx| {
            tx.put_raw("touched", b"1".to_vec())?;
            tx.journal(&entry(Op::Hold))
        });
        assert!(err.is_err());
        let data = s.durable();
        assert!(data.state.is_empty(), "rolled back");
        assert_eq!(data.journal_log.len(), 1);
    }

    #[test]
    fn a_crash_keeps_only_what_was_flushed_and_a_checkpoint_keeps_what_it_wrote() {
        let s = SimStore::default();
        s.transact(|tx| tx.put_raw("a", b"1".to_vec())).unwrap();
        assert_eq!(s.flush(), 0);
        s.transact(|tx| {
            tx.put_raw("b", b"2".to_vec())?;
            tx.journal(&entry(Op::Hold))
        })
        .unwrap();
        assert!(!s.is_flushed());
        assert_eq!(s.crash(0), 1);
        let data = s.durable();
        assert!(data.state.contains_key("a"));
        assert!(!data.state.contains_key("b"));
        assert!(data.journal_log.is_empty(), "the lost entry is dropped");
        assert!(s.is_flushed());
        // A checkpoint after the commit: sled keeps its tree writes only with the log before
        // them, so that commit survives the crash too.
        s.transact(|tx| tx.put_raw("c", b"3".to_vec())).unwrap();
        s.checkpoint();
        assert_eq!(s.crash(0), 0);
        assert!(s.durable().state.contains_key("c"));
        // Unflushed commits that reached the disk anyway: the oldest survive, in order.
        for k in ["d", "e", "f"] {
            s.transact(|tx| tx.put_raw(k, b"4".to_vec())).unwrap();
        }
        assert_eq!(s.crash(2), 1);
        let data = s.durable();
        assert!(data.state.contains_key("d") && data.state.contains_key("e"));
        assert!(!data.state.contains_key("f"));
    }

    #[test]
    fn a_checkpoint_that_dies_half_way_keeps_what_it_covered_after_the_crash() {
        let s = SimStore::default();
        s.transact(|tx| {
            tx.put_raw("a", b"1".to_vec())?;
            tx.journal(&entry(Op::Hold))
        })
        .unwrap();
        s.checkpoint_dying_half_way();
        assert!(
            s.store().flush_blocking().is_err(),
            "a dead store flushes nothing"
        );
        // The state tree has the record, the journal tree not: the log, kept up to what the
        // checkpoint covered, gives the journal line back.
        assert_eq!(s.crash(0), 0);
        let data = s.durable();
        assert!(data.state.contains_key("a"));
        assert_eq!(data.journal_log.len(), 1);
        assert_eq!(s.store().journal_entries().unwrap().len(), 1);
        s.flush();
    }
}
