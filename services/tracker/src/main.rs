//! `fx-tracker`: parses the environment, then runs [`tracker::run`] until Ctrl-C or SIGTERM.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::telemetry::init_tracing();
    let config = tracker::TrackerConfig::from_env().context("reading the configuration")?;
    tracker::run(config, shutdown_signal())
        .await
        .context("fx-tracker failed")
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and systemd send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}
