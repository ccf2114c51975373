//! `fxctl tail`: follow events live from the `FX` stream, one line each (or JSON).

use clap::Args;

use super::Globals;
use crate::CtlResult;

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Only this user's events.
    #[arg(long)]
    user: Option<String>,
    /// Start from the beginning of the stream instead of now.
    #[arg(long)]
    from_start: bool,
}

/// Prints events until interrupted, or until stdout is closed.
pub async fn run(g: &Globals, a: TailArgs) -> CtlResult<()> {
    let user = a.user.map(|u| crate::user(&u)).transpose()?;
    let client = g.connect().await?;
    let json = g.json;
    crate::tail(&client, user.as_ref(), a.from_start, |seq, e| {
        use std::io::Write;
        let line = match (e, json) {
            (Ok(e), false) => crate::describe(seq, &e),
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
