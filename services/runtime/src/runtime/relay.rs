//! The relay: publishes the outbox entries whose write is flushed, in order, pipelined, with
//! the deterministic event id as `Nats-Msg-Id`, and removes a record once every entry of it
//! has its PubAck. Which entries and which records is the core's [`core::Relay`]; this is its
//! IO: the publishing, the backoff while the broker is unreachable, and the outbox gauges.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use tokio::sync::watch;
use tracing::warn;

use super::Clock;
use crate::core;
use crate::telemetry::names;
use crate::{FaultAction, FaultHook, FaultPoint, OutboxEntry, Result, RuntimeError, Store};

/// Most often the outbox depth and age gauges are refreshed while the relay is busy.
const OUTBOX_GAUGE_INTERVAL_MS: u64 = 1_000;
/// Relay retry policy: first and largest delay after a failed publish.
const RELAY_RETRY_MIN_MS: u64 = 50;
const RELAY_RETRY_MAX_MS: u64 = 5_000;

/// Publishes flushed outbox entries in order, pipelined, removing each only after its PubAck.
pub(super) async fn relay_loop(
    service: &'static str,
    store: Arc<Store>,
    js: jetstream::Context,
    window: usize,
    clock: Clock,
    faults: FaultHook,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let relay = core::Relay::default();
    let mut watermark = store.watermark();
    let mut retry_ms = 0u64;
    let mut gauges = OutboxGauges { service, due_ms: 0 };
    loop {
        let flushed = *watermark.borrow_and_update();
        let entries = relay.batch(&*store, flushed, window)?;
        gauges.refresh(&store, clock(), entries.is_empty())?;
        if entries.is_empty() {
            if wait_for_flush(&mut watermark, &mut stop).await {
                return Ok(());
            }
            continue;
        }
        let (acked, failure) = publish_window(service, &js, &entries).await;
        remove_published(service, &store, &faults, &entries, acked)?;
        match failure {
            None => retry_ms = 0,
            Some(e) => {
                retry_ms = back_off(service, retry_ms, &e, &mut stop).await;
                if *stop.borrow() && !is_connected(&js) {
                    warn!(
                        service,
                        "stopping with the broker unreachable; the outbox resumes at next start"
                    );
                    return Ok(());
                }
            }
        }
    }
}

/// The outbox depth and age gauges. Counting the outbox walks the whole tree: it is done
/// whenever the relay is idle, and at most once per [`OUTBOX_GAUGE_INTERVAL_MS`] while it is
/// busy, not on every pass of the hot loop.
struct OutboxGauges {
    service: &'static str,
    due_ms: u64,
}

impl OutboxGauges {
    fn refresh(&mut self, store: &Store, now_ms: u64, idle: bool) -> Result<()> {
        if idle || now_ms >= self.due_ms {
            self.due_ms = now_ms + OUTBOX_GAUGE_INTERVAL_MS;
            let (depth, oldest_ms) = store.outbox_stats(now_ms)?;
            let service = self.service;
            metrics::gauge!(names::OUTBOX_DEPTH, "service" => service).set(depth as f64);
            metrics::gauge!(names::OUTBOX_OLDEST_AGE, "service" => service)
                .set(oldest_ms as f64 / 1000.0);
        }
        Ok(())
    }
}

/// Nothing flushed is left to publish. True when the relay is done: the stop has come (the
/// outbox is drained as far as it is flushed), or the store is gone. Otherwise waits for the
/// next flush or the stop, and returns false.
async fn wait_for_flush(
    watermark: &mut watch::Receiver<u64>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        r = watermark.changed() => r.is_err(),
        _ = stop.changed() => false,
    }
}

/// Removes the records of the window whose every entry has its PubAck (the first `acked`
/// entries were acknowledged), and counts their entries as published.
fn remove_published(
    service: &'static str,
    store: &Store,
    faults: &FaultHook,
    entries: &[(u64, OutboxEntry)],
    acked: usize,
) -> Result<()> {
    let done = core::Relay::settled(entries, acked);
    if done.is_empty() {
        return Ok(());
    }
    if faults(FaultPoint::AfterPublishBeforeRemove) == FaultAction::Crash {
        return Err(RuntimeError::Crashed(FaultPoint::AfterPublishBeforeRemove));
    }
    let published = entries.iter().filter(|(k, _)| done.contains(k)).count();
    metrics::counter!(names::PUBLISHED, "service" => service).increment(published as u64);
    store.outbox_remove(&done)
}

/// After a failed publish: counts the retry, doubles the delay within the retry policy's
/// bounds, and waits it out. Returns the delay it waited.
async fn back_off(
    service: &'static str,
    retry_ms: u64,
    error: &str,
    stop: &mut watch::Receiver<bool>,
) -> u64 {
    metrics::counter!(names::PUBLISH_RETRIES, "service" => service).increment(1);
    let retry_ms = (retry_ms * 2).clamp(RELAY_RETRY_MIN_MS, RELAY_RETRY_MAX_MS);
    warn!(service, error = %error, retry_ms, "publish failed; retrying");
    // A deliberate backoff while the broker is unreachable; stop cuts it short.
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(retry_ms)) => {}
        _ = stop.changed() => {}
    }
    retry_ms
}

fn is_connected(js: &jetstream::Context) -> bool {
    js.client().connection_state() == async_nats::connection::State::Connected
}

/// Sends a window of entries without waiting, then awaits the PubAcks in order. Returns how
/// many entries were acknowledged before the first failure (later ones are retried, and
/// deduplicated by their `Nats-Msg-Id` if they did land).
async fn publish_window(
    service: &str,
    js: &jetstream::Context,
    entries: &[(u64, OutboxEntry)],
) -> (usize, Option<String>) {
    let mut pending = Vec::with_capacity(entries.len());
    let mut failure = None;
    for (_, e) in entries {
        match js
            .send_publish(e.subject.clone(), publish_message(service, e))
            .await
        {
            Ok(ack) => pending.push(ack),
            Err(err) => {
                failure = Some(err.to_string());
                break;
            }
        }
    }
    // Await every PubAck together: each one's timeout starts when it is awaited, so awaiting
    // them one by one would stall the relay for one timeout per lost message (while a cluster
    // elects a new stream leader, every message of the window can be lost).
    let acks = futures::future::join_all(pending.into_iter().map(IntoFuture::into_future)).await;
    let mut acked = 0;
    for ack in acks {
        if failure.is_some() {
            // Count nothing after a failure; those entries are published again.
            break;
        }
        match ack {
            Ok(_) => acked += 1,
            Err(err) => failure = Some(err.to_string()),
        }
    }
    (acked, failure)
}

/// The message for an outbox entry `service` emitted, with the contract's headers.
pub fn publish_message(service: &str, e: &OutboxEntry) -> PublishMessage {
    PublishMessage::build()
        .payload(e.payload.clone().into())
        .message_id(&e.event_id)
        .header(events::headers::SAGA_ID, e.saga_id.to_string().as_str())
        .header(events::headers::CAUSATION_ID, e.causation_id.as_str())
        .header(
            events::headers::TRACEPARENT,
            crate::trace::traceparent(service, e).as_str(),
        )
}
