//! An in-memory store with the semantics the services rely on from the runtime's sled store:
//! one atomic transaction per handled event, a journal that refuses a second `(saga, op)`
//! entry, an outbox, an inbox, and a group-commit flush that separates what a crash keeps
//! (durable) from what it loses (committed but unflushed).
//!
//! A transaction writes into an overlay over the node's live data and is merged only when the
//! service's code returns `Ok`: an abort leaves nothing behind, as a rolled-back sled
//! transaction does. Committed transactions are also kept as a redo list until the next
//! flush, which applies them to the durable copy; a crash throws the list away and rebuilds the
//! live data from the durable copy. No map is cloned on the hot path.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use events::Event;
use runtime::core::{MessageTx, Storage};
use runtime::{
    abort, outbox_entry, JournalEntry, OutboxEntry, ReadRecords, Records, RuntimeError, TxResult,
};
use serde::de::DeserializeOwned;

/// One copy of a node's records: what sled's four trees hold.
#[derive(Clone, Debug, Default)]
pub struct Data {
    /// The `state` tree: the service's own records, JSON-encoded.
    pub state: BTreeMap<String, Vec<u8>>,
    /// The `journal` tree, keyed `<saga_id>:<op>`.
    pub journal: BTreeMap<String, JournalEntry>,
    /// The same journal entries in commit order, so a replay can check that no balance went
    /// negative at any point in the history, not only at the end.
    pub journal_log: Vec<JournalEntry>,
    /// The `inbox` tree: ids of consumed events.
    pub inbox: BTreeSet<String>,
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

/// What one committed transaction changed (its outbox entries are kept apart, in
/// [`MemStore::unflushed_outbox`], because the relay takes them in commit order).
#[derive(Debug, Default)]
struct Commit {
    /// New values (`Some`) and deletions (`None`) of state records.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Journal entries appended.
    journal: Vec<JournalEntry>,
    /// The consumed event id marked as seen, if any.
    inbox: Option<String>,
}

impl Commit {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.journal.is_empty() && self.inbox.is_none()
    }

    fn apply_to(&self, data: &mut Data) {
        for (k, v) in &self.writes {
            match v {
                Some(v) => {
                    data.state.insert(k.clone(), v.clone());
                }
                None => {
                    data.state.remove(k);
                }
            }
        }
        for e in &self.journal {
            data.journal.insert(e.key(), e.clone());
            data.journal_log.push(e.clone());
        }
        if let Some(id) = &self.inbox {
            data.inbox.insert(id.clone());
        }
    }
}

/// A node's store: durable data, live data, the committed-but-unflushed work between them,
/// and the outbox. Interior mutability because the runtime's core drives it through
/// [`Storage`], whose methods take `&self` as sled's do (the simulation is single-threaded).
#[derive(Debug, Default)]
pub struct MemStore {
    inner: RefCell<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    durable: Data,
    live: Data,
    /// Committed transactions not yet flushed (the redo list from durable to live).
    unflushed: Vec<Commit>,
    /// The outbox, by key in commit order. Entries with keys above `flushed_up_to` are lost
    /// in a crash; the rest stay until the relay removes them.
    outbox: BTreeMap<u64, OutboxEntry>,
    /// The last outbox key handed out.
    last_key: u64,
    /// The flushed watermark: the relay publishes up to it and no further.
    flushed_up_to: u64,
}

impl MemStore {
    /// The group-commit point: makes every committed transaction durable and moves the
    /// outbox's flushed watermark to its last entry. Returns how many entries were released
    /// to the relay.
    pub fn flush(&self) -> usize {
        let mut s = self.inner.borrow_mut();
        let s = &mut *s;
        for c in s.unflushed.drain(..) {
            c.apply_to(&mut s.durable);
        }
        let released = s.outbox.range(s.flushed_up_to + 1..).count();
        s.flushed_up_to = s.last_key;
        released
    }

    /// A crash: committed but unflushed transactions and their outbox entries are lost.
    /// Returns how many transactions.
    pub fn crash(&self) -> usize {
        let mut s = self.inner.borrow_mut();
        let lost = s.unflushed.len();
        s.unflushed.clear();
        let flushed = s.flushed_up_to;
        s.outbox.retain(|k, _| *k <= flushed);
        if lost > 0 {
            s.live = s.durable.clone();
        }
        lost
    }

    /// The flushed watermark (what the relay may publish up to).
    pub fn flushed_up_to(&self) -> u64 {
        self.inner.borrow().flushed_up_to
    }

    /// True when nothing committed is waiting for a flush.
    pub fn is_flushed(&self) -> bool {
        let s = self.inner.borrow();
        s.unflushed.is_empty() && s.last_key == s.flushed_up_to
    }

    /// Forgets every consumed event id, durable and live (inbox pruning is a plain batch
    /// outside any transaction). Returns how many ids the live inbox had.
    pub fn prune_inbox(&self) -> usize {
        let mut s = self.inner.borrow_mut();
        let n = s.live.inbox.len();
        s.live.inbox.clear();
        s.durable.inbox.clear();
        for c in &mut s.unflushed {
            c.inbox = None;
        }
        n
    }

    /// Transactions committed since the last flush that changed something.
    pub fn unflushed_commits(&self) -> usize {
        self.inner.borrow().unflushed.len()
    }

    /// Outbox entries committed since the last flush, in commit order.
    pub fn unflushed_outbox(&self) -> Vec<OutboxEntry> {
        let s = self.inner.borrow();
        s.outbox
            .range(s.flushed_up_to + 1..)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Outbox entries with keys up to `up_to` (the flushed watermark: what survives a crash
    /// and the relay may publish).
    pub fn outbox_len_up_to(&self, up_to: u64) -> usize {
        self.inner.borrow().outbox.range(..=up_to).count()
    }

    /// What a crash would keep.
    pub fn durable(&self) -> std::cell::Ref<'_, Data> {
        std::cell::Ref::map(self.inner.borrow(), |s| &s.durable)
    }

    /// What the service sees now.
    pub fn live(&self) -> std::cell::Ref<'_, Data> {
        std::cell::Ref::map(self.inner.borrow(), |s| &s.live)
    }
}

/// The runtime's core commits through this store exactly as through sled: each item of a run
/// in its own overlay over the live data, merged only when the service's code returns `Ok`
/// (an abort leaves nothing behind, as a rolled-back sled transaction does), its outbox
/// entries keyed in commit order.
impl Storage for MemStore {
    type Tx<'t> = MemTx<'t>;

    fn transact_each<I, T>(
        &self,
        items: &[I],
        f: impl Fn(&mut MemTx<'_>, &I) -> TxResult<T>,
    ) -> runtime::Result<Vec<runtime::Result<T>>> {
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let (out, commit, outbox) = {
                let s = self.inner.borrow();
                let mut tx = MemTx {
                    base: &s.live,
                    writes: RefCell::default(),
                    journal: RefCell::default(),
                    outbox: RefCell::default(),
                    inbox: RefCell::default(),
                };
                match f(&mut tx, item) {
                    Ok(v) => {
                        let commit = Commit {
                            writes: tx.writes.into_inner(),
                            journal: tx.journal.into_inner(),
                            inbox: tx.inbox.into_inner(),
                        };
                        (Ok(v), commit, tx.outbox.into_inner())
                    }
                    Err(e) => (Err(e), Commit::default(), Vec::new()),
                }
            };
            let mut s = self.inner.borrow_mut();
            let s = &mut *s;
            for e in outbox {
                s.last_key += 1;
                s.outbox.insert(s.last_key, e);
            }
            if !commit.is_empty() {
                commit.apply_to(&mut s.live);
                s.unflushed.push(commit);
            }
            results.push(out.map_err(runtime::aborted));
        }
        Ok(results)
    }

    fn outbox_batch(&self, up_to: u64, max: usize) -> runtime::Result<Vec<(u64, OutboxEntry)>> {
        let s = self.inner.borrow();
        Ok(s.outbox
            .range(..=up_to)
            .take(max.max(1))
            .map(|(k, e)| (*k, e.clone()))
            .collect())
    }

    fn outbox_remove(&self, keys: &[u64]) -> runtime::Result<()> {
        let mut s = self.inner.borrow_mut();
        for k in keys {
            s.outbox.remove(k);
        }
        Ok(())
    }

    fn outbox_committed(&self) -> runtime::Result<u64> {
        Ok(self.inner.borrow().last_key)
    }
}

/// What `prepare` and the timers read: the live records, committed but not necessarily
/// flushed, as `runtime::Store` reads sled's state tree outside a transaction.
impl ReadRecords for MemStore {
    fn read_raw(&self, key: &str) -> runtime::Result<Option<Vec<u8>>> {
        Ok(self.inner.borrow().live.state.get(key).cloned())
    }

    fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = runtime::Result<String>> + 'a {
        let keys: Vec<String> = self.live().keys(prefix).map(str::to_owned).collect();
        keys.into_iter().map(Ok)
    }
}

/// The view of the store inside one transaction: reads see the transaction's own writes over
/// the live data; nothing reaches the live data unless the transaction commits.
pub struct MemTx<'a> {
    base: &'a Data,
    writes: RefCell<BTreeMap<String, Option<Vec<u8>>>>,
    journal: RefCell<Vec<JournalEntry>>,
    outbox: RefCell<Vec<OutboxEntry>>,
    inbox: RefCell<Option<String>>,
}

impl MessageTx for MemTx<'_> {
    fn seen(&self, event_id: &str) -> TxResult<bool> {
        Ok(self.inbox.borrow().as_deref() == Some(event_id) || self.base.inbox.contains(event_id))
    }

    fn mark_seen(&self, event_id: &str, _now_ms: u64) -> TxResult<()> {
        *self.inbox.borrow_mut() = Some(event_id.to_owned());
        Ok(())
    }

    fn discard(&self) {
        self.writes.borrow_mut().clear();
        self.journal.borrow_mut().clear();
        self.outbox.borrow_mut().clear();
        *self.inbox.borrow_mut() = None;
    }
}

impl Records for MemTx<'_> {
    fn get_raw(&self, key: &str) -> TxResult<Option<Vec<u8>>> {
        if let Some(v) = self.writes.borrow().get(key) {
            return Ok(v.clone());
        }
        Ok(self.base.state.get(key).cloned())
    }

    fn put_raw(&self, key: &str, value: Vec<u8>) -> TxResult<()> {
        self.writes.borrow_mut().insert(key.to_owned(), Some(value));
        Ok(())
    }

    fn remove(&self, key: &str) -> TxResult<()> {
        self.writes.borrow_mut().insert(key.to_owned(), None);
        Ok(())
    }

    fn journal(&self, entry: &JournalEntry) -> TxResult<()> {
        // Exactly runtime::Tx::journal: a second entry for one (saga, op) aborts the whole
        // transaction, which is what makes invariant 4 structural.
        let key = entry.key();
        let in_tx = self.journal.borrow().iter().any(|e| e.key() == key);
        if in_tx || self.base.journal.contains_key(&key) {
            return abort(RuntimeError::JournalConflict { key });
        }
        self.journal.borrow_mut().push(entry.clone());
        Ok(())
    }

    fn emit(&self, event: &Event, causation_id: &str, now_ms: u64) -> TxResult<()> {
        self.outbox
            .borrow_mut()
            .push(outbox_entry(event, causation_id, now_ms));
        Ok(())
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
        let s = MemStore::default();
        s.transact(|tx| tx.journal(&entry(Op::Hold))).unwrap();
        let err = s.transact(|tx| {
            tx.put_raw("touched", b"1".to_vec())?;
            tx.journal(&entry(Op::Hold))
        });
        assert!(err.is_err());
        assert!(s.live().state.is_empty(), "rolled back");
        assert_eq!(s.live().journal.len(), 1);
    }

    #[test]
    fn a_crash_keeps_only_what_was_flushed() {
        let s = MemStore::default();
        s.transact(|tx| tx.put_raw("a", b"1".to_vec())).unwrap();
        assert_eq!(s.flush(), 0);
        s.transact(|tx| tx.put_raw("b", b"2".to_vec())).unwrap();
        assert_eq!(s.crash(), 1);
        assert!(s.live().state.contains_key("a"));
        assert!(!s.live().state.contains_key("b"));
        assert!(s.is_flushed());
    }
}
