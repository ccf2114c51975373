//! `fxctl dlq`: list the dead letters in `FX_DLQ`, or publish one back onto its subject.

use clap::Subcommand;

use super::{print_json, Globals};
use crate::CtlResult;

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
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

/// Runs `dlq list` or `dlq replay`.
pub async fn run(g: &Globals, cmd: DlqCmd) -> CtlResult<()> {
    let client = g.connect().await?;
    match cmd {
        DlqCmd::List => list(g, &client).await,
        DlqCmd::Replay { seq, payload } => replay(g, &client, seq, payload).await,
    }
}

/// Each dead letter: sequence, service, reason, subject, then the message and the body.
async fn list(g: &Globals, client: &async_nats::Client) -> CtlResult<()> {
    let letters = crate::dlq_list(client).await?;
    if g.json {
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

/// Publishes dead letter `seq` (or `payload` in its place) back onto its subject.
async fn replay(
    g: &Globals,
    client: &async_nats::Client,
    seq: u64,
    payload: Option<String>,
) -> CtlResult<()> {
    let new_seq = crate::dlq_replay(client, seq, payload).await?;
    if g.json {
        print_json(&serde_json::json!({ "replayed": seq, "seq": new_seq }))
    } else {
        println!("replayed dead letter {seq} as FX sequence {new_seq}");
    }
    Ok(())
}
