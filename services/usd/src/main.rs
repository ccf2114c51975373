//! fx-usd: USD accounts, the house float, credits and compensating debits.

use runtime::{telemetry, RuntimeConfig};

runtime::jemalloc!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("fx-usd");
    let runtime_config = RuntimeConfig::from_env(
        usd::server::DEFAULT_DATA_DIR,
        Some(usd::server::DEFAULT_HTTP_ADDR),
    )?;
    let config = usd::UsdConfig::from_env()?;
    usd::server::run(runtime_config, config, telemetry::shutdown_signal()).await?;
    Ok(())
}
