//! fxctl: the command-line client of the FX exchange. See `fxctl --help`.

use clap::{Parser, Subcommand};
use fxctl::{CtlError, CtlResult};

#[derive(Parser)]
#[command(
    name = "fxctl",
    version,
    about = "Publish KRW→USD exchanges and operate the FX services",
    after_help = "Exit codes: 0 ok, 1 the answer is no (saga not completed, audit failed), 2 usage, 3 broker or service unreachable, 4 request refused."
)]
struct Cli {
    /// NATS server(s), comma-separated.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats_url: String,
    /// The tracker's base URL (for `saga`).
    #[arg(
        long,
        env = "FX_TRACKER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    tracker_url: String,
    /// The tracker's token, when it requires one (for `saga`).
    #[arg(long, env = "FX_TRACKER_TOKEN", hide_env_values = true, global = true)]
    tracker_token: Option<String>,
    /// Who is asking; journaled with deposits and freezes.
    #[arg(long, env = "FX_ACTOR", default_value = "fxctl", global = true)]
    actor: String,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish an ExchangeRequested and print the saga id.
    Exchange {
        /// The user who sells KRW.
        #[arg(long)]
        user: String,
        /// KRW to sell, whole won (e.g. 1500000).
        #[arg(long)]
        krw: String,
        /// Fail rather than fill for less USD than this (e.g. 1000.00).
        #[arg(long)]
        min_usd: Option<String>,
        /// Reuse a saga id (a retry); a new UUID v7 otherwise.
        #[arg(long)]
        saga_id: Option<String>,
        /// Follow the saga to its end; exit 1 unless it COMPLETED.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in ms.
        #[arg(long, default_value_t = 60_000)]
        wait_ms: u64,
    },
    /// Deposit KRW and/or USD into a user's accounts.
    Deposit {
        #[arg(long)]
        user: String,
        /// KRW, whole won.
        #[arg(long)]
        krw: Option<String>,
        /// USD, up to cents.
        #[arg(long)]
        usd: Option<String>,
    },
    /// Show a user's KRW (available, held) and USD balances.
    Balance {
        #[arg(long)]
        user: String,
    },
    /// Freeze a user's USD account (credits are refused; compensations still run).
    Freeze {
        #[arg(long)]
        user: String,
    },
    /// Unfreeze a user's USD account.
    Unfreeze {
        #[arg(long)]
        user: String,
    },
    /// Check every invariant in fx-krw and fx-usd; exit 0 only when all hold.
    Audit,
    /// A saga: `saga show ID` (or `saga ID`) prints its state and timeline from the tracker;
    /// `saga reemit|cancel|refuse-credit ID --reason TEXT` acts on it (admin).
    #[command(
        after_help = "Actions (each recorded with your identity and reason, shown on the saga's timeline):\n  reemit         every service republishes its last word for the saga, same event ids\n  cancel         fx-krw releases a hold no fill has pinned (refused after the pivot)\n  refuse-credit  fx-usd answers a fill it has not credited with usd.credit_failed(operator)"
    )]
    Saga {
        /// `show`, `reemit`, `cancel` or `refuse-credit`, then the saga id; or only the id.
        #[arg(num_args = 1..=2, value_names = ["ACTION", "ID"])]
        args: Vec<String>,
        /// Why (required for an action; recorded in the `<domain>.intervened` event).
        #[arg(long)]
        reason: Option<String>,
        /// The saga's user (routes to its partition); asked of the tracker when omitted.
        #[arg(long)]
        user: Option<String>,
    },
    /// Follow events live from the FX stream.
    Tail {
        /// Only this user's events.
        #[arg(long)]
        user: Option<String>,
        /// Start from the beginning of the stream instead of now.
        #[arg(long)]
        from_start: bool,
    },
    /// Measure sagas/s and end-to-end latency against the running system (and the broker's
    /// own limit with --baseline). Creates and funds bench users bench-0..bench-N.
    Bench {
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
    },
    /// Dead letters in FX_DLQ.
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
    },
}

#[derive(Subcommand)]
enum DlqCmd {
    /// List dead letters with their reasons.
    List,
    /// Publish a dead letter back onto its subject (optionally with a fixed body).
    Replay {
        /// The FX_DLQ sequence (from `fxctl dlq list`).
        seq: u64,
        /// The fixed JSON body to publish instead of the original.
        #[arg(long)]
        payload: Option<String>,
    },
}

fn money<T>(s: &str, parse: fn(&str) -> Result<T, events::MoneyError>) -> CtlResult<T> {
    parse(s).map_err(|e| CtlError::Usage(e.to_string()))
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

/// What `fxctl saga ARGS` asks for: `show` or an intervention, and the saga id.
fn saga_args(args: &[String]) -> CtlResult<(Option<events::InterventionAction>, &str)> {
    use events::InterventionAction as A;
    let (action, id) = match args {
        [id] => (None, id),
        [verb, id] => match verb.as_str() {
            "show" => (None, id),
            "reemit" => (Some(A::Reemit), id),
            "cancel" => (Some(A::Cancel), id),
            "refuse-credit" | "refuse_credit" => (Some(A::RefuseCredit), id),
            other => {
                return Err(CtlError::Usage(format!(
                    "unknown saga action {other:?}: show, reemit, cancel or refuse-credit"
                )))
            }
        },
        _ => return Err(CtlError::Usage("fxctl saga [ACTION] ID".into())),
    };
    Ok((action, id))
}

/// `fxctl saga <action> ID --reason TEXT`: the intervention's admin requests (see
/// `fxctl::intervene`), then each service's answer.
async fn intervene(
    cli: &Cli,
    action: events::InterventionAction,
    id: events::SagaId,
    reason: Option<&str>,
    user: Option<&str>,
) -> CtlResult<()> {
    let reason = reason.ok_or_else(|| {
        CtlError::Usage("an action needs --reason TEXT (recorded with your identity)".into())
    })?;
    let user = match user {
        Some(u) => fxctl::user(u)?,
        None => {
            let s = fxctl::saga(&cli.tracker_url, id, cli.tracker_token.as_deref()).await?;
            fxctl::user(s["user_id"].as_str().unwrap_or_default())?
        }
    };
    let client = fxctl::connect(&cli.nats_url).await?;
    let out = fxctl::intervene(&client, id, &user, action, reason, &cli.actor).await?;
    if cli.json {
        print_json(&out);
    } else {
        for (service, v) in out.as_object().into_iter().flatten() {
            match v.get("refused") {
                Some(r) => println!("fx-{service:<6} refused  {}", r.as_str().unwrap_or("?")),
                None => println!(
                    "fx-{service:<6} {:<8} {}",
                    v["outcome"].as_str().unwrap_or("?"),
                    v["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }
    Ok(())
}

/// `fxctl saga`: the tracker only, so it needs no broker connection or credentials.
async fn saga(cli: &Cli, id: &str) -> CtlResult<()> {
    let id = events::SagaId::parse(id).map_err(|e| CtlError::Usage(e.to_string()))?;
    let s = fxctl::saga(&cli.tracker_url, id, cli.tracker_token.as_deref()).await?;
    if cli.json {
        print_json(&s);
    } else {
        let f = |k: &str| match &s[k] {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(v) => v.clone(),
            v => v.to_string(),
        };
        println!(
            "saga {}  user {}  state {}",
            f("saga_id"),
            f("user_id"),
            f("state")
        );
        println!(
            "KRW {}  USD {}  rate {}  duration {} ms",
            f("krw_amount"),
            f("usd_amount"),
            f("rate"),
            f("duration_ms")
        );
        if s["stuck"] == serde_json::json!(true) || s["inconsistent"] == serde_json::json!(true) {
            println!(
                "flags: stuck={} inconsistent={}",
                f("stuck"),
                f("inconsistent")
            );
        }
        for e in s["events"].as_array().into_iter().flatten() {
            println!(
                "  #{:<8} {:<22} {}",
                e["seq"],
                e["type"].as_str().unwrap_or("?"),
                e["subject"].as_str().unwrap_or("?")
            );
            if let Some(i) = e.get("intervention").filter(|i| i.is_object()) {
                println!(
                    "             {} by {}: {}",
                    i["action"].as_str().unwrap_or("?"),
                    i["actor"].as_str().unwrap_or("?"),
                    i["reason"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> CtlResult<()> {
    if let Cmd::Saga { args, reason, user } = &cli.cmd {
        let (action, id) = saga_args(args)?;
        return match action {
            None => saga(&cli, id).await,
            Some(action) => {
                let id = events::SagaId::parse(id).map_err(|e| CtlError::Usage(e.to_string()))?;
                intervene(&cli, action, id, reason.as_deref(), user.as_deref()).await
            }
        };
    }
    let client = fxctl::connect(&cli.nats_url).await?;
    match cli.cmd {
        Cmd::Exchange {
            user,
            krw,
            min_usd,
            saga_id,
            wait,
            wait_ms,
        } => {
            let saga = saga_id
                .map(|s| events::SagaId::parse(&s).map_err(|e| CtlError::Usage(e.to_string())))
                .transpose()?;
            let min = min_usd.map(|m| money(&m, events::Usd::parse)).transpose()?;
            let out = fxctl::exchange(
                &client,
                fxctl::user(&user)?,
                money(&krw, events::Krw::parse)?,
                min,
                saga,
                wait.then_some(wait_ms),
            )
            .await?;
            if cli.json {
                print_json(&out);
            } else {
                println!("{}", out.saga_id);
                if out.duplicate {
                    eprintln!(
                        "note: the broker had this saga id already; nothing new was published"
                    );
                }
                if let Some(o) = &out.outcome {
                    eprintln!("{}  {}", o.state, o.events.join(" → "));
                    if let Some(u) = &o.usd_amount {
                        eprintln!("credited {u} USD");
                    }
                    if let Some(r) = &o.reason {
                        eprintln!("reason: {r}");
                    }
                }
            }
            match out.outcome {
                Some(o) if o.state != "COMPLETED" => {
                    Err(CtlError::Failed(format!("saga ended {}", o.state)))
                }
                _ => Ok(()),
            }
        }
        Cmd::Deposit { user, krw, usd } => {
            let krw = krw.map(|k| money(&k, events::Krw::parse)).transpose()?;
            let usd = usd.map(|u| money(&u, events::Usd::parse)).transpose()?;
            let out = fxctl::deposit(&client, &fxctl::user(&user)?, krw, usd, &cli.actor).await?;
            if cli.json {
                print_json(&out)
            } else {
                println!("deposited for {user}");
            }
            Ok(())
        }
        Cmd::Balance { user } => {
            let b = fxctl::balance(&client, &fxctl::user(&user)?, &cli.actor).await?;
            if cli.json {
                print_json(&b);
            } else {
                println!(
                    "{:<16} {:>20} {:>20} {:>18}  frozen",
                    "user", "KRW available", "KRW held", "USD"
                );
                println!(
                    "{:<16} {:>20} {:>20} {:>18}  {}",
                    b.user_id, b.krw_available, b.krw_held, b.usd, b.usd_frozen
                );
            }
            Ok(())
        }
        Cmd::Freeze { user } => {
            let out = fxctl::set_frozen(&client, &fxctl::user(&user)?, true, &cli.actor).await?;
            if cli.json {
                print_json(&out)
            } else {
                println!("{user}: USD account frozen");
            }
            Ok(())
        }
        Cmd::Unfreeze { user } => {
            let out = fxctl::set_frozen(&client, &fxctl::user(&user)?, false, &cli.actor).await?;
            if cli.json {
                print_json(&out)
            } else {
                println!("{user}: USD account unfrozen");
            }
            Ok(())
        }
        Cmd::Audit => {
            // A long audit (a large store) shows how far each service has got, on a terminal.
            use std::io::IsTerminal;
            let spinner = (!cli.json && std::io::stderr().is_terminal()).then(|| {
                let s = indicatif::ProgressBar::new_spinner();
                s.enable_steady_tick(std::time::Duration::from_millis(200));
                s
            });
            let mut latest = std::collections::BTreeMap::new();
            let out = fxctl::audit_with_progress(&client, &cli.actor, |p| {
                if let Some(s) = &spinner {
                    latest.insert(p.instance, (p.done, p.elapsed_ms));
                    let line: Vec<String> = latest
                        .iter()
                        .map(|(i, (done, ms))| {
                            format!("{i}: {done} sagas in {:.1} s", *ms as f64 / 1000.0)
                        })
                        .collect();
                    s.set_message(format!("auditing: {}", line.join(", ")));
                }
            })
            .await;
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            let out = out?;
            let ok = out["ok"].as_bool() == Some(true);
            if cli.json {
                print_json(&out);
            } else {
                for svc in ["krw", "trade", "usd"] {
                    // One audit, or one per partition.
                    let audits = match &out[svc] {
                        serde_json::Value::Array(list) => list
                            .iter()
                            .enumerate()
                            .map(|(k, a)| (format!("fx-{svc} partition {k}"), a))
                            .collect(),
                        a => vec![(format!("fx-{svc}"), a)],
                    };
                    for (name, a) in audits {
                        let verdict = if a["ok"].as_bool() == Some(true) {
                            "ok"
                        } else {
                            "FAILED"
                        };
                        println!("{name}: {verdict}");
                        if verdict != "ok"
                            && a[runtime::admin::CHANGED_DURING_AUDIT].as_bool() == Some(true)
                        {
                            println!(
                                "  (the store changed during this audit: sagas were in flight, and a \
                                 difference may be one of them; audit again when traffic is quiet to confirm)"
                            );
                        }
                        print_journal(a);
                        print_failures(a);
                        if svc == "trade" {
                            print_venue_part(a);
                        }
                    }
                }
            }
            if ok {
                Ok(())
            } else {
                Err(CtlError::Failed("an invariant does not hold".into()))
            }
        }
        Cmd::Saga { .. } => unreachable!("handled before connecting"),
        Cmd::Tail { user, from_start } => {
            let user = user.map(|u| fxctl::user(&u)).transpose()?;
            let json = cli.json;
            fxctl::tail(&client, user.as_ref(), from_start, |seq, e| {
                use std::io::Write;
                let line = match (e, json) {
                    (Ok(e), false) => fxctl::describe(seq, &e),
                    (Ok(e), true) => serde_json::json!({
                        "seq": seq,
                        "subject": e.subject(),
                        "body": serde_json::from_slice::<serde_json::Value>(&e.to_json()).unwrap_or_default(),
                    })
                    .to_string(),
                    (Err(err), _) => format!("#{seq:<8} (does not decode: {err})"),
                };
                // Stop quietly when the reader goes away (`fxctl tail | head`), instead of
                // panicking on the broken pipe as println! would.
                writeln!(std::io::stdout().lock(), "{line}").is_ok()
            })
            .await
        }
        Cmd::Bench {
            sagas,
            concurrency,
            rate,
            duration,
            users,
            krw,
            baseline,
        } => {
            use std::io::IsTerminal;
            let cfg = fxctl::bench::BenchConfig {
                sagas,
                concurrency,
                rate,
                duration_ms: duration * 1000,
                users,
                krw_per_saga: money(&krw, events::Krw::parse)?,
                baseline,
                progress: !cli.json && std::io::stderr().is_terminal(),
                drain_ms: 60_000,
            };
            let r = fxctl::bench::bench(&client, &cfg, &cli.actor).await?;
            if cli.json {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
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
            if r.audit_ok == Some(true) && r.timed_out == 0 {
                Ok(())
            } else {
                Err(CtlError::Failed(
                    "bench ended with timed-out sagas or a failed audit".into(),
                ))
            }
        }
        Cmd::Dlq { cmd: DlqCmd::List } => {
            let letters = fxctl::dlq_list(&client).await?;
            if cli.json {
                print_json(&letters);
            } else if letters.is_empty() {
                println!("FX_DLQ is empty");
            } else {
                for l in letters {
                    println!(
                        "#{:<6} {:<6} {:<18} {}\n        {}\n        {}",
                        l.seq, l.service, l.reason, l.subject, l.message, l.payload
                    );
                }
            }
            Ok(())
        }
        Cmd::Dlq {
            cmd: DlqCmd::Replay { seq, payload },
        } => {
            let new_seq = fxctl::dlq_replay(&client, seq, payload).await?;
            if cli.json {
                print_json(&serde_json::json!({ "replayed": seq, "seq": new_seq }))
            } else {
                println!("replayed dead letter {seq} as FX sequence {new_seq}");
            }
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("fxctl: {e}");
        std::process::exit(e.exit_code());
    }
}

/// The failures of one audit, one line each.
fn print_failures(a: &serde_json::Value) {
    if let Some(fails) = a.get("failures").and_then(|f| f.as_array()) {
        for f in fails {
            println!(
                "  - {}",
                f.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| f.to_string())
            );
        }
    }
}

/// What the audit's journal walk read: entries, and how many of each operation.
fn print_journal(a: &serde_json::Value) {
    if let Some(line) = fxctl::journal_line(a) {
        println!("  journal: {line}");
    }
}

/// fx-trade's reconciliation with the venue: what it matched, or why it could not.
fn print_venue_part(a: &serde_json::Value) {
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    if let Some(e) = a.get("venue_error").and_then(|e| e.as_str()) {
        println!("  venue: NOT RECONCILED: {e}");
        return;
    }
    let v = &a["venue"];
    println!(
        "  venue: {} executions ({} buys, {} sells) reconciled: {}; bought {} USD, sold back {} USD, FX P&L {} KRW; {} reversals pending ({} USD held)",
        v["executions"],
        v["buys"],
        v["sells"],
        if v["ok"].as_bool() == Some(true) { "ok" } else { "FAILED" },
        text(&v["bought_usd"]),
        text(&v["sold_usd"]),
        text(&v["pnl_krw"]),
        a["reversals_pending"],
        text(&a["position_usd"]),
    );
    print_failures(v);
}
