//! The command line: one module per subcommand, each with its arguments (clap) and a `run`
//! that checks them, calls the library's function for it, and prints the answer (a table, or
//! JSON with `--json`). `main.rs` only parses and dispatches; the exit code comes from the
//! [`CtlError`] a command returns.

pub mod account;
pub mod audit;
pub mod bench;
pub mod dlq;
pub mod exchange;
pub mod saga;
pub mod tail;

use clap::Args;

use crate::{CtlError, CtlResult};

/// The options every subcommand takes.
#[derive(Args, Clone, Debug)]
pub struct Globals {
    /// NATS server(s), comma-separated.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// The tracker's base URL (for `saga`).
    #[arg(
        long,
        env = "FX_TRACKER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub tracker_url: String,
    /// The tracker's token, when it requires one (for `saga`).
    #[arg(long, env = "FX_TRACKER_TOKEN", hide_env_values = true, global = true)]
    pub tracker_token: Option<String>,
    /// Who is asking; journaled with deposits and freezes.
    #[arg(long, env = "FX_ACTOR", default_value = "fxctl", global = true)]
    pub actor: String,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
}

impl Globals {
    /// Connects to the broker, once the command's arguments have been checked.
    pub async fn connect(&self) -> CtlResult<async_nats::Client> {
        crate::connect(&self.nats_url).await
    }
}

/// Parses an amount, or a usage error that says the rule.
fn money<T>(s: &str, parse: fn(&str) -> Result<T, events::MoneyError>) -> CtlResult<T> {
    parse(s).map_err(|e| CtlError::Usage(e.to_string()))
}

/// Parses a saga id, or a usage error that says the rule.
fn saga_id(s: &str) -> CtlResult<events::SagaId> {
    events::SagaId::parse(s).map_err(|e| CtlError::Usage(e.to_string()))
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}
