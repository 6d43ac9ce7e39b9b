//! The HTTPS server: `/mutate`, `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::review::Injector;

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {}

/// Serves `injector` on its configured address until `shutdown`.
pub async fn run(injector: Arc<Injector>, shutdown: CancellationToken) -> Result<(), ServerError> {
    let _ = injector;
    shutdown.cancelled().await;
    Ok(())
}
