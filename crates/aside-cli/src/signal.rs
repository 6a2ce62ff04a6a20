//! The signals that stop a long-running subcommand (`serve`, `flush`):
//! SIGINT (Ctrl-C) and, on Unix, SIGTERM.
//!
//! Owns listening for them, and nothing of what a subcommand does then.

/// Resolves on SIGINT or SIGTERM. A signal that cannot be listened for
/// is never delivered (the other still is).
pub async fn stop_requested() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
