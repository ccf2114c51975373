//! Money on the wire: decimal newtypes that are JSON strings, never floats.
//!
//! `Krw` has no minor unit (scale 0) and `Usd` has cents (scale 2). Parsing is strict so that a
//! typo in a hand-written request is refused with a message instead of silently rounded:
//! no sign, no exponent, no excess scale, no JSON numbers, and a ceiling far below the point where
//! `Decimal` arithmetic over many balances could overflow.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a money string was refused. The `Display` text is written for the person who typed it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount is empty; write it as a string of digits such as \"{example}\"")]
    Empty { example: &'static str },
    #[error("amount {input:?} is negative; amounts are never negative")]
    Negative { input: String },
    #[error("amount {input:?} is not a plain decimal number; write digits such as \"{example}\" (no sign, spaces, separators or exponent)")]
    NotDecimal {
        input: String,
        example: &'static str,
    },
    #[error(
        "amount {input:?} has {scale} decimal places but {currency} allows at most {max_scale}"
    )]
    ExcessScale {
        input: String,
        currency: &'static str,
        scale: u32,
        max_scale: u32,
    },
    #[error("amount {input:?} exceeds the largest {currency} amount this system accepts ({max})")]
    Overflow {
        input: String,
        currency: &'static str,
        max: &'static str,
    },
    #[error("amount must be a JSON string such as \"{example}\", not a JSON number (numbers go through floating point)")]
    NotAString { example: &'static str },
}

/// Parses `[0-9]+(\.[0-9]+)?` into a decimal, enforcing the currency's scale and ceiling.
fn parse_strict(
    input: &str,
    currency: &'static str,
    max_scale: u32,
    max: Decimal,
    max_text: &'static str,
    example: &'static str,
) -> Result<Decimal, MoneyError> {
    if input.is_empty() {
        return Err(MoneyError::Empty { example });
    }
    if input.starts_with('-') {
        return Err(MoneyError::Negative {
            input: input.to_owned(),
        });
    }
    let (whole, frac) = match input.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (input, None),
    };
    let digits_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(whole) || frac.is_some_and(|f| !digits_ok(f)) {
        return Err(MoneyError::NotDecimal {
            input: input.to_owned(),
            example,
        });
    }
    let scale = frac.map_or(0, |f| f.len() as u32);
    if scale > max_scale {
        return Err(MoneyError::ExcessScale {
            input: input.to_owned(),
            currency,
            scale,
            max_scale,
        });
    }
    // 30 digits already exceed Decimal's 96-bit mantissa; refuse early instead of erroring inside.
    let overflow = || MoneyError::Overflow {
        input: input.to_owned(),
        currency,
        max: max_text,
    };
    if whole.trim_start_matches('0').len() > 20 {
        return Err(overflow());
    }
    let value = Decimal::from_str(input).map_err(|_| overflow())?;
    if value > max {
        return Err(overflow());
    }
    let mut value = value;
    value.rescale(max_scale);
    Ok(value)
}

macro_rules! money_type {
    ($name:ident, $currency:literal, $scale:literal, $max:expr, $max_text:literal, $example:literal) => {
        #[doc = concat!("An amount of ", $currency, " at scale ", stringify!($scale), ", never negative. On the wire: a JSON string such as \"", $example, "\".")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(Decimal);

        impl $name {
            /// Zero, for balances. Events never carry a zero amount (see `is_positive`).
            pub const ZERO: $name = $name(Decimal::ZERO);
            /// Decimal places of this currency.
            pub const SCALE: u32 = $scale;
            /// The largest amount accepted, as text for messages.
            pub const MAX_TEXT: &'static str = $max_text;

            /// Parses the wire form strictly (see the module docs).
            pub fn parse(input: &str) -> Result<Self, MoneyError> {
                parse_strict(input, $currency, $scale, Self::max_decimal(), $max_text, $example).map($name)
            }

            /// Builds from a decimal, refusing negatives, excess scale and values over the ceiling.
            pub fn from_decimal(value: Decimal) -> Option<Self> {
                if value.is_sign_negative() && !value.is_zero() {
                    return None;
                }
                if value.scale() > $scale || value > Self::max_decimal() {
                    // A value like 1.50 with trailing zeros is fine once normalized.
                    let normalized = value.normalize();
                    if normalized.scale() > $scale || normalized > Self::max_decimal() {
                        return None;
                    }
                }
                let mut v = value;
                v.rescale($scale);
                Some($name(v))
            }

            fn max_decimal() -> Decimal {
                $max
            }

            /// The amount as a decimal at the currency's scale.
            pub fn amount(self) -> Decimal {
                self.0
            }

            /// True when the amount is greater than zero.
            pub fn is_positive(self) -> bool {
                self.0 > Decimal::ZERO
            }

            /// `self + other`, or `None` past the ceiling.
            pub fn checked_add(self, other: Self) -> Option<Self> {
                self.0.checked_add(other.0).and_then(Self::from_decimal)
            }

            /// `self - other`, or `None` when the result would be negative.
            pub fn checked_sub(self, other: Self) -> Option<Self> {
                self.0.checked_sub(other.0).and_then(Self::from_decimal)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Always at the currency's scale: "0.00", never "0".
                write!(f, "{:.*}", $scale, self.0)
            }
        }

        impl FromStr for $name {
            type Err = MoneyError;
            fn from_str(s: &str) -> Result<Self, MoneyError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a {} amount as a JSON string such as \"{}\"", $currency, $example)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::parse(v).map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, _: i64) -> Result<$name, E> {
                        Err(E::custom(MoneyError::NotAString { example: $example }))
                    }
                    fn visit_u64<E: de::Error>(self, _: u64) -> Result<$name, E> {
                        Err(E::custom(MoneyError::NotAString { example: $example }))
                    }
                    fn visit_f64<E: de::Error>(self, _: f64) -> Result<$name, E> {
                        Err(E::custom(MoneyError::NotAString { example: $example }))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

money_type!(
    Krw,
    "KRW",
    0,
    Decimal::from(1_000_000_000_000_000u64),
    "1000000000000000",
    "1500000"
);
money_type!(
    Usd,
    "USD",
    2,
    Decimal::from(10_000_000_000_000u64),
    "10000000000000.00",
    "1086.95"
);

/// A venue price: KRW per one USD, positive, at most 8 decimal places. A JSON string on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(Decimal);

impl Rate {
    /// Most decimal places a rate may carry.
    pub const MAX_SCALE: u32 = 8;

    /// A positive rate, rounded toward zero to `MAX_SCALE` places.
    pub fn new(krw_per_usd: Decimal) -> Option<Rate> {
        if krw_per_usd <= Decimal::ZERO {
            return None;
        }
        let r = krw_per_usd
            .round_dp_with_strategy(Self::MAX_SCALE, RoundingStrategy::ToZero)
            .normalize();
        (r > Decimal::ZERO).then_some(Rate(r))
    }

    /// KRW per one USD.
    pub fn krw_per_usd(self) -> Decimal {
        self.0
    }

    /// The USD a fill of `krw` buys at this rate: `round_down(krw / rate, 2)`.
    /// Rounding toward zero means the house never pays out a fraction of a cent it did not receive.
    pub fn usd_for(self, krw: Krw) -> Option<Usd> {
        let usd = krw
            .amount()
            .checked_div(self.0)?
            .round_dp_with_strategy(Usd::SCALE, RoundingStrategy::ToZero);
        Usd::from_decimal(usd)
    }

    /// The KRW that selling `usd` at this rate brings: `round_down(usd * rate, 0)`, whole won.
    /// A reversal sells a fill's USD back; rounding toward zero books no won the house did not
    /// receive.
    pub fn krw_for(self, usd: Usd) -> Option<Krw> {
        let krw = usd
            .amount()
            .checked_mul(self.0)?
            .round_dp_with_strategy(Krw::SCALE, RoundingStrategy::ToZero);
        Krw::from_decimal(krw)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let value = parse_strict(
            &text,
            "rate",
            Rate::MAX_SCALE,
            Decimal::from(1_000_000_000u64),
            "1000000000",
            "1400.25",
        )
        .map_err(de::Error::custom)?;
        Rate::new(value).ok_or_else(|| de::Error::custom("rate must be greater than zero"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krw_accepts_whole_won_and_refuses_everything_else() {
        assert_eq!(Krw::parse("1500000").unwrap().to_string(), "1500000");
        assert_eq!(Krw::parse("0").unwrap(), Krw::ZERO);
        assert!(matches!(Krw::parse("-5"), Err(MoneyError::Negative { .. })));
        assert!(matches!(
            Krw::parse("1.5"),
            Err(MoneyError::ExcessScale { .. })
        ));
        assert!(matches!(
            Krw::parse("1e6"),
            Err(MoneyError::NotDecimal { .. })
        ));
        assert!(matches!(
            Krw::parse("+5"),
            Err(MoneyError::NotDecimal { .. })
        ));
        assert!(matches!(
            Krw::parse("1,000"),
            Err(MoneyError::NotDecimal { .. })
        ));
        assert!(matches!(Krw::parse(""), Err(MoneyError::Empty { .. })));
        assert!(matches!(
            Krw::parse("1000000000000001"),
            Err(MoneyError::Overflow { .. })
        ));
        assert!(matches!(
            Krw::parse("99999999999999999999999999999999999"),
            Err(MoneyError::Overflow { .. })
        ));
    }

    #[test]
    fn zero_prints_at_the_currency_scale() {
        assert_eq!(Usd::ZERO.to_string(), "0.00");
        assert_eq!(serde_json::to_string(&Usd::ZERO).unwrap(), "\"0.00\"");
        assert_eq!(Krw::ZERO.to_string(), "0");
    }

    #[test]
    fn usd_keeps_cents_and_normalizes_scale() {
        assert_eq!(Usd::parse("1000").unwrap().to_string(), "1000.00");
        assert_eq!(Usd::parse("1086.9").unwrap().to_string(), "1086.90");
        assert!(matches!(
            Usd::parse("1.001"),
            Err(MoneyError::ExcessScale { .. })
        ));
    }

    #[test]
    fn json_numbers_are_refused_even_when_whole() {
        let err = serde_json::from_str::<Krw>("1500000").unwrap_err();
        assert!(err.to_string().contains("JSON string"), "{err}");
        assert!(serde_json::from_str::<Usd>("10.5").is_err());
        assert_eq!(
            serde_json::from_str::<Usd>("\"10.5\"").unwrap().to_string(),
            "10.50"
        );
        assert_eq!(
            serde_json::to_string(&Usd::parse("7").unwrap()).unwrap(),
            "\"7.00\""
        );
    }

    #[test]
    fn fill_rounds_toward_zero() {
        let rate = Rate::new(Decimal::from(1400)).unwrap();
        // 1,500,000 / 1400 = 1071.428571... -> 1071.42, never 1071.43.
        assert_eq!(
            rate.usd_for(Krw::parse("1500000").unwrap())
                .unwrap()
                .to_string(),
            "1071.42"
        );
        assert_eq!(rate.usd_for(Krw::parse("1").unwrap()).unwrap(), Usd::ZERO);
    }

    #[test]
    fn a_sale_rounds_toward_zero_to_whole_won() {
        // Selling the 1071.42 USD of a fill back at 1401.5: 1,501,595.13 -> 1,501,595 KRW.
        let rate = Rate::new(Decimal::new(14015, 1)).unwrap();
        let usd = Usd::parse("1071.42").unwrap();
        assert_eq!(rate.krw_for(usd).unwrap().to_string(), "1501595");
        assert_eq!(
            rate.krw_for(Usd::parse("0.01").unwrap())
                .unwrap()
                .to_string(),
            "14"
        );
    }

    #[test]
    fn checked_arithmetic_never_goes_negative_or_past_the_ceiling() {
        let a = Krw::parse("10").unwrap();
        let b = Krw::parse("11").unwrap();
        assert_eq!(a.checked_sub(b), None);
        assert_eq!(b.checked_sub(a).unwrap().to_string(), "1");
        let max = Krw::parse("1000000000000000").unwrap();
        assert_eq!(max.checked_add(a), None);
    }
}
