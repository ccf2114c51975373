//! Settings shared by every participant, read from the environment with sane defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use events::Partitioning;

use crate::{Result, RuntimeError};

/// How to reach the broker.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// `NATS_URL`: one server or a comma-separated list (a cluster's seed servers).
    pub urls: Vec<String>,
    /// `NATS_USER` and `NATS_PASSWORD`, when the broker requires them.
    pub user_password: Option<(String, String)>,
    /// `NATS_CREDS`: a credentials file (JWT + nkey seed), instead of user/password.
    pub creds_file: Option<PathBuf>,
    /// How long to keep retrying the first connection before giving up (`FX_CONNECT_TIMEOUT_MS`).
    pub connect_timeout_ms: u64,
}

impl NatsConfig {
    /// Default broker address when `NATS_URL` is unset.
    pub const DEFAULT_URL: &'static str = "nats://127.0.0.1:4222";

    /// Reads `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_CREDS`, `FX_CONNECT_TIMEOUT_MS`.
    pub fn from_env() -> Result<NatsConfig> {
        let urls = env_or("NATS_URL", Self::DEFAULT_URL);
        let user = std::env::var("NATS_USER").ok().filter(|s| !s.is_empty());
        let password = std::env::var("NATS_PASSWORD")
            .ok()
            .filter(|s| !s.is_empty());
        let user_password = match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                return Err(RuntimeError::Config {
                    var: "NATS_USER",
                    message: "set both NATS_USER and NATS_PASSWORD, or neither".into(),
                })
            }
        };
        Ok(NatsConfig {
            urls: split_urls(&urls),
            user_password,
            creds_file: std::env::var_os("NATS_CREDS")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            connect_timeout_ms: env_parse("FX_CONNECT_TIMEOUT_MS", 60_000)?,
        })
    }

    /// A config for one URL with no credentials (tests, local runs).
    pub fn with_url(url: &str) -> NatsConfig {
        NatsConfig {
            urls: split_urls(url),
            user_password: None,
            creds_file: None,
            connect_timeout_ms: 10_000,
        }
    }
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Settings of the `FX` and `FX_DLQ` streams.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// `FX_STREAM_REPLICAS`: 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// `FX_STREAM_MAX_AGE_MS`: how long events stay; far beyond any outage (default 30 days),
    /// since an event dropped by age before it was consumed leaves a saga stuck.
    pub max_age_ms: u64,
    /// `FX_PARTITIONS`: with more than one, `FX` stores subjects with the user's partition
    /// appended (see `events::partition`).
    pub partitions: u32,
}

impl StreamSettings {
    /// 30 days.
    pub const DEFAULT_MAX_AGE_MS: u64 = 30 * 24 * 3600 * 1000;

    /// Reads `FX_STREAM_REPLICAS`, `FX_STREAM_MAX_AGE_MS` and `FX_PARTITIONS`.
    pub fn from_env() -> Result<StreamSettings> {
        Ok(StreamSettings {
            replicas: env_parse("FX_STREAM_REPLICAS", 1)?,
            max_age_ms: env_parse("FX_STREAM_MAX_AGE_MS", Self::DEFAULT_MAX_AGE_MS)?,
            // Only the count: the tracker and tools provision the stream without being a partition.
            partitions: partitions_from_env()?,
        })
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            replicas: 1,
            max_age_ms: Self::DEFAULT_MAX_AGE_MS,
            partitions: 1,
        }
    }
}

/// Settings of one participant's runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Broker connection.
    pub nats: NatsConfig,
    /// Stream provisioning.
    pub streams: StreamSettings,
    /// `FX_DATA_DIR`: the service's sled store.
    pub data_dir: PathBuf,
    /// `FX_HTTP_ADDR`: `/healthz`, `/readyz`, `/metrics`; `None` disables the server.
    pub http_addr: Option<SocketAddr>,
    /// `FX_BATCH_MAX`: most messages handled per group commit (one flush per batch).
    pub batch_max: usize,
    /// `FX_ACK_WAIT_MS`: how long the broker waits for an ack before redelivering.
    pub ack_wait_ms: u64,
    /// `FX_RELAY_WINDOW`: most outbox entries published before awaiting their PubAcks (whole
    /// outbox records, one per group commit, so a window holds at least one record).
    pub relay_window: usize,
    /// `FX_INBOX_RETENTION_MS`: how long a consumed event id is remembered for dedup. Longer
    /// than any redelivery; per-saga state is the lasting dedup after that.
    pub inbox_retention_ms: u64,
    /// `FX_SHUTDOWN_DEADLINE_MS`: how long a graceful stop may take before it gives up.
    pub shutdown_deadline_ms: u64,
    /// `FX_PARTITIONS` and `FX_PARTITION`: which users this instance owns.
    pub partitioning: Partitioning,
    /// `FX_STORE_CACHE_MIB`: sled's cache. Most of a service's resident memory: sled settles
    /// near twice this (its accounting counts on-disk sizes).
    pub store_cache_mib: u64,
    /// `FX_CHECKPOINT_ENTRIES`: writes the store holds in memory before a background
    /// checkpoint puts them into its trees. More means fewer tree writes, more memory and a
    /// longer log to replay at restart.
    pub checkpoint_entries: usize,
}

impl RuntimeConfig {
    /// Reads every runtime setting from the environment. `default_data_dir` is used when
    /// `FX_DATA_DIR` is unset; `default_http` when `FX_HTTP_ADDR` is unset.
    pub fn from_env(default_data_dir: &str, default_http: Option<&str>) -> Result<RuntimeConfig> {
        let http = match std::env::var("FX_HTTP_ADDR") {
            Ok(s) if s.is_empty() || s == "off" => None,
            Ok(s) => Some(parse_addr("FX_HTTP_ADDR", &s)?),
            Err(_) => default_http
                .map(|s| parse_addr("FX_HTTP_ADDR", s))
                .transpose()?,
        };
        Ok(RuntimeConfig {
            nats: NatsConfig::from_env()?,
            streams: StreamSettings::from_env()?,
            data_dir: PathBuf::from(env_or("FX_DATA_DIR", default_data_dir)),
            http_addr: http,
            batch_max: env_parse("FX_BATCH_MAX", 256)?,
            ack_wait_ms: env_parse("FX_ACK_WAIT_MS", 30_000)?,
            relay_window: env_parse("FX_RELAY_WINDOW", 512)?,
            inbox_retention_ms: env_parse("FX_INBOX_RETENTION_MS", 7 * 24 * 3600 * 1000)?,
            shutdown_deadline_ms: env_parse("FX_SHUTDOWN_DEADLINE_MS", 10_000)?,
            partitioning: partitioning_from_env()?,
            store_cache_mib: env_parse("FX_STORE_CACHE_MIB", crate::Store::DEFAULT_CACHE_MIB)?,
            checkpoint_entries: env_parse("FX_CHECKPOINT_ENTRIES", crate::CHECKPOINT_ENTRIES)?,
        })
    }

    /// A config for tests: the given broker and data dir, no HTTP, short ack wait so that a
    /// simulated crash is followed by a quick redelivery.
    pub fn for_test(nats_url: &str, data_dir: impl Into<PathBuf>) -> RuntimeConfig {
        RuntimeConfig {
            nats: NatsConfig::with_url(nats_url),
            streams: StreamSettings::default(),
            data_dir: data_dir.into(),
            http_addr: None,
            batch_max: 256,
            ack_wait_ms: 1_000,
            relay_window: 512,
            inbox_retention_ms: 7 * 24 * 3600 * 1000,
            shutdown_deadline_ms: 5_000,
            partitioning: Partitioning::SINGLE,
            store_cache_mib: crate::Store::DEFAULT_CACHE_MIB,
            checkpoint_entries: crate::CHECKPOINT_ENTRIES,
        }
    }

    /// Makes this instance `partitioning`'s, and the streams it provisions partitioned to match.
    pub fn with_partitioning(mut self, partitioning: Partitioning) -> Self {
        self.partitioning = partitioning;
        self.streams.partitions = partitioning.count();
        self
    }

    /// `ack_wait_ms` as a duration.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }
}

/// `FX_PARTITIONS` (default 1), checked against its range.
pub fn partitions_from_env() -> Result<u32> {
    let count: u32 = env_parse("FX_PARTITIONS", 1)?;
    Partitioning::new(count, 0)
        .map(Partitioning::count)
        .map_err(|e| RuntimeError::Config {
            var: "FX_PARTITIONS",
            message: e.to_string(),
        })
}

/// `FX_PARTITIONS` (default 1) and `FX_PARTITION` (required when `FX_PARTITIONS` > 1).
pub fn partitioning_from_env() -> Result<Partitioning> {
    let count = partitions_from_env()?;
    let index: u32 = match env_parse::<u32>("FX_PARTITION", u32::MAX)? {
        u32::MAX if count > 1 => {
            return Err(RuntimeError::Config {
                var: "FX_PARTITION",
                message: format!(
                    "FX_PARTITIONS={count}: set FX_PARTITION to this instance's partition, 0 to {}",
                    count - 1
                ),
            })
        }
        u32::MAX => 0,
        i => i,
    };
    Partitioning::new(count, index).map_err(|e| RuntimeError::Config {
        var: "FX_PARTITIONS",
        message: e.to_string(),
    })
}

/// The variable's value, or `default` when unset or empty.
pub fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Parses the variable, or returns `default` when unset; a malformed value is an error naming it.
pub fn env_parse<T: FromStr>(var: &'static str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(var) {
        Ok(s) if !s.trim().is_empty() => {
            s.trim().parse().map_err(|e: T::Err| RuntimeError::Config {
                var,
                message: format!("{s:?} is not valid: {e}"),
            })
        }
        _ => Ok(default),
    }
}

fn parse_addr(var: &'static str, s: &str) -> Result<SocketAddr> {
    s.parse().map_err(|e| RuntimeError::Config {
        var,
        message: format!("{s:?} is not a socket address like 127.0.0.1:8080: {e}"),
    })
}
