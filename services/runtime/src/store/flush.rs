//! The group-commit flush: the store's own flushing thread ([`Flusher`]), what one flush does
//! (sled's flush, then the fsyncs of [`crate::durable`]), and [`Store::flush`], which raises the
//! watermark up to which the relay may publish only once that flush is done ("publish only what
//! is durable").

use tokio::sync::watch;

use std::sync::Arc;

use super::overlay::Shared;
use super::Store;
use crate::durable::{DataFiles, SyncError};
use crate::{Result, RuntimeError};

/// A request for a flush: where to send its outcome.
type FlushRequest = tokio::sync::oneshot::Sender<FlushOutcome>;

/// How a flush ended. Cloned to every request that one flush served.
pub(super) type FlushOutcome = std::result::Result<(), FlushFailure>;

#[derive(Clone, Debug)]
pub(super) enum FlushFailure {
    Store(sled::Error),
    Sync(SyncError),
}

impl From<FlushFailure> for RuntimeError {
    fn from(f: FlushFailure) -> RuntimeError {
        match f {
            FlushFailure::Store(e) => RuntimeError::Store(e),
            FlushFailure::Sync(e) => RuntimeError::Sync(e),
        }
    }
}

/// The store's own flushing thread. Neither of the obvious ways to wait for a flush without
/// blocking the runtime is cheap here: sled's `flush_async` hands the flush to sled's thread
/// pool, which wakes every idle pool thread for each task it is given (and the flush gives it
/// a second one, the buffer write), and tokio's `spawn_blocking` starts threads that each grow
/// a malloc arena of their own (fx-trade's resident memory after 100,000 sagas: 45 MiB with
/// `flush_async`, 123 MiB with `spawn_blocking`). One long-lived thread, woken directly,
/// costs neither, and serves every request that queued during a flush with the next one.
///
/// A flush is sled's flush, then an fdatasync of its files ([`DataFiles::sync`]): sled's flush
/// alone does not survive a power cut. Once an fsync fails, every later flush fails too: after
/// a failed fsync the kernel may have dropped the pages it could not write, so a later success
/// would prove nothing.
pub(super) struct Flusher {
    requests: Option<std::sync::mpsc::Sender<FlushRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    /// `files`: the store's files on disk; `None` for a temporary store, which no crash
    /// outlives anyway.
    pub(super) fn start(db: sled::Db, mut files: Option<DataFiles>) -> Result<Flusher> {
        let (requests, queue) = std::sync::mpsc::channel::<FlushRequest>();
        let thread = std::thread::Builder::new()
            .name("fx-store-flush".into())
            .spawn(move || {
                let mut failed: Option<FlushFailure> = None;
                // Every request queued before a flush starts is served by it; one that arrives
                // during it waits for the next, since its writes may not be in this one.
                while let Ok(first) = queue.recv() {
                    let waiting: Vec<FlushRequest> =
                        std::iter::once(first).chain(queue.try_iter()).collect();
                    let outcome = match &failed {
                        Some(f) => Err(f.clone()),
                        None => flush_durably(&db, files.as_mut()),
                    };
                    if let Err(FlushFailure::Sync(e)) = &outcome {
                        tracing::error!(error = %e, "the store cannot make writes durable");
                        failed = Some(FlushFailure::Sync(e.clone()));
                    }
                    for w in waiting {
                        let _ = w.send(outcome.clone());
                    }
                }
            })
            .map_err(|e| RuntimeError::FlushThread(format!("cannot start: {e}")))?;
        Ok(Flusher {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    pub(super) async fn flush(&self) -> Result<()> {
        self.request()?
            .await
            .map_err(|_| RuntimeError::FlushThread("gone".into()))??;
        Ok(())
    }

    /// [`Self::flush`], blocking the calling thread (which must not be an async runtime's).
    pub(super) fn flush_blocking(&self) -> Result<()> {
        self.request()?
            .blocking_recv()
            .map_err(|_| RuntimeError::FlushThread("gone".into()))??;
        Ok(())
    }

    fn request(&self) -> Result<tokio::sync::oneshot::Receiver<FlushOutcome>> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.requests
            .as_ref()
            .expect("requests live until drop")
            .send(done)
            .map_err(|_| RuntimeError::FlushThread("gone".into()))?;
        Ok(outcome)
    }
}

/// sled's flush, then the fsyncs that make it durable.
pub(super) fn flush_durably(db: &sled::Db, files: Option<&mut DataFiles>) -> FlushOutcome {
    db.flush().map_err(FlushFailure::Store)?;
    if let Some(files) = files {
        files.sync().map_err(FlushFailure::Sync)?;
    }
    Ok(())
}

impl Drop for Flusher {
    /// Ends the thread and waits for it, so that its handle on the database is gone when the
    /// store is (a restart in the same process reopens the same path).
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The background checkpoint: a thread that writes memory into the trees when asked, so that
/// neither the consumer nor the flusher waits for it. Requests made while one runs are one.
pub(super) struct Checkpoints {
    requests: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpoints {
    pub(super) fn start(shared: Arc<Shared>) -> Result<Checkpoints> {
        let (requests, queue) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("fx-store-checkpoint".into())
            .spawn(move || {
                lower_priority();
                while queue.recv().is_ok() {
                    if let Err(e) = shared.checkpoint() {
                        // The log still holds everything; the next flush asks again.
                        tracing::error!(error = %e, "checkpoint failed");
                    }
                }
            })
            .map_err(|e| RuntimeError::FlushThread(format!("cannot start the checkpoint: {e}")))?;
        Ok(Checkpoints {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Asks for a checkpoint unless one is already asked for.
    fn start_one(&self) {
        if let Some(r) = &self.requests {
            let _ = r.try_send(());
        }
    }
}

/// Gives the calling thread the lowest scheduling priority (nice 19): a checkpoint is never
/// urgent, and on a saturated machine it should take the cores the consumer leaves idle.
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; setpriority on one thread id changes
    // that thread only (Linux).
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if rc != 0 {
        tracing::debug!("checkpoint thread priority unchanged");
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// The group-commit point: makes every committed transaction durable, then lets the relay
    /// publish the outbox entries they appended. Returns the new watermark.
    ///
    /// Also where the log is kept short: what a checkpoint had written before this flush began
    /// is durable once it ends, so the log records it covers and whose events are published
    /// are trimmed; and when memory holds [`super::StoreOptions::checkpoint_entries`] writes,
    /// the background checkpoint is started.
    pub async fn flush(&self) -> Result<u64> {
        let (tail, checkpointed) = self.begin_flush()?;
        self.flusher.flush().await?;
        self.end_flush(tail, checkpointed)
    }

    /// [`Store::flush`] for a caller outside any async runtime (the deterministic simulation),
    /// blocking the calling thread until the same flush is done.
    pub fn flush_blocking(&self) -> Result<u64> {
        let (tail, checkpointed) = self.begin_flush()?;
        self.flusher.flush_blocking()?;
        self.end_flush(tail, checkpointed)
    }

    /// What a flush will cover: the last log id committed, and the checkpoint so far.
    fn begin_flush(&self) -> Result<(u64, u64)> {
        self.shared.alive()?;
        let tail = {
            let _guard = self.shared.lock_writes();
            self.outbox_tail()
        };
        Ok((tail, self.shared.checkpointed()))
    }

    /// After the flush: trims, starts a checkpoint if due, and raises the watermark.
    fn end_flush(&self, tail: u64, checkpointed: u64) -> Result<u64> {
        // A crash injected while the flush ran (in the background checkpoint) kills the
        // process before anything rests on this flush.
        self.shared.alive()?;
        self.shared.flushed(checkpointed)?;
        if self.shared.active_len() >= self.shared.checkpoint_entries {
            self.checkpoints.start_one();
        }
        self.watermark.send_if_modified(|w| {
            if tail > *w {
                *w = tail;
                true
            } else {
                false
            }
        });
        Ok(tail)
    }

    /// A receiver of the flushed-outbox watermark (the relay waits on it).
    pub fn watermark(&self) -> watch::Receiver<u64> {
        self.watermark.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::committed;
    use crate::Records;
    use events::{EventKind, SagaId};
    use std::sync::Arc;

    #[tokio::test]
    async fn the_relay_sees_an_outbox_entry_only_after_its_flush() {
        let store = Store::temporary().unwrap();
        let saga = SagaId::new_v7();
        store
            .transact(|tx| tx.emit(&committed(saga), "cause", 5))
            .unwrap();
        let wm = *store.watermark().borrow();
        assert!(
            store.outbox_batch(wm, 10).unwrap().is_empty(),
            "unflushed entry is visible"
        );
        let wm = store.flush().await.unwrap();
        let batch = store.outbox_batch(wm, 10).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].1.event_id, saga.event_id(EventKind::KrwCommitted));
        assert_eq!(batch[0].1.causation_id, "cause");
        store.outbox_remove(&[batch[0].0]).unwrap();
        assert_eq!(store.outbox_stats(10).unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn concurrent_flushes_all_return_and_a_dropped_store_reopens_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let saga = SagaId::new_v7();
        let flushes: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.transact(|tx| tx.put(&format!("k{i}"), &i)).unwrap();
                    store.flush().await.unwrap()
                })
            })
            .collect();
        for f in flushes {
            f.await.unwrap();
        }
        store
            .transact(|tx| tx.emit(&committed(saga), "c", 1))
            .unwrap();
        let wm = store.flush().await.unwrap();
        assert_eq!(store.outbox_batch(wm, 10).unwrap().len(), 1);
        // The flush thread holds the database too; dropping the store ends it, so the same
        // path opens again straight away (as a restart in one process does).
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.get::<i32>("k7").unwrap(), Some(7));
        assert_eq!(again.outbox_stats(1).unwrap().0, 1);
    }
}
