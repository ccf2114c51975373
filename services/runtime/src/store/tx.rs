//! The group commit: [`Store::transact_each`] runs a run of handled events, each in its own
//! [`Tx`] whose writes wait in memory until it succeeds (so that a failing event rolls back
//! alone), then writes the group's effects and events as one log record, with one sled insert
//! (see [`super::log`]), and takes the writes into memory (see [`super::overlay`]).

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use events::Event;
use sled::transaction::ConflictableTransactionError;

use super::log::{LogRecord, Space, Writes};
use super::outbox::outbox_entry;
use super::{abort, JournalEntry, OutboxEntry, Records, Store, TxResult};
use crate::{Result, RuntimeError};

impl Store {
    /// Runs `f` as one atomic unit over state, journal, outbox and inbox.
    pub fn transact<T>(&self, f: impl Fn(&mut Tx<'_>) -> TxResult<T>) -> Result<T> {
        self.transact_each(&[()], |tx, ()| f(tx))?
            .pop()
            .expect("one result per item")
    }

    /// Runs `f` once per item, in order: the group commit's unit of work. Each item sees what
    /// the items before it wrote, and rolls back alone: an item whose `f` aborts leaves no
    /// trace and gets its error in its slot of the result, while the others commit. What the
    /// items that succeeded wrote and emitted becomes one log record.
    ///
    /// Why one record for many events: each sled write has a fixed cost, and a sled
    /// transaction over four trees a larger one; measured with `store_bench` (fx-krw's
    /// writes): 146 µs of CPU per event with a transaction per event, 38–43 µs with one
    /// transaction per group over four trees, and less again with the group as one insert
    /// (docs/benchmarks.md).
    ///
    /// `Err` only for a storage failure, which fails every item and writes nothing.
    pub fn transact_each<I, T>(
        &self,
        items: &[I],
        f: impl Fn(&mut Tx<'_>, &I) -> TxResult<T>,
    ) -> Result<Vec<Result<T>>> {
        let shared = &*self.shared;
        let _guard = shared.lock_writes();
        let group = RefCell::new(Chunks::default());
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let mut tx = Tx {
                store: self,
                group: &group,
                pending: RefCell::default(),
            };
            match f(&mut tx, item) {
                Ok(v) => {
                    group.borrow_mut().push(tx.pending.into_inner());
                    results.push(Ok(v));
                }
                Err(ConflictableTransactionError::Abort(e)) => results.push(Err(e)),
                Err(ConflictableTransactionError::Storage(e)) => return Err(e.into()),
                Err(other) => return Err(RuntimeError::StoreFailed(format!("{other:?}"))),
            }
        }
        shared.append(group.into_inner().done())?;
        Ok(results)
    }

    /// Group commits since the store opened. An audit walks trees one after another, not a
    /// snapshot: when this moved during its walk, a difference it reports may be a saga that
    /// was in flight.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }
}

/// Most bytes of effects in one log record. sled writes a value over a quarter of its 512 KiB
/// segment as a file of its own (a blob, fsynced apart), so a large group is cut into records
/// well below that, written together by one atomic batch.
const LOG_RECORD_MAX_BYTES: usize = 32 * 1024;

/// A group's log records, cut at item boundaries once one reaches [`LOG_RECORD_MAX_BYTES`];
/// also what the group has written so far, as the next item reads it.
#[derive(Default)]
struct Chunks {
    done: Vec<LogRecord>,
    current: LogRecord,
    bytes: usize,
}

impl Chunks {
    fn push(&mut self, item: Pending) {
        self.bytes += item.bytes();
        self.current.writes.extend(item.writes);
        self.current.events.extend(item.outbox);
        if self.bytes >= LOG_RECORD_MAX_BYTES {
            self.cut();
        }
    }

    /// What the group's items so far say of `key`, the latest first.
    fn get(&self, space: Space, key: &[u8]) -> Option<Option<&Vec<u8>>> {
        std::iter::once(&self.current)
            .chain(self.done.iter().rev())
            .find_map(|record| record.writes.get(space, key))
    }

    fn cut(&mut self) {
        if !self.current.writes.is_empty() || !self.current.events.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
        }
        self.bytes = 0;
    }

    fn done(mut self) -> Vec<LogRecord> {
        self.cut();
        self.done
    }
}

/// One item's writes, held back until it succeeds (so that a failing item rolls back alone).
#[derive(Default)]
struct Pending {
    writes: Writes,
    outbox: Vec<OutboxEntry>,
}

impl Pending {
    /// About what the item adds to a log record.
    fn bytes(&self) -> usize {
        let events: usize = self
            .outbox
            .iter()
            .map(|e| e.payload.len() + e.subject.len() + e.event_id.len() + 80)
            .sum();
        self.writes.bytes() + events
    }
}

/// The view of the store of one handled event (one item of [`Store::transact_each`]): its own
/// writes first, then the group's so far, then what is committed.
pub struct Tx<'a> {
    store: &'a Store,
    group: &'a RefCell<Chunks>,
    pending: RefCell<Pending>,
}

impl Tx<'_> {
    fn read(&self, space: Space, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        if let Some(v) = self.pending.borrow().writes.get(space, key) {
            return Ok(v.cloned());
        }
        if let Some(v) = self.group.borrow().get(space, key) {
            return Ok(v.cloned());
        }
        Ok(self.store.shared.read(space, key)?)
    }

    fn write(&self, space: Space, key: &[u8], value: Option<Vec<u8>>) {
        self.pending
            .borrow_mut()
            .writes
            .insert(space, key.to_vec(), value);
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
