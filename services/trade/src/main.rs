//! fx-trade: buys USD at the venue for held KRW, behind a circuit breaker; reverses fills.

use runtime::{telemetry, RuntimeConfig};

runtime::jemalloc!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("fx-trade");
    let runtime_config = RuntimeConfig::from_env(
        trade::server::DEFAULT_DATA_DIR,
        Some(trade::server::DEFAULT_HTTP_ADDR),
    )?;
    let config = trade::TradeConfig::from_env()?;
    trade::server::run(runtime_config, config, telemetry::shutdown_signal()).await?;
    Ok(())
}
