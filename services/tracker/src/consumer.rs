//! Reading `fx.>` of stream `FX` in order, from the message after the last one stored.
//!
//! An ordered consumer: ephemeral, no acks, and the client recreates it from the last
//! delivered sequence whenever it sees a gap or a missed heartbeat. The tracker never acks,
//! never publishes and holds no durable consumer on the broker; its position is the last
//! sequence in its own sled store, so a restart resumes and an empty data dir rebuilds.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::metrics as m;
use crate::model::{ReadModel, StreamMessage};
use crate::TrackerError;

/// How long to wait before recreating a consumer whose message stream failed or ended.
const RECREATE_DELAY_MS: u64 = 500;

/// Messages buffered between the reader and the projector. Big enough that the reader keeps
/// pulling from the broker while a batch is projected and written; bounded so a slow disk
/// applies backpressure instead of growing memory (about 300 bytes a message: ~5 MiB).
const CHANNEL_MESSAGES: usize = 16_384;

/// Reads the stream into the model until `stop` turns true.
///
/// Two halves run concurrently: a reader task polls the ordered consumer (which only asks the
/// broker for more while it is polled) into a bounded channel, and this loop takes whatever
/// is buffered, up to `batch_max`, and projects it on a blocking thread (decode, apply, one
/// sled batch), so receiving and projecting overlap.
pub async fn consume(
    model: Arc<ReadModel>,
    stream: stream::Stream,
    batch_max: usize,
    mut stop: watch::Receiver<bool>,
) -> Result<(), TrackerError> {
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let start = model.last_seq() + 1;
        let messages = match open(&stream, start).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, start, "cannot create the ordered consumer; retrying");
                if pause(&mut stop).await {
                    return Ok(());
                }
                continue;
            }
        };
        info!(start, "reading FX from sequence");
        let (tx, mut rx) = mpsc::channel(CHANNEL_MESSAGES);
        let reader = AbortOnDrop(tokio::spawn(read(messages, tx)));
        let mut batch = Vec::with_capacity(batch_max.min(CHANNEL_MESSAGES));
        loop {
            let n = tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                n = rx.recv_many(&mut batch, batch_max) => n,
            };
            if n == 0 {
                warn!("ordered consumer ended; recreating it");
                break;
            }
            let model2 = model.clone();
            let taken = std::mem::replace(
                &mut batch,
                Vec::with_capacity(batch_max.min(CHANNEL_MESSAGES)),
            );
            let report = tokio::task::spawn_blocking(move || model2.ingest(&taken))
                .await
                .map_err(|e| TrackerError::Task(e.to_string()))??;
            debug!(
                messages = report.messages,
                last_seq = report.last_seq,
                "batch"
            );
            m::record_batch(&report);
        }
        drop(reader);
        if pause(&mut stop).await {
            return Ok(());
        }
    }
}

/// Aborts the reader when the projector stops or recreates the consumer.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls the ordered consumer into the channel until either side ends.
async fn read(mut messages: pull::Ordered, tx: mpsc::Sender<StreamMessage>) {
    while let Some(item) = messages.next().await {
        match item {
            Ok(msg) => {
                if let Some(sm) = to_stream_message(&msg) {
                    if tx.send(sm).await.is_err() {
                        return;
                    }
                }
            }
            // Missed heartbeats and deleted consumers are handled inside the ordered consumer
            // (it recreates itself from the last sequence it delivered); the rest is logged.
            Err(e) => warn!(error = %e, "ordered consumer error"),
        }
    }
}

/// Waits before a retry; true when asked to stop meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(Duration::from_millis(RECREATE_DELAY_MS)) => *stop.borrow(),
    }
}

async fn open(stream: &stream::Stream, start: u64) -> Result<pull::Ordered, TrackerError> {
    let deliver_policy = if start <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: start,
        }
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            // Named, so the create request names it in its subject (`$JS.API.CONSUMER.CREATE.
            // FX.<name>.fx.>`), which the broker lets the tracker use for its own consumers
            // only; the unnamed create is refused to it (its body could name a durable one).
            name: Some(consumer_name()),
            description: Some("fx-tracker: projects every saga (read-only)".into()),
            filter_subject: runtime::broker::STREAM_SUBJECTS.into(),
            filter_subjects: Vec::new(),
            replay_policy: ReplayPolicy::Instant,
            rate_limit: 0,
            sample_frequency: 0,
            headers_only: false,
            deliver_policy,
            max_waiting: 0,
            metadata: Default::default(),
            max_batch: 0,
            max_bytes: 0,
            max_expires: Duration::ZERO,
        })
        .await
        .map_err(|e| TrackerError::JetStream {
            action: "create ordered consumer",
            message: e.to_string(),
        })?;
    consumer
        .messages()
        .await
        .map_err(|e| TrackerError::JetStream {
            action: "ordered consumer messages",
            message: e.to_string(),
        })
}

/// A fresh name for the ordered consumer: `fx-tracker-<12 hex digits>` (the client appends
/// `_<n>` each time it recreates it).
fn consumer_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("fx-tracker-{}", &id[..12])
}

fn to_stream_message(msg: &jetstream::Message) -> Option<StreamMessage> {
    let info = match msg.info() {
        Ok(i) => i,
        Err(e) => {
            // Not a JetStream delivery (no ack subject): nothing to place in the stream.
            warn!(error = %e, subject = %msg.subject, "message without stream info; skipped");
            return None;
        }
    };
    let at_ms = (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    Some(StreamMessage {
        seq: info.stream_sequence,
        at_ms,
        subject: msg.subject.to_string(),
        payload: msg.payload.clone(),
    })
}

/// Asks the stream for its last sequence every `every`, for the lag gauge, and `FX_DLQ` for its
/// depth, and refreshes the gauges (STUCK depends on the clock, so it changes without events).
pub async fn watch_stream(
    model: Arc<ReadModel>,
    mut stream: stream::Stream,
    mut dlq: stream::Stream,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        match stream.info().await {
            Ok(info) => model.set_stream_last_seq(info.state.last_sequence),
            Err(e) => debug!(error = %e, "stream info"),
        }
        match dlq.info().await {
            Ok(info) => m::set_dlq_messages(info.state.messages),
            Err(e) => debug!(error = %e, "FX_DLQ stream info"),
        }
        m::set_gauges(&model);
    }
}
