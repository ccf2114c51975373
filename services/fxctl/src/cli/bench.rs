//! `fxctl bench`: throughput and latency against the running system (see
//! [`crate::bench`]), printed as a summary.

use clap::Args;

use super::{money, Globals};
use crate::bench::{BenchConfig, BenchReport};
use crate::{CtlError, CtlResult};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Saturation: run this many sagas...
    #[arg(long, default_value_t = 2_000)]
    sagas: u64,
    /// ...with this many in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Fixed offered load instead: sagas per second...
    #[arg(long)]
    rate: Option<u64>,
    /// ...for this many seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Users to spread the load over.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// KRW per saga.
    #[arg(long, default_value = "14000")]
    krw: String,
    /// Also measure the null saga (four republishing hops) on the same broker.
    #[arg(long)]
    baseline: bool,
}

/// Runs the benchmark; fails when a saga timed out or the audit after it failed.
pub async fn run(g: &Globals, a: BenchArgs) -> CtlResult<()> {
    use std::io::IsTerminal;
    let cfg = BenchConfig {
        sagas: a.sagas,
        concurrency: a.concurrency,
        rate: a.rate,
        duration_ms: a.duration * 1000,
        users: a.users,
        krw_per_saga: money(&a.krw, events::Krw::parse)?,
        baseline: a.baseline,
        progress: !g.json && std::io::stderr().is_terminal(),
        drain_ms: 60_000,
    };
    let client = g.connect().await?;
    let r = crate::bench::bench(&client, &cfg, &g.actor).await?;
    if g.json {
        println!("{}", serde_json::to_string(&r).expect("serializable"));
    } else {
        print_report(&r);
    }
    if r.audit_ok == Some(true) && r.timed_out == 0 {
        Ok(())
    } else {
        Err(CtlError::Failed(
            "bench ended with timed-out sagas or a failed audit".into(),
        ))
    }
}

fn print_report(r: &BenchReport) {
    println!("mode        {}", r.mode);
    println!(
        "sagas       {} (completed {}, failed {}, rejected {}, timed out {})",
        r.sagas, r.completed, r.failed, r.rejected, r.timed_out
    );
    println!(
        "throughput  {:.1} sagas/s over {} ms",
        r.sagas_per_s, r.elapsed_ms
    );
    println!(
        "latency     p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms
    );
    if let (Some(b), Some(ratio)) = (r.baseline_chains_per_s, r.ratio) {
        println!("baseline    {b:.1} null-saga chains/s; ratio {ratio:.2}");
    }
    println!(
        "audit       {}",
        if r.audit_ok == Some(true) {
            "ok"
        } else {
            "FAILED"
        }
    );
}
