//! The catalog of event kinds and their subjects `fx.<domain>.<event>.<user_id>`.

use std::fmt;

use crate::{DecodeError, UserId};

/// Every subject of the contract starts with this token.
pub const SUBJECT_PREFIX: &str = "fx";

/// Every kind of event on the `FX` stream. Past tense: each records something that happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// A user asked to exchange KRW for USD (published by users and fxctl).
    ExchangeRequested,
    /// fx-krw placed a hold on the user's KRW (TCC try).
    KrwHeld,
    /// fx-krw refused the request: bad input, unknown user, funds, limits.
    KrwRejected,
    /// fx-krw turned the hold into a debit (TCC confirm).
    KrwCommitted,
    /// fx-krw gave the held KRW back (TCC cancel).
    KrwReleased,
    /// An operator deposited KRW into a user's account.
    KrwDeposited,
    /// fx-trade bought USD at the venue (the pivot).
    TradeFilled,
    /// fx-trade did not fill (and never will for this saga).
    TradeFailed,
    /// fx-trade cancelled a filled order: the user is made whole, the house keeps the USD.
    TradeCancelled,
    /// fx-trade's reversal of a cancelled fill executed at the venue.
    TradeReversed,
    /// fx-usd credited the user's USD account.
    UsdCredited,
    /// fx-usd did not credit (and never will for this saga).
    UsdCreditFailed,
    /// fx-usd took back a credit after the order was reversed.
    UsdDebited,
    /// An operator deposited USD into a user's account (or the house float).
    UsdDeposited,
    /// An operator froze a user's USD account (credits refused until unfrozen).
    UsdFrozen,
    /// An operator lifted a freeze.
    UsdUnfrozen,
    /// An operator acted on one saga at fx-krw (reemit, cancel): who, why, what it caused.
    KrwIntervened,
    /// An operator acted on one saga at fx-trade (reemit).
    TradeIntervened,
    /// An operator acted on one saga at fx-usd (reemit, refuse-credit).
    UsdIntervened,
}

impl EventKind {
    /// Every kind: in flow order, then the kinds added later.
    pub const ALL: [EventKind; 19] = [
        EventKind::ExchangeRequested,
        EventKind::KrwHeld,
        EventKind::KrwRejected,
        EventKind::KrwCommitted,
        EventKind::KrwReleased,
        EventKind::KrwDeposited,
        EventKind::TradeFilled,
        EventKind::TradeFailed,
        EventKind::TradeCancelled,
        EventKind::UsdCredited,
        EventKind::UsdCreditFailed,
        EventKind::UsdDebited,
        EventKind::UsdDeposited,
        EventKind::UsdFrozen,
        EventKind::UsdUnfrozen,
        // Last, not in flow order: positions are stored codes (fx-tracker's timelines), so a
        // new kind takes the next one.
        EventKind::TradeReversed,
        EventKind::KrwIntervened,
        EventKind::TradeIntervened,
        EventKind::UsdIntervened,
    ];

    /// The subject's domain token: `exchange`, `krw`, `trade` or `usd`.
    pub fn domain(self) -> &'static str {
        match self {
            EventKind::ExchangeRequested => "exchange",
            EventKind::KrwHeld
            | EventKind::KrwRejected
            | EventKind::KrwCommitted
            | EventKind::KrwReleased
            | EventKind::KrwDeposited
            | EventKind::KrwIntervened => "krw",
            EventKind::TradeFilled
            | EventKind::TradeFailed
            | EventKind::TradeCancelled
            | EventKind::TradeReversed
            | EventKind::TradeIntervened => "trade",
            EventKind::UsdCredited
            | EventKind::UsdCreditFailed
            | EventKind::UsdDebited
            | EventKind::UsdDeposited
            | EventKind::UsdFrozen
            | EventKind::UsdUnfrozen
            | EventKind::UsdIntervened => "usd",
        }
    }

    /// The subject's event token.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ExchangeRequested => "requested",
            EventKind::KrwHeld => "held",
            EventKind::KrwRejected => "rejected",
            EventKind::KrwCommitted => "committed",
            EventKind::KrwReleased => "released",
            EventKind::KrwDeposited | EventKind::UsdDeposited => "deposited",
            EventKind::TradeFilled => "filled",
            EventKind::TradeFailed => "failed",
            EventKind::TradeCancelled => "cancelled",
            EventKind::TradeReversed => "reversed",
            EventKind::UsdCredited => "credited",
            EventKind::UsdCreditFailed => "credit_failed",
            EventKind::UsdDebited => "debited",
            EventKind::UsdFrozen => "frozen",
            EventKind::UsdUnfrozen => "unfrozen",
            EventKind::KrwIntervened | EventKind::TradeIntervened | EventKind::UsdIntervened => {
                "intervened"
            }
        }
    }

    /// `domain.event`, e.g. `krw.held`: the type name shown in the tracker and logs.
    pub fn type_name(self) -> String {
        format!("{}.{}", self.domain(), self.name())
    }

    /// The subject of this kind for one user: `fx.<domain>.<event>.<user_id>`.
    pub fn subject(self, user: &UserId) -> String {
        // Concatenated, not formatted: one per emitted event (see `SagaId::between`).
        [
            SUBJECT_PREFIX,
            ".",
            self.domain(),
            ".",
            self.name(),
            ".",
            user.as_str(),
        ]
        .concat()
    }

    /// The filter matching this kind for every user: `fx.<domain>.<event>.*`.
    pub fn filter(self) -> String {
        format!("{SUBJECT_PREFIX}.{}.{}.*", self.domain(), self.name())
    }

    /// Finds the kind for a `domain` and `event` token pair.
    pub fn from_tokens(domain: &str, name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.domain() == domain && k.name() == name)
    }

    /// True for the operator's interventions on one saga (`<domain>.intervened`): records of
    /// who did what and why, which no service reacts to.
    pub fn is_intervention(self) -> bool {
        matches!(
            self,
            EventKind::KrwIntervened | EventKind::TradeIntervened | EventKind::UsdIntervened
        )
    }

    /// The kind named `domain.event`, e.g. `krw.held`.
    pub fn from_type_name(type_name: &str) -> Option<EventKind> {
        let (d, n) = type_name.split_once('.')?;
        EventKind::from_tokens(d, n)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.domain(), self.name())
    }
}

/// A parsed event subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// Which event the subject names.
    pub kind: EventKind,
    /// The user token (the partition key).
    pub user: UserId,
    /// The partition token the `FX` stream appends when it is partitioned
    /// (`fx.<domain>.<event>.<user_id>.<p>`, see [`crate::partition`]); `None` on a subject as
    /// published.
    pub partition: Option<u32>,
}

impl Subject {
    /// Parses `fx.<domain>.<event>.<user_id>`, or the stored form of a partitioned stream,
    /// `fx.<domain>.<event>.<user_id>.<partition>`.
    pub fn parse(subject: &str) -> Result<Subject, DecodeError> {
        let bad = |why: &str| DecodeError::Subject {
            subject: subject.chars().take(200).collect(),
            reason: why.to_owned(),
        };
        let mut tokens = subject.split('.');
        let (Some(prefix), Some(domain), Some(name), Some(user), partition, None) = (
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
        ) else {
            return Err(bad(
                "expected four tokens fx.<domain>.<event>.<user_id>, e.g. fx.exchange.requested.alice",
            ));
        };
        // Only the stream's transform appends a fifth token, and it is a partition number.
        let partition = match partition {
            None => None,
            Some(token) => Some(
                token
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p < crate::MAX_PARTITIONS && p.to_string() == token)
                    .ok_or_else(|| {
                        bad("expected four tokens fx.<domain>.<event>.<user_id>; a fifth may only be the stream's partition number")
                    })?,
            ),
        };
        if prefix != SUBJECT_PREFIX {
            return Err(bad("subjects of this system start with \"fx.\""));
        }
        let kind =
            EventKind::from_tokens(domain, name).ok_or_else(|| DecodeError::UnknownEvent {
                subject: subject.chars().take(200).collect(),
            })?;
        let user = UserId::parse(user).map_err(|e| bad(&e.to_string()))?;
        Ok(Subject {
            kind,
            user,
            partition,
        })
    }

    /// The subject as published (without the stream's partition token): where a replayed
    /// message goes back to.
    pub fn contract_subject(&self) -> String {
        self.kind.subject(&self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_for_every_kind() {
        let alice = UserId::parse("alice").unwrap();
        for kind in EventKind::ALL {
            let s = kind.subject(&alice);
            let parsed = Subject::parse(&s).unwrap();
            assert_eq!(parsed.kind, kind);
            assert_eq!(parsed.user, alice);
            assert_eq!(EventKind::from_type_name(&kind.type_name()), Some(kind));
        }
        assert_eq!(
            EventKind::UsdCreditFailed.subject(&alice),
            "fx.usd.credit_failed.alice"
        );
    }

    #[test]
    fn bad_subjects_say_what_is_wrong() {
        assert!(matches!(
            Subject::parse("fx.krw.held"),
            Err(DecodeError::Subject { .. })
        ));
        assert!(matches!(
            Subject::parse("xx.krw.held.a"),
            Err(DecodeError::Subject { .. })
        ));
        assert!(matches!(
            Subject::parse("fx.krw.exploded.a"),
            Err(DecodeError::UnknownEvent { .. })
        ));
        assert!(matches!(
            Subject::parse("fx.krw.held.a.b"),
            Err(DecodeError::Subject { .. })
        ));
        for bad in ["fx.krw.held.a.01", "fx.krw.held.a.8", "fx.krw.held.a.1.2"] {
            assert!(
                matches!(Subject::parse(bad), Err(DecodeError::Subject { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_partitioned_streams_subject_names_its_partition() {
        let s = Subject::parse("fx.krw.held.alice.3").unwrap();
        assert_eq!(s.kind, EventKind::KrwHeld);
        assert_eq!(s.user.as_str(), "alice");
        assert_eq!(s.partition, Some(3));
        assert_eq!(s.contract_subject(), "fx.krw.held.alice");
        assert_eq!(Subject::parse("fx.krw.held.alice").unwrap().partition, None);
    }
}
