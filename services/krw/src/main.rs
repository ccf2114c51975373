//! fx-krw: KRW accounts, TCC holds with expiry, commits and releases.

use runtime::{telemetry, RuntimeConfig};

runtime::jemalloc!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("fx-krw");
    let runtime_config = RuntimeConfig::from_env(
        krw::server::DEFAULT_DATA_DIR,
        Some(krw::server::DEFAULT_HTTP_ADDR),
    )?;
    let config = krw::KrwConfig::from_env()?;
    krw::server::run(runtime_config, config, telemetry::shutdown_signal()).await?;
    Ok(())
}
