//! The HTTP JSON API (docs/venue.md is its public description).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use events::Rate;
use serde::{Deserialize, Serialize};
use serde_json::json;
use trade::{ClientOrderId, Execution, VenueOrder};

use crate::error::VenueServerError;
use crate::service::{FxVenue, Placed};

/// Default `limit` of `GET /v1/executions`.
pub const DEFAULT_PAGE: usize = 500;

/// The answer to an order that the venue received and decided.
#[derive(Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum OrderAnswer {
    Executed { execution: Execution },
    LimitNotMet { rate: Rate },
}

/// A page of the execution listing.
#[derive(Serialize)]
struct ExecutionsPage {
    executions: Vec<Execution>,
    last_seq: u64,
}

#[derive(Deserialize)]
struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// An error answer: `{"error": "<machine reason>", "message": "<sentence>"}`.
struct ApiError {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            reason,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            reason: "not_found",
            message: message.into(),
        }
    }
}

impl From<VenueServerError> for ApiError {
    /// The venue's own trouble. An order that got this answer may have executed (the
    /// execution could not be confirmed durable): the client must treat it as unknown.
    fn from(e: VenueServerError) -> ApiError {
        tracing::error!(error = %e, "request failed inside the venue");
        let reason = match e {
            VenueServerError::NotDurable(_) => "not_durable",
            _ => "internal",
        };
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.reason, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

/// Every route: the `/v1` API (behind the simulated latency) plus `/healthz`, `/readyz` and
/// `/metrics`.
pub fn router(venue: Arc<FxVenue>) -> Router {
    let health = runtime::telemetry::Health::default();
    // The router exists only once the store is open, so the venue is ready as soon as it
    // answers.
    health.set_ready(true);
    let v1 = Router::new()
        .route("/v1/orders", post(place_order))
        .route("/v1/orders/{client_order_id}", get(lookup_order))
        .route("/v1/executions", get(list_executions))
        .route_layer(middleware::from_fn_with_state(venue.clone(), timed))
        .with_state(venue);
    v1.merge(runtime::telemetry::standard_routes(health))
        // Not "not_found": a client with a wrong base URL must not read "no such execution".
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                reason: "no_such_route",
                message: "no such route; see docs/venue.md".into(),
            }
        })
}

/// Records `fx_venue_request_seconds` and holds the answer back by `FX_VENUE_LATENCY_MS`
/// (after the work, holding no lock: an order executes, then its answer is slow).
async fn timed(
    State(venue): State<Arc<FxVenue>>,
    path: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = path.as_str().to_owned();
    let response = next.run(request).await;
    if venue.latency_ms() > 0 {
        tokio::time::sleep(Duration::from_millis(venue.latency_ms())).await;
    }
    metrics::histogram!("fx_venue_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn place_order(State(venue): State<Arc<FxVenue>>, body: Bytes) -> Result<Response, ApiError> {
    let order: VenueOrder = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_order", format!("the order is not valid: {e}"))
    })?;
    let answer = match venue.place(&order).await? {
        Placed::Executed(execution) | Placed::Repeated(execution) => {
            OrderAnswer::Executed { execution }
        }
        Placed::LimitNotMet(rate) => OrderAnswer::LimitNotMet { rate },
        Placed::Failed(message) => {
            return Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "failed",
                message,
            })
        }
    };
    Ok(Json(answer).into_response())
}

async fn lookup_order(
    State(venue): State<Arc<FxVenue>>,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    let id = ClientOrderId::parse(&id)
        .map_err(|message| ApiError::bad_request("invalid_client_order_id", message))?;
    match venue.lookup(&id).await? {
        Some(execution) => Ok(Json(execution)),
        None => Err(ApiError::not_found(format!(
            "no order with client order id {id} executed"
        ))),
    }
}

async fn list_executions(
    State(venue): State<Arc<FxVenue>>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<ExecutionsPage>, ApiError> {
    let Query(page) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("after and limit must be whole numbers: {}", e.body_text()),
        )
    })?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be at least 1",
        ));
    }
    let (executions, last_seq) = venue.executions(page.after.unwrap_or(0), limit).await?;
    Ok(Json(ExecutionsPage {
        executions,
        last_seq,
    }))
}
