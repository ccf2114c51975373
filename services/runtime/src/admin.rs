//! Admin request/reply over NATS micro services, so `nats micro ls|info|stats` shows them.
//!
//! Subjects are `fxadmin.<service>.<endpoint>`, deliberately outside `fx.>`: the `FX` stream
//! would otherwise capture the requests and answer them with a PubAck.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tracing::{info, warn};

use events::{partition_of, Partitioning, UserId};

use crate::{Result, RuntimeError, Store};

/// Prefix of every admin subject.
pub const ADMIN_PREFIX: &str = "fxadmin";
/// Request header naming who asks (journaled with deposits, freezes and unfreezes).
pub const ACTOR_HEADER: &str = "Fx-Actor";

/// A refused admin request: `code` follows HTTP (400 bad request, 404 unknown, 500 failure).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    /// HTTP-like status code.
    pub code: usize,
    /// What went wrong and what to do.
    pub message: String,
}

impl AdminError {
    /// A 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> AdminError {
        AdminError {
            code: 400,
            message: message.into(),
        }
    }

    /// A 404: the user or record does not exist.
    pub fn not_found(message: impl Into<String>) -> AdminError {
        AdminError {
            code: 404,
            message: message.into(),
        }
    }

    /// A 500: the service failed; retrying may help.
    pub fn internal(e: impl std::fmt::Display) -> AdminError {
        AdminError {
            code: 500,
            message: e.to_string(),
        }
    }
}

/// One admin request: its JSON body and the actor that sent it.
#[derive(Clone, Debug)]
pub struct AdminRequest {
    /// The request body (JSON).
    pub payload: Bytes,
    /// `Fx-Actor` header, or `unknown`.
    pub actor: String,
}

impl AdminRequest {
    /// Decodes the body as `T`, or a 400 that says what is wrong.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> std::result::Result<T, AdminError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| AdminError::bad_request(format!("request body: {e}")))
    }
}

/// The future an endpoint handler returns: a JSON reply or an error.
pub type AdminFuture =
    Pin<Box<dyn Future<Output = std::result::Result<serde_json::Value, AdminError>> + Send>>;
/// An endpoint handler.
pub type AdminHandler = Arc<dyn Fn(AdminRequest) -> AdminFuture + Send + Sync>;

/// The 421 (misdirected) answer of an instance asked about a user of another partition.
fn misdirected(
    service: &str,
    partitioning: Partitioning,
    body: &[u8],
) -> std::result::Result<(), AdminError> {
    if !partitioning.is_partitioned() {
        return Ok(());
    }
    let user = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("user_id")?.as_str().map(str::to_owned))
        .and_then(|u| UserId::parse(&u).ok());
    match user {
        Some(user) if !partitioning.owns(&user) => Err(AdminError {
            code: 421,
            message: format!(
                "user {user} belongs to partition {} of {}; this is fx-{service} {partitioning} \
                 (fxctl routes by itself: check that it reaches the same broker)",
                partition_of(&user, partitioning.count()),
                partitioning.count()
            ),
        }),
        _ => Ok(()),
    }
}

/// Registers the micro service `fx-<service>` with one endpoint per `(name, handler)` on
/// `fxadmin.<service>.<name>` (`fxadmin.<service>.p<k>.<name>` for partition `k`), and serves
/// them until the returned future is dropped. A partitioned instance answers 421 for a
/// `user_id` it does not own, before the handler runs.
///
/// Every answer leaves only once `store` holds durably what it was read from: the handler's
/// own writes, and whatever the consumer had committed that the handler read. An operator
/// acts on the answer (fxctl's refuse-credit asks fx-krw whether the saga's KRW is held), so a
/// crash must not take back what it said; the simulation found that race on a read that had
/// answered from a hold not yet flushed.
pub async fn serve_admin(
    client: async_nats::Client,
    store: Arc<Store>,
    service: &'static str,
    partitioning: Partitioning,
    description: &str,
    endpoints: Vec<(&'static str, AdminHandler)>,
) -> Result<impl Future<Output = ()>> {
    let svc = client
        .service_builder()
        .description(description)
        .metadata(
            [
                ("partition".to_owned(), partitioning.index().to_string()),
                ("partitions".to_owned(), partitioning.count().to_string()),
            ]
            .into(),
        )
        .start(format!("fx-{service}"), env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| RuntimeError::js("start admin service", e))?;
    let group_subject = partitioning.admin_group(ADMIN_PREFIX, service);
    let group = svc.group(group_subject.clone());
    let mut tasks = Vec::new();
    for (name, handler) in endpoints {
        let store = store.clone();
        let mut endpoint = group
            .endpoint(name)
            .await
            .map_err(|e| RuntimeError::js("add admin endpoint", e))?;
        tasks.push(async move {
            while let Some(req) = endpoint.next().await {
                let actor = req
                    .message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(ACTOR_HEADER))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_else(|| "unknown".to_owned());
                let request = AdminRequest {
                    payload: req.message.payload.clone(),
                    actor,
                };
                let answer = match misdirected(service, partitioning, &request.payload) {
                    Ok(()) => match handler(request).await {
                        Ok(v) => store.flush().await.map(|_| v).map_err(AdminError::internal),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                let reply = match answer {
                    Ok(v) => Ok(Bytes::from(serde_json::to_vec(&v).expect("JSON value"))),
                    Err(e) => Err(async_nats::service::error::Error {
                        status: e.message,
                        code: e.code,
                    }),
                };
                if let Err(e) = req.respond(reply).await {
                    warn!(service, endpoint = name, error = %e, "admin reply not sent");
                }
            }
        });
    }
    info!(service, "admin endpoints on {group_subject}.*");
    Ok(async move {
        // Keep the service registered as long as this future lives.
        let _svc = svc;
        futures::future::join_all(tasks).await;
    })
}

/// Wraps an async closure as an [`AdminHandler`].
pub fn handler<F, Fut>(f: F) -> AdminHandler
where
    F: Fn(AdminRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<serde_json::Value, AdminError>> + Send + 'static,
{
    Arc::new(move |r| Box::pin(f(r)))
}

/// How far a long admin job (an audit) has got: sagas checked so far. Cheap to bump from the
/// job's own thread and to read from a status request.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    /// Counts `n` more items done.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Items done so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The last (or running) job of a [`job_handler`] endpoint.
struct Job {
    id: u64,
    started: Instant,
    progress: Progress,
    /// `None` while it runs.
    outcome: Option<std::result::Result<serde_json::Value, AdminError>>,
    elapsed: Duration,
}

impl Job {
    fn status(&self) -> std::result::Result<serde_json::Value, AdminError> {
        let elapsed = match self.outcome {
            None => self.started.elapsed(),
            Some(_) => self.elapsed,
        };
        let mut v = serde_json::json!({
            "job": self.id,
            "state": if self.outcome.is_some() { "done" } else { "running" },
            "done": self.progress.get(),
            "elapsed_ms": elapsed.as_millis() as u64,
        });
        match &self.outcome {
            None => {}
            Some(Ok(result)) => v["result"] = result.clone(),
            Some(Err(e)) => return Err(e.clone()),
        }
        Ok(v)
    }
}

/// The body of a request to a [`job_handler`] endpoint: empty to start a job (or join the one
/// running), `{"job": N}` for the state of job `N`.
#[derive(serde::Deserialize, Default)]
struct JobRequest {
    job: Option<u64>,
}

/// An endpoint for a long operation (an audit of a large store): a request starts it in the
/// background, or joins the one already running, and answers at once with its progress; a
/// request naming the job answers its progress until it is done, then its result (kept until
/// the next job starts). So a long audit is never mistaken for a service that does not answer,
/// and every other endpoint, and the consumer, keep serving while it runs. [`request_job_to`]
/// is the client side.
pub fn job_handler<F, Fut>(run: F) -> AdminHandler
where
    F: Fn(Progress) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<serde_json::Value, AdminError>> + Send + 'static,
{
    let last: Arc<Mutex<Option<Job>>> = Arc::default();
    let run = Arc::new(run);
    handler(move |req: AdminRequest| {
        let last = last.clone();
        let run = run.clone();
        async move {
            let ask: JobRequest = if req.payload.iter().all(u8::is_ascii_whitespace) {
                JobRequest::default()
            } else {
                req.json()?
            };
            let mut guard = last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = ask.job {
                return match guard.as_ref() {
                    Some(job) if job.id == id => job.status(),
                    _ => Err(AdminError::not_found(format!(
                        "no job {id} here (the service may have restarted); ask again without a job id to start one"
                    ))),
                };
            }
            if let Some(job) = guard.as_ref().filter(|j| j.outcome.is_none()) {
                // Joined, not started: it began before this request, so a caller that wants an
                // audit of what it just did waits for it and then starts its own.
                let mut status = job.status()?;
                status["joined"] = true.into();
                return Ok(status);
            }
            let id = guard.as_ref().map_or(1, |j| j.id + 1);
            let progress = Progress::default();
            *guard = Some(Job {
                id,
                started: Instant::now(),
                progress: progress.clone(),
                outcome: None,
                elapsed: Duration::ZERO,
            });
            let status = guard.as_ref().expect("just set").status();
            drop(guard);
            let last = last.clone();
            tokio::spawn(async move {
                let outcome = run(progress).await;
                let mut guard = last.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(job) = guard.as_mut().filter(|j| j.id == id) {
                    job.elapsed = job.started.elapsed();
                    job.outcome = Some(outcome);
                }
            });
            status
        }
    })
}

/// Runs `walk` (an audit) over `store` on a blocking thread, so the async workers keep serving,
/// counting on `progress`. Also says whether the store committed anything during the walk: an
/// audit reads its trees one after another, not a snapshot, so a difference found while
/// sagas were in flight may be one of them, and only a walk of a store at rest is exact.
pub async fn walk_store<T: Send + 'static>(
    store: Arc<crate::Store>,
    progress: Progress,
    walk: impl FnOnce(&crate::Store, &Progress) -> Result<T> + Send + 'static,
) -> std::result::Result<(T, bool), AdminError> {
    tokio::task::spawn_blocking(move || {
        let before = store.commits();
        let found = walk(&store, &progress)?;
        Ok((found, store.commits() != before))
    })
    .await
    .map_err(AdminError::internal)?
    .map_err(|e: RuntimeError| AdminError::internal(e))
}

/// The field of an audit report that says the store changed during its walk
/// ([`crate::ledger::AuditReport::store_changed_during_audit`]).
pub const CHANGED_DURING_AUDIT: &str = "store_changed_during_audit";

/// An audit report as JSON, saying whether the store changed during its walk.
pub fn audit_json<F: Serialize>(
    mut report: crate::ledger::AuditReport<F>,
    changed: bool,
) -> std::result::Result<serde_json::Value, AdminError> {
    report.store_changed_during_audit = changed;
    serde_json::to_value(report).map_err(AdminError::internal)
}

/// How often [`request_job_to`] asks a running job how far it got.
pub const JOB_POLL_MS: u64 = 250;

/// Runs a [`job_handler`] endpoint to its end: starts (or joins) the job, then asks for its
/// state every [`JOB_POLL_MS`], calling `progress(done, elapsed_ms)` on each answer, and returns
/// the job's result. Each request is answered at once, so the request timeout still tells a
/// service that is gone from one that is busy.
pub async fn request_job_to(
    client: &async_nats::Client,
    service: &str,
    partition: Partitioning,
    endpoint: &str,
    actor: &str,
    mut progress: impl FnMut(u64, u64),
) -> std::result::Result<serde_json::Value, AdminError> {
    let start = serde_json::json!({});
    let mut body = start.clone();
    // A job that was already running when asked began before this call: follow it to its end,
    // then start one of our own.
    let mut joined = false;
    loop {
        let state = request_to(client, service, partition, endpoint, actor, &body).await?;
        if body == start {
            joined = state["joined"] == true;
        }
        if !joined {
            progress(
                state["done"].as_u64().unwrap_or(0),
                state["elapsed_ms"].as_u64().unwrap_or(0),
            );
        }
        if state["state"] == "done" {
            if joined {
                body = start.clone();
                continue;
            }
            return Ok(state["result"].clone());
        }
        body = serde_json::json!({ "job": state["job"] });
        // A poll period, not a wait for a condition that could be awaited: the job runs in
        // another process.
        tokio::time::sleep(Duration::from_millis(JOB_POLL_MS)).await;
    }
}

/// Sends an admin request to an unpartitioned service and decodes the reply; a service error
/// becomes `AdminError`.
pub async fn request(
    client: &async_nats::Client,
    service: &str,
    endpoint: &str,
    actor: &str,
    body: &serde_json::Value,
) -> std::result::Result<serde_json::Value, AdminError> {
    request_to(client, service, Partitioning::SINGLE, endpoint, actor, body).await
}

/// Sends an admin request to one partition's instance of `service`.
pub async fn request_to(
    client: &async_nats::Client,
    service: &str,
    partition: Partitioning,
    endpoint: &str,
    actor: &str,
    body: &serde_json::Value,
) -> std::result::Result<serde_json::Value, AdminError> {
    let subject = format!(
        "{}.{endpoint}",
        partition.admin_group(ADMIN_PREFIX, service)
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ACTOR_HEADER, actor);
    let reply = client
        .request_with_headers(
            subject.clone(),
            headers,
            Bytes::from(serde_json::to_vec(body).expect("JSON value")),
        )
        .await
        .map_err(|e| AdminError {
            code: 503,
            message: if partition.is_partitioned() {
                format!(
                    "no answer on {subject}: {e}; is fx-{service} with FX_PARTITION={} running?",
                    partition.index()
                )
            } else {
                format!("no answer on {subject}: {e}; is fx-{service} running?")
            },
        })?;
    if let Some(h) = &reply.headers {
        if let Some(err) = h.get("Nats-Service-Error") {
            let code = h
                .get("Nats-Service-Error-Code")
                .and_then(|c| c.as_str().parse().ok())
                .unwrap_or(500);
            return Err(AdminError {
                code,
                message: err.as_str().to_owned(),
            });
        }
    }
    serde_json::from_slice(&reply.payload)
        .map_err(|e| AdminError::internal(format!("reply from {subject} is not JSON: {e}")))
}
