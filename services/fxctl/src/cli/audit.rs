//! `fxctl audit`: every service's audit (each partition's), with progress on a terminal, then
//! one verdict per audit and its failures; fx-trade's also says how it reconciled with the
//! venue. Fails unless every invariant holds.

use super::{print_json, Globals};
use crate::{CtlError, CtlResult};

/// Runs the audits and prints their verdicts.
pub async fn run(g: &Globals) -> CtlResult<()> {
    let client = g.connect().await?;
    let out = audit_showing_progress(g, &client).await?;
    let ok = out["ok"].as_bool() == Some(true);
    if g.json {
        print_json(&out);
    } else {
        print_verdicts(&out);
    }
    if ok {
        Ok(())
    } else {
        Err(CtlError::Failed("an invariant does not hold".into()))
    }
}

/// The audits' combined answer. A long audit (a large store) shows how far each service has
/// got, on a terminal.
async fn audit_showing_progress(
    g: &Globals,
    client: &async_nats::Client,
) -> CtlResult<serde_json::Value> {
    use std::io::IsTerminal;
    let spinner = (!g.json && std::io::stderr().is_terminal()).then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.enable_steady_tick(std::time::Duration::from_millis(200));
        s
    });
    let mut latest = std::collections::BTreeMap::new();
    let out = crate::audit_with_progress(client, &g.actor, |p| {
        if let Some(s) = &spinner {
            latest.insert(p.instance, (p.done, p.elapsed_ms));
            let line: Vec<String> = latest
                .iter()
                .map(|(i, (done, ms))| format!("{i}: {done} sagas in {:.1} s", *ms as f64 / 1000.0))
                .collect();
            s.set_message(format!("auditing: {}", line.join(", ")));
        }
    })
    .await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    out
}

/// One verdict per audit (per partition, when partitioned), with its failures.
fn print_verdicts(out: &serde_json::Value) {
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
            if verdict != "ok" && a[runtime::admin::CHANGED_DURING_AUDIT].as_bool() == Some(true) {
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

/// What the audit's journal walk read: entries, and how many of each operation.
fn print_journal(a: &serde_json::Value) {
    if let Some(line) = crate::journal_line(a) {
        println!("  journal: {line}");
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
    if let Some(n) = v["before_history"].as_u64().filter(|n| *n > 0) {
        println!(
            "  venue: {n} fills or reversals booked before the venue's memory begins (the embedded venue forgets its executions when fx-trade restarts): not confirmed, and the FX P&L not compared"
        );
    }
    print_failures(v);
}
