//! The sled transaction: [`Store::transact_each`] runs a run of handled events in one sled
//! transaction over state, journal, outbox and inbox, each event in its own [`Tx`] whose writes
//! wait in memory ([`Pending`]) until it succeeds, so that a failing event rolls back alone;
//! the events' outbox entries are appended at the end as outbox records.

use std::cell::RefCell;
use std::collections::BTreeMap;

use events::Event;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::footprint::{Tally, TreeIndex};
use super::outbox::{outbox_entry, outbox_key, OUTBOX_RECORD_MAX_ENTRIES};
use super::{abort, JournalEntry, OutboxEntry, Records, Store, TxResult};
use crate::{Result, RuntimeError};

impl Store {
    /// Runs `f` as one atomic transaction over state, journal, outbox and inbox. `f` may run
    /// more than once (on a conflict), so it must not have side effects outside `Tx`.
    pub fn transact<T>(&self, f: impl Fn(&mut Tx<'_>) -> TxResult<T>) -> Result<T> {
        self.transact_each(&[()], |tx, ()| f(tx))?
            .pop()
            .expect("one result per item")
    }

    /// Runs `f` once per item, in order, all inside one sled transaction: the group commit's
    /// unit of work. Each item sees what the items before it wrote, and rolls back alone: an
    /// item whose `f` aborts leaves no trace and gets its error in its slot of the result,
    /// while the others commit. The outbox entries of the items that succeeded become one
    /// outbox record.
    ///
    /// Why one transaction for many events: a sled transaction has a fixed cost (locks, a
    /// manifest in the log, a wake-up of sled's IO threads) that per-event transactions paid
    /// ~60 times per flush; measured with a store-only benchmark shaped like fx-krw's writes,
    /// 146 µs of CPU per event per-event against 32 µs batched with one outbox record.
    ///
    /// `Err` only for a storage failure, which fails every item. `f` may run more than once
    /// (on a conflict), so it must not have side effects outside `Tx`.
    pub fn transact_each<I, T>(
        &self,
        items: &[I],
        f: impl Fn(&mut Tx<'_>, &I) -> TxResult<T>,
    ) -> Result<Vec<Result<T>>> {
        let _guard = self
            .write_lock
            .lock()
            .expect("write lock is never poisoned");
        let result = (&self.state, &self.journal, &self.outbox, &self.inbox).transaction(
            |(state, journal, outbox, inbox)| {
                let trees = TxTrees {
                    state,
                    journal,
                    inbox,
                };
                let mut results = Vec::with_capacity(items.len());
                let mut appended = Vec::new();
                let mut tally = Tally::default();
                for item in items {
                    let mut tx = Tx {
                        trees: &trees,
                        pending: RefCell::default(),
                    };
                    match f(&mut tx, item) {
                        Ok(v) => {
                            tx.apply(&mut appended, &mut tally)?;
                            results.push(Ok(v));
                        }
                        Err(ConflictableTransactionError::Abort(e)) => results.push(Err(e)),
                        Err(other) => return Err(other),
                    }
                }
                for record in appended.chunks(OUTBOX_RECORD_MAX_ENTRIES) {
                    // generate_id starts at 0; shift by one so that watermark 0 means "nothing
                    // flushed".
                    let id = outbox.generate_id()? + 1;
                    let bytes = serde_json::to_vec(record).expect("outbox entries serialize");
                    let key = outbox_key(id, record.len());
                    tally.insert(TreeIndex::Outbox, key.len(), bytes.len());
                    outbox.insert(&key[..], bytes)?;
                }
                Ok((results, tally))
            },
        );
        match result {
            Ok((v, tally)) => {
                self.commits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.written.add(&tally);
                Ok(v)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(RuntimeError::Store(e)),
        }
    }

    /// Write transactions committed since the store opened. An audit walks trees one after
    /// another, not a snapshot: when this moved during its walk, a difference it reports may be
    /// a saga that was in flight.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The trees of one sled transaction (the outbox is written once, at its end).
struct TxTrees<'a> {
    state: &'a TransactionalTree,
    journal: &'a TransactionalTree,
    inbox: &'a TransactionalTree,
}

impl<'a> TxTrees<'a> {
    fn tree(&self, space: Space) -> &'a TransactionalTree {
        match space {
            Space::State => self.state,
            Space::Journal => self.journal,
            Space::Inbox => self.inbox,
        }
    }
}

/// Which tree a pending write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Space {
    State,
    Journal,
    Inbox,
}

impl Space {
    fn index(self) -> TreeIndex {
        match self {
            Space::State => TreeIndex::State,
            Space::Journal => TreeIndex::Journal,
            Space::Inbox => TreeIndex::Inbox,
        }
    }
}

/// One item's writes, held back until it succeeds (so that a failing item rolls back alone).
#[derive(Default)]
struct Pending {
    writes: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
    outbox: Vec<OutboxEntry>,
}

/// The view of the store of one handled event (one item of [`Store::transact_each`]): it reads
/// what the transaction holds, its own writes first.
pub struct Tx<'a> {
    trees: &'a TxTrees<'a>,
    pending: RefCell<Pending>,
}

impl Tx<'_> {
    fn read(&self, space: Space, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        if let Some(v) = self.pending.borrow().writes.get(&(space, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.trees.tree(space).get(key)?.map(|v| v.to_vec()))
    }

    fn write(&self, space: Space, key: &[u8], value: Option<Vec<u8>>) {
        self.pending
            .borrow_mut()
            .writes
            .insert((space, key.to_vec()), value);
    }

    /// Writes the item's pending writes into the transaction, and its outbox entries to
    /// `appended`; counts the inserts in `tally`.
    fn apply(self, appended: &mut Vec<OutboxEntry>, tally: &mut Tally) -> TxResult<()> {
        let pending = self.pending.into_inner();
        for ((space, key), value) in pending.writes {
            let tree = self.trees.tree(space);
            match value {
                Some(v) => {
                    tally.insert(space.index(), key.len(), v.len());
                    tree.insert(key, v)?
                }
                None => tree.remove(key)?,
            };
        }
        appended.extend(pending.outbox);
        Ok(())
    }
}

impl crate::core::MessageTx for Tx<'_> {
    fn seen(&self, event_id: &str) -> TxResult<bool> {
        Ok(self.read(Space::Inbox, event_id.as_bytes())?.is_some())
    }

    fn mark_seen(&self, event_id: &str, now_ms: u64) -> TxResult<()> {
        self.write(
            Space::Inbox,
            event_id.as_bytes(),
            Some(now_ms.to_be_bytes().to_vec()),
        );
        Ok(())
    }

    fn discard(&self) {
        *self.pending.borrow_mut() = Pending::default();
    }
}

impl Records for Tx<'_> {
    fn get_raw(&self, key: &str) -> TxResult<Option<Vec<u8>>> {
        self.read(Space::State, key.as_bytes())
    }

    fn put_raw(&self, key: &str, value: Vec<u8>) -> TxResult<()> {
        self.write(Space::State, key.as_bytes(), Some(value));
        Ok(())
    }

    fn remove(&self, key: &str) -> TxResult<()> {
        self.write(Space::State, key.as_bytes(), None);
        Ok(())
    }

    fn journal(&self, entry: &JournalEntry) -> TxResult<()> {
        let key = entry.key();
        if self.read(Space::Journal, key.as_bytes())?.is_some() {
            return abort(RuntimeError::JournalConflict { key });
        }
        let bytes = serde_json::to_vec(entry).expect("journal entries serialize");
        self.write(Space::Journal, key.as_bytes(), Some(bytes));
        Ok(())
    }

    fn emit(&self, event: &Event, causation_id: &str, now_ms: u64) -> TxResult<()> {
        self.pending
            .borrow_mut()
            .outbox
            .push(outbox_entry(event, causation_id, now_ms));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MessageTx;
    use crate::ledger::Op;
    use crate::store::fixtures::{committed, entry};
    use events::SagaId;

    #[tokio::test]
    async fn a_batch_commits_its_good_items_and_rolls_back_a_failing_one_alone() {
        let store = Store::temporary().unwrap();
        let (a, b) = (SagaId::new_v7(), SagaId::new_v7());
        // Item 1 sees item 0's writes; item 2 duplicates item 0's journal entry and aborts,
        // taking its own writes and its event with it; item 3 commits after it.
        let results = store
            .transact_each(&[0, 1, 2, 3], |tx, i| {
                match i {
                    0 => {
                        tx.put("count", &1u32)?;
                        tx.journal(&entry(a, Op::Hold))?;
                        tx.emit(&committed(a), "c0", 1)?;
                        tx.mark_seen("e0", 1)?;
                    }
                    1 => {
                        let n: u32 = tx.get("count")?.expect("item 0's write is visible");
                        tx.put("count", &(n + 1))?;
                        assert!(tx.seen("e0")?);
                    }
                    2 => {
                        tx.put("count", &100u32)?;
                        tx.emit(&committed(b), "c2", 1)?;
                        tx.journal(&entry(a, Op::Hold))?;
                    }
                    _ => tx.emit(&committed(b), "c3", 1)?,
                }
                Ok(*i)
            })
            .unwrap();
        assert!(matches!(results[0], Ok(0)));
        assert!(matches!(results[1], Ok(1)));
        assert!(matches!(
            results[2],
            Err(RuntimeError::JournalConflict { .. })
        ));
        assert!(matches!(results[3], Ok(3)));
        assert_eq!(store.get::<u32>("count").unwrap(), Some(2));
        assert_eq!(store.journal_entries().unwrap().len(), 1);

        // One outbox record with the two surviving events, in order, released by the flush.
        let wm = store.flush().await.unwrap();
        let batch = store.outbox_batch(wm, 1).unwrap();
        let causes: Vec<&str> = batch.iter().map(|(_, e)| e.causation_id.as_str()).collect();
        assert_eq!(causes, ["c0", "c3"]);
        assert_eq!(batch[0].0, batch[1].0, "one record");
        assert_eq!(store.outbox_stats(1).unwrap(), (2, 0));
        store.outbox_remove(&[batch[0].0]).unwrap();
        assert_eq!(store.outbox_stats(1).unwrap(), (0, 0));
    }

    #[test]
    fn a_second_journal_entry_for_one_operation_rolls_the_transaction_back() {
        let store = Store::temporary().unwrap();
        let saga = SagaId::new_v7();
        store
            .transact(|tx| tx.journal(&entry(saga, Op::Commit)))
            .unwrap();
        let err = store
            .transact(|tx| {
                tx.put("touched", &true)?;
                tx.journal(&entry(saga, Op::Commit))
            })
            .unwrap_err();
        assert!(matches!(err, RuntimeError::JournalConflict { .. }), "{err}");
        assert_eq!(
            store.get::<bool>("touched").unwrap(),
            None,
            "not rolled back"
        );
        assert_eq!(store.journal_entries().unwrap().len(), 1);
    }
}
