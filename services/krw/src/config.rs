//! fx-krw's own settings: hold timing and request limits.

use events::Krw;
use runtime::{env_parse, RuntimeError};

/// Hold timing and request limits, from `FX_*` variables (see [`KrwConfig::from_env`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KrwConfig {
    /// `FX_HOLD_TTL_MS`: how long an unpinned hold lives; `krw.held` carries `now + ttl`.
    pub hold_ttl_ms: u64,
    /// `FX_HOLD_GRACE_MS`: extra time after expiry before the hold is actually released, so a
    /// fill decided just before `hold_expires_at_ms` still finds the hold.
    pub hold_grace_ms: u64,
    /// `FX_MIN_KRW`: smallest amount per request.
    pub min_krw: Krw,
    /// `FX_MAX_KRW_PER_TX`: largest amount per request.
    pub max_krw_per_tx: Krw,
    /// `FX_MAX_KRW_PER_USER_DAY`: most KRW one user may hold or exchange per UTC day
    /// (released holds give their amount back).
    pub max_krw_per_user_day: Krw,
}

impl KrwConfig {
    /// Default `FX_HOLD_TTL_MS`.
    pub const DEFAULT_HOLD_TTL_MS: u64 = 30_000;
    /// Default `FX_HOLD_GRACE_MS`.
    pub const DEFAULT_HOLD_GRACE_MS: u64 = 5_000;
    /// Default `FX_MIN_KRW`.
    pub const DEFAULT_MIN_KRW: u64 = 1_000;
    /// Default `FX_MAX_KRW_PER_TX`.
    pub const DEFAULT_MAX_KRW_PER_TX: u64 = 50_000_000;
    /// Default `FX_MAX_KRW_PER_USER_DAY`.
    pub const DEFAULT_MAX_KRW_PER_USER_DAY: u64 = 100_000_000;

    /// A config from plain values (tests, the simulation). Not validated: see [`Self::validate`].
    pub fn new(
        hold_ttl_ms: u64,
        hold_grace_ms: u64,
        min_krw: Krw,
        max_krw_per_tx: Krw,
        max_krw_per_user_day: Krw,
    ) -> KrwConfig {
        KrwConfig {
            hold_ttl_ms,
            hold_grace_ms,
            min_krw,
            max_krw_per_tx,
            max_krw_per_user_day,
        }
    }

    /// Reads `FX_HOLD_TTL_MS`, `FX_HOLD_GRACE_MS`, `FX_MIN_KRW`, `FX_MAX_KRW_PER_TX` and
    /// `FX_MAX_KRW_PER_USER_DAY` (amounts as whole won, e.g. `50000000`), defaulting each, and
    /// validates the result.
    pub fn from_env() -> runtime::Result<KrwConfig> {
        let d = KrwConfig::default();
        let config = KrwConfig {
            hold_ttl_ms: env_parse("FX_HOLD_TTL_MS", d.hold_ttl_ms)?,
            hold_grace_ms: env_parse("FX_HOLD_GRACE_MS", d.hold_grace_ms)?,
            min_krw: env_parse("FX_MIN_KRW", d.min_krw)?,
            max_krw_per_tx: env_parse("FX_MAX_KRW_PER_TX", d.max_krw_per_tx)?,
            max_krw_per_user_day: env_parse("FX_MAX_KRW_PER_USER_DAY", d.max_krw_per_user_day)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that would make every request fail or every hold expire at once.
    pub fn validate(&self) -> runtime::Result<()> {
        let bad = |var: &'static str, message: String| Err(RuntimeError::Config { var, message });
        if self.hold_ttl_ms == 0 {
            return bad(
                "FX_HOLD_TTL_MS",
                "must be greater than 0; every hold would expire at once".into(),
            );
        }
        if self.min_krw > self.max_krw_per_tx {
            return bad(
                "FX_MIN_KRW",
                format!(
                    "{} KRW is above FX_MAX_KRW_PER_TX {} KRW; every request would be refused",
                    self.min_krw, self.max_krw_per_tx
                ),
            );
        }
        if self.min_krw > self.max_krw_per_user_day {
            return bad(
                "FX_MAX_KRW_PER_USER_DAY",
                format!(
                    "{} KRW is below FX_MIN_KRW {} KRW; every request would be refused",
                    self.max_krw_per_user_day, self.min_krw
                ),
            );
        }
        Ok(())
    }
}

impl Default for KrwConfig {
    /// The documented defaults: 30 s holds, 5 s grace, 1,000 to 50,000,000 KRW per request,
    /// 100,000,000 KRW per user per UTC day.
    fn default() -> Self {
        let krw = |n: u64| Krw::from_decimal(n.into()).expect("default limits are valid KRW");
        KrwConfig {
            hold_ttl_ms: Self::DEFAULT_HOLD_TTL_MS,
            hold_grace_ms: Self::DEFAULT_HOLD_GRACE_MS,
            min_krw: krw(Self::DEFAULT_MIN_KRW),
            max_krw_per_tx: krw(Self::DEFAULT_MAX_KRW_PER_TX),
            max_krw_per_user_day: krw(Self::DEFAULT_MAX_KRW_PER_USER_DAY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values_and_valid() {
        let c = KrwConfig::default();
        assert_eq!(c.hold_ttl_ms, 30_000);
        assert_eq!(c.hold_grace_ms, 5_000);
        assert_eq!(c.min_krw.to_string(), "1000");
        assert_eq!(c.max_krw_per_tx.to_string(), "50000000");
        assert_eq!(c.max_krw_per_user_day.to_string(), "100000000");
        c.validate().unwrap();
    }

    #[test]
    fn contradictory_limits_are_refused_with_the_variable_named() {
        let c = KrwConfig {
            min_krw: Krw::parse("60000000").unwrap(),
            ..KrwConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("FX_MIN_KRW"), "{err}");
        let c = KrwConfig {
            hold_ttl_ms: 0,
            ..KrwConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("FX_HOLD_TTL_MS"), "{err}");
    }
}
