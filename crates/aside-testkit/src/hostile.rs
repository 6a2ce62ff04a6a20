//! [`HostileMemcached`]: a server on a free loopback port that speaks just
//! enough of memcached's meta protocol to be connected to, then lies.
//!
//! Owns the peers a client must survive and nothing else: one that claims a
//! huge `item_size_max` and huge values, one that cuts a value short, one
//! that answers garbage, and one that starts a value and never ends it. The
//! connection handshake (`stats`, `stats settings`, `mn`) is answered
//! honestly except for the size it claims, so the client gets as far as its
//! reads; every other request line is answered as the [`Behaviour`] says.
//!
//! Concurrency: one accept task and one task per connection, all on the
//! runtime that started the server, all aborted when it is dropped. Counts
//! are atomics the test reads after the fact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How a [`HostileMemcached`] answers every request after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behaviour {
    /// `VA <claimed> ...`, then nothing more: the connection stays open.
    Claims {
        /// The value length announced.
        claimed: u64,
    },
    /// `VA <claimed> ...`, `sent` bytes of it, then the connection closed.
    Truncated {
        /// The value length announced.
        claimed: u64,
        /// The bytes actually sent before closing.
        sent: usize,
    },
    /// `VA <claimed> ...`, then `sent` bytes, then silence (the connection
    /// stays open): a value that never ends.
    Stalls {
        /// The value length announced.
        claimed: u64,
        /// The bytes sent before going quiet.
        sent: usize,
    },
    /// These bytes, whatever was asked.
    Garbage(Vec<u8>),
}

/// A lying memcached on a free loopback port; stops when dropped.
#[derive(Debug)]
pub struct HostileMemcached {
    addr: String,
    accept: JoinHandle<()>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
}

impl HostileMemcached {
    /// Starts a server that claims `item_size_max` in `stats settings` and
    /// answers every request as `behaviour` says.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(item_size_max: u64, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address").to_string();
        let counts = Arc::new(Counts::default());
        let shared = Arc::clone(&counts);
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(serve(stream, item_size_max, behaviour.clone(), Arc::clone(&shared)));
            }
        });
        HostileMemcached { addr, accept, counts }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::Relaxed)
    }

    /// Requests (other than the handshake) answered so far.
    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }
}

impl Drop for HostileMemcached {
    fn drop(&mut self) {
        // The JoinSet inside the task aborts every connection task with it.
        self.accept.abort();
    }
}

async fn serve(stream: TcpStream, item_size_max: u64, behaviour: Behaviour, counts: Arc<Counts>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer: Vec<u8> = match line.trim_end() {
            "stats" => b"STAT pid 4242\r\nSTAT uptime 10\r\nSTAT time 1700000010\r\nEND\r\n".to_vec(),
            "stats settings" => format!("STAT item_size_max {item_size_max}\r\nEND\r\n").into_bytes(),
            "mn" => b"MN\r\n".to_vec(),
            _ => {
                counts.requests.fetch_add(1, Ordering::Relaxed);
                match &behaviour {
                    Behaviour::Claims { claimed } => {
                        let _ = write.write_all(format!("VA {claimed} c1 f43549\r\n").as_bytes()).await;
                        continue;
                    }
                    Behaviour::Truncated { claimed, sent } => {
                        let _ = write.write_all(format!("VA {claimed} c1 f43549\r\n").as_bytes()).await;
                        let _ = write.write_all(&vec![b'x'; *sent]).await;
                        return;
                    }
                    Behaviour::Stalls { claimed, sent } => {
                        let _ = write.write_all(format!("VA {claimed} c1 f43549\r\n").as_bytes()).await;
                        let _ = write.write_all(&vec![b'x'; *sent]).await;
                        // Silence, with the connection open, until the client
                        // gives up (or the server is dropped).
                        loop {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                    }
                    Behaviour::Garbage(bytes) => bytes.clone(),
                }
            }
        };
        if write.write_all(&answer).await.is_err() {
            return;
        }
    }
}
