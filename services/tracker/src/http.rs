//! The HTTP surface: dashboard, timeline pages, JSON API, and the standard `/healthz`,
//! `/readyz`, `/metrics` routes of the runtime.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::stream;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use events::{SagaId, UserId};
use runtime::telemetry::{standard_routes, Health};
use serde::Serialize;

use crate::html::{self, Body, Dashboard};
use crate::model::{ListQuery, ReadModel};
use crate::projection::SagaState;
use crate::view::SagaView;

/// Sagas listed under "Recent sagas" on the dashboard.
const DASHBOARD_RECENT: usize = 50;
/// Stuck and inconsistent sagas listed on the dashboard (the counts show the totals).
const DASHBOARD_FLAGGED: usize = 50;
/// Default page size of `/api/sagas`.
const DEFAULT_PAGE: usize = 50;

#[derive(Clone)]
struct AppState {
    model: Arc<ReadModel>,
    /// For timeline bodies (direct get by sequence); `None` in tests that run no broker.
    stream: Option<stream::Stream>,
}

/// The tracker's router: its own pages merged with the runtime's standard routes.
pub fn router(model: Arc<ReadModel>, stream: Option<stream::Stream>, health: Health) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/sagas/{id}", get(saga_page))
        .route("/api/sagas", get(list_sagas))
        .route("/api/sagas/{id}", get(get_saga))
        .route("/api/stats", get(stats))
        .with_state(AppState { model, stream })
        .merge(standard_routes(health))
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

async fn dashboard(State(app): State<AppState>) -> Response {
    let model = &app.model;
    let stats = model.stats();
    let (stuck, _) = model.stuck(DASHBOARD_FLAGGED);
    let (inconsistent, _) = match model.inconsistent(DASHBOARD_FLAGGED) {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let recent = match model.list(&ListQuery {
        limit: DASHBOARD_RECENT,
        ..ListQuery::default()
    }) {
        Ok(p) => p.sagas,
        Err(e) => return internal(e),
    };
    Html(html::dashboard(&Dashboard {
        stats: &stats,
        stuck: &stuck,
        inconsistent: &inconsistent,
        recent: &recent,
        now_ms: model.now_ms(),
        stuck_after_ms: model.stuck_after_ms(),
    }))
    .into_response()
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
    Html(html::saga_page(
        &rec,
        &bodies,
        app.model.now_ms(),
        app.model.stuck_after_ms(),
    ))
    .into_response()
}

/// Reads one message by sequence: a direct get (any replica answers), else the API get.
async fn fetch_body(stream: &stream::Stream, seq: u64) -> Option<Body> {
    let msg = match stream.direct_get(seq).await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(seq, error = %e, "direct get failed; trying the API get");
            stream.get_raw_message(seq).await.ok()?
        }
    };
    Some(Body {
        subject: msg.subject.to_string(),
        text: String::from_utf8_lossy(&msg.payload).into_owned(),
    })
}

async fn get_saga(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(saga_id) = SagaId::parse(&id) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("no saga {id:?}: saga ids are hyphenated UUIDs"),
        );
    };
    match app.model.get(saga_id) {
        Ok(Some(rec)) => Json(SagaView::of(
            &rec,
            app.model.now_ms(),
            app.model.stuck_after_ms(),
            true,
        ))
        .into_response(),
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

async fn list_sagas(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| params.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let state = match get("state").map(|s| (s, SagaState::parse(s))) {
        None => None,
        Some((_, Some(st))) => Some(st),
        Some((s, None)) => {
            let names: Vec<&str> = SagaState::ALL.iter().map(|s| s.as_str()).collect();
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("state {s:?} is not one of {}", names.join(", ")),
            );
        }
    };
    let user = match get("user").map(UserId::parse).transpose() {
        Ok(u) => u,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let limit = match get("limit").map(str::parse::<usize>).transpose() {
        Ok(l) => l.unwrap_or(DEFAULT_PAGE),
        Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "limit must be a number from 1 to {}",
                    crate::model::MAX_PAGE
                ),
            )
        }
    };
    let cursor = match get("cursor").map(str::parse::<u64>).transpose() {
        Ok(c) => c,
        Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "cursor must be a next_cursor value from a previous page",
            )
        }
    };
    let page = match app.model.list(&ListQuery {
        state,
        user,
        limit,
        cursor,
    }) {
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
