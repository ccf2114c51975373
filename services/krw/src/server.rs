//! fx-krw as a process: the runtime's consumer loop, the hold-expiry sweeper and the admin
//! endpoints.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use events::{InterventionAction, Krw, SagaId, UserId};
use runtime::admin::{
    audit_json, handler, job_handler, walk_store, AdminError, AdminHandler, AdminRequest, Progress,
};
use runtime::intervention;
use runtime::{Clock, Handled, Runtime, RuntimeConfig, Store};
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use crate::{KrwConfig, KrwService};

/// Default data directory when `FX_DATA_DIR` is unset.
pub const DEFAULT_DATA_DIR: &str = ".fx/krw";
/// Default `/healthz` `/readyz` `/metrics` address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9101";
/// How often the sweeper looks for expired holds, in ms (`FX_EXPIRY_SWEEP_MS`).
pub const DEFAULT_EXPIRY_SWEEP_MS: u64 = 1_000;

/// Runs fx-krw until `shutdown` resolves.
pub async fn run(
    runtime_config: RuntimeConfig,
    config: KrwConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> runtime::Result<()> {
    let sweep_ms = runtime::env_parse("FX_EXPIRY_SWEEP_MS", DEFAULT_EXPIRY_SWEEP_MS)?;
    let rt = Runtime::start(KrwService::new(config), runtime_config).await?;
    serve(rt, sweep_ms, shutdown).await
}

/// Runs an already started runtime (tests inject clocks and faults before calling this).
pub async fn serve(
    rt: Runtime<KrwService>,
    sweep_ms: u64,
    shutdown: impl Future<Output = ()> + Send,
) -> runtime::Result<()> {
    let (service, store, clock) = (rt.participant(), rt.store(), rt.clock());
    let endpoints = endpoints(service.clone(), store.clone(), clock.clone());
    // Beside the consumer, inside the runtime: whichever ends, the stop is the graceful one.
    rt.with_task("expiry sweeper", sweep(service, store, clock, sweep_ms))
        .run_with_admin(
            "fx-krw admin: deposit, balance, audit, saga, saga_cancel, saga_reemit",
            endpoints,
            shutdown,
        )
        .await
}

/// Releases unpinned holds past `expires_at + grace`, each in its own transaction (the same
/// transactional path as events), then flushes so the relay may publish the releases.
async fn sweep(
    service: Arc<KrwService>,
    store: Arc<Store>,
    clock: Clock,
    every_ms: u64,
) -> runtime::Result<()> {
    // A deliberate timer: expiry is a matter of time passing, not of an event arriving.
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match service.expire_due(&*store, clock()) {
            Ok(released) if released.is_empty() => {}
            Ok(released) => {
                store.flush().await?;
                tracing::info!(released = released.len(), "expired holds released");
            }
            Err(e) => warn!(error = %e, "expiry sweep failed; retrying at the next tick"),
        }
    }
}

#[derive(Deserialize)]
struct UserBody {
    user_id: UserId,
}

#[derive(Deserialize)]
struct SagaBody {
    saga_id: SagaId,
}

#[derive(Deserialize)]
struct DepositBody {
    user_id: UserId,
    krw_amount: Krw,
    deposit_id: Option<SagaId>,
}

fn account_json(store: &Store, user: &UserId) -> Result<serde_json::Value, AdminError> {
    let acct = crate::balance(store, user).map_err(AdminError::internal)?;
    Ok(match acct {
        Some(a) => json!({
            "user_id": user, "krw_available": a.available, "krw_held": a.held, "exists": true
        }),
        None => json!({
            "user_id": user, "krw_available": Krw::ZERO, "krw_held": Krw::ZERO, "exists": false
        }),
    })
}

fn endpoints(
    service: Arc<KrwService>,
    store: Arc<Store>,
    clock: Clock,
) -> Vec<(&'static str, AdminHandler)> {
    let intervention =
        |action| intervention::endpoint(service.clone(), store.clone(), clock.clone(), action);
    let (cancel, reemit) = (
        intervention(InterventionAction::Cancel),
        intervention(InterventionAction::Reemit),
    );
    let s = store.clone();
    let deposit = handler(move |req: AdminRequest| {
        let (store, clock) = (s.clone(), clock.clone());
        async move {
            let body: DepositBody = req.json()?;
            let id = body.deposit_id.unwrap_or_else(SagaId::new_v7);
            let h = store
                .transact(|tx| {
                    crate::deposit(tx, id, &body.user_id, body.krw_amount, &req.actor, clock())
                })
                .map_err(AdminError::internal)?;
            if let Handled::DeadLetter { message, .. } = h {
                return Err(AdminError::bad_request(message));
            }
            let mut v = account_json(&store, &body.user_id)?;
            v["deposit_id"] = json!(id);
            Ok(v)
        }
    });
    let s = store.clone();
    let saga = handler(move |req: AdminRequest| {
        let store = s.clone();
        async move {
            let body: SagaBody = req.json()?;
            let rec: Option<crate::SagaRecord> = store
                .get(&crate::records::saga_key(body.saga_id))
                .map_err(AdminError::internal)?;
            let rec = rec.ok_or_else(|| {
                AdminError::not_found(format!("fx-krw has no record of saga {}", body.saga_id))
            })?;
            Ok(json!({
                "saga_id": body.saga_id,
                "user_id": rec.user,
                "status": rec.status,
                "pinned": rec.pinned,
                "krw_amount": rec.hold_amount(),
            }))
        }
    });
    let s = store.clone();
    let balance = handler(move |req: AdminRequest| {
        let store = s.clone();
        async move {
            let body: UserBody = req.json()?;
            account_json(&store, &body.user_id)
        }
    });
    // A long job on a large store: it reports progress, and walks the store off the async
    // workers so the consumer and the other endpoints keep serving.
    let audit = job_handler(move |progress: Progress| {
        let store = store.clone();
        async move {
            let (a, changed) = walk_store(store, progress, crate::audit_with_progress).await?;
            audit_json(a, changed)
        }
    });
    vec![
        ("deposit", deposit),
        ("balance", balance),
        ("audit", audit),
        ("saga", saga),
        (intervention::CANCEL_ENDPOINT, cancel),
        (intervention::REEMIT_ENDPOINT, reemit),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::{Event, ExchangeRequested};
    use runtime::core::{handle_message, Input};

    #[tokio::test]
    async fn the_saga_endpoint_answers_only_what_a_crash_cannot_take_back() {
        const T0: u64 = 1_800_000_000_000;
        let store = Arc::new(Store::temporary().unwrap());
        let service = Arc::new(KrwService::new(KrwConfig::default()));
        let (alice, saga) = (UserId::parse("alice").unwrap(), SagaId::new_v7());
        let funds = Krw::parse("2000000").unwrap();
        store
            .transact(|tx| crate::deposit(tx, SagaId::new_v7(), &alice, funds, "t", T0))
            .unwrap();
        store.flush().await.unwrap();
        // The hold is committed; its group is not flushed.
        let request = Event::ExchangeRequested(ExchangeRequested {
            saga_id: saga,
            user_id: alice.clone(),
            krw_amount: Krw::parse("1400000").unwrap(),
            min_usd_amount: None,
        });
        let input = Input::Decoded {
            event: &request,
            prepared: &(),
        };
        store
            .transact(|tx| handle_message(&*service, tx, &input, T0))
            .unwrap();
        let committed = runtime::core::Storage::outbox_committed(&*store).unwrap();
        assert!(*store.watermark().borrow() < committed, "not flushed yet");

        // Asked through the admin server over a real broker, as fxctl asks it.
        let server = testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let admin = runtime::admin::serve_admin(
            client.clone(),
            store.clone(),
            "krw",
            events::Partitioning::SINGLE,
            "fx-krw admin (test)",
            endpoints(service, store.clone(), Arc::new(|| T0)),
        )
        .await
        .unwrap();
        let served = tokio::spawn(admin);
        let answer = runtime::admin::request_to(
            &client,
            "krw",
            events::Partitioning::SINGLE,
            "saga",
            "test",
            &json!({ "saga_id": saga, "user_id": alice }),
        )
        .await
        .unwrap();
        served.abort();
        assert_eq!(answer["status"]["state"], "held");
        assert_eq!(
            *store.watermark().borrow(),
            committed,
            "the hold it reported is flushed"
        );
    }
}
