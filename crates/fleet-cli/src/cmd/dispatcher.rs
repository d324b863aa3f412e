//! `fleet dispatcher`: run the HTTP API until SIGINT/SIGTERM.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::cli::Cli;

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    if config.http.api_keys.is_empty() {
        tracing::warn!("no API keys configured: every request will get 401 (set http.api_keys or FLEET_API_KEYS)");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listen = config.http.listen.clone();
        let app = fleet_dispatcher::App::connect(config).await?;
        let listener = fleet_dispatcher::server::bind(&listen).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        eprintln!("fleet dispatcher listening on http://{}", listener.local_addr()?);
        fleet_dispatcher::serve(app, listener, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                token.cancel();
                return;
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
    token.cancel();
}
