//! A service of an example on a free loopback port, stopped at the end of
//! the run (the examples finish on their own: no server is left running).

use std::future::IntoFuture;

/// A running server: its base URL, and what stops it.
pub struct LocalServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LocalServer {
    /// Serves `router` on a free port of 127.0.0.1.
    pub async fn start(router: axum::Router) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve = axum::serve(listener, router).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        let running = tokio::spawn(serve.into_future());
        Ok(LocalServer { base, stop, running })
    }

    /// Stops the server and waits for its connections to close.
    pub async fn stop(self) -> Result<(), Box<dyn std::error::Error>> {
        let _ = self.stop.send(());
        Ok(self.running.await??)
    }
}
