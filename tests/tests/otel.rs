//! Traces: fx-krw, fx-trade and fx-usd as processes on a real nats-server, exporting their
//! spans over OTLP/HTTP (protobuf) to a receiver in this test, which decodes each export with
//! the official OTLP definitions (`opentelemetry-proto`). One saga completes and one
//! compensates (a frozen USD account: the whole reverse chain). For each, every event on the
//! stream was handled under a span at every service that consumes it; the spans share the
//! saga's trace id, come from all three services, and form the chain: the request's span is
//! the root, and every other span's parent is the span, at the service that emitted the event,
//! of the event that caused it (its `Fx-Causation-Id`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;
use events::{Event, EventKind, Krw, SagaId, UserId};
use fx_tests::procs::{binaries, is_ready, service_env, Service};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use testkit::{free_port, stream_messages, wait_for, NatsServer};

/// Every wait of this test; each is a condition that normally holds within a few seconds.
const DEADLINE_MS: u64 = 60_000;

/// One exported span, as the receiver decoded it.
#[derive(Clone, Debug)]
struct Exported {
    /// The resource's `service.name`.
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// `messaging.message.id`: the id of the handled event.
    event_id: String,
    /// `fx.saga_id`.
    saga_id: String,
}

type Received = Arc<Mutex<Vec<Exported>>>;

fn text(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

/// The OTLP/HTTP traces endpoint: decodes the protobuf request and keeps its spans.
async fn receive(
    State(received): State<Received>,
    body: Bytes,
) -> Result<([(header::HeaderName, &'static str); 1], Vec<u8>), StatusCode> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let mut out = received.lock().unwrap();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .map(|r| text(&r.attributes, "service.name"))
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Exported {
                service: service.clone(),
                event_id: text(&span.attributes, "messaging.message.id"),
                saga_id: text(&span.attributes, "fx.saga_id"),
                name: span.name,
                trace_id: span.trace_id,
                span_id: span.span_id,
                parent_span_id: span.parent_span_id,
            });
        }
    }
    let response = ExportTraceServiceResponse::default().encode_to_vec();
    Ok(([(header::CONTENT_TYPE, "application/x-protobuf")], response))
}

/// The services whose spans a saga's trace holds, by the event kinds each consumes.
fn consumers(kind: EventKind) -> Vec<&'static str> {
    let mut out = Vec::new();
    if krw::CONSUMES.contains(&kind) {
        out.push("fx-krw");
    }
    if trade::CONSUMES.contains(&kind) {
        out.push("fx-trade");
    }
    if usd::CONSUMES.contains(&kind) {
        out.push("fx-usd");
    }
    out
}

/// One event of the saga on the stream, with the id of its cause.
struct OnStream {
    event: Event,
    causation_id: Option<String>,
}

async fn saga_events(js: &async_nats::jetstream::Context, saga: SagaId) -> Vec<OnStream> {
    stream_messages(js, "FX")
        .await
        .into_iter()
        .filter_map(|m| {
            let event = Event::decode(m.subject.as_str(), &m.payload).ok()?;
            if event.saga_id() != saga {
                return None;
            }
            let causation_id = m
                .headers
                .get(events::headers::CAUSATION_ID)
                .map(|v| v.as_str().to_owned());
            Some(OnStream {
                event,
                causation_id,
            })
        })
        .collect()
}

/// Waits until the stream holds the saga's `kinds` and every event of it was handled under an
/// exported span at each service that consumes it; returns the events and the saga's spans.
async fn trace_of(
    js: &async_nats::jetstream::Context,
    received: &Received,
    saga: SagaId,
    kinds: &[&str],
) -> (Vec<OnStream>, Vec<Exported>) {
    wait_for(
        "the saga's events and all their spans",
        DEADLINE_MS,
        || async {
            let events = saga_events(js, saga).await;
            let on_stream: BTreeSet<String> =
                events.iter().map(|e| e.event.kind().to_string()).collect();
            if !kinds.iter().all(|k| on_stream.contains(*k)) {
                return None;
            }
            let spans: Vec<Exported> = received
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.saga_id == saga.to_string())
                .cloned()
                .collect();
            let all_handled = events.iter().all(|e| {
                consumers(e.event.kind()).iter().all(|svc| {
                    spans
                        .iter()
                        .any(|s| s.service == *svc && s.event_id == e.event.id())
                })
            });
            all_handled.then_some((events, spans))
        },
    )
    .await
}

/// The checks a person looking at the saga's trace relies on.
fn assert_one_chained_trace(saga: SagaId, events: &[OnStream], spans: &[Exported]) {
    let dump = || {
        spans
            .iter()
            .map(|s| {
                format!(
                    "{:9} {:28} span {} parent {}",
                    s.service,
                    s.name,
                    hex(&s.span_id),
                    hex(&s.parent_span_id)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let trace_id = saga.uuid().as_bytes().to_vec();
    for s in spans {
        assert_eq!(
            s.trace_id,
            trace_id,
            "{} not in the saga's trace:\n{}",
            s.name,
            dump()
        );
    }
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["fx-krw", "fx-trade", "fx-usd"]),
        "{}",
        dump()
    );
    let ids: BTreeSet<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
    assert_eq!(ids.len(), spans.len(), "span ids repeat:\n{}", dump());

    // The emitter of each event, by its id: the service of its domain.
    let emitter: BTreeMap<String, String> = events
        .iter()
        .map(|e| (e.event.id(), format!("fx-{}", e.event.kind().domain())))
        .collect();
    let span_at = |service: &str, event_id: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.event_id == event_id)
    };
    for e in events {
        let kind = e.event.kind();
        for svc in consumers(kind) {
            let span = span_at(svc, &e.event.id()).expect("waited for");
            if kind == EventKind::ExchangeRequested {
                assert!(
                    span.parent_span_id.is_empty(),
                    "the request's span is the root:\n{}",
                    dump()
                );
                continue;
            }
            let cause = e
                .causation_id
                .as_deref()
                .expect("every event names its cause");
            let cause_span = span_at(&emitter[&e.event.id()], cause).unwrap_or_else(|| {
                panic!(
                    "no span for {kind}'s cause {cause} at its emitter:\n{}",
                    dump()
                )
            });
            assert_eq!(
                hex(&span.parent_span_id),
                hex(&cause_span.span_id),
                "{svc} handling {kind}: the parent is the span of {cause} at {}:\n{}",
                cause_span.service,
                dump()
            );
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_is_one_trace_whose_spans_chain_across_the_services() {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(received.clone());
    let receiver = tokio::spawn(async move { axum::serve(listener, app).await });

    let bins = binaries();
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let url = nats.url();
    let mut services = Vec::new();
    for name in ["krw", "trade", "usd"] {
        let port = free_port();
        let mut env = service_env(name, &url, None, dir.path(), port);
        env.extend([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{collector}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()),
            // Export every 50 ms instead of 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "50".into()),
        ]);
        let mut s = Service::new(&bins, name, env, dir.path(), port);
        s.spawn();
        services.push(s);
    }
    for s in &services {
        wait_for(&format!("fx-{} ready", s.name), DEADLINE_MS, || {
            std::future::ready(is_ready(s.http_port).then_some(()))
        })
        .await;
    }

    let client = async_nats::connect(&url).await.unwrap();
    let js = runtime::broker::jetstream(client.clone());
    let (alice, dave) = (
        UserId::parse("alice").unwrap(),
        UserId::parse("dave").unwrap(),
    );
    for u in [&alice, &dave] {
        let krw = Some(Krw::parse("3000000").unwrap());
        fxctl::deposit(&client, u, krw, None, "test").await.unwrap();
    }
    fxctl::set_frozen(&client, &dave, true, "test")
        .await
        .unwrap();
    let exchange = |user: &UserId| {
        let (client, user) = (client.clone(), user.clone());
        async move {
            let krw = Krw::parse("1400000").unwrap();
            let done = fxctl::exchange(&client, user, krw, None, None, Some(DEADLINE_MS))
                .await
                .unwrap();
            (done.saga_id, done.outcome.unwrap().state)
        }
    };

    let (completed, state) = exchange(&alice).await;
    assert_eq!(state, "COMPLETED");
    let kinds = [
        "exchange.requested",
        "krw.held",
        "trade.filled",
        "usd.credited",
        "krw.committed",
    ];
    let (events, spans) = trace_of(&js, &received, completed, &kinds).await;
    assert_one_chained_trace(completed, &events, &spans);

    let (compensated, state) = exchange(&dave).await;
    assert_eq!(state, "COMPENSATED");
    let kinds = [
        "exchange.requested",
        "krw.held",
        "trade.filled",
        "usd.credit_failed",
        "trade.cancelled",
        "krw.released",
        "trade.reversed",
    ];
    let (events, spans) = trace_of(&js, &received, compensated, &kinds).await;
    assert_one_chained_trace(compensated, &events, &spans);
    // trade.cancelled is handled by fx-krw (the release), fx-trade (the reversal at the venue)
    // and fx-usd: one span at each, each the parent of what its own service emitted.
    let cancelled = compensated.event_id(EventKind::TradeCancelled);
    let handlers: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.event_id == cancelled)
        .map(|s| s.service.as_str())
        .collect();
    assert_eq!(handlers, BTreeSet::from(["fx-krw", "fx-trade", "fx-usd"]));

    drop(services);
    receiver.abort();
}
