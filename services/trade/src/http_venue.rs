//! A [`Venue`] over HTTP: the client of fx-venue's API (docs/venue.md), or of any liquidity
//! provider that speaks it.
//!
//! One pooled `reqwest::Client` (keep-alive) with a connect timeout and a whole-request
//! timeout. What each failure means for an order decides its error:
//!
//! - no connection could be made (refused, unreachable, connect timeout): nothing was sent, so
//!   nothing executed: [`VenueError::Down`];
//! - an order whose connection was made but which got no complete answer (the request timeout
//!   passed, or the connection was reset or closed mid-way): its body may have reached the
//!   venue, which may have executed it: [`VenueError::Timeout`], the unknown outcome, never
//!   `Down`. A lookup or listing places nothing, so there only a timeout is a `Timeout` and any
//!   other transport failure is `Down`;
//! - `503 {"error":"failed"}`: the venue refused the order: [`VenueError::Failed`];
//! - `404 {"error":"not_found"}` on a lookup: no such execution, `Ok(None)`;
//! - anything else (another status, a body that does not parse):
//!   [`VenueError::Protocol`]. On an order that includes a `500` from a venue that could not
//!   make its execution durable, so fx-trade treats it, like every venue error, as a call whose
//!   outcome it does not know (it never books a fill without an execution, and looks up later).

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::{Client, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::venue::{ClientOrderId, Execution, OrderOutcome, Venue, VenueError, VenueOrder};
use events::Rate;

/// A venue reached over HTTP at a base URL such as `http://127.0.0.1:9104`.
pub struct HttpVenue {
    client: Client,
    base: String,
    timeout_ms: u64,
}

/// `200` to an order.
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum OrderAnswer {
    Executed { execution: Execution },
    LimitNotMet { rate: Rate },
}

/// `200` to a listing.
#[derive(Deserialize)]
struct ExecutionsPage {
    executions: Vec<Execution>,
}

/// Any error answer: `{"error": "<reason>", "message": "<sentence>"}`.
#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    message: String,
}

/// Does the call have side effects at the venue (decides what a broken connection means)?
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Order,
    Read,
}

impl HttpVenue {
    /// A client for the venue at `base_url` (`http://` or `https://`, without the `/v1`):
    /// every call must be answered within `timeout_ms`, and a connection made within
    /// `connect_timeout_ms`. Fails with [`VenueError::Protocol`] on a URL it cannot use.
    pub fn new(
        base_url: &str,
        timeout_ms: u64,
        connect_timeout_ms: u64,
    ) -> Result<HttpVenue, VenueError> {
        let base = base_url.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).map_err(|e| {
            VenueError::Protocol(format!("{base_url:?} is not a venue base URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(VenueError::Protocol(format!(
                "{base_url:?} is not an http:// or https:// base URL"
            )));
        }
        let client = Client::builder()
            .connect_timeout(Duration::from_millis(connect_timeout_ms))
            .timeout(Duration::from_millis(timeout_ms))
            // The venue is addressed directly: a proxy from the environment would turn a
            // venue that is down into a proxy's answer.
            .no_proxy()
            .build()
            .map_err(|e| VenueError::Protocol(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpVenue {
            client,
            base,
            timeout_ms,
        })
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// What a call that got no complete answer means (see the module documentation).
    fn transport_error(&self, call: Call, e: &reqwest::Error, started: Instant) -> VenueError {
        if e.is_connect() {
            return VenueError::Down;
        }
        let after_ms = if e.is_timeout() {
            self.timeout_ms
        } else {
            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
        };
        match call {
            Call::Order => VenueError::Timeout { after_ms },
            Call::Read if e.is_timeout() => VenueError::Timeout { after_ms },
            Call::Read => VenueError::Down,
        }
    }

    /// Sends `request` and reads the whole answer within the deadline.
    async fn send(
        &self,
        call: Call,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), VenueError> {
        let started = Instant::now();
        let response: Response = request
            .send()
            .await
            .map_err(|e| self.transport_error(call, &e, started))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(call, &e, started))?;
        Ok((status, body.to_vec()))
    }
}

/// Decodes a body the contract says is `T`.
fn parse<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, VenueError> {
    serde_json::from_slice(body).map_err(|e| {
        VenueError::Protocol(format!(
            "HTTP {status} with a body that does not parse ({e}): {}",
            snippet(body)
        ))
    })
}

/// The error answer's reason and message, if the body is one.
fn error_answer(body: &[u8]) -> Option<ErrorAnswer> {
    serde_json::from_slice(body).ok()
}

fn unexpected(status: StatusCode, body: &[u8]) -> VenueError {
    VenueError::Protocol(format!("unexpected HTTP {status}: {}", snippet(body)))
}

/// The start of a body, for an error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

impl Venue for HttpVenue {
    fn order<'a>(
        &'a self,
        order: &'a VenueOrder,
    ) -> BoxFuture<'a, Result<OrderOutcome, VenueError>> {
        Box::pin(async move {
            let request = self
                .client
                .post(format!("{}/v1/orders", self.base))
                .json(order);
            let (status, body) = self.send(Call::Order, request).await?;
            match status {
                StatusCode::OK => match parse(status, &body)? {
                    OrderAnswer::Executed { execution } => Ok(OrderOutcome::Executed(execution)),
                    OrderAnswer::LimitNotMet { rate } => Ok(OrderOutcome::LimitNotMet { rate }),
                },
                StatusCode::SERVICE_UNAVAILABLE => match error_answer(&body) {
                    Some(e) if e.error == "failed" => Err(VenueError::Failed(e.message)),
                    _ => Err(unexpected(status, &body)),
                },
                _ => Err(unexpected(status, &body)),
            }
        })
    }

    fn execution<'a>(
        &'a self,
        client_order_id: &'a ClientOrderId,
    ) -> BoxFuture<'a, Result<Option<Execution>, VenueError>> {
        Box::pin(async move {
            // A client order id is `[A-Za-z0-9._:-]`, all safe in a path segment.
            let request = self
                .client
                .get(format!("{}/v1/orders/{client_order_id}", self.base));
            let (status, body) = self.send(Call::Read, request).await?;
            match status {
                StatusCode::OK => parse(status, &body).map(Some),
                // Only the venue's own "no such execution": a 404 from anything else (a wrong
                // base URL, a proxy) must not read as "nothing executed".
                StatusCode::NOT_FOUND => match error_answer(&body) {
                    Some(e) if e.error == "not_found" => Ok(None),
                    _ => Err(unexpected(status, &body)),
                },
                _ => Err(unexpected(status, &body)),
            }
        })
    }

    fn executions(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Execution>, VenueError>> {
        Box::pin(async move {
            let request = self
                .client
                .get(format!("{}/v1/executions", self.base))
                .query(&[("after", after_seq), ("limit", limit as u64)]);
            let (status, body) = self.send(Call::Read, request).await?;
            match status {
                StatusCode::OK => parse::<ExecutionsPage>(status, &body).map(|p| p.executions),
                _ => Err(unexpected(status, &body)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_base_urls_are_accepted() {
        assert!(HttpVenue::new("http://127.0.0.1:9104/", 1000, 250).is_ok());
        assert_eq!(
            HttpVenue::new("http://127.0.0.1:9104/", 1000, 250)
                .unwrap()
                .base_url(),
            "http://127.0.0.1:9104"
        );
        for bad in ["127.0.0.1:9104", "nats://127.0.0.1:4222", "", "mailto:x@y"] {
            assert!(
                matches!(HttpVenue::new(bad, 1000, 250), Err(VenueError::Protocol(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn error_bodies_are_cut_for_messages() {
        let long = "x".repeat(500);
        assert_eq!(snippet(long.as_bytes()).chars().count(), 201);
        assert!(matches!(
            parse::<ExecutionsPage>(StatusCode::OK, b"<html>"),
            Err(VenueError::Protocol(m)) if m.contains("<html>")
        ));
    }
}
