//! How each handled message is counted (the `fx_consumed` counter and its kin) and labelled on
//! its span: one place that names every outcome the core can return.

use tracing::{error, warn};

use crate::core;
use crate::telemetry::names;
use crate::{Handled, Result, RuntimeError};

/// Counts one message's outcome, and logs a failure: a store failure is transient, anything
/// else is a bug; either way the message is retried, not lost.
pub(super) fn count_outcome(
    service: &'static str,
    outcome: &Result<core::Outcome>,
    stream_seq: u64,
) {
    use core::Outcome as O;
    match outcome {
        Ok(O::Handled(Handled::Applied)) => count(service, "applied"),
        Ok(O::Handled(Handled::Ignored)) => count(service, "ignored"),
        Ok(O::Duplicate) => {
            count(service, "duplicate");
            metrics::counter!(names::DUPLICATES, "service" => service).increment(1);
        }
        Ok(O::Handled(Handled::RetryAfter { .. })) => count(service, "retry"),
        Ok(O::Handled(Handled::DeadLetter { .. })) => {}
        Err(e) => {
            count(service, "error");
            match e {
                RuntimeError::StoreFailed(_) => {
                    warn!(service, error = %e, stream_seq, "transient failure")
                }
                _ => {
                    error!(service, error = %e, stream_seq, "handler failed; the event will be retried")
                }
            }
        }
    }
}

/// A handling's label on its span, and whether its effects are in the group's transaction.
pub(super) fn outcome_label(outcome: &Result<core::Outcome>) -> (&'static str, bool) {
    use core::Outcome as O;
    match outcome {
        Ok(O::Handled(Handled::Applied)) => ("applied", true),
        Ok(O::Handled(Handled::Ignored)) => ("ignored", true),
        Ok(O::Duplicate) => ("duplicate", false),
        Ok(O::Handled(Handled::RetryAfter { .. })) => ("retry", false),
        Ok(O::Handled(Handled::DeadLetter { .. })) => ("dead_letter", false),
        Err(_) => ("error", false),
    }
}

/// Counts one consumed message under `outcome`.
pub(super) fn count(service: &'static str, outcome: &'static str) {
    metrics::counter!(names::CONSUMED, "service" => service, "outcome" => outcome).increment(1);
}
