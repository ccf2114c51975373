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
