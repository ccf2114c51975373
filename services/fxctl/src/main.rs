//! fxctl: the command-line client of the FX exchange. See `fxctl --help`.
//!
//! Argument parsing and dispatch only: each subcommand is a module of `fxctl::cli`.

use clap::{Parser, Subcommand};
use fxctl::cli::{account, audit, bench, dlq, exchange, saga, tail, Globals};
use fxctl::CtlResult;

#[derive(Parser)]
#[command(
    name = "fxctl",
    version,
    about = "Publish KRW→USD exchanges and operate the FX services",
    after_help = "Exit codes: 0 ok, 1 the answer is no (saga not completed, audit failed), 2 usage, 3 broker or service unreachable, 4 request refused."
)]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish an ExchangeRequested and print the saga id.
    Exchange(exchange::ExchangeArgs),
    /// Deposit KRW and/or USD into a user's accounts.
    Deposit(account::DepositArgs),
    /// Show a user's KRW (available, held) and USD balances.
    Balance(account::UserArgs),
    /// Freeze a user's USD account (credits are refused; compensations still run).
    Freeze(account::UserArgs),
    /// Unfreeze a user's USD account.
    Unfreeze(account::UserArgs),
    /// Check every invariant in fx-krw and fx-usd; exit 0 only when all hold.
    Audit,
    /// A saga: `saga show ID` (or `saga ID`) prints its state and timeline from the tracker;
    /// `saga reemit|cancel|refuse-credit ID --reason TEXT` acts on it (admin).
    #[command(
        after_help = "Actions (each recorded with your identity and reason, shown on the saga's timeline):\n  reemit         every service republishes its last word for the saga, same event ids\n  cancel         fx-krw releases a hold no fill has pinned (refused after the pivot)\n  refuse-credit  fx-usd answers a fill it has not credited with usd.credit_failed(operator)"
    )]
    Saga(saga::SagaArgs),
    /// Follow events live from the FX stream.
    Tail(tail::TailArgs),
    /// Measure sagas/s and end-to-end latency against the running system (and the broker's
    /// own limit with --baseline). Creates and funds bench users bench-0..bench-N.
    Bench(bench::BenchArgs),
    /// Dead letters in FX_DLQ.
    Dlq {
        #[command(subcommand)]
        cmd: dlq::DlqCmd,
    },
}

async fn run(cli: Cli) -> CtlResult<()> {
    let g = &cli.globals;
    match cli.cmd {
        Cmd::Exchange(a) => exchange::run(g, a).await,
        Cmd::Deposit(a) => account::deposit(g, a).await,
        Cmd::Balance(a) => account::balance(g, a).await,
        Cmd::Freeze(a) => account::set_frozen(g, a, true).await,
        Cmd::Unfreeze(a) => account::set_frozen(g, a, false).await,
        Cmd::Audit => audit::run(g).await,
        Cmd::Saga(a) => saga::run(g, a).await,
        Cmd::Tail(a) => tail::run(g, a).await,
        Cmd::Bench(a) => bench::run(g, a).await,
        Cmd::Dlq { cmd } => dlq::run(g, cmd).await,
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
