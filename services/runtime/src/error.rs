//! The runtime's one error type. Each variant says what the caller should do about it.

/// Errors of the participant runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A setting is missing or malformed: fix the environment and restart.
    #[error("configuration: {var}: {message}")]
    Config { var: &'static str, message: String },
    /// The broker could not be reached or refused us: check `NATS_URL` and credentials.
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    /// A JetStream API call failed (stream, consumer, publish); usually transient.
    #[error("JetStream {action}: {message}")]
    JetStream {
        action: &'static str,
        message: String,
    },
    /// The local store failed; transient for a message (nak and retry), fatal at start-up.
    #[error("store: {0}")]
    Store(#[from] sled::Error),
    /// A flushed write could not be made durable (fsync failed): the store stops accepting
    /// flushes; check the disk and restart.
    #[error(transparent)]
    Sync(#[from] crate::durable::SyncError),
    /// Stored bytes did not decode: a bug or a corrupted store. Do not retry blindly.
    #[error("stored record {key:?} does not decode: {message}")]
    Corrupt { key: String, message: String },
    /// A second journal entry for one (saga, operation): invariant 4 would break. A bug.
    #[error("journal already has an entry {key:?}; an effect would happen twice")]
    JournalConflict { key: String },
    /// The store failed under a group commit: every message of the group is retried.
    #[error("store failed under a group commit: {0}")]
    StoreFailed(String),
    /// A handler refused to go on with a bad state; the transaction was rolled back.
    #[error("handler aborted: {0}")]
    Handler(String),
    /// The store's flush thread could not start or is gone: restart the service.
    #[error("flush thread: {0}")]
    FlushThread(String),
    /// A participant's `prepare` panicked (a bug): the message is retried later.
    #[error("prepare panicked: {0}")]
    PreparePanicked(String),
    /// A task of the runtime (consumer, relay) panicked (a bug).
    #[error("task panicked: {0}")]
    TaskPanicked(String),
    /// The consumer did not finish its batch within the shutdown deadline.
    #[error("the consumer did not stop within {deadline_ms} ms")]
    StopTimedOut {
        /// The deadline, `FX_SHUTDOWN_DEADLINE_MS`.
        deadline_ms: u64,
    },
    /// The HTTP server could not start (address in use, bad address).
    #[error("http server on {addr}: {message}")]
    Http { addr: String, message: String },
    /// A test's fault hook asked the runtime to die here, as a crash would.
    #[error("injected crash at {0:?}")]
    Crashed(crate::FaultPoint),
    /// A task that runs beside the consumer (the admin server, a timer) ended; the runtime
    /// stopped gracefully after it.
    #[error("{task} stopped: {reason}")]
    TaskEnded {
        /// The task's name, as registered with `Runtime::with_task`.
        task: &'static str,
        /// Why: its error, or that it returned.
        reason: String,
    },
}

impl RuntimeError {
    /// A failed JetStream call; `action` names it (e.g. "get stream FX").
    pub fn js(action: &'static str, e: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::JetStream {
            action,
            message: e.to_string(),
        }
    }
}

/// Shorthand for runtime results.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
