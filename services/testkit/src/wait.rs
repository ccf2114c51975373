//! Waiting on conditions with a deadline, and reading streams back, for async tests.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, message::StreamMessage};

/// How often a condition is re-checked while waiting; a poll period, not a fixed sleep.
pub const POLL_MS: u64 = 20;

/// Re-checks `check` until it returns `Some`, or panics after `deadline_ms` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline_ms: u64, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_wait_for(deadline_ms, check).await {
        Some(v) => v,
        None => panic!("timed out after {deadline_ms} ms waiting for {what}"),
    }
}

/// Re-checks `check` until it returns `Some`; `None` after `deadline_ms` (for callers that say
/// more than [`wait_for`]'s panic, e.g. a process's log).
pub async fn try_wait_for<T, F, Fut>(deadline_ms: u64, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    tokio::time::timeout(Duration::from_millis(deadline_ms), async {
        let mut tick = tokio::time::interval(Duration::from_millis(POLL_MS));
        loop {
            tick.tick().await;
            if let Some(v) = check().await {
                return v;
            }
        }
    })
    .await
    .ok()
}

/// Every message currently in `stream`, oldest first, read by sequence.
pub async fn stream_messages(js: &jetstream::Context, stream: &str) -> Vec<StreamMessage> {
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let info = s.info().await.expect("stream info").clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if seq == 0 {
            continue;
        }
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// Messages of `stream` whose subject starts with `prefix`.
pub async fn messages_on(
    js: &jetstream::Context,
    stream: &str,
    prefix: &str,
) -> Vec<StreamMessage> {
    stream_messages(js, stream)
        .await
        .into_iter()
        .filter(|m| m.subject.as_str().starts_with(prefix))
        .collect()
}
