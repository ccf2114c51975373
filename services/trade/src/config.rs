//! fx-trade's settings, read from the environment (`FX_*`) with the defaults of DESIGN.md.

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
    /// `FX_VENUE_*`: the simulated venue (used by the binary; tests inject their own venue).
    pub venue: VenueConfig,
}

impl TradeConfig {
    /// Default `FX_HOLD_SAFETY_MARGIN_MS`.
    pub const DEFAULT_HOLD_SAFETY_MARGIN_MS: u64 = 2_000;
    /// Default `FX_VENUE_RETRY_MS`.
    pub const DEFAULT_VENUE_RETRY_MS: u64 = 500;

    /// A config from plain values (tests, the simulation); the venue gets its defaults.
    pub fn new(hold_safety_margin_ms: u64, venue_retry_ms: u64, breaker: BreakerConfig) -> Self {
        TradeConfig {
            hold_safety_margin_ms,
            venue_retry_ms,
            breaker,
            venue: VenueConfig::default(),
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
