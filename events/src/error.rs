//! The one decode error of the wire contract.

use crate::EventKind;

/// Why a message is not a valid event. Every variant names what was wrong in words a publisher
/// can act on; `reason()` gives the stable machine code stored with dead letters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is larger than `MAX_PAYLOAD_BYTES`.
    #[error("payload is {bytes} bytes; events are at most {max_bytes} bytes")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// The subject is not `fx.<domain>.<event>.<user_id>`.
    #[error("subject {subject:?} is not an event subject: {reason}")]
    Subject { subject: String, reason: String },
    /// The subject names no event of the catalog.
    #[error("subject {subject:?} names no known event; see docs/events.md for the catalog")]
    UnknownEvent { subject: String },
    /// The body is not valid JSON for the subject's event.
    #[error("body is not a valid {kind} event: {message}")]
    Body { kind: EventKind, message: String },
    /// The body's `user_id` differs from the subject's user token.
    #[error(
        "subject user {subject_user:?} differs from body user_id {body_user:?}; they must be equal"
    )]
    UserMismatch {
        subject_user: String,
        body_user: String,
    },
    /// A field is well-formed but not allowed (e.g. a zero amount).
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl DecodeError {
    /// A stable snake_case code for machines (dead-letter headers, metrics labels).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "payload_too_large",
            DecodeError::Subject { .. } => "bad_subject",
            DecodeError::UnknownEvent { .. } => "unknown_event",
            DecodeError::Body { .. } => "malformed_body",
            DecodeError::UserMismatch { .. } => "user_mismatch",
            DecodeError::Invalid { .. } => "invalid_field",
        }
    }
}
