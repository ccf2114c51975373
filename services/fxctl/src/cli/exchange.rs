//! `fxctl exchange`: publish an exchange request, and with `--wait` follow the saga to its end.

use clap::Args;

use super::{money, print_json, saga_id, Globals};
use crate::{CtlError, CtlResult};

#[derive(Args, Debug)]
pub struct ExchangeArgs {
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
}

/// Prints the saga id (and with `--wait`, how it ended); fails unless it COMPLETED.
pub async fn run(g: &Globals, a: ExchangeArgs) -> CtlResult<()> {
    let saga = a.saga_id.as_deref().map(saga_id).transpose()?;
    let min = a
        .min_usd
        .map(|m| money(&m, events::Usd::parse))
        .transpose()?;
    let user = crate::user(&a.user)?;
    let krw = money(&a.krw, events::Krw::parse)?;
    let client = g.connect().await?;
    let out = crate::exchange(&client, user, krw, min, saga, a.wait.then_some(a.wait_ms)).await?;
    if g.json {
        print_json(&out);
    } else {
        println!("{}", out.saga_id);
        if out.duplicate {
            eprintln!("note: the broker had this saga id already; nothing new was published");
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
