//! The group commit: one group of ready messages handled in one transaction through the core,
//! made durable by one flush, then answered (dead letters stored first, then acks and naks).
//! Nothing is answered before the flush: an answer may rest on state the group wrote.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use tracing::{debug, info_span, warn};

use super::outcomes::{count, count_outcome, outcome_label};
use super::pipeline::{Slot, Stage};
use crate::broker::{self, DeadLetter};
use crate::core;
use crate::telemetry::names;
use crate::trace::GroupSpans;
use crate::{FaultAction, FaultHook, FaultPoint, Participant, Result, RuntimeError, Store};

/// Commits one group through the core: every ready message in one transaction (each rolls
/// back alone), one flush, then dead letters and acks.
pub(super) async fn commit_group<P: Participant>(
    participant: &P,
    store: &Store,
    js: &jetstream::Context,
    faults: &FaultHook,
    group: Vec<Slot<P::Prepared>>,
) -> Result<()> {
    let service = participant.name();
    let outcomes = handle_in_one_transaction(participant, store, &group);
    let (answers, spans) = book_outcomes(service, &group, outcomes);
    // Group commit: one flush makes every transaction of the group durable and releases their
    // outbox entries to the relay; only then may the broker forget the messages.
    flush_group(service, store, spans).await?;
    if faults(FaultPoint::AfterCommitBeforeAck) == FaultAction::Crash {
        return Err(RuntimeError::Crashed(FaultPoint::AfterCommitBeforeAck));
    }
    answer_group(service, js, &group, answers).await;
    Ok(())
}

/// Runs the group through the core in one transaction, in delivery order; one outcome per
/// message.
fn handle_in_one_transaction<P: Participant>(
    participant: &P,
    store: &Store,
    group: &[Slot<P::Prepared>],
) -> Vec<Result<core::Outcome>> {
    let service = participant.name();
    metrics::histogram!(names::BATCH_SIZE, "service" => service).record(group.len() as f64);
    let run: Vec<(core::Input<'_, P::Prepared>, u64)> = group
        .iter()
        .map(|slot| (slot.input(), slot.now_ms))
        .collect();
    let _span = info_span!("commit", service, messages = group.len()).entered();
    core::commit_run(participant, store, &run)
}

/// Counts each message's outcome, records its span, and holds its answer until the flush.
fn book_outcomes<Pr>(
    service: &'static str,
    group: &[Slot<Pr>],
    outcomes: Vec<Result<core::Outcome>>,
) -> (core::Group<usize>, GroupSpans) {
    let mut answers = core::Group::default();
    let mut spans = GroupSpans::new(service);
    for (i, (slot, outcome)) in group.iter().zip(outcomes).enumerate() {
        let (stream_seq, delivered) = delivery_info(&slot.msg);
        if delivered > 1 {
            metrics::counter!(names::REDELIVERIES, "service" => service).increment(1);
        }
        count_outcome(service, &outcome, stream_seq);
        let event = match &slot.stage {
            Stage::Ready(Ok((event, _))) => Some(event),
            _ => None,
        };
        let (label, committed) = outcome_label(&outcome);
        let (headers, subject) = (slot.msg.headers.as_ref(), slot.msg.subject.as_str());
        spans.handled(headers, subject, event, slot.started, label, committed);
        metrics::histogram!(names::HANDLER_SECONDS, "service" => service)
            .record(slot.started.elapsed().as_secs_f64());
        // Never anything to send before the flush (the core holds the answers).
        let now = answers.handled(i, core::answer(&outcome, delivered));
        debug_assert!(now.is_empty());
    }
    (answers, spans)
}

/// The group's one flush, timed; the group's spans end once it is durable.
async fn flush_group(service: &'static str, store: &Store, spans: GroupSpans) -> Result<()> {
    let flush_started = Instant::now();
    store.flush().await?;
    metrics::histogram!(names::FLUSH_SECONDS, "service" => service)
        .record(flush_started.elapsed().as_secs_f64());
    spans.end();
    Ok(())
}

/// Sends each message its answer, in the order the core gives them (dead letters first).
async fn answer_group<Pr>(
    service: &'static str,
    js: &jetstream::Context,
    group: &[Slot<Pr>],
    mut answers: core::Group<usize>,
) {
    for (i, answer) in answers.flushed() {
        let msg = &group[i].msg;
        let kind = match answer {
            core::Answer::Ack => AckKind::Ack,
            core::Answer::Nak { delay_ms } => AckKind::Nak(Some(Duration::from_millis(delay_ms))),
            core::Answer::DeadLetter { reason, message } => {
                dead_letter(service, js, msg, reason, &message).await
            }
        };
        // A lost ack only means a redelivery, which the inbox and per-saga state absorb.
        if let Err(e) = msg.ack_with(kind).await {
            debug!(service, error = %e, "ack not sent");
        }
    }
}

/// The message's stream sequence and delivery count (0 and 1 when it has no JetStream info).
fn delivery_info(msg: &jetstream::Message) -> (u64, u64) {
    match msg.info() {
        Ok(info) => (info.stream_sequence, info.delivered.max(1) as u64),
        Err(_) => (0, 1),
    }
}

/// Stores `msg` whole in `FX_DLQ`; the ack to send after: term, or a nak when the dead letter
/// could not be stored (the message stays on the stream and is tried again later).
async fn dead_letter(
    service: &'static str,
    js: &jetstream::Context,
    msg: &jetstream::Message,
    reason: &'static str,
    message: &str,
) -> AckKind {
    let (stream_seq, _) = delivery_info(msg);
    warn!(service, reason, %message, subject = %msg.subject, stream_seq, "dead-lettering");
    let letter = DeadLetter {
        service,
        reason,
        message,
        subject: msg.subject.as_str(),
        headers: msg.headers.as_ref(),
        payload: msg.payload.clone(),
        stream_seq,
    };
    match broker::publish_dead_letter(js, &letter).await {
        Ok(_) => {
            count(service, "dead_lettered");
            metrics::counter!(names::DEAD_LETTERED, "service" => service, "reason" => reason)
                .increment(1);
            AckKind::Term
        }
        Err(e) => {
            warn!(service, error = %e, "dead letter not stored; will retry");
            AckKind::Nak(Some(Duration::from_millis(core::store_failed_nak_ms())))
        }
    }
}
