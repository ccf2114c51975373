//! Group commit: an execution is answered only once it is flushed and fdatasynced, and every
//! order waiting at the same time shares one flush.
//!
//! Orders execute under the market's lock and record the highest sequence number written
//! ([`GroupCommit::written`]); then, with the lock released, each waits for "durable up to"
//! to reach its own execution ([`GroupCommit::durable`]). One thread does the flushes: it takes
//! every request queued so far, reads how far the book is written, runs sled's flush and
//! [`DataFiles::sync`] (as the runtime's store does), and publishes the new watermark on a
//! watch channel. A request that arrives during a flush is served by the next one, since its
//! write may not be in the flush that is running.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use runtime::durable::DataFiles;
use tokio::sync::watch;

use crate::error::{Result, VenueServerError};

/// How far the book is durable, or why it never will be again.
#[derive(Clone, Debug)]
enum Durable {
    UpTo(u64),
    /// A flush failed. Sticky: after a failed fsync the kernel may have dropped the pages, so
    /// a later success would prove nothing (see `runtime::durable`).
    Failed(String),
}

/// The flushing thread and the watermark it raises.
pub struct GroupCommit {
    written: Arc<AtomicU64>,
    flushes: Arc<AtomicU64>,
    requests: Mutex<Option<mpsc::Sender<()>>>,
    durable: watch::Receiver<Durable>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the flush thread for the store at `path` (`db` opened there by
    /// `runtime::durable::open`), first making whatever it holds durable: an execution that
    /// survived a crash in the page cache may already have been seen by a lookup.
    pub fn start(db: sled::Db, path: &Path, last_seq: u64) -> Result<GroupCommit> {
        let mut files = DataFiles::open(path)?;
        flush_durably(&db, &mut files)?;
        let written = Arc::new(AtomicU64::new(last_seq));
        let flushes = Arc::new(AtomicU64::new(0));
        let (requests, queue) = mpsc::channel::<()>();
        let (publish, durable) = watch::channel(Durable::UpTo(last_seq));
        let thread = {
            let written = written.clone();
            let flushes = flushes.clone();
            std::thread::Builder::new()
                .name("fx-venue-flush".into())
                .spawn(move || {
                    while queue.recv().is_ok() {
                        // Every request queued before this flush starts is covered by it.
                        queue.try_iter().for_each(drop);
                        if matches!(*publish.borrow(), Durable::Failed(_)) {
                            continue;
                        }
                        let covered = written.load(Ordering::Acquire);
                        let started = Instant::now();
                        let outcome = flush_durably(&db, &mut files);
                        metrics::histogram!("fx_venue_flush_seconds")
                            .record(started.elapsed().as_secs_f64());
                        flushes.fetch_add(1, Ordering::Relaxed);
                        match outcome {
                            Ok(()) => {
                                publish.send_if_modified(|d| match d {
                                    Durable::UpTo(up_to) if covered > *up_to => {
                                        *up_to = covered;
                                        true
                                    }
                                    _ => false,
                                });
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "the order book cannot be made durable; every later order fails");
                                publish.send_replace(Durable::Failed(e.to_string()));
                            }
                        }
                    }
                    // The last answer was sent after its flush; flush once more for whatever
                    // executed without being asked about (a client that hung up).
                    if let Err(e) = flush_durably(&db, &mut files) {
                        tracing::error!(error = %e, "final flush of the order book failed");
                    }
                })
                .map_err(|e| VenueServerError::Flusher(format!("cannot start it: {e}")))?
        };
        Ok(GroupCommit {
            written,
            flushes,
            requests: Mutex::new(Some(requests)),
            durable,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Records that the book holds executions up to `seq` (call under the market's lock, after
    /// the write).
    pub fn written(&self, seq: u64) {
        self.written.fetch_max(seq, Ordering::Release);
    }

    /// The highest sequence number written (durable or not yet).
    pub fn last_written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// How many flushes ran since the start (each one fdatasync of the data file).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Waits until every execution up to `seq` is flushed and fdatasynced.
    pub async fn durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.durable.clone();
        if let Some(done) = reached(&rx.borrow(), seq) {
            return done;
        }
        {
            let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            let sent = requests.as_ref().map(|r| r.send(()));
            if !matches!(sent, Some(Ok(()))) {
                return Err(gone());
            }
        }
        let outcome = rx
            .wait_for(|d| reached(d, seq).is_some())
            .await
            .map_err(|_| gone())?;
        reached(&outcome, seq).unwrap_or_else(|| Err(gone()))
    }

    /// Stops the thread after a last flush, and waits for it (so the store's files are closed
    /// when this returns, and a restart in the same process can open them).
    pub fn stop(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `Some` once the watermark answers for `seq`: reached, or failed for good.
fn reached(durable: &Durable, seq: u64) -> Option<Result<()>> {
    match durable {
        Durable::UpTo(up_to) if *up_to >= seq => Some(Ok(())),
        Durable::UpTo(_) => None,
        Durable::Failed(message) => Some(Err(VenueServerError::NotDurable(message.clone()))),
    }
}

fn gone() -> VenueServerError {
    VenueServerError::Flusher("the server is stopping".into())
}

/// sled's flush, then the fdatasyncs that make it survive a power cut (sled's own flush ends
/// in `sync_file_range`, which does not).
fn flush_durably(db: &sled::Db, files: &mut DataFiles) -> Result<()> {
    db.flush()?;
    files.sync()?;
    Ok(())
}
