//! The broker side: connecting with retry, provisioning the streams, and dead letters.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use tracing::{info, warn};

use crate::{NatsConfig, Result, RuntimeError, StreamSettings};

/// The stream of every domain event.
pub const STREAM: &str = "FX";
/// Subjects of the `FX` stream.
pub const STREAM_SUBJECTS: &str = "fx.>";
/// The dead-letter stream. Its subjects are outside `fx.>` so no service ever consumes them.
pub const DLQ_STREAM: &str = "FX_DLQ";
/// Subjects of `FX_DLQ`: `fxdlq.<service>.<reason>`.
pub const DLQ_SUBJECTS: &str = "fxdlq.>";
/// The broker's dedup window. Only a first line: the sled inbox and per-saga state are the
/// real dedup, since redeliveries can come much later than two minutes.
pub const DUPLICATE_WINDOW_MS: u64 = 2 * 60 * 1000;
/// How long dead letters are kept: long enough for a person to notice, fix and replay.
pub const DLQ_MAX_AGE_MS: u64 = 90 * 24 * 3600 * 1000;
/// Largest message either stream accepts, in bytes (events are far smaller; see
/// `events::MAX_PAYLOAD_BYTES`, which is checked before anything is parsed).
pub const MAX_MESSAGE_BYTES: i32 = 1024 * 1024;
/// How long a JetStream API call or PubAck may take before it counts as failed.
pub const JS_TIMEOUT_MS: u64 = 10_000;

/// Headers of a dead letter, beside the original message's own headers.
pub mod dlq_headers {
    /// Stable machine reason, e.g. `malformed_body`.
    pub const REASON: &str = "Fx-Dlq-Reason";
    /// What was wrong, for a person.
    pub const MESSAGE: &str = "Fx-Dlq-Message";
    /// The subject the message was published on.
    pub const SUBJECT: &str = "Fx-Dlq-Subject";
    /// Its sequence in the `FX` stream.
    pub const STREAM_SEQ: &str = "Fx-Dlq-Stream-Seq";
    /// The service that refused it.
    pub const SERVICE: &str = "Fx-Dlq-Service";
}

/// Connects to the broker, retrying with capped exponential backoff for up to
/// `connect_timeout_ms`. After the first connection the client reconnects on its own, forever.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<async_nats::Client> {
    let url_list = cfg.urls.join(",");
    let policy = backoff::ExponentialBackoff {
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_secs(5),
        max_elapsed_time: Some(Duration::from_millis(cfg.connect_timeout_ms)),
        ..backoff::ExponentialBackoff::default()
    };
    backoff::future::retry(policy, || async {
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            // Keep reconnecting for as long as the process lives; the outbox and the durable
            // consumer make an outage a delay, not a loss.
            .max_reconnects(None);
        if let Some((user, password)) = &cfg.user_password {
            // A private inbox per identity: the broker config lets each identity subscribe
            // only to `_INBOX_<user>.>`, so one stolen credential cannot read (or ack) another
            // service's pull deliveries and API replies.
            opts = opts
                .user_and_password(user.clone(), password.clone())
                .custom_inbox_prefix(format!("_INBOX_{user}"));
        }
        if let Some(path) = &cfg.creds_file {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| backoff::Error::permanent(e.to_string()))?;
        }
        async_nats::connect_with_options(cfg.urls.as_slice(), opts)
            .await
            .map_err(|e| {
                let permanent = matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::Authentication
                        | async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::ServerParse
                );
                warn!(url = %url_list, error = %e, "connecting to NATS");
                if permanent {
                    backoff::Error::permanent(e.to_string())
                } else {
                    backoff::Error::transient(e.to_string())
                }
            })
    })
    .await
    .map_err(|message| RuntimeError::Connect {
        url: url_list.clone(),
        message,
    })
}

/// Retries a JetStream set-up call (provisioning, consumer creation) with capped exponential
/// backoff for up to `timeout_ms`: during a cluster's leader election these calls time out for
/// a while, and a service should wait that out rather than exit.
pub async fn retry_setup<T, F, Fut>(what: &'static str, timeout_ms: u64, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let policy = backoff::ExponentialBackoff {
        initial_interval: Duration::from_millis(200),
        max_interval: Duration::from_secs(5),
        max_elapsed_time: Some(Duration::from_millis(timeout_ms)),
        ..backoff::ExponentialBackoff::default()
    };
    backoff::future::retry(policy, || {
        let attempt = call();
        async move {
            attempt.await.map_err(|e| match e {
                // Only broker-side failures are worth waiting out.
                RuntimeError::JetStream { .. } => {
                    warn!(what, error = %e, "retrying");
                    backoff::Error::transient(e)
                }
                other => backoff::Error::permanent(other),
            })
        }
    })
    .await
}

/// A JetStream context with our timeout.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(JS_TIMEOUT_MS))
        .build(client)
}

/// The `FX` stream's configuration, every option set on purpose. With more than one partition,
/// the stream appends the user's partition to every subject it stores (`events::partition`).
pub fn fx_stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        subject_transform: events::partition::stream_transform(s.partitions).map(
            |(source, destination)| stream::SubjectTransform {
                source,
                destination,
            },
        ),
        ..stream_config(
            STREAM,
            "Every domain event of the FX exchange saga.",
            STREAM_SUBJECTS,
            s.replicas,
            Duration::from_millis(s.max_age_ms),
        )
    }
}

/// Refuses to run an instance whose `FX_PARTITIONS` differs from the partitions the existing
/// `FX` stream stores: its consumer filter would match nothing (or another instance's users),
/// and the saga would stall without a word.
pub async fn check_partitions(js: &jetstream::Context, partitions: u32) -> Result<()> {
    let mut stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| RuntimeError::js("get stream FX", e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| RuntimeError::js("stream info", e))?;
    let dest = info
        .config
        .subject_transform
        .as_ref()
        .map(|t| t.destination.as_str());
    match events::partition::partitions_of_transform(dest) {
        Some(n) if n == partitions => Ok(()),
        Some(n) => Err(RuntimeError::Config {
            var: "FX_PARTITIONS",
            message: format!(
                "stream FX stores its events for {n} partition(s), but this instance has \
                 FX_PARTITIONS={partitions}; every service instance must use the stream's count \
                 (changing it is a migration: see README, \"Partitions\")"
            ),
        }),
        None => Err(RuntimeError::Config {
            var: "FX_PARTITIONS",
            message: format!(
                "stream FX has a subject transform this system did not write ({dest:?}); \
                 remove it or recreate the stream"
            ),
        }),
    }
}

/// The `FX_DLQ` stream's configuration.
pub fn dlq_stream_config(s: &StreamSettings) -> stream::Config {
    stream_config(
        DLQ_STREAM,
        "Messages refused by an FX service, kept whole with the reason.",
        DLQ_SUBJECTS,
        s.replicas,
        Duration::from_millis(DLQ_MAX_AGE_MS),
    )
}

fn stream_config(
    name: &str,
    description: &str,
    subjects: &str,
    replicas: usize,
    max_age: Duration,
) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        subjects: vec![subjects.to_owned()],
        storage: stream::StorageType::File,
        // Limits retention: events stay for the tracker and for replays, whatever consumers do.
        retention: stream::RetentionPolicy::Limits,
        max_age,
        max_bytes: -1,
        max_messages: -1,
        max_messages_per_subject: -1,
        max_message_size: MAX_MESSAGE_BYTES,
        max_consumers: -1,
        // Refuse new messages rather than silently drop old ones, should a limit ever be set.
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: false,
        num_replicas: replicas,
        duplicate_window: Duration::from_millis(DUPLICATE_WINDOW_MS),
        no_ack: false,
        allow_rollup: false,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        mirror_direct: false,
        compression: Some(stream::Compression::None),
        // Every remaining option (mirrors, sources, republish, placement, metadata,
        // consumer limits, first sequence, persist mode) is deliberately the server default.
        ..stream::Config::default()
    }
}

/// What provisioning found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Streams that did not exist and were created.
    pub created: Vec<String>,
    /// Differences between an existing stream and the wanted config, as `stream.field: have X, want Y`.
    /// Reported, not changed: an operator may have tuned them on purpose.
    pub drift: Vec<String>,
}

/// Creates `FX` and `FX_DLQ` if missing; reports drift of existing ones. Idempotent.
pub async fn provision(js: &jetstream::Context, s: &StreamSettings) -> Result<ProvisionReport> {
    let mut report = ProvisionReport::default();
    for want in [fx_stream_config(s), dlq_stream_config(s)] {
        match js.get_stream(&want.name).await {
            Ok(mut existing) => report.drift.extend(drift_of(&mut existing, &want).await?),
            Err(e) if is_stream_not_found(&e) => {
                match js.create_stream(want.clone()).await {
                    Ok(_) => report.created.push(want.name.clone()),
                    // Two services starting together may race to create it; that is fine as
                    // long as what exists now is what we want.
                    Err(create_err) => {
                        let mut existing = js
                            .get_stream(&want.name)
                            .await
                            .map_err(|_| RuntimeError::js("create stream", create_err))?;
                        report.drift.extend(drift_of(&mut existing, &want).await?);
                    }
                }
            }
            Err(e) => return Err(RuntimeError::js("get stream", e)),
        }
    }
    for d in &report.drift {
        warn!(drift = %d, "existing stream differs from the wanted config; left as it is");
    }
    if !report.created.is_empty() {
        info!(created = ?report.created, "provisioned streams");
    }
    Ok(report)
}

/// Whether getting a stream failed because it does not exist (rather than the broker failing).
pub fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref js_err)
            if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

async fn drift_of(existing: &mut stream::Stream, want: &stream::Config) -> Result<Vec<String>> {
    let have = existing
        .info()
        .await
        .map_err(|e| RuntimeError::js("stream info", e))?
        .config
        .clone();
    Ok(drift(&have, want))
}

fn drift(have: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    // The options whose difference changes what the stream keeps or how long.
    macro_rules! compare {
        ($($field:ident),*) => {$(
            let (h, w) = (format!("{:?}", have.$field), format!("{:?}", want.$field));
            if h != w {
                out.push(format!("{}.{}: have {h}, want {w}", want.name, stringify!($field)));
            }
        )*};
    }
    compare!(
        subjects,
        subject_transform,
        storage,
        retention,
        max_age,
        num_replicas,
        duplicate_window,
        discard,
        max_message_size
    );
    out
}

/// A message refused by a service, to be kept whole in `FX_DLQ`.
#[derive(Clone, Debug)]
pub struct DeadLetter<'a> {
    /// The service refusing it.
    pub service: &'a str,
    /// Stable machine reason.
    pub reason: &'a str,
    /// What was wrong, for a person.
    pub message: &'a str,
    /// The original subject.
    pub subject: &'a str,
    /// The original headers, if any.
    pub headers: Option<&'a HeaderMap>,
    /// The original payload, byte for byte.
    pub payload: Bytes,
    /// The original `FX` stream sequence.
    pub stream_seq: u64,
}

/// Publishes a dead letter and waits for its PubAck. Its `Nats-Msg-Id` is derived from the
/// service and stream sequence, so a redelivered poison message is stored once.
pub async fn publish_dead_letter(js: &jetstream::Context, d: &DeadLetter<'_>) -> Result<u64> {
    let mut headers = d.headers.cloned().unwrap_or_default();
    // Header values cannot hold newlines; keep the message readable on one line.
    let one_line: String = d
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    headers.insert(dlq_headers::REASON, d.reason);
    headers.insert(dlq_headers::MESSAGE, one_line.as_str());
    headers.insert(dlq_headers::SUBJECT, d.subject);
    headers.insert(dlq_headers::STREAM_SEQ, d.stream_seq.to_string().as_str());
    headers.insert(dlq_headers::SERVICE, d.service);
    headers.insert(
        "Nats-Msg-Id",
        format!("dlq:{}:{}", d.service, d.stream_seq).as_str(),
    );
    let subject = format!("fxdlq.{}.{}", d.service, d.reason);
    let ack = js
        .send_publish(
            subject,
            jetstream::message::PublishMessage::build()
                .payload(d.payload.clone())
                .headers(headers),
        )
        .await
        .map_err(|e| RuntimeError::js("publish dead letter", e))?
        .await
        .map_err(|e| RuntimeError::js("dead letter PubAck", e))?;
    Ok(ack.sequence)
}
