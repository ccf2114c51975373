//! The HTTP surface: dashboard, timeline pages, JSON API, and the standard `/healthz`,
//! `/readyz`, `/metrics` routes of the runtime.
//!
//! Every route only reads (GET; anything else is 405). With a token (`FX_TRACKER_TOKEN`), the
//! dashboard, the saga pages and `/api/*` require it, as `Authorization: Bearer <token>` or,
//! for a browser, HTTP Basic with the token as the password (any user name); a request without
//! it gets 401 (JSON on `/api/*`). `/healthz`, `/readyz` and `/metrics` stay open: they carry
//! no user, saga or amount, and health checks and scrapers reach them without a secret.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use async_nats::jetstream::stream;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use events::{SagaId, UserId};
use runtime::telemetry::{standard_routes, Health};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::diagram::DeadLetter;
use crate::html::{self, Body, Dashboard};
use crate::model::{Flag, ListQuery, ReadModel};
use crate::projection::{reason_code, reason_codes, SagaState};
use crate::view::SagaView;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use runtime::broker::dlq_headers;
use std::convert::Infallible;
use std::time::Duration;

/// Sagas listed under "Recent sagas" on the dashboard.
const DASHBOARD_RECENT: usize = 50;
/// Stuck and inconsistent sagas listed on the dashboard (the counts show the totals).
const DASHBOARD_FLAGGED: usize = 50;
/// Shortest time between two pushes of the live dashboard to one page: under heavy load the
/// page changes every batch, and a person reads no faster than this.
const LIVE_MIN_INTERVAL_MS: u64 = 500;
/// Longest time between two pushes when nothing new is projected (the STUCK flags and the
/// charts' hour move with the clock).
const LIVE_REFRESH_MS: u64 = 5_000;
/// Default page size of `/api/sagas`.
const DEFAULT_PAGE: usize = 50;

#[derive(Clone)]
struct AppState {
    model: Arc<ReadModel>,
    /// For timeline bodies (direct get by sequence); `None` in tests that run no broker.
    stream: Option<stream::Stream>,
    /// `FX_DLQ`, for a saga's dead letters on its page.
    dlq: Option<stream::Stream>,
}

/// Newest dead letters a saga page reads to find the saga's own: `FX_DLQ` is meant to stay
/// near empty (every entry is an operator's to-do), and this bounds what one page costs.
const DLQ_SCAN: u64 = 1_000;
/// Dead letters read at once.
const DLQ_READS_IN_FLIGHT: usize = 32;

/// The secret that guards the dashboard and the API (`FX_TRACKER_TOKEN`). Its `Debug` never
/// shows the value, so it cannot leak into a log through a config dump.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// A token; `None` when empty (an empty token would guard nothing).
    pub fn new(token: impl Into<String>) -> Option<ApiToken> {
        let token = token.into();
        (!token.is_empty()).then_some(ApiToken(token))
    }

    /// Whether a request's `Authorization` header carries this token, as `Bearer <token>` or
    /// as HTTP Basic with the token as the password. Compared in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return same_bytes(credentials.as_bytes(), self.0.as_bytes());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
                return false;
            };
            let password = match decoded.iter().position(|&b| b == b':') {
                Some(i) => &decoded[i + 1..],
                None => return false,
            };
            return same_bytes(password, self.0.as_bytes());
        }
        false
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tracker's router: its own pages merged with the runtime's standard routes. With a
/// token, the pages and the API require it (see the module docs).
pub fn router(
    model: Arc<ReadModel>,
    stream: Option<stream::Stream>,
    dlq: Option<stream::Stream>,
    health: Health,
    token: Option<ApiToken>,
) -> Router {
    let pages = Router::new()
        .route("/", get(dashboard))
        .route("/live", get(live))
        .route("/sagas/{id}", get(saga_page))
        .route("/api/sagas", get(list_sagas))
        .route("/api/sagas/{id}", get(get_saga))
        .route("/api/stats", get(stats))
        .with_state(AppState { model, stream, dlq });
    let pages = match token {
        Some(token) => pages.route_layer(middleware::from_fn_with_state(token, require_token)),
        None => pages,
    };
    pages.merge(standard_routes(health))
}

/// Lets a request through only with the token; otherwise 401 with a challenge: Bearer and a
/// JSON body on `/api/*`, Basic (so a browser asks for it) and a page elsewhere.
async fn require_token(State(token): State<ApiToken>, request: Request, next: Next) -> Response {
    if token.admits(request.headers()) {
        return next.run(request).await;
    }
    let api = request.uri().path().starts_with("/api/");
    let mut response = if api {
        json_error(
            StatusCode::UNAUTHORIZED,
            "this tracker requires a token: send `Authorization: Bearer <FX_TRACKER_TOKEN>` \
             (fxctl: --tracker-token or FX_TRACKER_TOKEN)",
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Html(html::message_page(
                "Token required",
                "This tracker requires its token (FX_TRACKER_TOKEN): sign in with any user \
                 name and the token as the password.",
            )),
        )
            .into_response()
    };
    let challenge = if api {
        "Bearer realm=\"fx-tracker\""
    } else {
        "Basic realm=\"fx-tracker\", charset=\"UTF-8\""
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

fn internal(e: crate::TrackerError) -> Response {
    tracing::error!(error = %e, "request failed");
    json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// What the dashboard shows for these query parameters (a search when any search parameter
/// is given), as of now.
fn dashboard_data(
    model: &ReadModel,
    params: &HashMap<String, String>,
) -> Result<Dashboard, crate::TrackerError> {
    let stats = model.stats();
    let (stuck, _) = model.stuck(DASHBOARD_FLAGGED);
    let (inconsistent, _) = model.inconsistent(DASHBOARD_FLAGGED)?;
    let recent = model
        .list(&ListQuery {
            limit: DASHBOARD_RECENT,
            ..ListQuery::default()
        })?
        .sagas;
    let reversals_pending = model
        .list(&ListQuery {
            limit: DASHBOARD_FLAGGED,
            flag: Some(Flag::ReversalPending),
            ..ListQuery::default()
        })?
        .sagas;
    let searched = html::SEARCH_PARAMS
        .iter()
        .chain(&["cursor"])
        .any(|k| params.get(*k).is_some_and(|v| !v.trim().is_empty()));
    let search = if searched {
        let found = match list_query(params) {
            Ok(q) => {
                let page = model.list(&ListQuery {
                    limit: q.limit.min(DASHBOARD_RECENT),
                    ..q
                })?;
                Ok((page.sagas, page.next_cursor))
            }
            Err(why) => Err(why),
        };
        let mut given: Vec<(String, String)> =
            params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        given.sort();
        Some(html::Search {
            params: given,
            found,
        })
    } else {
        None
    };
    let now_ms = model.now_ms();
    Ok(Dashboard {
        minutes: model.minutes().last_hour(now_ms),
        durations: model.aggregates().durations,
        stats,
        stuck,
        inconsistent,
        reversals_pending,
        recent,
        search,
        now_ms,
        stuck_after_ms: model.stuck_after_ms(),
    })
}

async fn dashboard(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    match dashboard_data(&app.model, &params) {
        Ok(d) => Html(html::dashboard(&d)).into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /live`: the dashboard's live part (for the same query as the page), pushed as a
/// server-sent event `dashboard` whenever the tracker has projected more, at most every
/// [`LIVE_MIN_INTERVAL_MS`], and at least every [`LIVE_REFRESH_MS`] (STUCK moves with the
/// clock even when nothing arrives).
async fn live(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let processed = app.model.subscribe();
    let stream = futures::stream::unfold(
        (app, params, processed),
        |(app, params, mut processed)| async move {
            // A deliberate rate limit, not a wait for a condition: at most one render per
            // viewer per interval, however fast events arrive (the wait for new events follows).
            tokio::time::sleep(Duration::from_millis(LIVE_MIN_INTERVAL_MS)).await;
            let waited =
                tokio::time::timeout(Duration::from_millis(LIVE_REFRESH_MS), processed.changed())
                    .await;
            if let Ok(Err(_)) = waited {
                return None; // the model is gone: the tracker is stopping
            }
            processed.borrow_and_update();
            let html = match dashboard_data(&app.model, &params) {
                Ok(d) => html::dashboard_live(&d),
                Err(e) => {
                    tracing::error!(error = %e, "rendering the live dashboard failed");
                    format!("<p class=\"error\">{}</p>", html::esc(&e.to_string()))
                }
            };
            let event = SseEvent::default().event("dashboard").data(html);
            Some((Ok(event), (app, params, processed)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn saga_page(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let not_found = |why: String| {
        (
            StatusCode::NOT_FOUND,
            Html(html::message_page("Saga not found", &why)),
        )
            .into_response()
    };
    let Ok(saga_id) = SagaId::parse(&id) else {
        return not_found(format!("{id:?} is not a saga id (a hyphenated UUID)"));
    };
    let rec = match app.model.get(saga_id) {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(format!("the tracker has seen no event of saga {saga_id}")),
        Err(e) => return internal(e),
    };
    let mut bodies = Vec::with_capacity(rec.timeline.len());
    for e in &rec.timeline {
        bodies.push(match &app.stream {
            Some(s) => fetch_body(s, e.seq).await,
            None => None,
        });
    }
    let dead = match &app.dlq {
        Some(dlq) => dead_letters(dlq, saga_id).await,
        None => Vec::new(),
    };
    Html(html::saga_page(
        &rec,
        &bodies,
        &dead,
        app.model.now_ms(),
        app.model.stuck_after_ms(),
    ))
    .into_response()
}

/// Reads one message by sequence: a direct get (any replica answers), else the API get.
async fn fetch_raw(
    stream: &stream::Stream,
    seq: u64,
) -> Option<async_nats::jetstream::message::StreamMessage> {
    match stream.direct_get(seq).await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!(seq, error = %e, "direct get failed; trying the API get");
            stream.get_raw_message(seq).await.ok()
        }
    }
}

/// Reads one message's body by sequence.
async fn fetch_body(stream: &stream::Stream, seq: u64) -> Option<Body> {
    let msg = fetch_raw(stream, seq).await?;
    Some(Body {
        subject: msg.subject.to_string(),
        text: String::from_utf8_lossy(&msg.payload).into_owned(),
    })
}

/// The saga's dead letters among the newest [`DLQ_SCAN`] of `FX_DLQ`: those whose original
/// headers carry its id (`Fx-Saga-Id`) or whose body names it.
async fn dead_letters(dlq: &stream::Stream, saga_id: SagaId) -> Vec<DeadLetter> {
    use futures::StreamExt;
    let Ok(info) = dlq.get_info().await else {
        return Vec::new();
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    if info.state.messages == 0 {
        return Vec::new();
    }
    let from = first.max(last.saturating_sub(DLQ_SCAN - 1));
    let id = saga_id.to_string();
    futures::stream::iter(from..=last)
        .map(|seq| fetch_raw(dlq, seq))
        .buffered(DLQ_READS_IN_FLIGHT)
        .filter_map(|m| {
            let id = id.clone();
            async move {
                let m = m?;
                let header = |k: &str| m.headers.get(k).map(|v| v.as_str().to_owned());
                let ours = header(events::headers::SAGA_ID).is_some_and(|h| h == id)
                    || String::from_utf8_lossy(&m.payload).contains(&id);
                ours.then(|| DeadLetter {
                    service: header(dlq_headers::SERVICE).unwrap_or_default(),
                    reason: header(dlq_headers::REASON).unwrap_or_default(),
                    stream_seq: header(dlq_headers::STREAM_SEQ).and_then(|s| s.parse().ok()),
                })
            }
        })
        .collect()
        .await
}

async fn get_saga(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(saga_id) = SagaId::parse(&id) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("no saga {id:?}: saga ids are hyphenated UUIDs"),
        );
    };
    match app.model.get(saga_id) {
        Ok(Some(rec)) => {
            let mut view = SagaView::of(&rec, app.model.now_ms(), app.model.stuck_after_ms(), true);
            // An operator's intervention shows who acted and why: its body, from the stream.
            if let (Some(stream), Some(events)) = (&app.stream, view.events.as_mut()) {
                for (entry, v) in rec.timeline.iter().zip(events.iter_mut()) {
                    if entry.kind.is_intervention() {
                        v.intervention = fetch_body(stream, entry.seq)
                            .await
                            .and_then(|b| serde_json::from_str(&b.text).ok());
                    }
                }
            }
            Json(view).into_response()
        }
        Ok(None) => json_error(
            StatusCode::NOT_FOUND,
            format!("no saga {saga_id}: the tracker has seen no event of it"),
        ),
        Err(e) => internal(e),
    }
}

/// The `/api/sagas` document.
#[derive(Serialize)]
struct ListBody {
    sagas: Vec<SagaView>,
    /// Pass as `cursor` for the next page; `null` at the end.
    next_cursor: Option<String>,
}

/// Reads a search from query parameters (`/api/sagas` and the dashboard's search form):
/// `state`, `user`, `reason`, `flag`, `from`, `to`, `min_krw`, `max_krw`, `cursor`, `limit`.
/// Empty values are absent. The error says what is wrong with which parameter.
pub fn list_query(params: &HashMap<String, String>) -> Result<ListQuery, String> {
    let get = |k: &str| params.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let state = match get("state") {
        None => None,
        Some(s) => Some(SagaState::parse(s).ok_or_else(|| {
            let names: Vec<&str> = SagaState::ALL.iter().map(|s| s.as_str()).collect();
            format!("state {s:?} is not one of {}", names.join(", "))
        })?),
    };
    let flag = match get("flag") {
        None => None,
        Some(f) => Some(Flag::parse(f).ok_or_else(|| {
            let names: Vec<&str> = Flag::ALL.iter().map(|f| f.as_str()).collect();
            format!("flag {f:?} is not one of {}", names.join(", "))
        })?),
    };
    let reason =
        match get("reason") {
            None => None,
            Some(r) => Some(reason_code(r).ok_or_else(|| {
                format!("reason {r:?} is not one of {}", reason_codes().join(", "))
            })?),
        };
    let user = get("user")
        .map(UserId::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let time = |k: &'static str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| parse_time(v).map_err(|e| format!("{k}: {e}")))
            .transpose()
    };
    let krw = |k: &'static str| -> Result<Option<Decimal>, String> {
        get(k)
            .map(|v| {
                Decimal::from_str(v)
                    .map_err(|_| format!("{k} {v:?} is not an amount of KRW like 1500000"))
            })
            .transpose()
    };
    let limit = get("limit")
        .map(str::parse::<usize>)
        .transpose()
        .map_err(|_| {
            format!(
                "limit must be a number from 1 to {}",
                crate::model::MAX_PAGE
            )
        })?
        .unwrap_or(DEFAULT_PAGE);
    let cursor = get("cursor")
        .map(str::parse::<u64>)
        .transpose()
        .map_err(|_| "cursor must be a next_cursor value from a previous page".to_owned())?;
    Ok(ListQuery {
        state,
        user,
        reason,
        flag,
        from_ms: time("from")?,
        to_ms: time("to")?,
        min_krw: krw("min_krw")?,
        max_krw: krw("max_krw")?,
        limit,
        cursor,
    })
}

/// A time as `from`/`to` take it: ms since the Unix epoch, RFC 3339
/// (`2026-11-26T00:32:05Z`), or a date and time without a zone, read as UTC
/// (`2026-11-26T00:32`, what a browser's datetime-local field sends).
pub fn parse_time(v: &str) -> Result<u64, String> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(v, &Rfc3339)
        .or_else(|_| {
            time::PrimitiveDateTime::parse(
                v,
                format_description!("[year]-[month]-[day]T[hour]:[minute]"),
            )
            .or_else(|_| {
                time::PrimitiveDateTime::parse(
                    v,
                    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
                )
            })
            .map(|t| t.assume_utc())
        })
        .map_err(|_| {
            format!(
                "{v:?} is not a time: give ms since the epoch, 2026-11-26T00:32:05Z, \
                 or 2026-11-26T00:32 (UTC)"
            )
        })?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("{v:?} is before 1970"))
}

async fn list_sagas(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = match list_query(&params) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let page = match app.model.list(&query) {
        Ok(p) => p,
        Err(e) => return internal(e),
    };
    let now = app.model.now_ms();
    let after = app.model.stuck_after_ms();
    Json(ListBody {
        sagas: page
            .sagas
            .iter()
            .map(|r| SagaView::of(r, now, after, false))
            .collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
    .into_response()
}

async fn stats(State(app): State<AppState>) -> Response {
    Json(app.model.stats()).into_response()
}
