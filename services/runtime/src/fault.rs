//! Fault injection for crash tests: the runtime asks a hook at each point where a real process
//! could die with work half done, and stops there (without acking or cleaning up) when told to.

use std::sync::Arc;

/// A point in the runtime where a crash leaves something half done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// The batch's transactions are committed and flushed; the messages are not acked yet.
    /// Recovery: the broker redelivers, and the inbox / per-saga state makes it a no-op.
    AfterCommitBeforeAck,
    /// Outbox entries are published and PubAcked; they are not removed from the outbox yet.
    /// Recovery: the relay publishes them again with the same `Nats-Msg-Id`.
    AfterPublishBeforeRemove,
    /// A group's transactions ran; their log record is not written yet. Recovery: nothing of
    /// the group reached the disk, and the broker redelivers its messages.
    BeforeLogWrite,
    /// The group's log record is handed to sled; the flush has not begun, so the record may
    /// or may not be on disk. Recovery: if it survived, its writes are replayed and its events
    /// published, and the redelivered messages are duplicates; if not, as [`Self::BeforeLogWrite`].
    AfterLogWriteBeforeFlush,
    /// A checkpoint wrote the keys that name no saga into their trees but not the sagas'
    /// bundles. Recovery: the log, not trimmed yet, is replayed over whatever part reached the
    /// trees.
    DuringCheckpoint,
    /// A checkpoint is durable; the log records it covers are not trimmed yet (sled applies the
    /// trim's removals as one batch, so this is the only point inside it). Recovery replays
    /// those records over trees that already hold their writes.
    BeforeTrim,
}

/// What the hook tells the runtime to do at a fault point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Carry on.
    Continue,
    /// Stop every task of the runtime at once, as a SIGKILL would.
    Crash,
}

/// A test's hook; production uses [`no_faults`].
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> FaultAction + Send + Sync>;

/// The hook that never injects anything.
pub fn no_faults() -> FaultHook {
    Arc::new(|_| FaultAction::Continue)
}

/// The hook that crashes at `point`, every time it is reached.
pub fn crash_at(point: FaultPoint) -> FaultHook {
    Arc::new(move |p| {
        if p == point {
            FaultAction::Crash
        } else {
            FaultAction::Continue
        }
    })
}
