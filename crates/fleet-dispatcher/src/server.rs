//! Running the HTTP server until shutdown.

use tokio_util::sync::CancellationToken;

use crate::App;

/// Why the dispatcher could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error("{0}")]
    Status(fleet_status::StatusError),
    #[error("{0}")]
    Queue(fleet_queue::QueueError),
    #[error("{0}")]
    Storage(fleet_storage::StartupCheckError),
    #[error("{0}")]
    BulkRuns(crate::bulk_runs::BulkRunsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("webhooks: {0}")]
    Webhooks(fleet_webhooks::WebhookError),
}

/// Serves the API on `listener` (and watches the dead-letter queue, sweeps expired jobs, and
/// delivers webhooks when `webhooks.enabled`) until `shutdown` is cancelled, then finishes
/// in-flight requests and webhook attempts.
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DispatcherError> {
    let webhooks = if app.config.webhooks.enabled {
        let status = (*app.status).clone();
        Some(
            fleet_webhooks::run(&app.config, status, app.broker.clone(), shutdown.clone())
                .map_err(DispatcherError::Webhooks)?,
        )
    } else {
        None
    };
    let watcher = tokio::spawn(crate::dead_letters::watch(app.clone(), shutdown.clone()));
    let sweeper = tokio::spawn(crate::lifecycle::sweep(app.clone(), shutdown.clone()));
    let broker = app.broker.clone();
    let router = crate::routes::router(app).layer(tower_http::trace::TraceLayer::new_for_http());
    let served = axum::serve(crate::request_head::CheckedListener(listener), router)
        .with_graceful_shutdown({
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        })
        .await
        .map_err(DispatcherError::Serve);
    // The server can also stop on its own (an I/O error); the watcher and sweeper must not outlive it.
    shutdown.cancel();
    let _ = watcher.await;
    let _ = sweeper.await;
    if let Some(webhooks) = webhooks {
        let _ = webhooks.await;
    }
    // Closed while the runtime still runs: a connection left to the runtime's shutdown makes
    // lapin's I/O loop log an error on the way out.
    broker.close().await;
    served
}

/// Binds the configured address.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, DispatcherError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| DispatcherError::Bind { addr: addr.to_owned(), source })
}
