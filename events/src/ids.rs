//! Validated identifiers: users, sagas and the deterministic event id.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::EventKind;

/// Why an identifier was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "user_id {input:?} is invalid: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
    )]
    User { input: String },
    #[error("saga_id {input:?} is not a UUID such as \"0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11\"")]
    Saga { input: String },
}

/// A user's id: `[A-Za-z0-9_-]{1,64}`. It is also the last token of every event subject (the
/// partition key), which is why dots, wildcards and spaces are impossible here.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

impl UserId {
    /// Longest accepted id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates a user id.
    pub fn parse(input: &str) -> Result<UserId, IdError> {
        let ok = !input.is_empty()
            && input.len() <= Self::MAX_LEN
            && input
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(UserId(input.to_owned()))
        } else {
            Err(IdError::User {
                input: input.chars().take(80).collect(),
            })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment, so tables line up.
        f.pad(&self.0)
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserId::parse(&s).map_err(de::Error::custom)
    }
}

/// A saga's id: a UUID (v7 recommended, any version accepted), written hyphenated lowercase.
/// Its 128 bits are also the W3C trace id of every event of the saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SagaId(Uuid);

impl SagaId {
    /// A new time-ordered id (UUID v7).
    pub fn new_v7() -> SagaId {
        SagaId(Uuid::now_v7())
    }

    /// Validates a saga id written as a hyphenated UUID.
    pub fn parse(input: &str) -> Result<SagaId, IdError> {
        if input.len() != 36 {
            return Err(IdError::Saga {
                input: input.chars().take(80).collect(),
            });
        }
        Uuid::try_parse(input)
            .map(SagaId)
            .map_err(|_| IdError::Saga {
                input: input.to_owned(),
            })
    }

    /// The UUID.
    pub fn uuid(self) -> Uuid {
        self.0
    }

    /// The 32 lowercase hex digits used as the W3C trace id.
    pub fn trace_id(self) -> String {
        self.0.simple().to_string()
    }

    /// The deterministic id of this saga's event of `kind`: `<saga_id>:<domain>.<event>`.
    pub fn event_id(self, kind: EventKind) -> String {
        self.between("", &[":", kind.domain(), ".", kind.name()])
    }

    /// `<prefix><saga_id><suffix...>`, the shape of every key and id built from a saga id. Built
    /// by concatenation: these are built several times per handled event, and `format!` over
    /// a UUID cost about 1,300 instructions each (callgrind, fx-krw's `store_bench`).
    pub fn between(self, prefix: &str, suffix: &[&str]) -> String {
        let suffix_len: usize = suffix.iter().map(|s| s.len()).sum();
        let mut out = String::with_capacity(prefix.len() + HYPHENATED_LEN + suffix_len);
        out.push_str(prefix);
        out.push_str(self.0.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
        for s in suffix {
            out.push_str(s);
        }
        out
    }

    /// The id of an operator's intervention record (`kind` is a `<domain>.intervened`):
    /// `<saga_id>:<domain>.intervened.<action>`, one per saga, service and action.
    pub fn intervention_id(self, kind: EventKind, action: crate::InterventionAction) -> String {
        format!("{}.{}", self.event_id(kind), action.as_str())
    }
}

impl From<Uuid> for SagaId {
    fn from(u: Uuid) -> SagaId {
        SagaId(u)
    }
}

/// The length of a hyphenated UUID.
const HYPHENATED_LEN: usize = 36;

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
    }
}

impl Serialize for SagaId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SagaId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SagaId::parse(&s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_the_subject_token_rules() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("a_b-C9").is_ok());
        for bad in ["", "a.b", "a b", "*", ">", "ü", &"x".repeat(65)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn saga_ids_are_hyphenated_uuids_and_give_stable_event_ids() {
        let id = SagaId::parse("0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11").unwrap();
        assert_eq!(
            id.event_id(EventKind::KrwHeld),
            "0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11:krw.held"
        );
        assert_eq!(id.to_string(), "0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11");
        assert_eq!(
            id.between("saga:", &[":", "x"]),
            "saga:0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11:x"
        );
        assert_eq!(id.trace_id(), "0193f0e25c1a7cc39b1e6a4f2d0c8e11");
        assert!(SagaId::parse("0193f0e25c1a7cc39b1e6a4f2d0c8e11").is_err());
        assert!(SagaId::parse("not-a-uuid").is_err());
    }
}
