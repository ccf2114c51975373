//! A long admin job (an audit of a large store) over a real broker: every request is answered
//! at once with the job's progress, so a busy service is never taken for a dead one, and the
//! client side runs it to its result.

use std::sync::Arc;

use events::Partitioning;
use runtime::admin::{job_handler, request_job_to, request_to, serve_admin, Progress};
use serde_json::json;
use testkit::{wait_for, NatsServer};
use tokio::sync::Semaphore;

#[tokio::test]
async fn a_long_job_answers_at_once_with_its_progress_and_then_its_result() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    // The job counts 3 items, then waits for the test to let it finish (one permit per run).
    let finish = Arc::new(Semaphore::new(0));
    let gate = finish.clone();
    let audit = job_handler(move |progress: Progress| {
        let gate = gate.clone();
        async move {
            progress.add(3);
            gate.acquire().await.expect("open").forget();
            Ok(json!({ "ok": true, "checked": progress.get() }))
        }
    });
    let admin = serve_admin(
        client.clone(),
        Arc::new(runtime::Store::temporary().unwrap()),
        "jobs",
        Partitioning::SINGLE,
        "a test service with one long job",
        vec![("audit", audit)],
    )
    .await
    .unwrap();
    let served = tokio::spawn(admin);
    let ask = |body: serde_json::Value| {
        let client = client.clone();
        async move {
            request_to(
                &client,
                "jobs",
                Partitioning::SINGLE,
                "audit",
                "test",
                &body,
            )
            .await
        }
    };

    let started = ask(json!({})).await.unwrap();
    assert_eq!(
        (started["job"].clone(), started["state"].clone()),
        (json!(1), json!("running"))
    );
    // While it runs: its progress, by id; a second caller joins the same job.
    let seen = wait_for("the job's progress", 10_000, || async {
        let s = ask(json!({ "job": 1 })).await.ok()?;
        (s["done"] == json!(3)).then_some(s)
    })
    .await;
    assert_eq!(seen["state"], "running");
    let joined = ask(json!({})).await.unwrap();
    assert_eq!(
        (joined["job"].clone(), joined["joined"].clone()),
        (json!(1), json!(true)),
        "joined, not a second job"
    );
    let unknown = ask(json!({ "job": 7 })).await.unwrap_err();
    assert_eq!(unknown.code, 404, "{unknown:?}");
    assert!(unknown.message.contains("no job 7"), "{unknown:?}");

    finish.add_permits(1);
    let done = wait_for("the job to end", 10_000, || async {
        let s = ask(json!({ "job": 1 })).await.ok()?;
        (s["state"] == "done").then_some(s)
    })
    .await;
    assert_eq!(done["result"], json!({ "ok": true, "checked": 3 }));

    // The client side: a new job (id 2), polled to its result, with the progress reported.
    finish.add_permits(1);
    let mut reports = Vec::new();
    let result = request_job_to(
        &client,
        "jobs",
        Partitioning::SINGLE,
        "audit",
        "test",
        |d, _| reports.push(d),
    )
    .await
    .unwrap();
    assert_eq!(result, json!({ "ok": true, "checked": 3 }));
    assert!(!reports.is_empty());
    assert_eq!(ask(json!({ "job": 2 })).await.unwrap()["state"], "done");

    // A caller that finds a job running (3, started by someone else) waits for it to end and
    // then runs its own (4): what it gets began after it asked.
    assert_eq!(ask(json!({})).await.unwrap()["job"], 3);
    finish.add_permits(2);
    let result = request_job_to(
        &client,
        "jobs",
        Partitioning::SINGLE,
        "audit",
        "test",
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(result["ok"], true);
    assert_eq!(ask(json!({ "job": 4 })).await.unwrap()["state"], "done");
    served.abort();
}
