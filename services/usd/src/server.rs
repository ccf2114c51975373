//! fx-usd as a process: the runtime's consumer loop plus the admin endpoints.

use std::future::Future;
use std::sync::Arc;

use events::{InterventionAction, SagaId, Usd, UserId};
use runtime::admin::{
    audit_json, handler, job_handler, walk_store, AdminError, AdminRequest, Progress,
};
use runtime::intervention;
use runtime::{Clock, Runtime, RuntimeConfig, Store};
use serde::Deserialize;
use serde_json::json;

use crate::{AdminOutcome, UsdConfig, UsdService};

/// Default data directory when `FX_DATA_DIR` is unset.
pub const DEFAULT_DATA_DIR: &str = ".fx/usd";
/// Default `/healthz` `/readyz` `/metrics` address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9103";

/// Runs fx-usd until `shutdown` resolves.
pub async fn run(
    runtime_config: RuntimeConfig,
    config: UsdConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> runtime::Result<()> {
    let rt = Runtime::start(UsdService::new(config.clone()), runtime_config).await?;
    serve(rt, config, shutdown).await
}

/// Runs an already started runtime (tests inject clocks and faults before calling this).
pub async fn serve(
    rt: Runtime<UsdService>,
    config: UsdConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> runtime::Result<()> {
    let store = rt.store();
    let clock = rt.clock();
    // The house float is a deposit under a fixed id: idempotent across restarts.
    store.transact(|tx| crate::seed_house_float(tx, config.house_float, clock()))?;
    store.flush().await?;
    let endpoints = endpoints(rt.participant(), store, clock);
    rt.run_with_admin(
        "fx-usd admin: deposit, balance, freeze, unfreeze, audit, saga_refuse_credit, saga_reemit",
        endpoints,
        shutdown,
    )
    .await
}

#[derive(Deserialize)]
struct UserBody {
    user_id: UserId,
}

#[derive(Deserialize)]
struct DepositBody {
    user_id: UserId,
    usd_amount: Usd,
    deposit_id: Option<SagaId>,
}

fn outcome(o: AdminOutcome) -> Result<(), AdminError> {
    match o {
        AdminOutcome::Done | AdminOutcome::AlreadyDone => Ok(()),
        AdminOutcome::Refused { reason } => Err(AdminError::bad_request(reason)),
    }
}

fn account_json(store: &Store, user: &UserId) -> Result<serde_json::Value, AdminError> {
    let acct = crate::balance(store, user).map_err(AdminError::internal)?;
    Ok(match acct {
        Some(a) => json!({ "user_id": user, "usd": a.usd, "frozen": a.frozen, "exists": true }),
        None => json!({ "user_id": user, "usd": Usd::ZERO, "frozen": false, "exists": false }),
    })
}

fn endpoints(
    service: Arc<UsdService>,
    store: Arc<Store>,
    clock: Clock,
) -> Vec<(&'static str, runtime::admin::AdminHandler)> {
    let intervention =
        |action| intervention::endpoint(service.clone(), store.clone(), clock.clone(), action);
    let s = store.clone();
    let c = clock.clone();
    let deposit = handler(move |req: AdminRequest| {
        let (store, clock) = (s.clone(), c.clone());
        async move {
            let body: DepositBody = req.json()?;
            if !body.usd_amount.is_positive() {
                return Err(AdminError::bad_request(
                    "usd_amount must be greater than zero",
                ));
            }
            let id = body.deposit_id.unwrap_or_else(SagaId::new_v7);
            let o = store
                .transact(|tx| {
                    crate::deposit(tx, id, &body.user_id, body.usd_amount, &req.actor, clock())
                })
                .map_err(AdminError::internal)?;
            outcome(o)?;
            let mut v = account_json(&store, &body.user_id)?;
            v["deposit_id"] = json!(id);
            Ok(v)
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
    let freeze_handler = |frozen: bool| {
        let (s, c) = (store.clone(), clock.clone());
        handler(move |req: AdminRequest| {
            let (store, clock) = (s.clone(), c.clone());
            async move {
                let body: UserBody = req.json()?;
                let op_id = SagaId::new_v7();
                let o = store
                    .transact(|tx| {
                        if frozen {
                            crate::freeze(tx, op_id, &body.user_id, &req.actor, clock())
                        } else {
                            crate::unfreeze(tx, op_id, &body.user_id, &req.actor, clock())
                        }
                    })
                    .map_err(AdminError::internal)?;
                outcome(o)?;
                account_json(&store, &body.user_id)
            }
        })
    };
    let s = store.clone();
    // A long job on a large store: it reports progress, and walks the store off the async
    // workers so the consumer and the other endpoints keep serving.
    let audit = job_handler(move |progress: Progress| {
        let store = s.clone();
        async move {
            let (a, changed) = walk_store(store, progress, crate::audit_with_progress).await?;
            audit_json(a, changed)
        }
    });
    vec![
        ("deposit", deposit),
        ("balance", balance),
        ("freeze", freeze_handler(true)),
        ("unfreeze", freeze_handler(false)),
        ("audit", audit),
        (
            intervention::REFUSE_CREDIT_ENDPOINT,
            intervention(InterventionAction::RefuseCredit),
        ),
        (
            intervention::REEMIT_ENDPOINT,
            intervention(InterventionAction::Reemit),
        ),
    ]
}
