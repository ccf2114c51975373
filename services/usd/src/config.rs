//! fx-usd's settings, read from the environment.

use events::Usd;
use runtime::env_parse;

/// Settings of fx-usd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdConfig {
    /// `FX_USD_HOUSE_FLOAT` (default "10000000.00"): the house float deposited once at the
    /// first start (see [`crate::seed_house_float`]).
    pub house_float: Usd,
}

impl UsdConfig {
    /// Default `FX_USD_HOUSE_FLOAT`.
    pub const DEFAULT_HOUSE_FLOAT: &'static str = "10000000.00";

    /// A config from plain values (tests, the simulation).
    pub fn new(house_float: Usd) -> UsdConfig {
        UsdConfig { house_float }
    }

    /// Reads `FX_USD_HOUSE_FLOAT`; a malformed amount is an error naming the variable.
    pub fn from_env() -> runtime::Result<UsdConfig> {
        Ok(UsdConfig {
            house_float: env_parse("FX_USD_HOUSE_FLOAT", Self::default_house_float())?,
        })
    }

    fn default_house_float() -> Usd {
        Usd::parse(Self::DEFAULT_HOUSE_FLOAT).expect("the default float is a valid amount")
    }
}

impl Default for UsdConfig {
    fn default() -> Self {
        UsdConfig::new(Self::default_house_float())
    }
}
