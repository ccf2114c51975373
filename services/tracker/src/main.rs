//! `fx-tracker`: parses the environment, then runs [`tracker::run`] until Ctrl-C or SIGTERM.

use anyhow::Context;
use runtime::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let config = tracker::TrackerConfig::from_env().context("reading the configuration")?;
    tracker::run(config, telemetry::shutdown_signal())
        .await
        .context("fx-tracker failed")
}
