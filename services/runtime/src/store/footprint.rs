//! Where a store's bytes go: [`Store::footprint`] counts, per tree, the entries held now and
//! their key and value bytes, the bytes written into it since the store opened, and the bytes
//! of the store's directory on disk. It exists to measure (store_bench prints it per saga; see
//! docs/benchmarks.md): it walks every tree, so it is not for a hot path.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::bundle;
use super::log::Space;
use super::overlay::bundle_id;
use super::Store;
use crate::{Result, RuntimeError};

/// One tree's share of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeFootprint {
    /// Entries held now.
    pub entries: u64,
    /// Bytes of their keys.
    pub key_bytes: u64,
    /// Bytes of their values.
    pub value_bytes: u64,
    /// Inserts committed into this tree since the store opened (overwrites included; removals
    /// and inbox pruning not).
    pub written_entries: u64,
    /// Key and value bytes of those inserts: what a group commit hands to sled for this tree.
    pub written_bytes: u64,
}

/// A store's bytes: what it holds of each kind, and its directory on disk. State, journal
/// and inbox count their entries wherever they are kept, in their own tree or in a saga's
/// bundle (at their full keys' length); their written figures, and all of `sagas`, count what
/// was handed to sled. They hold what checkpoints wrote: call [`Store::checkpoint`] first to
/// count everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Per-saga and per-account records.
    pub state: TreeFootprint,
    /// Journal lines.
    pub journal: TreeFootprint,
    /// Log records not yet trimmed (one per group commit: its writes and its events).
    pub log: TreeFootprint,
    /// Remembered event ids.
    pub inbox: TreeFootprint,
    /// The sagas' bundles: one entry per saga, holding its records, journal lines and inbox
    /// marks (counted above too).
    pub sagas: TreeFootprint,
    /// Key and value bytes of the state, journal and inbox entries kept in bundles: counted in
    /// those three at their full keys, and again, as the bundles encode them, in `sagas`.
    pub bundled_bytes: u64,
    /// Sum of the lengths of the files under the store's directory (0 for a temporary store).
    /// Only what sled has flushed is there: flush first.
    pub disk_bytes: u64,
    /// The blocks those files occupy (sparse and preallocated regions differ from the length).
    pub disk_allocated_bytes: u64,
}

impl Footprint {
    /// The five trees, named as the store names them.
    pub fn trees(&self) -> [(&'static str, &TreeFootprint); 5] {
        [
            ("state", &self.state),
            ("journal", &self.journal),
            ("log", &self.log),
            ("inbox", &self.inbox),
            ("sagas", &self.sagas),
        ]
    }
}

/// Inserts per tree since the store opened: log records as groups commit, the other trees'
/// entries as checkpoints write them.
#[derive(Default)]
pub(super) struct Written {
    trees: [(AtomicU64, AtomicU64); 5],
}

/// The trees, as indices of [`Written`] and [`Tally`].
#[derive(Clone, Copy)]
pub(super) enum TreeIndex {
    State = 0,
    Journal = 1,
    Log = 2,
    Inbox = 3,
    Sagas = 4,
}

/// The inserts of one transaction, added to [`Written`] once it commits.
#[derive(Default)]
pub(super) struct Tally([(u64, u64); 5]);

impl Tally {
    pub(super) fn insert(&mut self, tree: TreeIndex, key: usize, value: usize) {
        let t = &mut self.0[tree as usize];
        t.0 += 1;
        t.1 += (key + value) as u64;
    }
}

impl Written {
    pub(super) fn add(&self, tally: &Tally) {
        for ((entries, bytes), (n, b)) in self.trees.iter().zip(tally.0) {
            entries.fetch_add(n, Ordering::Relaxed);
            bytes.fetch_add(b, Ordering::Relaxed);
        }
    }

    fn read(&self, tree: TreeIndex) -> (u64, u64) {
        let (entries, bytes) = &self.trees[tree as usize];
        (
            entries.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
        )
    }
}

impl Store {
    /// Counts what each tree holds and has been written since the store opened, and the store's
    /// bytes on disk. Walks every tree: for measurements and tests, not for a hot path.
    pub fn footprint(&self) -> Result<Footprint> {
        let tree = |t: &sled::Tree, i: TreeIndex| -> Result<TreeFootprint> {
            let mut f = TreeFootprint::default();
            for item in t.iter() {
                let (k, v) = item?;
                f.entries += 1;
                f.key_bytes += k.len() as u64;
                f.value_bytes += v.len() as u64;
            }
            (f.written_entries, f.written_bytes) = self.shared.written.read(i);
            Ok(f)
        };
        let (disk_bytes, disk_allocated_bytes) = match &self.dir {
            Some(dir) => Footprint::disk(dir)?,
            None => (0, 0),
        };
        let mut f = Footprint {
            state: tree(&self.shared.state, TreeIndex::State)?,
            journal: tree(&self.shared.journal, TreeIndex::Journal)?,
            log: tree(&self.shared.log, TreeIndex::Log)?,
            inbox: tree(&self.shared.inbox, TreeIndex::Inbox)?,
            sagas: tree(&self.shared.sagas, TreeIndex::Sagas)?,
            bundled_bytes: 0,
            disk_bytes,
            disk_allocated_bytes,
        };
        for item in self.shared.sagas.iter() {
            let (k, v) = item?;
            let id = bundle_id(&k)?;
            for (space, rest, value) in bundle::decode(&id, &v)? {
                let held = match space {
                    Space::State => &mut f.state,
                    Space::Journal => &mut f.journal,
                    Space::Inbox => &mut f.inbox,
                };
                let (key, value) = ((rest.len() + bundle::ID_LEN) as u64, value.len() as u64);
                held.entries += 1;
                held.key_bytes += key;
                held.value_bytes += value;
                f.bundled_bytes += key + value;
            }
        }
        Ok(f)
    }
}

impl Footprint {
    /// The lengths and the allocated bytes of every file under `dir` (what
    /// [`Footprint::disk_bytes`] and [`Footprint::disk_allocated_bytes`] hold for a store's
    /// directory; also for a sled database opened without a [`Store`], as a benchmark does).
    pub fn disk(dir: &Path) -> Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let failed = |e: std::io::Error| {
            RuntimeError::StoreFailed(format!("cannot measure {}: {e}", dir.display()))
        };
        let (mut len, mut allocated) = (0, 0);
        for entry in std::fs::read_dir(dir).map_err(failed)? {
            let entry = entry.map_err(failed)?;
            let meta = entry.metadata().map_err(failed)?;
            if meta.is_dir() {
                let (l, a) = Footprint::disk(&entry.path())?;
                len += l;
                allocated += a;
            } else {
                len += meta.len();
                // st_blocks counts 512-byte units whatever the file system's block size.
                allocated += meta.blocks() * 512;
            }
        }
        Ok((len, allocated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MessageTx;
    use crate::ledger::Op;
    use crate::store::fixtures::{committed, entry};
    use crate::Records;
    use events::SagaId;

    #[tokio::test]
    async fn footprint_counts_what_each_tree_holds_and_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let saga = SagaId::new_v7();
        let journal = entry(saga, Op::Hold);
        let journal_bytes = serde_json::to_vec(&journal).unwrap().len() as u64;
        store
            .transact_each(&[0, 1, 2], |tx, i| {
                match i {
                    0 => {
                        tx.put_raw("a", b"12345".to_vec())?;
                        tx.journal(&journal)?;
                        tx.mark_seen("event-0", 7)?;
                        tx.emit(&committed(saga), "cause", 1)?;
                    }
                    1 => {
                        // An overwrite: held once, written twice.
                        tx.put_raw("a", b"123".to_vec())?;
                        tx.put_raw("bb", b"1".to_vec())?;
                    }
                    // Rolled back: none of its writes count.
                    _ => {
                        tx.put_raw("ccc", b"lost".to_vec())?;
                        tx.journal(&journal)?;
                    }
                }
                Ok(())
            })
            .unwrap();
        store.checkpoint().unwrap();
        let wm = store.flush().await.unwrap();
        let f = store.footprint().unwrap();

        // Held: item 1's "a" over item 0's, and "bb". Written: the group's writes reach the
        // tree once, at the checkpoint, so "a" counts once (1 + 3), and "bb" once (2 + 1).
        assert_eq!(
            (f.state.entries, f.state.key_bytes, f.state.value_bytes),
            (2, 3, 4)
        );
        assert_eq!((f.state.written_entries, f.state.written_bytes), (2, 7));
        let key_len = journal.key().len() as u64;
        assert_eq!(
            (
                f.journal.entries,
                f.journal.key_bytes,
                f.journal.value_bytes
            ),
            (1, key_len, journal_bytes)
        );
        // The line is kept in its saga's bundle: one entry, the saga id as its 16-byte key,
        // written once; the journal tree itself was handed nothing.
        assert_eq!(f.journal.written_entries, 0);
        assert_eq!((f.sagas.entries, f.sagas.key_bytes), (1, 16));
        assert_eq!(
            (f.sagas.written_entries, f.sagas.written_bytes),
            (1, 16 + f.sagas.value_bytes)
        );
        assert!(f.sagas.value_bytes > journal_bytes, "{f:?}");
        assert_eq!(f.bundled_bytes, key_len + journal_bytes);
        assert_eq!(
            (f.inbox.entries, f.inbox.key_bytes, f.inbox.value_bytes),
            (1, 7, 8)
        );
        // One log record (8-byte key) holding the group, until its event is published.
        assert_eq!((f.log.entries, f.log.key_bytes), (1, 8));
        assert_eq!(f.log.written_bytes, 8 + f.log.value_bytes);
        assert!(f.disk_bytes > 0 && f.disk_allocated_bytes > 0, "{f:?}");

        let published: Vec<u64> = store
            .outbox_batch(wm, 10)
            .unwrap()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        store.outbox_remove(&published).unwrap();
        // Checkpointed, flushed and published: the next flush trims it.
        store.flush().await.unwrap();
        let after = store.footprint().unwrap();
        assert_eq!(after.log.entries, 0);
        assert_eq!(
            after.log.written_bytes, f.log.written_bytes,
            "trims are not writes"
        );
        assert_eq!(after.trees()[0], ("state", &f.state));

        assert_eq!(
            Store::temporary().unwrap().footprint().unwrap().disk_bytes,
            0
        );
    }
}
