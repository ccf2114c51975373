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

/// A node's store: durable data, live data, and the committed-but-unflushed work between them.
#[derive(Debug, Default)]
pub struct MemStore {
    durable: Data,
    live: Data,
    /// Committed transactions not yet flushed (the redo list from durable to live).
    unflushed: Vec<Commit>,
    /// Outbox entries of those transactions, in commit order: lost on a crash, handed to the
    /// relay by a flush.
    unflushed_outbox: Vec<OutboxEntry>,
}

impl MemStore {
    /// Runs `f` as one transaction over the live data. On `Ok` its writes, journal entries,
    /// inbox mark and outbox entries are committed (live, not yet durable); on `Err` nothing is.
    pub fn transact<T>(&mut self, f: impl FnOnce(&MemTx<'_>) -> TxResult<T>) -> TxResult<T> {
        let tx = MemTx {
            base: &self.live,
            writes: RefCell::default(),
            journal: RefCell::default(),
            outbox: RefCell::default(),
            inbox: RefCell::default(),
        };
        let out = f(&tx)?;
        let outbox = tx.outbox.into_inner();
        let commit = Commit {
            writes: tx.writes.into_inner(),
            journal: tx.journal.into_inner(),
            inbox: tx.inbox.into_inner(),
        };
        self.unflushed_outbox.extend(outbox);
        if !commit.is_empty() {
            commit.apply_to(&mut self.live);
            self.unflushed.push(commit);
        }
        Ok(out)
    }

    /// The group-commit point: makes every committed transaction durable and returns their
    /// outbox entries, which only now may be published.
    pub fn flush(&mut self) -> Vec<OutboxEntry> {
        for c in self.unflushed.drain(..) {
            c.apply_to(&mut self.durable);
        }
        std::mem::take(&mut self.unflushed_outbox)
    }

    /// A crash: committed but unflushed transactions are lost. Returns how many.
    pub fn crash(&mut self) -> usize {
        let lost = self.unflushed.len();
        self.unflushed.clear();
        self.unflushed_outbox.clear();
        if lost > 0 {
            self.live = self.durable.clone();
        }
        lost
    }

    /// True when nothing committed is waiting for a flush.
    pub fn is_flushed(&self) -> bool {
        self.unflushed.is_empty() && self.unflushed_outbox.is_empty()
    }

    /// Takes the outbox entries committed since the last flush, before any flush (only for
    /// the `PublishBeforeFlush` mutation: the runtime never does this).
    pub fn take_unflushed_outbox(&mut self) -> Vec<OutboxEntry> {
        std::mem::take(&mut self.unflushed_outbox)
    }

    /// Forgets every consumed event id, durable and live (inbox pruning is a plain batch
    /// outside any transaction). Returns how many ids the live inbox had.
    pub fn prune_inbox(&mut self) -> usize {
        let n = self.live.inbox.len();
        self.live.inbox.clear();
        self.durable.inbox.clear();
        for c in &mut self.unflushed {
            c.inbox = None;
        }
        n
    }

    /// Transactions committed since the last flush that changed something.
    pub fn unflushed_commits(&self) -> usize {
        self.unflushed.len()
    }

    /// Outbox entries committed since the last flush, in commit order.
    pub fn unflushed_outbox(&self) -> &[OutboxEntry] {
        &self.unflushed_outbox
    }

    /// What a crash would keep.
    pub fn durable(&self) -> &Data {
        &self.durable
    }

    /// What the service sees now.
    pub fn live(&self) -> &Data {
        &self.live
    }
}

/// What `prepare` reads: the live records, committed but not necessarily flushed, as
/// `runtime::Store` reads sled's state tree outside a transaction.
impl ReadRecords for MemStore {
    fn read_raw(&self, key: &str) -> runtime::Result<Option<Vec<u8>>> {
        Ok(self.live.state.get(key).cloned())
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

impl MemTx<'_> {
    /// True when an event with this id was already handled (the runtime's inbox check).
    pub fn seen(&self, event_id: &str) -> bool {
        self.inbox.borrow().as_deref() == Some(event_id) || self.base.inbox.contains(event_id)
    }

    /// Records that the event was handled, in this transaction.
    pub fn mark_seen(&self, event_id: &str) {
        *self.inbox.borrow_mut() = Some(event_id.to_owned());
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
    use rust_decimal::Decimal;

    fn entry(op: &str) -> JournalEntry {
        JournalEntry {
            saga_id: SagaId::from(uuid::Uuid::from_u128(1)),
            op: op.into(),
            currency: "KRW".into(),
            debit: "a".into(),
            credit: "b".into(),
            amount: Decimal::ONE,
            at_ms: 0,
            actor: None,
        }
    }

    #[test]
    fn an_aborted_transaction_leaves_nothing_and_a_second_journal_entry_aborts() {
        let mut s = MemStore::default();
        s.transact(|tx| tx.journal(&entry("hold"))).unwrap();
        let err = s.transact(|tx| {
            tx.put_raw("touched", b"1".to_vec())?;
            tx.journal(&entry("hold"))
        });
        assert!(err.is_err());
        assert!(s.live().state.is_empty(), "rolled back");
        assert_eq!(s.live().journal.len(), 1);
    }

    #[test]
    fn a_crash_keeps_only_what_was_flushed() {
        let mut s = MemStore::default();
        s.transact(|tx| tx.put_raw("a", b"1".to_vec())).unwrap();
        assert!(s.flush().is_empty());
        s.transact(|tx| tx.put_raw("b", b"2".to_vec())).unwrap();
        assert_eq!(s.crash(), 1);
        assert!(s.live().state.contains_key("a"));
        assert!(!s.live().state.contains_key("b"));
        assert!(s.is_flushed());
    }
}
