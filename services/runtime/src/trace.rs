//! Traces: one OpenTelemetry span per handled event, exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! A saga is one trace, its id the saga UUID. The span that handles event `E` at service `S`
//! has the id [`span_id`]`(S, E.id)`: deterministic, so every event `S` emits while handling
//! `E` (its causation id is `E.id`) carries that span id in its `traceparent` without storing
//! anything more in the outbox, and a republished event carries the same one. A span's parent
//! is the incoming event's `traceparent`: the span of the event that caused it. A request
//! published without one (fxctl, the nats CLI) starts the trace: its span is the root. A
//! request whose `traceparent` belongs to another trace (a caller's own) is linked to it, and
//! its span is still the root of the saga's trace.
//!
//! Only the handling whose effects were committed takes the deterministic id (applied or
//! ignored, after the group's flush); a duplicate delivery, a retry, an error or a dead letter
//! emits nothing and gets a random id, so no span id is exported twice.
//!
//! When nothing is exported no tracer exists, and `GroupSpans` stays empty (no allocation):
//! the consumer loop costs one check per group. The deterministic simulation never touches this
//! module; `traceparent` is a pure function of the outbox entry.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use events::{Event, SagaId};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanBuilder, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::OutboxEntry;

/// The process's tracer, set by [`install`] when spans are exported; absent otherwise.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are exported (a tracer was installed).
pub fn exporting() -> bool {
    TRACER.get().is_some()
}

/// The id of the span that handles the event `event_id` at `service` (the participant's short
/// name): FNV-1a of both, never zero (an all-zero span id is invalid).
pub fn span_id(service: &str, event_id: &str) -> u64 {
    // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") hash apart.
    let h = events::fnv::fnv1a_64(service.bytes().chain([0xff]).chain(event_id.bytes()));
    h.max(1)
}

/// W3C trace context of an event `service` emitted: the trace id is the saga UUID, the parent
/// span the one that handled its cause (see the module's documentation).
pub fn traceparent(service: &str, e: &OutboxEntry) -> String {
    format!(
        "00-{}-{:016x}-01",
        e.saga_id.trace_id(),
        span_id(service, &e.causation_id)
    )
}

/// Flushes and stops the exporter when dropped (the end of a service's `main`).
#[must_use = "spans are flushed when the guard is dropped"]
pub struct TraceGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "trace exporter: spans not flushed at stop");
            }
        }
    }
}

/// Which OTLP protocol the environment asks for (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
/// `OTEL_EXPORTER_OTLP_PROTOCOL`; `http/protobuf` by default).
fn protocol_from_env() -> Result<Protocol, String> {
    let value = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
    match value.as_deref().map(str::trim) {
        None | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some("http/json") => Ok(Protocol::HttpJson),
        Some(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (http/protobuf or http/json)"
        )),
    }
}

/// Installs the OTLP exporter for `service_name` (the resource's `service.name`) when an
/// endpoint is configured; otherwise does nothing and returns an empty guard. The batch
/// processor runs on its own thread and honours the `OTEL_BSP_*` variables; the exporter
/// honours `OTEL_EXPORTER_OTLP_{,TRACES_}{ENDPOINT,HEADERS,TIMEOUT}`.
pub fn install(service_name: &'static str) -> TraceGuard {
    let none = TraceGuard { provider: None };
    let configured = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()));
    if !configured || TRACER.get().is_some() {
        return none;
    }
    let protocol = match protocol_from_env() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}; no spans are exported");
            return none;
        }
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
    {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "trace exporter not built; no spans are exported");
            return none;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .build();
    let _ = TRACER.set(provider.tracer("fx"));
    tracing::info!(
        service = service_name,
        ?protocol,
        "exporting spans over OTLP"
    );
    TraceGuard {
        provider: Some(provider),
    }
}

/// The NATS headers as an OpenTelemetry carrier.
struct Headers<'a>(&'a async_nats::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// One handled message of a group, waiting for the group's flush.
struct Handled {
    builder: SpanBuilder,
    parent: Context,
}

/// The spans of one group commit: recorded per message as its outcome is known, exported by
/// [`GroupSpans::end`] once the group is flushed. Records nothing when nothing is exported.
pub(crate) struct GroupSpans {
    tracer: Option<&'static SdkTracer>,
    service: &'static str,
    spans: Vec<Handled>,
}

impl GroupSpans {
    pub(crate) fn new(service: &'static str) -> Self {
        GroupSpans {
            tracer: TRACER.get(),
            service,
            spans: Vec::new(),
        }
    }

    /// Records the handling of one message: `event` when it decoded, `outcome` as the
    /// `fx_consumed_total` label names it. `committed` says whether its effects are part of
    /// the group's transaction (applied or ignored): only that span takes the deterministic id
    /// its emitted events point at.
    pub(crate) fn handled(
        &mut self,
        headers: Option<&async_nats::HeaderMap>,
        subject: &str,
        event: Option<&Event>,
        started: Instant,
        outcome: &'static str,
        committed: bool,
    ) {
        if self.tracer.is_none() {
            return;
        }
        let incoming = headers
            .map(|h| TraceContextPropagator::new().extract(&Headers(h)))
            .unwrap_or_default();
        let remote = incoming.span().span_context().clone();
        let name = match event {
            Some(e) => format!("handle {}", e.kind()),
            None => "handle undecodable".to_owned(),
        };
        let mut attributes = vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", subject.to_owned()),
            KeyValue::new("fx.outcome", outcome),
        ];
        let mut builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Consumer)
            .with_start_time(SystemTime::now() - started.elapsed());
        let mut parent = Context::new();
        match event {
            Some(e) => {
                let saga = e.saga_id();
                let event_id = e.id();
                if committed {
                    builder = builder.with_span_id(SpanId::from_bytes(
                        span_id(self.service, &event_id).to_be_bytes(),
                    ));
                }
                attributes.push(KeyValue::new("fx.saga_id", saga.to_string()));
                attributes.push(KeyValue::new("messaging.message.id", event_id));
                let trace_id = saga_trace_id(saga);
                if remote.is_valid() && remote.trace_id() == trace_id {
                    parent = incoming;
                } else {
                    // No trace context, or a caller's own trace: this span starts the saga's.
                    builder = builder.with_trace_id(trace_id);
                    if remote.is_valid() {
                        builder = builder.with_links(vec![Link::with_context(remote)]);
                    }
                }
            }
            None if remote.is_valid() => parent = incoming,
            None => {}
        }
        if matches!(outcome, "error" | "dead_letter") {
            builder = builder.with_status(Status::error(outcome));
        }
        self.spans.push(Handled {
            builder: builder.with_attributes(attributes),
            parent,
        });
    }

    /// Ends and exports the recorded spans (after the group's flush: a group that failed to
    /// commit exports nothing, and its messages are handled again).
    pub(crate) fn end(self) {
        let Some(tracer) = self.tracer else { return };
        for h in self.spans {
            // A root's context is empty: the builder's trace id (the saga's) is used.
            let mut span = tracer.build_with_context(h.builder, &h.parent);
            opentelemetry::trace::Span::end(&mut span);
        }
    }
}

/// The saga's UUID as a trace id.
fn saga_trace_id(saga: SagaId) -> TraceId {
    TraceId::from_bytes(*saga.uuid().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::EventKind;

    fn emitted(saga: SagaId, cause: EventKind, kind: EventKind) -> OutboxEntry {
        OutboxEntry {
            subject: format!("fx.{kind}.alice"),
            event_id: saga.event_id(kind),
            saga_id: saga,
            causation_id: saga.event_id(cause),
            payload: String::new(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn an_emitted_event_points_at_the_span_that_handled_its_cause() {
        let saga = SagaId::new_v7();
        let released = emitted(saga, EventKind::TradeCancelled, EventKind::KrwReleased);
        let reversed = emitted(saga, EventKind::TradeCancelled, EventKind::TradeReversed);
        let cancelled = saga.event_id(EventKind::TradeCancelled);
        // trade.cancelled is handled at fx-krw and at fx-trade: two spans, two parents.
        let (krw, trade) = (span_id("krw", &cancelled), span_id("trade", &cancelled));
        assert_ne!(krw, trade);
        assert_eq!(
            traceparent("krw", &released),
            format!("00-{}-{krw:016x}-01", saga.trace_id())
        );
        assert_eq!(
            traceparent("trade", &reversed),
            format!("00-{}-{trade:016x}-01", saga.trace_id())
        );
        // The separator keeps the service and the event id apart.
        assert_ne!(span_id("ab", "c"), span_id("a", "bc"));
    }
}
