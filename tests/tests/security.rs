//! Least privilege at the broker: `config/nats.conf` with one identity per process, against a
//! real nats-server and the services' real code (docs/security.md names what each test
//! proves).
//!
//! A refused publish or subscribe is not an error the client sees at the call: the broker
//! answers with an asynchronous `-ERR 'Permissions Violation ...'`. The tests catch it through
//! the connection's event callback, and also check that nothing reached the stream.

mod common;

use std::sync::{Arc, Mutex};

use async_nats::jetstream::message::PublishMessage;
use common::{assert_no_violation, balance, uid, Identities, System, SAGA_DEADLINE_MS};
use events::{Event, EventKind, Krw, RejectReason, SagaId, Usd};
use futures::TryStreamExt;

/// A connection as one identity that records the broker's asynchronous errors.
struct Watched {
    who: &'static str,
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Watched {
    async fn connect(ids: &Identities, url: &str, who: &'static str) -> Watched {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        let client = async_nats::ConnectOptions::with_user_and_password(
            who.into(),
            ids.password(who).into(),
        )
        .custom_inbox_prefix(format!("_INBOX_{who}"))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect as {who}: {e}"));
        Watched {
            who,
            client,
            errors,
        }
    }

    /// Waits for the broker's `Permissions Violation for <what> to "<subject>"`.
    async fn refused(&self, what: &str, subject: &str) {
        let want = format!("permissions violation for {what} to \"{subject}\"").to_lowercase();
        let who = self.who;
        testkit::wait_for(
            &format!("the broker to refuse {what} to {subject:?} for {who}"),
            10_000,
            || {
                let found = self
                    .errors
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|e| e.to_lowercase().contains(&want));
                async move { found.then_some(()) }
            },
        )
        .await;
    }

    /// Publishes (core NATS) and waits for the refusal.
    async fn publish_refused(&self, subject: &str) {
        self.client
            .publish(subject.to_owned(), "{}".into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.refused("publish", subject).await;
    }

    /// Subscribes and waits for the refusal.
    async fn subscribe_refused(&self, subject: &str) {
        let _sub = self.client.subscribe(subject.to_owned()).await.unwrap();
        self.client.flush().await.unwrap();
        self.refused("subscription", subject).await;
    }
}

/// A trade.filled body per docs/events.md.
fn trade_filled_body(saga: SagaId, user: &str, usd: &str) -> String {
    format!(
        r#"{{"saga_id":"{saga}","user_id":"{user}","krw_amount":"1500000","usd_amount":"{usd}","rate":"1400"}}"#
    )
}

#[test]
fn the_broker_refuses_to_start_without_a_password_variable() {
    let ids = Identities::random();
    let started = std::panic::catch_unwind(|| {
        let mut b = testkit::NatsServer::builder()
            .config(testkit::workspace_root().join("config/nats.conf"));
        for who in common::IDENTITIES {
            b = match who {
                "admin" => b.env_remove(Identities::env_var(who)),
                _ => b.env(Identities::env_var(who), ids.password(who)),
            };
        }
        b.start()
    });
    let message = match started {
        Ok(_) => panic!("nats-server started with FX_NATS_PASSWORD_ADMIN unset"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(
        message.contains("'FX_NATS_PASSWORD_ADMIN'") && message.contains("can not be found"),
        "{message}"
    );
}

#[tokio::test]
async fn anonymous_and_wrong_password_connections_are_refused() {
    let ids = Identities::random();
    let nats = ids.broker();
    let url = nats.url();

    let anonymous = async_nats::connect(&url).await;
    assert!(
        matches!(&anonymous, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
        "{anonymous:?}"
    );
    for (user, password) in [
        ("client", "wrong"),
        ("admin", ids.password("client")),
        ("nobody", ids.password("admin")),
        ("admin", ""),
    ] {
        let r = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(&url)
            .await;
        assert!(
            matches!(&r, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
            "{user}/{password:?}: {r:?}"
        );
    }
    // The services' own connect gives up at once (no retrying a refusal) and says why.
    let refused = runtime::connect(&runtime::NatsConfig::with_url(&url), "anonymous").await;
    assert!(
        matches!(&refused, Err(runtime::RuntimeError::Connect { message, .. }) if message.contains("authorization")),
        "{refused:?}"
    );
    for who in common::IDENTITIES {
        ids.connect(&url, who).await;
    }
}

#[tokio::test]
async fn a_client_cannot_mint_usd_by_publishing_a_credit() {
    let sys = System::start_secured().await;
    let ids = sys.identities.clone().unwrap();
    sys.deposit_krw("alice", "5000000").await;
    let user = Watched::connect(&ids, &sys.nats.url(), "client").await;
    let js = async_nats::jetstream::new(user.client.clone());
    let saga = SagaId::new_v7();
    let forged = format!(r#"{{"saga_id":"{saga}","user_id":"alice","usd_amount":"1000000.00"}}"#);
    // A JetStream publish: the broker refuses it before the stream sees it, so no PubAck
    // ever comes (the future is dropped once the refusal is seen).
    let _no_ack = js
        .send_publish(
            "fx.usd.credited.alice",
            PublishMessage::build().payload(forged.into()),
        )
        .await
        .unwrap();
    user.refused("publish", "fx.usd.credited.alice").await;
    assert!(
        testkit::messages_on(&sys.js, "FX", "fx.usd.")
            .await
            .is_empty(),
        "nothing reached the stream"
    );
    assert_eq!(
        sys.balance("alice").await,
        balance("alice", "5000000", "0", "0.00")
    );
    // What a client may do: an exchange request, acknowledged by the stream.
    let ack = js
        .send_publish(
            "fx.exchange.requested.alice",
            PublishMessage::build().payload(
                format!(r#"{{"saga_id":"{saga}","user_id":"alice","krw_amount":"1400000"}}"#)
                    .into(),
            ),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.sequence > 0);
    // The audit checks a system at rest: a saga in flight may show a service's record before
    // the journal line the same group wrote (the audit says the store changed under it).
    sys.wait_for_event(saga, EventKind::KrwCommitted).await;
    assert_eq!(
        sys.balance("alice").await,
        balance("alice", "3600000", "0", "1000.00")
    );
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn the_tracker_cannot_publish_on_fx() {
    let ids = Identities::random();
    let nats = ids.broker();
    let tracker = Watched::connect(&ids, &nats.url(), "tracker").await;
    for subject in [
        "fx.exchange.requested.alice",
        "fx.krw.committed.alice",
        "fx.usd.credited.alice",
        "fx.trade.filled.alice",
        "fxdlq.krw.malformed_body",
        "fxadmin.krw.deposit",
    ] {
        tracker.publish_refused(subject).await;
    }
}

#[tokio::test]
async fn each_identity_is_refused_what_it_does_not_need() {
    let ids = Identities::random();
    let nats = ids.broker();
    let url = nats.url();
    let publish: [(&'static str, &[&str]); 6] = [
        (
            "client",
            &[
                "fx.usd.credited.alice",
                "fx.krw.held.alice",
                "fx.exchange.requested",
                "fxdlq.krw.malformed_body",
                "fxadmin.usd.deposit",
                "$SRV.PING",
                "$JS.API.STREAM.CREATE.FX",
                "$JS.API.STREAM.PURGE.FX",
            ],
        ),
        (
            "tracker",
            &[
                "$JS.API.STREAM.UPDATE.FX",
                "$JS.API.STREAM.DELETE.FX",
                // The unnamed create takes the consumer's name from the body, and would
                // update a durable consumer of that name.
                "$JS.API.CONSUMER.CREATE.FX",
                "$JS.API.CONSUMER.DELETE.FX.fx-krw",
                "$JS.API.CONSUMER.CREATE.FX.fx-usd",
                "$JS.API.CONSUMER.CREATE.FX.fx-usd.fx.>",
                "$JS.API.CONSUMER.MSG.NEXT.FX.fx-trade",
                "$JS.ACK.FX.fx-krw.1.1.1.1.0",
                // Partitioned instances' durables are as closed as the others.
                "$JS.API.CONSUMER.CREATE.FX.fx-usd-p1",
                "$JS.API.CONSUMER.MSG.NEXT.FX.fx-krw-p7",
            ],
        ),
        (
            "krw",
            &[
                "fx.exchange.requested.alice",
                "fx.trade.filled.alice",
                "fx.usd.credited.alice",
                "fxdlq.usd.user_mismatch",
                "fxadmin.usd.deposit",
                "$JS.API.CONSUMER.CREATE.FX",
                "$JS.API.CONSUMER.CREATE.FX.fx-usd",
                "$JS.API.CONSUMER.MSG.NEXT.FX.fx-usd",
                "$JS.ACK.FX.fx-usd.1.1.1.1.0",
                "$JS.API.CONSUMER.CREATE.FX.fx-usd-p0",
                "$JS.ACK.FX.fx-trade-p1.1.1.1.1.0",
                "$JS.API.STREAM.UPDATE.FX",
                "$JS.API.STREAM.DELETE.FX",
            ],
        ),
        (
            "trade",
            &[
                "fx.krw.committed.alice",
                "fx.usd.credited.alice",
                "fxadmin.usd.freeze",
            ],
        ),
        (
            "usd",
            &[
                "fx.trade.filled.alice",
                "fx.krw.released.alice",
                "$JS.API.STREAM.PURGE.FX",
            ],
        ),
        (
            "admin",
            &[
                "$JS.API.STREAM.UPDATE.FX",
                "$JS.API.STREAM.DELETE.FX",
                "$JS.API.STREAM.PURGE.FX",
                "$JS.API.STREAM.MSG.DELETE.FX",
                "$JS.API.STREAM.DELETE.FX_DLQ",
                "$JS.API.CONSUMER.CREATE.FX",
                "$JS.API.CONSUMER.CREATE.FX_DLQ",
                "$JS.API.CONSUMER.CREATE.FX.fx-krw.fx.>",
                "$JS.API.CONSUMER.DELETE.FX.fx-krw",
                "$JS.API.CONSUMER.CREATE.FX.fx-trade",
                "$JS.API.CONSUMER.MSG.NEXT.FX.fx-usd",
                // It may ack its own consumers' messages (nats stream view), not the durables'.
                "$JS.ACK.FX.fx-krw.1.1.1.1.0",
                "$JS.ACK.FX.fx-usd-p3.1.1.1.1.0",
            ],
        ),
    ];
    // Each identity's inbox is its own: nobody else can read its pull deliveries and replies
    // (and so nobody can answer, i.e. ack or terminate, another service's messages).
    let subscribe: [(&'static str, &[&str]); 5] = [
        (
            "client",
            &[
                "fxadmin.>",
                "fxdlq.>",
                "$JS.API.>",
                "fx.>",
                "_INBOX_krw.>",
                "_INBOX.>",
            ],
        ),
        (
            "tracker",
            &["fx.>", "fxadmin.>", "$JS.API.>", "_INBOX_usd.>", "_INBOX.>"],
        ),
        // A service must not be able to answer another service's admin requests.
        (
            "krw",
            &[
                "fxadmin.usd.>",
                "$SRV.PING.fx-usd",
                "fx.>",
                "_INBOX_usd.>",
                "_INBOX.>",
                ">",
            ],
        ),
        (
            "usd",
            &[
                "fxadmin.krw.deposit",
                "$SRV.INFO.fx-krw",
                "_INBOX_krw.>",
                "_INBOX_trade.>",
            ],
        ),
        // Its own inbox prefix only, like everyone (the nats CLI sets it from its context).
        (
            "admin",
            &["fxadmin.>", "$JS.API.>", "_INBOX.>", "_INBOX_krw.>"],
        ),
    ];
    for (who, subjects) in publish {
        let w = Watched::connect(&ids, &url, who).await;
        for s in subjects {
            w.publish_refused(s).await;
        }
    }
    for (who, subjects) in subscribe {
        let w = Watched::connect(&ids, &url, who).await;
        for s in subjects {
            w.subscribe_refused(s).await;
        }
    }
}

/// Interventions on a saga are admin requests: only `admin` may send them, each service
/// answers only its own endpoints, and each records its `<domain>.intervened` under its own
/// identity (`fx.<its domain>.>`, no new grant).
#[tokio::test]
async fn only_admin_may_intervene_on_a_saga() {
    let sys = System::start_secured().await;
    let ids = sys.identities.clone().unwrap();
    let url = sys.nats.url();
    sys.deposit_krw("alice", "5000000").await;
    let saga = SagaId::new_v7();
    assert_eq!(
        sys.exchange_saga("alice", "1400000", None, saga)
            .await
            .state,
        "COMPLETED"
    );
    let endpoints = [
        "fxadmin.krw.saga_cancel",
        "fxadmin.krw.saga_reemit",
        "fxadmin.trade.saga_reemit",
        "fxadmin.usd.saga_reemit",
        "fxadmin.usd.saga_refuse_credit",
    ];
    for who in ["client", "tracker", "krw", "trade", "usd"] {
        let w = Watched::connect(&ids, &url, who).await;
        for subject in endpoints {
            w.publish_refused(subject).await;
        }
    }
    // A service cannot answer (and so cannot fake) another service's intervention.
    let krw = Watched::connect(&ids, &url, "krw").await;
    krw.subscribe_refused("fxadmin.usd.saga_refuse_credit")
        .await;
    let usd = Watched::connect(&ids, &url, "usd").await;
    usd.subscribe_refused("fxadmin.krw.saga_cancel").await;

    // admin may: every service re-emits and records it under its own identity.
    let out = fxctl::intervene(
        &sys.client,
        saga,
        &uid("alice"),
        events::InterventionAction::Reemit,
        "audit trail check",
        "admin",
    )
    .await
    .unwrap();
    for service in ["krw", "trade", "usd"] {
        assert_eq!(out[service]["outcome"], "done", "{out}");
    }
    for kind in [
        EventKind::KrwIntervened,
        EventKind::TradeIntervened,
        EventKind::UsdIntervened,
    ] {
        sys.wait_for_event(saga, kind).await;
    }
    // The only violations are the refusals above: no service was refused a publish on fx.>.
    let refused_on_fx: Vec<String> = sys
        .nats
        .log()
        .into_iter()
        .filter(|l| l.contains("Violation") && l.contains("Subject \"fx."))
        .collect();
    assert!(refused_on_fx.is_empty(), "{refused_on_fx:#?}");
}

#[tokio::test]
async fn a_full_saga_completes_under_per_service_identities() {
    let mut sys = System::start_secured().await;
    let ids = sys.identities.clone().unwrap();
    let url = sys.nats.url();

    // fx-tracker under its identity, its API behind a token.
    let token = "tracker-token-for-the-test";
    let tracker_dir = tempfile::tempdir().unwrap();
    let mut tcfg = tracker::TrackerConfig::for_test(&url, tracker_dir.path());
    tcfg.nats = ids.nats_config(&url, "tracker");
    tcfg.token = tracker::ApiToken::new(token);
    let t = tracker::Tracker::start(tcfg).await.expect("tracker starts");
    let (model, tracker_url) = (t.model(), format!("http://{}", t.http_addr()));
    let (stop_tracker, stopped) = tokio::sync::oneshot::channel::<()>();
    let tracker_task = tokio::spawn(t.run(async {
        let _ = stopped.await;
    }));

    // The operator funds accounts (admin); the user exchanges (client).
    sys.deposit_krw("alice", "5000000").await;
    sys.deposit_krw("carol", "2000000").await;
    let user = sys.connect_as("client").await;
    let exchange = |who: &'static str, krw: &'static str, min: Option<&'static str>| {
        let user = user.clone();
        async move {
            let saga = SagaId::new_v7();
            let out = fxctl::exchange(
                &user,
                uid(who),
                Krw::parse(krw).unwrap(),
                min.map(|m| Usd::parse(m).unwrap()),
                Some(saga),
                Some(SAGA_DEADLINE_MS),
            )
            .await
            .unwrap();
            (saga, out.outcome.expect("waited"))
        }
    };
    let (done, out) = exchange("alice", "1500000", Some("1000.00")).await;
    assert_eq!(out.state, "COMPLETED", "{out:?}");
    assert_eq!(out.usd_amount.as_deref(), Some("1071.42"));

    // The compensation path too: every service publishes its reversal under its identity.
    fxctl::set_frozen(&sys.client, &uid("carol"), true, "test")
        .await
        .unwrap();
    let (undone, out) = exchange("carol", "700000", None).await;
    assert_eq!(out.state, "COMPENSATED", "{out:?}");
    fxctl::set_frozen(&sys.client, &uid("carol"), false, "test")
        .await
        .unwrap();

    assert_eq!(
        sys.balance("alice").await,
        balance("alice", "3500000", "0", "1071.42")
    );
    assert_eq!(
        sys.balance("carol").await,
        balance("carol", "2000000", "0", "0.00")
    );
    assert_eq!(sys.journal_ops("krw", done), ["commit", "hold"]);
    assert_eq!(sys.journal_ops("usd", done), ["credit"]);
    assert_eq!(sys.journal_ops("trade", done), ["fill"]);
    assert_eq!(sys.journal_ops("krw", undone), ["hold", "release"]);
    // fx-trade sells the 500.00 USD back under its own identity, consuming its own
    // trade.cancelled: at the flat 1400 for exactly the 700,000 KRW it cost, so no P&L entry.
    sys.wait_for_event(undone, events::EventKind::TradeReversed)
        .await;
    assert_eq!(
        sys.journal_ops("trade", undone),
        ["cancel", "fill", "reverse"]
    );
    sys.assert_audit_ok().await;

    // The tracker, reading as `tracker`, shows both.
    testkit::wait_for("the tracker to project both sagas", 20_000, || {
        let model = model.clone();
        async move {
            let state = |id| model.get(id).ok().flatten().map(|r| r.state);
            (state(done) == Some(tracker::SagaState::Completed)
                && state(undone) == Some(tracker::SagaState::Compensated))
            .then_some(())
        }
    })
    .await;
    let view = fxctl::saga(&tracker_url, done, Some(token)).await.unwrap();
    assert_eq!(view["state"], "COMPLETED");
    assert_eq!(view["usd_amount"], "1071.42");
    let refused = fxctl::saga(&tracker_url, done, None).await.unwrap_err();
    assert_eq!(refused.exit_code(), 4, "{refused}");
    assert!(
        refused.to_string().contains("requires a token"),
        "{refused}"
    );
    // The saga page reads the bodies back from the stream (direct get, as `tracker`).
    let page_url = format!("{tracker_url}/sagas/{done}");
    let page = tokio::task::spawn_blocking(move || {
        ureq::get(&page_url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(page.contains("fx.usd.credited.alice"), "{page}");
    assert!(page.contains("1071.42"), "{page}");

    // A broker restart: every identity reconnects, re-reads its consumer's info, and the
    // tracker recreates its ordered consumer (delete the old one, create a named one from the
    // next sequence); then an operator deletes that consumer, and it is recreated again. A
    // saga after each still completes and shows.
    sys.nats.restart();
    testkit::wait_for("fx-krw and fx-usd to answer again", 20_000, || async {
        fxctl::audit(&sys.client, "test").await.ok()
    })
    .await;
    let shows = |saga: SagaId| {
        let model = model.clone();
        async move {
            testkit::wait_for("the tracker to project the saga", 20_000, || {
                let model = model.clone();
                async move {
                    let rec = model.get(saga).ok().flatten()?;
                    (rec.state == tracker::SagaState::Completed).then_some(())
                }
            })
            .await
        }
    };
    let (after_restart, out) = exchange("alice", "140000", None).await;
    assert_eq!(out.state, "COMPLETED", "{out:?}");
    shows(after_restart).await;
    let stream = sys.js.get_stream("FX").await.unwrap();
    let ordered = || async {
        let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
        names
            .into_iter()
            .filter(|n| n.starts_with("fx-tracker-"))
            .collect::<Vec<_>>()
    };
    let before = ordered().await;
    assert_eq!(before.len(), 1, "{before:?}");
    stream.delete_consumer(&before[0]).await.unwrap();
    let (after_delete, out) = exchange("alice", "140000", None).await;
    assert_eq!(out.state, "COMPLETED", "{out:?}");
    shows(after_delete).await;
    let now = ordered().await;
    assert!(now.len() == 1 && now != before, "{before:?} then {now:?}");

    // The operator's reads: dead letters, a live tail, the micro-service discovery.
    assert!(fxctl::dlq_list(&sys.client).await.unwrap().is_empty());
    let mut kinds = Vec::new();
    fxctl::tail(&sys.client, Some(&uid("alice")), true, |_, e| {
        let kind = e.expect("decodes").kind();
        kinds.push(kind);
        kind != EventKind::KrwCommitted
    })
    .await
    .unwrap();
    assert!(kinds.contains(&EventKind::UsdCredited), "{kinds:?}");
    let info = sys
        .client
        .request("$SRV.INFO.fx-usd", "".into())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["name"], "fx-usd");

    let _ = stop_tracker.send(());
    tracker_task.await.unwrap().unwrap();
    // Every grant the run needed was there: the broker refused nothing.
    assert_no_violation(&sys);
}

#[tokio::test]
async fn fx_usd_dead_letters_an_event_whose_body_contradicts_its_subject() {
    let sys = System::start_secured().await;
    sys.deposit_krw("alice", "5000000").await;
    sys.deposit_krw("bob", "5000000").await;
    // Published as admin, the one identity that may put any event on the stream (to replay
    // dead letters): a fill on alice's subject whose body says bob.
    let saga = SagaId::new_v7();
    let body = trade_filled_body(saga, "bob", "1071.42");
    let js = runtime::broker::jetstream(sys.client.clone());
    js.send_publish(
        "fx.trade.filled.alice",
        PublishMessage::build().payload(body.clone().into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let letters = testkit::wait_for(
        "fx-usd and fx-krw to dead-letter the fill",
        20_000,
        || async {
            let l = fxctl::dlq_list(&sys.client).await.ok()?;
            (l.len() >= 2).then_some(l)
        },
    )
    .await;
    let usd = letters
        .iter()
        .find(|l| l.service == "usd")
        .expect("fx-usd dead-lettered it");
    assert_eq!(usd.reason, "user_mismatch");
    assert_eq!(usd.subject, "fx.trade.filled.alice");
    assert_eq!(usd.payload, body, "kept byte for byte");
    assert!(usd.message.contains("bob"), "{}", usd.message);
    let krw = letters
        .iter()
        .find(|l| l.service == "krw")
        .expect("fx-krw dead-lettered it too");
    assert_eq!(krw.reason, "user_mismatch");
    // Nobody acted on it.
    assert!(sys.saga_events(saga).await.is_empty());
    assert!(testkit::messages_on(&sys.js, "FX", "fx.usd.")
        .await
        .is_empty());
    assert_eq!(
        sys.balance("alice").await,
        balance("alice", "5000000", "0", "0.00")
    );
    assert_eq!(
        sys.balance("bob").await,
        balance("bob", "5000000", "0", "0.00")
    );
    sys.assert_audit_ok().await;
    assert_no_violation(&sys);
}

/// Every reason a request or event can be refused for, published by the identity that may:
/// refused requests reach the user as `krw.rejected` on their own subject (which `client` may
/// follow); messages that cannot be answered are kept in `FX_DLQ` with the reason.
/// (`unknown_event`, a subject outside the catalog, is consumed by no service: it stays on the
/// stream and the tracker counts it in `fx_tracker_undecodable_total`.)
#[tokio::test]
async fn every_refusal_reason_reaches_the_user_or_the_dead_letter_stream() {
    let krw_config = krw::KrwConfig {
        max_krw_per_tx: Krw::parse("900000").unwrap(),
        max_krw_per_user_day: Krw::parse("1000000").unwrap(),
        ..krw::KrwConfig::default()
    };
    let sys = System::start_secured_with(krw_config, trade::TradeConfig::default()).await;
    sys.deposit_krw("dora", "5000000").await;
    sys.deposit_krw("eve", "100000").await;
    let user = sys.connect_as("client").await;
    let user_js = runtime::broker::jetstream(user.clone());
    let publish = |js: async_nats::jetstream::Context, subject: String, body: Vec<u8>| async move {
        js.send_publish(subject, PublishMessage::build().payload(body.into()))
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    };
    let request = |saga: SagaId, user: &str, krw: &str| {
        format!(r#"{{"saga_id":"{saga}","user_id":"{user}","krw_amount":"{krw}"}}"#).into_bytes()
    };

    // Used up most of dora's day: 800,000 of 1,000,000 KRW.
    let first = SagaId::new_v7();
    let out = fxctl::exchange(
        &user,
        uid("dora"),
        Krw::parse("800000").unwrap(),
        None,
        Some(first),
        Some(SAGA_DEADLINE_MS),
    )
    .await
    .unwrap();
    assert_eq!(out.outcome.unwrap().state, "COMPLETED");

    // krw.rejected, one per reason, on the subject's user.
    let rejections: Vec<(RejectReason, &str, Vec<u8>, SagaId)> = {
        let s = || SagaId::new_v7();
        let (a, b, c, d, e, f, g) = (s(), s(), s(), s(), s(), s(), s());
        vec![
            (
                RejectReason::InvalidRequest,
                "dora",
                format!(r#"{{"saga_id":"{a}","user_id":"dora","krw_amount":100000}}"#).into_bytes(),
                a,
            ),
            (
                RejectReason::UserMismatch,
                "dora",
                request(b, "mallory", "100000"),
                b,
            ),
            (
                RejectReason::UnknownUser,
                "nobody",
                request(c, "nobody", "100000"),
                c,
            ),
            (
                RejectReason::InsufficientFunds,
                "eve",
                request(d, "eve", "500000"),
                d,
            ),
            (
                RejectReason::BelowMinimum,
                "dora",
                request(e, "dora", "10"),
                e,
            ),
            (
                RejectReason::AboveTransactionLimit,
                "dora",
                request(f, "dora", "950000"),
                f,
            ),
            (
                RejectReason::AboveDailyLimit,
                "dora",
                request(g, "dora", "300000"),
                g,
            ),
        ]
    };
    for (_, who, body, _) in &rejections {
        publish(
            user_js.clone(),
            format!("fx.exchange.requested.{who}"),
            body.clone(),
        )
        .await;
    }
    for (reason, who, _, saga) in &rejections {
        let rejected = testkit::wait_for(&format!("krw.rejected({reason:?})"), 20_000, || async {
            sys.saga_events(*saga)
                .await
                .into_iter()
                .find_map(|e| match e {
                    Event::KrwRejected(r) => Some(r),
                    _ => None,
                })
        })
        .await;
        assert_eq!(&rejected.reason, reason, "{}", rejected.message);
        assert_eq!(
            rejected.user_id.as_str(),
            *who,
            "answered on the subject's user"
        );
        assert!(!rejected.message.is_empty());
    }

    // Dead letters: what cannot be answered as a rejection.
    let too_large = format!(
        r#"{{"saga_id":"{}","user_id":"dora","krw_amount":"100000","pad":"{}"}}"#,
        SagaId::new_v7(),
        "x".repeat(events::MAX_PAYLOAD_BYTES)
    );
    let by_client: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "malformed_body",
            "fx.exchange.requested.dora",
            b"{oops".to_vec(),
        ),
        (
            "payload_too_large",
            "fx.exchange.requested.dora",
            too_large.into_bytes(),
        ),
        (
            "bad_subject",
            "fx.exchange.requested.no@such",
            request(SagaId::new_v7(), "dora", "100000"),
        ),
        // The first saga's id again, with another amount: the saga lives on unchanged.
        (
            "saga_id_conflict",
            "fx.exchange.requested.dora",
            request(first, "dora", "900000"),
        ),
    ];
    for (_, subject, body) in &by_client {
        publish(user_js.clone(), subject.to_string(), body.clone()).await;
    }
    // Events of the services, forged by the one identity that may publish them (admin): a
    // fill of zero dollars reaches both of its consumers.
    let zero_fill = trade_filled_body(SagaId::new_v7(), "dora", "0.00");
    publish(
        sys.js.clone(),
        "fx.trade.filled.dora".into(),
        zero_fill.clone().into_bytes(),
    )
    .await;
    let mut expected: Vec<(&str, &str, String)> = by_client
        .iter()
        .map(|(reason, subject, _)| ("krw", *reason, subject.to_string()))
        .collect();
    expected.push(("krw", "invalid_field", "fx.trade.filled.dora".into()));
    expected.push(("usd", "invalid_field", "fx.trade.filled.dora".into()));
    let letters = testkit::wait_for("every dead letter", 20_000, || async {
        let l = fxctl::dlq_list(&sys.client).await.ok()?;
        (l.len() >= expected.len()).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), expected.len(), "{letters:#?}");
    for (service, reason, subject) in &expected {
        assert!(
            letters
                .iter()
                .any(|l| l.service == *service && l.reason == *reason && l.subject == *subject),
            "no {service} dead letter {reason} for {subject}: {letters:#?}"
        );
    }

    // Nothing moved beyond the one completed exchange (800,000 KRW at 1400 = 571.42 USD).
    assert_eq!(
        sys.balance("dora").await,
        balance("dora", "4200000", "0", "571.42")
    );
    assert_eq!(
        sys.balance("eve").await,
        balance("eve", "100000", "0", "0.00")
    );
    assert_eq!(sys.journal_ops("krw", first), ["commit", "hold"]);
    sys.assert_audit_ok().await;
    assert_no_violation(&sys);
}

/// A partitioned instance (`FX_PARTITIONS=2`, `FX_PARTITION=1`) of each service runs under its
/// identity with the names `config/nats.conf` grants (`fx-<service>-p1`, `fxadmin.<service>.p1.*`):
/// a saga of a partition-1 user completes with exact balances, the stream stores its events
/// under partition 1, an instance asked about a partition-0 user answers 421, and the broker
/// logs no violation.
#[tokio::test]
async fn a_partitioned_instance_runs_under_its_identity() {
    let p1 = events::Partitioning::new(2, 1).unwrap();
    let sys = System::start_secured_partition(p1).await;
    assert!(p1.owns(&uid("alice")) && !p1.owns(&uid("bob")));

    sys.deposit_krw("alice", "1000000").await;
    let out = sys.exchange("alice", "700000", None).await;
    assert_eq!(out.state, "COMPLETED", "{out:?}");
    assert_eq!(
        sys.balance("alice").await,
        balance("alice", "300000", "0", "500.00")
    );
    // Only partition 1 runs here, so audit its instances directly (`fxctl audit` asks all).
    for service in ["krw", "trade", "usd"] {
        let audit =
            runtime::admin::request_job_to(&sys.client, service, p1, "audit", "test", |_, _| {})
                .await
                .unwrap();
        assert_eq!(audit["ok"], serde_json::json!(true), "{service}: {audit:#}");
    }

    let alices: Vec<String> = testkit::stream_messages(&sys.js, "FX")
        .await
        .into_iter()
        .map(|m| m.subject.to_string())
        .filter(|s| s.contains(".alice"))
        .collect();
    assert!(alices.len() >= 6, "{alices:?}");
    assert!(alices.iter().all(|s| s.ends_with(".alice.1")), "{alices:?}");

    let err = runtime::admin::request_to(
        &sys.client,
        "krw",
        p1,
        "balance",
        "test",
        &serde_json::json!({ "user_id": "bob" }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, 421, "{err:?}");
    assert!(err.message.contains("partition 0 of 2"), "{err:?}");
    assert_no_violation(&sys);
}
