//! fx-venue: a simulated liquidity provider behind HTTP, with a durable order book.

use runtime::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let settings = venue::VenueSettings::from_env()?;
    venue::run(settings, telemetry::shutdown_signal()).await?;
    Ok(())
}
