//! A service's process, written once: its admin endpoints served beside the consumer, inside
//! the runtime, so each service's `server.rs` names only what differs (its endpoints, its
//! extra tasks).

use std::future::Future;

use crate::admin::{serve_admin, AdminHandler};
use crate::{Participant, Result, Runtime};

impl<P: Participant> Runtime<P> {
    /// Serves `endpoints` as the admin service `fx-<name>` (`fxadmin.<name>.<endpoint>`, per
    /// partition) and runs the runtime until `shutdown` resolves. The admin server is one of
    /// the runtime's tasks (with whatever [`Runtime::with_task`] registered before), so if it
    /// ends first, the stop is the graceful one.
    pub async fn run_with_admin(
        self,
        description: &'static str,
        endpoints: Vec<(&'static str, AdminHandler)>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let admin = serve_admin(
            self.client(),
            self.store(),
            self.participant().name(),
            self.partitioning(),
            description,
            endpoints,
        )
        .await?;
        self.with_task("admin server", async move {
            admin.await;
            Ok(())
        })
        .run(shutdown)
        .await
    }
}
