//! `fxctl bench`: throughput and end-to-end latency of real sagas against a running system,
//! beside the broker's own limit measured in the same run (the null saga).
//!
//! Latency is from the request's publish to the terminal event seen by a subscriber:
//! krw.committed (completed), krw.rejected, or krw.released (failed; later compensation
//! events, if any, are not waited for).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use events::{Event, ExchangeRequested, Krw, SagaId, UserId};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use crate::{CtlError, CtlResult};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Saturation: this many sagas with `concurrency` in flight.
    pub sagas: u64,
    /// Most sagas in flight at once (saturation mode).
    pub concurrency: usize,
    /// Fixed offered load instead: sagas per second for `duration_ms`.
    pub rate: Option<u64>,
    /// How long the fixed load runs.
    pub duration_ms: u64,
    /// Bench users the load is spread over (each gets a deposit).
    pub users: usize,
    /// KRW per saga.
    pub krw_per_saga: Krw,
    /// Also measure the null saga on the same broker.
    pub baseline: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// How long to wait for stragglers after the last request, in ms.
    pub drain_ms: u64,
}

/// The result; `--json` prints it as the last line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub mode: String,
    pub sagas: u64,
    pub completed: u64,
    pub failed: u64,
    pub rejected: u64,
    pub timed_out: u64,
    pub elapsed_ms: u64,
    pub sagas_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub audit_ok: Option<bool>,
    pub baseline_chains_per_s: Option<f64>,
    pub ratio: Option<f64>,
}

#[derive(Default)]
struct Tracking {
    started: HashMap<SagaId, Instant>,
    latencies_ms: Vec<f64>,
    completed: u64,
    failed: u64,
    rejected: u64,
}

/// Runs the bench and returns the report.
pub async fn bench(
    client: &async_nats::Client,
    cfg: &BenchConfig,
    actor: &str,
) -> CtlResult<BenchReport> {
    let users: Vec<UserId> = (0..cfg.users.max(1))
        .map(|i| UserId::parse(&format!("bench-{i}")).expect("valid id"))
        .collect();
    let total = match cfg.rate {
        Some(r) => r * cfg.duration_ms / 1000,
        None => cfg.sagas,
    };
    // Enough KRW for every saga a user will get, within the per-day limit's spirit.
    let per_user = cfg
        .krw_per_saga
        .amount()
        .checked_mul((total / users.len() as u64 + 1).into())
        .and_then(Krw::from_decimal)
        .ok_or_else(|| CtlError::Usage("too many sagas for the amount per saga".into()))?;
    for u in &users {
        crate::deposit(client, u, Some(per_user), None, actor).await?;
    }

    let tracking = Arc::new(Mutex::new(Tracking::default()));
    let done = Arc::new(Notify::new());
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut subs = Vec::new();
    for subject in [
        "fx.krw.committed.*",
        "fx.krw.rejected.*",
        "fx.krw.released.*",
    ] {
        subs.push(
            client
                .subscribe(subject)
                .await
                .map_err(|e| CtlError::Unavailable(e.to_string()))?,
        );
    }
    let mut merged = futures::stream::select_all(subs);
    let (t, d, p) = (tracking.clone(), done.clone(), permits.clone());
    let watcher = tokio::spawn(async move {
        while let Some(m) = merged.next().await {
            let Ok(e) = Event::decode(m.subject.as_str(), &m.payload) else {
                continue;
            };
            let mut t = t.lock().expect("not poisoned");
            let Some(start) = t.started.remove(&e.saga_id()) else {
                continue;
            };
            t.latencies_ms.push(start.elapsed().as_secs_f64() * 1000.0);
            match e {
                Event::KrwCommitted(_) => t.completed += 1,
                Event::KrwRejected(_) => t.rejected += 1,
                _ => t.failed += 1,
            }
            p.add_permits(1);
            d.notify_waiters();
        }
    });

    let bar = progress_bar(cfg.progress, total);
    let js = runtime::broker::jetstream(client.clone());
    let started = Instant::now();
    let mut ticker = cfg
        .rate
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(1) as f64)));
    for i in 0..total {
        match ticker.as_mut() {
            Some(t) => {
                t.tick().await;
            }
            None => permits
                .acquire()
                .await
                .expect("semaphore is never closed")
                .forget(),
        }
        let saga = SagaId::new_v7();
        let req = Event::ExchangeRequested(ExchangeRequested {
            saga_id: saga,
            user_id: users[(i as usize) % users.len()].clone(),
            krw_amount: cfg.krw_per_saga,
            min_usd_amount: None,
        });
        tracking
            .lock()
            .expect("not poisoned")
            .started
            .insert(saga, Instant::now());
        let ack = js
            .send_publish(
                req.subject(),
                jetstream::message::PublishMessage::build()
                    .payload(req.to_json().into())
                    .message_id(saga.to_string()),
            )
            .await
            .map_err(|e| CtlError::Unavailable(e.to_string()))?;
        // PubAcks are awaited off the hot path so requests pipeline.
        tokio::spawn(async move {
            let _ = ack.await;
        });
        if let Some(b) = &bar {
            b.set_position(i + 1);
        }
    }
    // Wait for the stragglers, up to the drain deadline.
    let deadline = Instant::now() + Duration::from_millis(cfg.drain_ms);
    loop {
        let notified = done.notified();
        if tracking.lock().expect("not poisoned").started.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
            break;
        }
    }
    let elapsed = started.elapsed();
    watcher.abort();
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    let mut t = std::mem::take(&mut *tracking.lock().expect("not poisoned"));
    t.latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if t.latencies_ms.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (t.latencies_ms.len() - 1) as f64).round() as usize;
        t.latencies_ms[i]
    };
    let finished = t.completed + t.failed + t.rejected;
    let mut report = BenchReport {
        mode: match cfg.rate {
            Some(r) => format!("rate {r}/s for {} ms", cfg.duration_ms),
            None => format!("saturation, concurrency {}", cfg.concurrency),
        },
        sagas: total,
        completed: t.completed,
        failed: t.failed,
        rejected: t.rejected,
        timed_out: total - finished,
        elapsed_ms: elapsed.as_millis() as u64,
        sagas_per_s: finished as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: pct(50.0),
        p95_ms: pct(95.0),
        p99_ms: pct(99.0),
        max_ms: t.latencies_ms.last().copied().unwrap_or(0.0),
        ..BenchReport::default()
    };
    report.audit_ok = Some(
        crate::audit(client, actor)
            .await
            .map(|a| a["ok"] == serde_json::json!(true))
            .unwrap_or(false),
    );
    if cfg.baseline {
        let chains = null_saga(client, total.clamp(100, 20_000), cfg.concurrency).await?;
        report.baseline_chains_per_s = Some(chains);
        report.ratio = Some(report.sagas_per_s / chains.max(1e-9));
    }
    Ok(report)
}

fn progress_bar(show: bool, total: u64) -> Option<indicatif::ProgressBar> {
    show.then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} requests {per_sec} {eta}",
            )
            .expect("valid template"),
        );
        b
    })
}

/// Stream of the null saga (deleted afterwards).
const NULL_STREAM: &str = "FXBENCH";
/// Hops of the null saga: five events through four consumers, like the happy path.
const NULL_HOPS: usize = 4;

/// The broker's own limit on this machine: chains of five events through four durable pull
/// consumers that only republish (publish, await PubAcks pipelined, then ack the batch), on a
/// stream configured like `FX` (same replicas, no partition transform). Returns chains per second
/// at `concurrency` chains in flight.
pub async fn null_saga(
    client: &async_nats::Client,
    chains: u64,
    concurrency: usize,
) -> CtlResult<f64> {
    let unavailable = |e: &dyn std::fmt::Display| CtlError::Unavailable(e.to_string());
    let js = runtime::broker::jetstream(client.clone());
    // As many replicas as FX has (R3 on a cluster), so the baseline pays the same replication.
    let replicas = match js.get_stream(runtime::STREAM).await {
        Ok(mut fx) => fx.info().await.map(|i| i.config.num_replicas).unwrap_or(1),
        Err(_) => 1,
    };
    let mut cfg = runtime::broker::fx_stream_config(&runtime::StreamSettings {
        replicas,
        ..runtime::StreamSettings::default()
    });
    cfg.name = NULL_STREAM.into();
    cfg.subjects = vec!["fxbench.>".into()];
    cfg.deny_delete = false;
    let _ = js.delete_stream(NULL_STREAM).await;
    let stream = js.create_stream(cfg).await.map_err(|e| unavailable(&e))?;
    let mut hops = Vec::new();
    for hop in 0..NULL_HOPS {
        let mut ccfg = runtime::consumer_config(
            "bench",
            events::Partitioning::SINGLE,
            &[],
            Duration::from_secs(30),
        );
        ccfg.durable_name = Some(format!("null-{hop}"));
        ccfg.name = ccfg.durable_name.clone();
        ccfg.filter_subjects = vec![format!("fxbench.h{hop}.*")];
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(ccfg)
            .await
            .map_err(|e| unavailable(&e))?;
        let js = js.clone();
        hops.push(tokio::spawn(async move {
            let Ok(mut msgs) = consumer
                .stream()
                .max_messages_per_batch(256)
                .messages()
                .await
            else {
                return;
            };
            loop {
                let Some(Ok(first)) = msgs.next().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < 256 {
                    match futures::FutureExt::now_or_never(msgs.next()) {
                        Some(Some(Ok(m))) => batch.push(m),
                        _ => break,
                    }
                }
                let mut acks = Vec::with_capacity(batch.len());
                for m in &batch {
                    let id = m
                        .subject
                        .as_str()
                        .rsplit('.')
                        .next()
                        .unwrap_or("x")
                        .to_owned();
                    let next = format!("fxbench.h{}.{id}", hop + 1);
                    if let Ok(f) = js
                        .send_publish(
                            next,
                            jetstream::message::PublishMessage::build()
                                .payload(m.payload.clone())
                                .message_id(format!("{id}:{}", hop + 1)),
                        )
                        .await
                    {
                        acks.push(f);
                    }
                }
                for f in acks {
                    let _ = f.await;
                }
                for m in batch {
                    let _ = m.ack().await;
                }
            }
        }));
    }
    let mut ends = client
        .subscribe(format!("fxbench.h{NULL_HOPS}.*"))
        .await
        .map_err(|e| unavailable(&e))?;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let p = permits.clone();
    let counter = tokio::spawn(async move {
        let mut n = 0u64;
        while n < chains {
            if ends.next().await.is_none() {
                break;
            }
            n += 1;
            p.add_permits(1);
        }
        n
    });
    let started = Instant::now();
    for i in 0..chains {
        permits.acquire().await.expect("open").forget();
        let ack = js
            .send_publish(
                format!("fxbench.h0.c{i}"),
                jetstream::message::PublishMessage::build()
                    .payload("{}".into())
                    .message_id(format!("c{i}:0")),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        tokio::spawn(async move {
            let _ = ack.await;
        });
    }
    let done = tokio::time::timeout(Duration::from_secs(120), counter)
        .await
        .map_err(|_| CtlError::Failed("null saga did not finish in 120 s".into()))?
        .unwrap_or(0);
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
    for h in hops {
        h.abort();
    }
    let _ = js.delete_stream(NULL_STREAM).await;
    Ok(rate)
}
