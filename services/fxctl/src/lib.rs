//! fxctl: publish exchange requests, call the services' admin endpoints, inspect streams.
//!
//! Every command is a function here returning a typed result, so tests drive the same code the
//! binary runs. [`cli`] is the command line on top: per subcommand its arguments, the call and
//! the printing; `main.rs` only parses arguments, dispatches, and maps errors to exit codes.

pub mod bench;
pub mod cli;

use std::time::Duration;

use async_nats::jetstream;
use events::{
    partition_of, Event, EventKind, ExchangeRequested, Krw, Partitioning, SagaId, Usd, UserId,
};
use futures::StreamExt;
use runtime::admin::{self, AdminError};
use serde::Serialize;
use serde_json::json;

/// Why a command failed; `exit_code()` is what the process returns.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad arguments (an invalid user id or amount).
    #[error("{0}")]
    Usage(String),
    /// The broker or a service could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A service refused the request (unknown user, bad amount...).
    #[error("{0}")]
    Refused(String),
    /// The command ran, and the answer is "no" (saga not completed, audit failed).
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// 1 failed outcome, 2 usage, 3 unreachable, 4 refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Failed(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Unavailable(_) => 3,
            CtlError::Refused(_) => 4,
        }
    }
}

impl From<AdminError> for CtlError {
    fn from(e: AdminError) -> Self {
        match e.code {
            400 | 404 | 409 | 421 => CtlError::Refused(e.message),
            503 => CtlError::Unavailable(e.message),
            _ => CtlError::Failed(e.message),
        }
    }
}

/// Shorthand.
pub type CtlResult<T> = Result<T, CtlError>;

/// Connects to the broker named by `url` (with `NATS_USER`/`NATS_PASSWORD`/`NATS_CREDS`).
pub async fn connect(url: &str) -> CtlResult<async_nats::Client> {
    let mut cfg = runtime::NatsConfig::from_env().map_err(|e| CtlError::Usage(e.to_string()))?;
    cfg.urls = url.split(',').map(|s| s.trim().to_owned()).collect();
    cfg.connect_timeout_ms = 5_000;
    runtime::connect(&cfg, "fxctl").await.map_err(|e| {
        CtlError::Unavailable(format!(
            "{e}; is nats-server running? (scripts/run.sh starts one)"
        ))
    })
}

/// Parses a user id, or a usage error that says the rule.
pub fn user(s: &str) -> CtlResult<UserId> {
    UserId::parse(s).map_err(|e| CtlError::Usage(e.to_string()))
}

/// What `exchange` did.
#[derive(Clone, Debug, Serialize)]
pub struct Exchanged {
    /// The saga id (generated unless given).
    pub saga_id: SagaId,
    /// The subject the request went to.
    pub subject: String,
    /// The `FX` stream sequence of the request.
    pub seq: u64,
    /// Whether the broker saw this `Nats-Msg-Id` already (a retried request).
    pub duplicate: bool,
    /// With `--wait`: the terminal state reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

/// How a saga ended, as seen from its events.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Outcome {
    /// COMPLETED, REJECTED or COMPENSATED.
    pub state: String,
    /// The events seen, as `domain.event`.
    pub events: Vec<String>,
    /// The USD credited, when completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd_amount: Option<String>,
    /// The rejection or failure reason, when not completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Publishes an ExchangeRequested per the contract; with `wait_ms`, follows it to its end.
pub async fn exchange(
    client: &async_nats::Client,
    user_id: UserId,
    krw: Krw,
    min_usd: Option<Usd>,
    saga_id: Option<SagaId>,
    wait_ms: Option<u64>,
) -> CtlResult<Exchanged> {
    let saga_id = saga_id.unwrap_or_else(SagaId::new_v7);
    let request = Event::ExchangeRequested(ExchangeRequested {
        saga_id,
        user_id: user_id.clone(),
        krw_amount: krw,
        min_usd_amount: min_usd,
    });
    // Subscribe before publishing so no answer can slip past.
    let mut answers = match wait_ms {
        Some(_) => Some(
            client
                .subscribe(format!("fx.*.*.{user_id}"))
                .await
                .map_err(|e| CtlError::Unavailable(e.to_string()))?,
        ),
        None => None,
    };
    let js = runtime::broker::jetstream(client.clone());
    let ack = js
        .send_publish(
            request.subject(),
            jetstream::message::PublishMessage::build()
                .payload(request.to_json().into())
                // The bare saga id, as the event contract recommends (docs/events.md): a retried publish is dropped by
                // the broker's duplicate window, and fx-krw's saga record covers the rest.
                .message_id(saga_id.to_string()),
        )
        .await
        .map_err(|e| CtlError::Unavailable(e.to_string()))?
        .await
        .map_err(|e| {
            CtlError::Unavailable(format!(
                "no PubAck from stream FX: {e}; is a service running to provision it?"
            ))
        })?;
    let mut out = Exchanged {
        saga_id,
        subject: request.subject(),
        seq: ack.sequence,
        duplicate: ack.duplicate,
        outcome: None,
    };
    if let (Some(sub), Some(ms)) = (answers.as_mut(), wait_ms) {
        let mut follow = SagaFollower::default();
        let waited = tokio::time::timeout(Duration::from_millis(ms), async {
            while let Some(m) = sub.next().await {
                if let Ok(e) = Event::decode(m.subject.as_str(), &m.payload) {
                    if e.saga_id() == saga_id {
                        if let Some(o) = follow.push(&e) {
                            return Some(o);
                        }
                    }
                }
            }
            None
        })
        .await;
        match waited {
            Ok(Some(o)) => out.outcome = Some(o),
            _ => {
                return Err(CtlError::Failed(format!(
                    "saga {saga_id} did not finish within {ms} ms (seen: {}); see `fxctl saga {saga_id}` or the dashboard",
                    follow.seen.join(", ")
                )))
            }
        }
    }
    Ok(out)
}

/// Follows one saga's events until the choreography's end: COMPLETED on krw.committed,
/// REJECTED on krw.rejected, COMPENSATED once the hold is released and trade (and, after a
/// fill, USD) said their final words.
#[derive(Default, Debug)]
pub struct SagaFollower {
    seen: Vec<String>,
    kinds: Vec<EventKind>,
    usd: Option<String>,
    reason: Option<String>,
}

impl SagaFollower {
    /// Records an event; returns the outcome once the saga is over.
    pub fn push(&mut self, e: &Event) -> Option<Outcome> {
        if self.kinds.contains(&e.kind()) {
            return None;
        }
        self.kinds.push(e.kind());
        self.seen.push(e.kind().type_name());
        match e {
            Event::UsdCredited(c) => self.usd = Some(c.usd_amount.to_string()),
            Event::KrwRejected(r) => self.reason = Some(reason(&r.reason, &r.message)),
            Event::TradeFailed(f) => self.reason = Some(reason(&f.reason, &f.message)),
            Event::UsdCreditFailed(f) => self.reason = Some(reason(&f.reason, &f.message)),
            _ => {}
        }
        let has = |k| self.kinds.contains(&k);
        let state = if has(EventKind::KrwCommitted) {
            "COMPLETED"
        } else if has(EventKind::KrwRejected) {
            "REJECTED"
        } else if has(EventKind::KrwReleased) {
            let filled = has(EventKind::TradeFilled);
            let trade_done =
                has(EventKind::TradeFailed) || (filled && has(EventKind::TradeCancelled));
            let usd_done = !filled
                || has(EventKind::UsdCreditFailed)
                || (has(EventKind::UsdCredited) && has(EventKind::UsdDebited));
            if trade_done && usd_done {
                "COMPENSATED"
            } else {
                return None;
            }
        } else {
            return None;
        };
        Some(Outcome {
            state: state.into(),
            events: self.seen.clone(),
            usd_amount: if state == "COMPLETED" {
                self.usd.clone()
            } else {
                None
            },
            reason: if state == "COMPLETED" {
                None
            } else {
                self.reason.clone()
            },
        })
    }
}

/// `reason_code: message`, with the code as it is on the wire (snake_case).
fn reason(code: &impl Serialize, message: &str) -> String {
    let code = serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("{code}: {message}")
}

/// A user's balances in both services.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Balance {
    pub user_id: String,
    pub krw_available: String,
    pub krw_held: String,
    pub usd: String,
    pub usd_frozen: bool,
}

/// How many partitions the system runs with, read from the `FX` stream's subject transform (the
/// one place every instance agrees on; see `events::partition`). 1 when the stream does not
/// exist yet.
pub async fn partitions(client: &async_nats::Client) -> CtlResult<u32> {
    let js = runtime::broker::jetstream(client.clone());
    let mut stream = match js.get_stream(runtime::STREAM).await {
        Ok(s) => s,
        Err(e) if runtime::broker::is_stream_not_found(&e) => return Ok(1),
        Err(e) => return Err(CtlError::Unavailable(format!("stream FX: {e}"))),
    };
    let info = stream
        .info()
        .await
        .map_err(|e| CtlError::Unavailable(format!("stream FX: {e}")))?;
    partitions_of(&info.config)
}

fn partitions_of(config: &jetstream::stream::Config) -> CtlResult<u32> {
    let dest = config
        .subject_transform
        .as_ref()
        .map(|t| t.destination.as_str());
    events::partition::partitions_of_transform(dest).ok_or_else(|| {
        CtlError::Failed(format!(
            "stream FX has a subject transform this system did not write ({dest:?})"
        ))
    })
}

/// The instance of every service that owns `user`.
pub async fn owner(client: &async_nats::Client, user: &UserId) -> CtlResult<Partitioning> {
    let n = partitions(client).await?;
    Partitioning::new(n, partition_of(user, n)).map_err(|e| CtlError::Failed(e.to_string()))
}

/// An admin request about one user, sent to the instance that owns the user.
async fn user_request(
    client: &async_nats::Client,
    service: &str,
    endpoint: &str,
    actor: &str,
    body: &serde_json::Value,
    owner: Partitioning,
) -> CtlResult<serde_json::Value> {
    Ok(admin::request_to(client, service, owner, endpoint, actor, body).await?)
}

/// Reads a user's balances from fx-krw and fx-usd.
pub async fn balance(
    client: &async_nats::Client,
    user_id: &UserId,
    actor: &str,
) -> CtlResult<Balance> {
    let body = json!({ "user_id": user_id });
    let at = owner(client, user_id).await?;
    let krw = user_request(client, "krw", "balance", actor, &body, at).await?;
    let usd = user_request(client, "usd", "balance", actor, &body, at).await?;
    let s = |v: &serde_json::Value, k: &str, d: &str| {
        v.get(k).and_then(|x| x.as_str()).unwrap_or(d).to_owned()
    };
    Ok(Balance {
        user_id: user_id.to_string(),
        krw_available: s(&krw, "krw_available", "0"),
        krw_held: s(&krw, "krw_held", "0"),
        usd: s(&usd, "usd", "0.00"),
        usd_frozen: usd.get("frozen").and_then(|f| f.as_bool()).unwrap_or(false),
    })
}

/// Deposits KRW and/or USD for a user (each idempotent by its deposit id).
pub async fn deposit(
    client: &async_nats::Client,
    user_id: &UserId,
    krw: Option<Krw>,
    usd: Option<Usd>,
    actor: &str,
) -> CtlResult<serde_json::Value> {
    if krw.is_none() && usd.is_none() {
        return Err(CtlError::Usage("give --krw, --usd, or both".into()));
    }
    let mut out = serde_json::Map::new();
    let at = owner(client, user_id).await?;
    if let Some(k) = krw {
        let body = json!({ "user_id": user_id, "krw_amount": k, "deposit_id": SagaId::new_v7() });
        out.insert(
            "krw".into(),
            user_request(client, "krw", "deposit", actor, &body, at).await?,
        );
    }
    if let Some(u) = usd {
        let body = json!({ "user_id": user_id, "usd_amount": u, "deposit_id": SagaId::new_v7() });
        out.insert(
            "usd".into(),
            user_request(client, "usd", "deposit", actor, &body, at).await?,
        );
    }
    Ok(serde_json::Value::Object(out))
}

/// Freezes (or unfreezes) a user's USD account: credits are refused while frozen; a
/// compensating debit never is.
pub async fn set_frozen(
    client: &async_nats::Client,
    user_id: &UserId,
    frozen: bool,
    actor: &str,
) -> CtlResult<serde_json::Value> {
    let endpoint = if frozen { "freeze" } else { "unfreeze" };
    let at = owner(client, user_id).await?;
    let body = json!({ "user_id": user_id });
    user_request(client, "usd", endpoint, actor, &body, at).await
}

/// The three services' audits; `ok` only when every invariant holds in each. fx-trade's holds
/// its books and their reconciliation with the venue's executions (`trade.venue`). Partitioned,
/// every partition's instance is audited (each owns its users' money and its own house
/// accounts): `krw`, `trade` and `usd` are then lists, one audit per partition in order.
pub async fn audit(client: &async_nats::Client, actor: &str) -> CtlResult<serde_json::Value> {
    audit_with_progress(client, actor, |_| {}).await
}

/// How far one instance's audit has got, for a person watching a long one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditProgress {
    /// `fx-krw`, or `fx-krw partition 1` when partitioned.
    pub instance: String,
    /// Sagas checked so far.
    pub done: u64,
    /// Time the audit has run.
    pub elapsed_ms: u64,
}

/// [`audit`], calling `progress` as each instance reports how far its audit has got. The audits
/// run side by side, each in its own service, as background jobs that answer every request at
/// once: a long audit is never mistaken for a service that does not answer.
pub async fn audit_with_progress(
    client: &async_nats::Client,
    actor: &str,
    progress: impl FnMut(AuditProgress),
) -> CtlResult<serde_json::Value> {
    const SERVICES: [&str; 3] = ["krw", "trade", "usd"];
    let n = partitions(client).await?;
    let progress = std::sync::Mutex::new(progress);
    let mut jobs = Vec::new();
    for service in SERVICES {
        for k in 0..n {
            let at = Partitioning::new(n, k).map_err(|e| CtlError::Failed(e.to_string()))?;
            let instance = if n == 1 {
                format!("fx-{service}")
            } else {
                format!("fx-{service} partition {k}")
            };
            let progress = &progress;
            jobs.push(async move {
                admin::request_job_to(client, service, at, "audit", actor, |done, elapsed_ms| {
                    let mut report = progress.lock().unwrap_or_else(|e| e.into_inner());
                    report(AuditProgress {
                        instance: instance.clone(),
                        done,
                        elapsed_ms,
                    })
                })
                .await
            });
        }
    }
    let mut results = futures::future::join_all(jobs).await.into_iter();
    let mut ok = true;
    let mut out = serde_json::Map::new();
    for service in SERVICES {
        let mut audits = Vec::new();
        for _ in 0..n {
            let a = results.next().expect("one result per instance")?;
            ok &= a.get("ok").and_then(|v| v.as_bool()) == Some(true);
            audits.push(a);
        }
        let v = if n == 1 {
            audits.pop().expect("one audit")
        } else {
            serde_json::Value::Array(audits)
        };
        out.insert(service.into(), v);
    }
    out.insert("ok".into(), json!(ok));
    Ok(serde_json::Value::Object(out))
}

/// What one audit report's journal walk read, in words: `12 entries (deposit 2, hold 5,
/// commit 4, release 1)`; `None` when the report has no journal counts.
pub fn journal_line(report: &serde_json::Value) -> Option<String> {
    let counts: runtime::ledger::JournalCounts =
        serde_json::from_value(report.get("journal")?.clone()).ok()?;
    let ops: Vec<String> = counts
        .by_op
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    Some(if ops.is_empty() {
        format!("{} entries", counts.entries)
    } else {
        format!("{} entries ({})", counts.entries, ops.join(", "))
    })
}

/// One dead letter, as `fxctl dlq list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetterView {
    pub seq: u64,
    pub service: String,
    pub reason: String,
    pub message: String,
    pub subject: String,
    pub payload: String,
}

/// Every message in `FX_DLQ`, oldest first.
pub async fn dlq_list(client: &async_nats::Client) -> CtlResult<Vec<DeadLetterView>> {
    let js = runtime::broker::jetstream(client.clone());
    let mut stream = js
        .get_stream(runtime::DLQ_STREAM)
        .await
        .map_err(|e| CtlError::Unavailable(format!("stream FX_DLQ: {e}")))?;
    let state = stream
        .info()
        .await
        .map_err(|e| CtlError::Unavailable(e.to_string()))?
        .state
        .clone();
    let mut out = Vec::new();
    for seq in state.first_sequence.max(1)..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let h = |k: &str| {
            m.headers
                .get(k)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.push(DeadLetterView {
            seq,
            service: h(runtime::broker::dlq_headers::SERVICE),
            reason: h(runtime::broker::dlq_headers::REASON),
            message: h(runtime::broker::dlq_headers::MESSAGE),
            subject: h(runtime::broker::dlq_headers::SUBJECT),
            payload: String::from_utf8_lossy(&m.payload).into_owned(),
        });
    }
    Ok(out)
}

/// Publishes dead letter `seq` back onto its original subject, with `payload` (the fixed
/// body) instead of the original when given. The body must decode as an event first.
pub async fn dlq_replay(
    client: &async_nats::Client,
    seq: u64,
    payload: Option<String>,
) -> CtlResult<u64> {
    let letters = dlq_list(client).await?;
    let letter = letters.into_iter().find(|l| l.seq == seq).ok_or_else(|| {
        CtlError::Refused(format!(
            "no dead letter with sequence {seq}; see `fxctl dlq list`"
        ))
    })?;
    let body = payload.unwrap_or(letter.payload);
    Event::decode(&letter.subject, body.as_bytes()).map_err(|e| {
        CtlError::Refused(format!(
            "the message still does not decode ({e}); fix it and pass it with --payload"
        ))
    })?;
    // Back onto the subject as published: a partitioned stream appends the partition again.
    let subject = events::Subject::parse(&letter.subject)
        .map(|s| s.contract_subject())
        .unwrap_or(letter.subject);
    let js = runtime::broker::jetstream(client.clone());
    let ack = js
        .send_publish(
            subject,
            jetstream::message::PublishMessage::build().payload(body.into_bytes().into()),
        )
        .await
        .map_err(|e| CtlError::Unavailable(e.to_string()))?
        .await
        .map_err(|e| CtlError::Unavailable(e.to_string()))?;
    Ok(ack.sequence)
}

/// Reads one saga from the tracker's API (`GET /api/sagas/{id}`), sending `token` as
/// `Authorization: Bearer` when the tracker requires one (`FX_TRACKER_TOKEN`).
pub async fn saga(
    tracker_url: &str,
    id: SagaId,
    token: Option<&str>,
) -> CtlResult<serde_json::Value> {
    let url = format!("{}/api/sagas/{id}", tracker_url.trim_end_matches('/'));
    let auth = token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"));
    tokio::task::spawn_blocking(move || {
        let mut request = ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .build();
        if let Some(auth) = &auth {
            request = request.header("Authorization", auth);
        }
        let mut resp = request.call().map_err(|e| {
            CtlError::Unavailable(format!(
                "cannot reach the tracker at {url}: {e}; is fx-tracker running? (--tracker-url / FX_TRACKER_URL)"
            ))
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| CtlError::Unavailable(format!("tracker reply: {e}")))?;
        let body: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CtlError::Unavailable(format!("tracker reply is not JSON: {e}")))?;
        match status {
            200 => Ok(body),
            401 => Err(CtlError::Refused(format!(
                "the tracker {} (--tracker-token / FX_TRACKER_TOKEN)",
                if auth.is_some() {
                    "refused the token"
                } else {
                    "requires a token"
                }
            ))),
            404 => Err(CtlError::Refused(format!(
                "the tracker knows no saga {id}; check the id, or wait for the tracker to catch up"
            ))),
            _ => Err(CtlError::Unavailable(format!("tracker answered {status}: {body}"))),
        }
    })
    .await
    .map_err(|e| CtlError::Unavailable(e.to_string()))?
}

/// fx-krw's view of one saga (`fxadmin.krw.saga`): user, status, pinned, amount.
pub async fn krw_saga(
    client: &async_nats::Client,
    saga_id: SagaId,
    user_id: &UserId,
    actor: &str,
) -> CtlResult<serde_json::Value> {
    let at = owner(client, user_id).await?;
    let body = json!({ "saga_id": saga_id, "user_id": user_id });
    user_request(client, "krw", "saga", actor, &body, at).await
}

/// The services an intervention goes to, in order: `reemit` to every service, `cancel` to
/// fx-krw, `refuse_credit` to fx-usd.
pub fn intervention_services(action: events::InterventionAction) -> &'static [&'static str] {
    use events::InterventionAction as A;
    match action {
        A::Reemit => &["krw", "trade", "usd"],
        A::Cancel => &["krw"],
        A::RefuseCredit => &["usd"],
    }
}

/// `fxctl saga <action> ID --reason TEXT`: the admin request of `action` to the services that
/// own it (see [`intervention_services`]); each decides from its own records. The answer maps
/// each service to its reply (`outcome` `done` or `already_done`, and the events emitted), or
/// to `{"refused": "<reason>: <message>"}`. A refusal is `CtlError::Refused` (exit 4), except
/// for `reemit`, where a service that has nothing for the saga is reported and the others
/// still re-emit: it is refused only when every service refused.
///
/// `refuse_credit` first asks fx-krw: it answers a fill of a saga that holds KRW, so a saga
/// fx-krw has not held (unknown, rejected), that ended, or that belongs to another user is
/// refused here, before fx-usd records anything (fx-usd, which may never have seen the fill,
/// takes the saga's user from the request).
pub async fn intervene(
    client: &async_nats::Client,
    saga_id: SagaId,
    user_id: &UserId,
    action: events::InterventionAction,
    reason: &str,
    actor: &str,
) -> CtlResult<serde_json::Value> {
    let at = owner(client, user_id).await?;
    if action == events::InterventionAction::RefuseCredit {
        let krw = match krw_saga(client, saga_id, user_id, actor).await {
            Ok(v) => v,
            Err(CtlError::Refused(m)) => {
                return Err(CtlError::Refused(format!("unknown_saga: {m}")))
            }
            Err(e) => return Err(e),
        };
        if krw["user_id"] != json!(user_id) {
            return Err(CtlError::Refused(format!(
                "user_mismatch: saga {saga_id} belongs to {} at fx-krw, not {user_id}",
                krw["user_id"]
            )));
        }
        if krw["status"]["state"] != "held" {
            return Err(CtlError::Refused(format!(
                "finished: fx-krw holds no KRW for saga {saga_id} (status {}); refuse-credit \
                 answers a fill of a saga whose KRW is held",
                krw["status"]
            )));
        }
    }
    let endpoint = match action {
        events::InterventionAction::Reemit => runtime::intervention::REEMIT_ENDPOINT,
        events::InterventionAction::Cancel => runtime::intervention::CANCEL_ENDPOINT,
        events::InterventionAction::RefuseCredit => runtime::intervention::REFUSE_CREDIT_ENDPOINT,
    };
    let body = json!({ "saga_id": saga_id, "user_id": user_id, "reason": reason });
    let mut out = serde_json::Map::new();
    let mut refusals = Vec::new();
    for service in intervention_services(action) {
        match admin::request_to(client, service, at, endpoint, actor, &body).await {
            Ok(v) => {
                out.insert((*service).into(), v);
            }
            Err(e) if matches!(e.code, 400 | 404 | 409 | 421) => {
                refusals.push(format!("fx-{service}: {}", e.message));
                out.insert((*service).into(), json!({ "refused": e.message }));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if out.values().all(|v| v.get("refused").is_some()) {
        return Err(CtlError::Refused(refusals.join("; ")));
    }
    Ok(serde_json::Value::Object(out))
}

/// One line of `fxctl tail`: stream sequence, subject, and the event's key fields.
pub fn describe(seq: u64, e: &Event) -> String {
    let detail = match e {
        Event::ExchangeRequested(r) => format!(
            "krw={}{}",
            r.krw_amount,
            r.min_usd_amount
                .map(|m| format!(" min_usd={m}"))
                .unwrap_or_default()
        ),
        Event::KrwHeld(h) => format!(
            "krw={} expires_at_ms={}",
            h.krw_amount, h.hold_expires_at_ms
        ),
        Event::KrwRejected(r) => reason(&r.reason, &r.message),
        Event::KrwCommitted(c) => format!("krw={}", c.krw_amount),
        Event::KrwReleased(r) => format!("krw={} {}", r.krw_amount, reason(&r.reason, "")),
        Event::KrwDeposited(d) => format!("krw={} by {}", d.krw_amount, d.actor),
        Event::TradeFilled(f) => {
            format!("krw={} usd={} rate={}", f.krw_amount, f.usd_amount, f.rate)
        }
        Event::TradeFailed(f) => reason(&f.reason, &f.message),
        Event::TradeCancelled(c) => format!("usd={} {}", c.usd_amount, reason(&c.reason, "")),
        Event::TradeReversed(r) => format!(
            "usd={} krw={} rate={} fill_krw={}",
            r.usd_amount, r.krw_amount, r.rate, r.fill_krw_amount
        ),
        Event::UsdCredited(c) => format!("usd={}", c.usd_amount),
        Event::UsdCreditFailed(f) => reason(&f.reason, &f.message),
        Event::UsdDebited(d) => format!("usd={}", d.usd_amount),
        Event::UsdDeposited(d) => format!("usd={} by {}", d.usd_amount, d.actor),
        Event::UsdFrozen(f) => format!("by {}", f.actor),
        Event::UsdUnfrozen(f) => format!("by {}", f.actor),
        Event::KrwIntervened(i) | Event::TradeIntervened(i) | Event::UsdIntervened(i) => format!(
            "{} by {}: {} [{}]",
            i.action.as_str(),
            i.actor,
            i.reason,
            i.events.join(", ")
        ),
    };
    format!(
        "#{seq:<8} {:<22} {:<12} {}  {}",
        e.kind().type_name(),
        e.user_id(),
        e.saga_id(),
        detail.trim_end_matches(": ")
    )
}

/// Follows the `FX` stream live (from now, or from the start), one user or everyone, calling
/// `each` for every message until it returns false.
pub async fn tail(
    client: &async_nats::Client,
    user_id: Option<&UserId>,
    from_start: bool,
    mut each: impl FnMut(u64, Result<Event, events::DecodeError>) -> bool,
) -> CtlResult<()> {
    use jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let js = runtime::broker::jetstream(client.clone());
    let stream = js
        .get_stream(runtime::STREAM)
        .await
        .map_err(|e| CtlError::Unavailable(format!("stream FX: {e}")))?;
    // A partitioned stream stores `fx.<domain>.<event>.<user>.<partition>`.
    let partitioned = partitions_of(&stream.cached_info().config)? > 1;
    let filter = match user_id {
        Some(u) if partitioned => format!("fx.*.*.{u}.*"),
        Some(u) => format!("fx.*.*.{u}"),
        None => "fx.>".to_owned(),
    };
    // An ordered consumer: ephemeral, server-side flow control, nothing left behind. Named,
    // so the create request names it in its subject: the broker refuses `admin` the unnamed
    // create, whose body could name (and reconfigure) a service's durable consumer.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let consumer = stream
        .create_consumer(OrderedConfig {
            name: Some(format!("fxctl-tail-{}", &id[..12])),
            filter_subject: filter,
            deliver_policy: if from_start {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| CtlError::Unavailable(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| CtlError::Unavailable(e.to_string()))?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| CtlError::Unavailable(e.to_string()))?;
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        if !each(seq, Event::decode(m.subject.as_str(), &m.payload)) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_journal_line_names_every_operation_counted() {
        let report = serde_json::json!({
            "ok": true,
            "journal": {"entries": 7, "by_op": {"hold": 3, "commit": 2, "deposit": 2}},
        });
        assert_eq!(
            super::journal_line(&report).as_deref(),
            Some("7 entries (deposit 2, hold 3, commit 2)")
        );
        let empty = serde_json::json!({"journal": {"entries": 0, "by_op": {}}});
        assert_eq!(super::journal_line(&empty).as_deref(), Some("0 entries"));
        assert_eq!(super::journal_line(&serde_json::json!({"ok": true})), None);
    }
}
