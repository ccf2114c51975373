//! fx-trade's settings, read from the environment (`FX_*`) with the defaults documented in README.md.

use runtime::{env_parse, RuntimeError};

use crate::breaker::BreakerConfig;
use crate::venue::VenueConfig;

/// Everything fx-trade's decisions and its venue adapter are tuned by.
#[derive(Clone, Debug, PartialEq)]
pub struct TradeConfig {
    /// `FX_HOLD_SAFETY_MARGIN_MS` (default 2000): refuse to fill a hold that expires within
    /// this margin, so the fill reaches fx-krw (which pins the hold) before the hold expires.
    pub hold_safety_margin_ms: u64,
    /// `FX_VENUE_RETRY_MS` (default 500): the shortest redelivery delay when the venue is
    /// unavailable and the hold still has time.
    pub venue_retry_ms: u64,
    /// `FX_BREAKER_FAILURES`, `FX_BREAKER_OPEN_MS`: the circuit breaker around the venue.
    pub breaker: BreakerConfig,
    /// `FX_VENUE_*`: the embedded simulated venue (used by the binary when `venue_url` is
    /// unset; tests inject their own venue).
    pub venue: VenueConfig,
    /// `FX_VENUE_URL` (default unset): the base URL of an HTTP venue such as fx-venue
    /// (`http://127.0.0.1:9104`). Unset: fx-trade runs the simulated venue in process.
    pub venue_url: Option<String>,
    /// `FX_VENUE_TIMEOUT_MS` (default 1000): the deadline of every venue call. A call past it
    /// counts as a breaker failure and its outcome as unknown (the order may have executed).
    pub venue_timeout_ms: u64,
    /// `FX_VENUE_CONNECT_TIMEOUT_MS` (default 250): the deadline to open a connection to an
    /// HTTP venue, within `venue_timeout_ms`.
    pub venue_connect_timeout_ms: u64,
    /// `FX_VENUE_MAX_INFLIGHT` (default 256): most venue calls in flight at once. With a venue
    /// that answers in L ms, fx-trade settles at most this many orders per L ms.
    pub venue_max_inflight: usize,
}

impl TradeConfig {
    /// Default `FX_HOLD_SAFETY_MARGIN_MS`.
    pub const DEFAULT_HOLD_SAFETY_MARGIN_MS: u64 = 2_000;
    /// Default `FX_VENUE_RETRY_MS`.
    pub const DEFAULT_VENUE_RETRY_MS: u64 = 500;
    /// Default `FX_VENUE_TIMEOUT_MS`: ten times a slow venue's 100 ms round trip.
    pub const DEFAULT_VENUE_TIMEOUT_MS: u64 = 1_000;
    /// Default `FX_VENUE_CONNECT_TIMEOUT_MS`.
    pub const DEFAULT_VENUE_CONNECT_TIMEOUT_MS: u64 = 250;
    /// Default `FX_VENUE_MAX_INFLIGHT`: at a 25 ms venue, room for 10,000 orders a second.
    pub const DEFAULT_VENUE_MAX_INFLIGHT: usize = 256;

    /// A config from plain values (tests, the simulation); the venue gets its defaults.
    pub fn new(hold_safety_margin_ms: u64, venue_retry_ms: u64, breaker: BreakerConfig) -> Self {
        TradeConfig {
            hold_safety_margin_ms,
            venue_retry_ms,
            breaker,
            venue: VenueConfig::default(),
            venue_url: None,
            venue_timeout_ms: Self::DEFAULT_VENUE_TIMEOUT_MS,
            venue_connect_timeout_ms: Self::DEFAULT_VENUE_CONNECT_TIMEOUT_MS,
            venue_max_inflight: Self::DEFAULT_VENUE_MAX_INFLIGHT,
        }
    }

    /// Reads every `FX_*` setting of fx-trade; a malformed or out-of-range value is an error
    /// naming the variable.
    pub fn from_env() -> runtime::Result<TradeConfig> {
        let config = TradeConfig {
            hold_safety_margin_ms: env_parse(
                "FX_HOLD_SAFETY_MARGIN_MS",
                Self::DEFAULT_HOLD_SAFETY_MARGIN_MS,
            )?,
            venue_retry_ms: env_parse("FX_VENUE_RETRY_MS", Self::DEFAULT_VENUE_RETRY_MS)?,
            breaker: BreakerConfig {
                failures: env_parse("FX_BREAKER_FAILURES", BreakerConfig::DEFAULT_FAILURES)?,
                open_ms: env_parse("FX_BREAKER_OPEN_MS", BreakerConfig::DEFAULT_OPEN_MS)?,
            },
            venue: VenueConfig::from_env()?,
            venue_url: std::env::var("FX_VENUE_URL")
                .ok()
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty()),
            venue_timeout_ms: env_parse("FX_VENUE_TIMEOUT_MS", Self::DEFAULT_VENUE_TIMEOUT_MS)?,
            venue_connect_timeout_ms: env_parse(
                "FX_VENUE_CONNECT_TIMEOUT_MS",
                Self::DEFAULT_VENUE_CONNECT_TIMEOUT_MS,
            )?,
            venue_max_inflight: env_parse(
                "FX_VENUE_MAX_INFLIGHT",
                Self::DEFAULT_VENUE_MAX_INFLIGHT,
            )?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses values that would make the service misbehave rather than fail loudly.
    pub fn validate(&self) -> runtime::Result<()> {
        if self.breaker.failures == 0 {
            return Err(RuntimeError::Config {
                var: "FX_BREAKER_FAILURES",
                message: "must be at least 1 (the breaker opens after this many failures)".into(),
            });
        }
        if self.venue_timeout_ms == 0 {
            return Err(RuntimeError::Config {
                var: "FX_VENUE_TIMEOUT_MS",
                message: "must be at least 1 ms: every venue call needs a deadline".into(),
            });
        }
        if self.venue_max_inflight == 0 {
            return Err(RuntimeError::Config {
                var: "FX_VENUE_MAX_INFLIGHT",
                message: "must be at least 1 (venue calls in flight at once)".into(),
            });
        }
        if let Some(url) = &self.venue_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(RuntimeError::Config {
                    var: "FX_VENUE_URL",
                    message: format!("{url:?} is not an http:// or https:// URL"),
                });
            }
        }
        self.venue.validate()
    }
}

impl Default for TradeConfig {
    fn default() -> Self {
        TradeConfig::new(
            Self::DEFAULT_HOLD_SAFETY_MARGIN_MS,
            Self::DEFAULT_VENUE_RETRY_MS,
            BreakerConfig::default(),
        )
    }
}
