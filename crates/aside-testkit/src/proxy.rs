//! [`FaultProxy`]: a TCP proxy on a free loopback port that misbehaves on
//! demand, to put between aside and Redis, memcached, NATS or a database.
//!
//! Owns the network faults a test can switch at run time: added latency
//! (per chunk, each way) with jitter, a bandwidth limit, connections reset
//! (and new ones reset while [`FaultProxy::reset`] is on), a blackhole (new
//! connections are accepted and never answered, open ones stop forwarding),
//! and half-open connections (open ones stop forwarding without closing,
//! new ones work). [`FaultProxy::heal`] goes back to normal.
//!
//! A connection that stopped forwarding (blackholed or half-open) stays
//! dead after the fault is healed, as one whose state a middlebox lost: it
//! neither forwards nor closes again until its client closes it. That is
//! the case a client must survive by replacing its connection; bytes sent
//! on it are read and dropped (the kernel acknowledges them, so TCP's own
//! timeouts on the client's side never fire: only the client's request
//! timeouts can see it).
//!
//! Concurrency: the controls are atomics and two `watch` channels (reset
//! and "stop forwarding" epochs) read by each connection's tasks, so a
//! switch costs a store and takes effect on the next chunk (latency,
//! bandwidth) or at once (reset, blackhole, half-open). Each connection
//! runs one task per direction; a chunk is stamped with its arrival time
//! and written no sooner than `arrival + latency ± jitter` (never before
//! the chunk ahead of it), so latency delays each chunk rather than adding
//! up over a pipeline. The proxy lives on the runtime that started it and
//! stops, closing every connection, when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const NORMAL: u8 = 0;
const RESET: u8 = 1;
const BLACKHOLE: u8 = 2;

/// What the proxy does to new connections now, as [`FaultProxy::mode`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyMode {
    /// Forwards (with the latency and bandwidth set).
    Normal,
    /// Resets every connection, open or new.
    Reset,
    /// Accepts and never answers; open connections stop forwarding.
    Blackhole,
}

struct Shared {
    upstream: SocketAddr,
    mode: AtomicU8,
    latency_us: AtomicU64,
    jitter_us: AtomicU64,
    /// Bytes per second each way, per connection; 0: unlimited.
    bandwidth: AtomicU64,
    /// Bumped to reset every open connection.
    reset_epoch: watch::Sender<u64>,
    /// Bumped to make every open connection stop forwarding.
    stall_epoch: watch::Sender<u64>,
    active: AtomicUsize,
    accepted: AtomicU64,
    forwarded: AtomicU64,
}

/// A misbehaving TCP proxy in front of one upstream address.
///
/// # Examples
///
/// ```no_run
/// # async fn run() {
/// use std::time::Duration;
/// let redis = aside_testkit::RedisServer::start();
/// let proxy = aside_testkit::proxy::FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
/// // connect aside to proxy.redis_url() instead of redis.url(), then:
/// proxy.set_latency(Duration::from_millis(200));
/// proxy.blackhole();
/// proxy.heal();
/// # }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::AbortHandle,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Every connection task watches the reset epoch: close them all.
        self.shared.reset_epoch.send_modify(|e| *e += 1);
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("mode", &self.mode())
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, forwarding to `upstream`.
    ///
    /// # Panics
    /// When no loopback port can be bound, or outside a Tokio runtime.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("the listener's address");
        let shared = Arc::new(Shared {
            upstream,
            mode: AtomicU8::new(NORMAL),
            latency_us: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            bandwidth: AtomicU64::new(0),
            reset_epoch: watch::channel(0).0,
            stall_epoch: watch::channel(0).0,
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone())).abort_handle();
        FaultProxy {
            addr,
            shared,
            accept_task,
        }
    }

    /// The proxy's own address (connect clients here).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:{port}`, for a proxy in front of Redis.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// `nats://127.0.0.1:{port}`, for a proxy in front of NATS.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Adds `latency` to every chunk, each way (0: none).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency_us.store(micros(latency), Ordering::Relaxed);
    }

    /// Spreads the added latency uniformly by up to `jitter` either way
    /// (never below zero).
    pub fn set_jitter(&self, jitter: Duration) {
        self.shared.jitter_us.store(micros(jitter), Ordering::Relaxed);
    }

    /// Limits each connection to `bytes_per_second` each way (`None`: unlimited).
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.shared
            .bandwidth
            .store(bytes_per_second.unwrap_or(0), Ordering::Relaxed);
    }

    /// Resets every open connection (RST, as a crashed middlebox would)
    /// and every new one until [`FaultProxy::heal`].
    pub fn reset(&self) {
        self.shared.mode.store(RESET, Ordering::Release);
        self.reset_connections();
    }

    /// Resets every open connection once; new ones are served as the mode says.
    pub fn reset_connections(&self) {
        self.shared.reset_epoch.send_modify(|e| *e += 1);
    }

    /// Blackholes: new connections are accepted and never answered, open
    /// ones stop forwarding at once. Both stay dead after [`FaultProxy::heal`].
    pub fn blackhole(&self) {
        self.shared.mode.store(BLACKHOLE, Ordering::Release);
        self.half_open();
    }

    /// Makes every open connection stop forwarding without closing (it
    /// stays so for good); new connections are served as the mode says.
    pub fn half_open(&self) {
        self.shared.stall_epoch.send_modify(|e| *e += 1);
    }

    /// Back to normal for new connections: no reset, no blackhole, no
    /// latency, jitter or bandwidth limit. Dead connections stay dead.
    pub fn heal(&self) {
        self.shared.mode.store(NORMAL, Ordering::Release);
        self.set_latency(Duration::ZERO);
        self.set_jitter(Duration::ZERO);
        self.set_bandwidth(None);
    }

    /// What the proxy does to new connections now.
    pub fn mode(&self) -> ProxyMode {
        match self.shared.mode.load(Ordering::Acquire) {
            NORMAL => ProxyMode::Normal,
            RESET => ProxyMode::Reset,
            _ => ProxyMode::Blackhole,
        }
    }

    /// Client connections open now (dead ones included until their client closes them).
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// Client connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Bytes forwarded since the start, both ways.
    pub fn forwarded_bytes(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::AcqRel);
        let _ = client.set_nodelay(true);
        match shared.mode.load(Ordering::Acquire) {
            RESET => {
                let _ = client.set_zero_linger();
                drop(client);
            }
            mode => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    shared.active.fetch_add(1, Ordering::AcqRel);
                    serve(client, &shared, mode == BLACKHOLE).await;
                    shared.active.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
    }
}

/// One client connection, until either side closes or the proxy resets it.
async fn serve(mut client: TcpStream, shared: &Arc<Shared>, blackholed: bool) {
    let mut reset = shared.reset_epoch.subscribe();
    reset.mark_unchanged();
    let mut stall = shared.stall_epoch.subscribe();
    stall.mark_unchanged();
    let dead = AtomicBool::new(blackholed);
    let mut upstream = if blackholed {
        None
    } else {
        tokio::select! {
            connected = TcpStream::connect(shared.upstream) => connected.ok(),
            _ = reset.changed() => return reset_stream(client),
        }
    };
    let stall_watch = async {
        if stall.changed().await.is_ok() {
            dead.store(true, Ordering::Release);
        }
        // A stall is for good: this branch never completes.
        std::future::pending::<()>().await;
    };
    let was_reset = match upstream.as_mut() {
        None => {
            // Blackholed: read and drop everything until the client leaves or a reset.
            let mut buf = vec![0u8; 16 * 1024];
            tokio::select! {
                () = async { while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {} } => false,
                _ = reset.changed() => true,
            }
        }
        Some(upstream) => {
            let _ = upstream.set_nodelay(true);
            let (client_read, client_write) = client.split();
            let (upstream_read, upstream_write) = upstream.split();
            // Either side closing closes both (none of the protocols
            // proxied here half-closes).
            tokio::select! {
                () = pump(client_read, upstream_write, shared, &dead) => false,
                () = pump(upstream_read, client_write, shared, &dead) => false,
                () = stall_watch => false,
                _ = reset.changed() => true,
            }
        }
    };
    if was_reset {
        if let Some(upstream) = upstream {
            reset_stream(upstream);
        }
        reset_stream(client);
    }
}

/// Drops `stream` with zero linger, so that its peer gets RST.
fn reset_stream(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Forwards `from` to `to` with the latency, jitter and bandwidth limit set,
/// until `from` closes or a write fails; once `dead` is set, reads and
/// drops everything.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    shared: &Shared,
    dead: &AtomicBool,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if dead.load(Ordering::Acquire) {
                continue;
            }
            let due = Instant::now() + delay(shared);
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async {
        let mut not_before = Instant::now();
        while let Some((due, chunk)) = rx.recv().await {
            let at = due.max(not_before);
            tokio::time::sleep_until(at).await;
            if dead.load(Ordering::Acquire) {
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            shared.forwarded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            not_before = at;
            let bandwidth = shared.bandwidth.load(Ordering::Relaxed);
            if bandwidth > 0 {
                let cost = Duration::from_secs_f64(chunk.len() as f64 / bandwidth as f64);
                not_before = Instant::now().max(at) + cost;
            }
        }
    };
    // The reader ends at the source's close and drops its sender; the
    // writer then flushes the queue and ends. A failed write drops the
    // receiver, which ends the reader at its next chunk.
    tokio::join!(reader, writer);
}

/// `latency ± jitter`, never negative.
fn delay(shared: &Shared) -> Duration {
    let latency = shared.latency_us.load(Ordering::Relaxed);
    let jitter = shared.jitter_us.load(Ordering::Relaxed);
    if latency == 0 && jitter == 0 {
        return Duration::ZERO;
    }
    let spread = if jitter == 0 {
        0
    } else {
        rand::random_range(0..=2 * jitter) as i64 - jitter as i64
    };
    Duration::from_micros(latency.saturating_add_signed(spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trivial echo server on a free loopback port.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        TcpStream::connect(proxy.addr()).await.unwrap()
    }

    /// Sends `msg` and reads back as many bytes, within `bound`; `None` if
    /// nothing came back in time, `Some(Err)` for a closed or reset connection.
    async fn echo(conn: &mut TcpStream, msg: &[u8], bound: Duration) -> Option<std::io::Result<Vec<u8>>> {
        let exchange = async {
            conn.write_all(msg).await?;
            let mut back = vec![0u8; msg.len()];
            conn.read_exact(&mut back).await?;
            Ok(back)
        };
        tokio::time::timeout(bound, exchange).await.ok()
    }

    const GENEROUS: Duration = Duration::from_secs(20);
    /// How long "never answers" is watched for: an absence, so a loaded
    /// machine cannot make it fail.
    const SILENCE: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn forwards_and_counts_connections() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut a = connect(&proxy).await;
        let mut b = connect(&proxy).await;
        assert_eq!(echo(&mut a, b"ping", GENEROUS).await.unwrap().unwrap(), b"ping");
        assert_eq!(echo(&mut b, b"pong", GENEROUS).await.unwrap().unwrap(), b"pong");
        assert_eq!(proxy.accepted(), 2);
        assert_eq!(proxy.active(), 2);
        assert_eq!(proxy.forwarded_bytes(), 16);
        drop(a);
        crate::eventually("the closed connection leaves the count", GENEROUS, || async {
            proxy.active() == 1
        })
        .await;
        assert_eq!(proxy.mode(), ProxyMode::Normal);
    }

    /// Latency is added to each chunk each way: a round trip takes at least
    /// twice of it (a lower bound, which a slow machine only exceeds).
    #[tokio::test]
    async fn latency_delays_each_way_and_heals() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut conn = connect(&proxy).await;
        proxy.set_latency(Duration::from_millis(100));
        proxy.set_jitter(Duration::from_millis(20));
        let started = std::time::Instant::now();
        assert_eq!(echo(&mut conn, b"slow", GENEROUS).await.unwrap().unwrap(), b"slow");
        assert!(
            started.elapsed() >= Duration::from_millis(160),
            "{:?}",
            started.elapsed()
        );
        proxy.heal();
        assert_eq!(echo(&mut conn, b"fast", GENEROUS).await.unwrap().unwrap(), b"fast");
    }

    #[tokio::test]
    async fn bandwidth_limits_each_connection() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut conn = connect(&proxy).await;
        proxy.set_bandwidth(Some(128 * 1024));
        let payload = vec![7u8; 64 * 1024];
        let started = std::time::Instant::now();
        let back = echo(&mut conn, &payload, GENEROUS).await.unwrap().unwrap();
        assert_eq!(back, payload);
        // At least 48 KiB had to wait their turn at 128 KiB/s one way.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn reset_closes_open_and_new_connections_until_healed() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut open = connect(&proxy).await;
        assert!(echo(&mut open, b"x", GENEROUS).await.unwrap().is_ok());
        proxy.reset();
        assert_eq!(proxy.mode(), ProxyMode::Reset);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(GENEROUS, open.read(&mut buf)).await.unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the open connection is closed: {read:?}"
        );
        let mut new = connect(&proxy).await;
        let answer = echo(&mut new, b"y", GENEROUS).await.expect("a reset is not a hang");
        assert!(answer.is_err(), "{answer:?}");
        crate::eventually("no connection left open", GENEROUS, || async { proxy.active() == 0 }).await;
        proxy.heal();
        let mut healed = connect(&proxy).await;
        assert_eq!(echo(&mut healed, b"z", GENEROUS).await.unwrap().unwrap(), b"z");
    }

    #[tokio::test]
    async fn a_blackhole_answers_nothing_and_its_connections_stay_dead() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut open = connect(&proxy).await;
        assert!(echo(&mut open, b"x", GENEROUS).await.unwrap().is_ok());
        proxy.blackhole();
        assert!(
            echo(&mut open, b"x", SILENCE).await.is_none(),
            "an open connection stops"
        );
        let mut new = connect(&proxy).await; // accepted...
        assert!(echo(&mut new, b"y", SILENCE).await.is_none(), "...and never answered");
        assert_eq!(proxy.active(), 2, "nothing is closed");
        proxy.heal();
        assert!(echo(&mut open, b"x", SILENCE).await.is_none(), "dead stays dead");
        assert!(echo(&mut new, b"y", SILENCE).await.is_none(), "dead stays dead");
        let mut healed = connect(&proxy).await;
        assert_eq!(echo(&mut healed, b"z", GENEROUS).await.unwrap().unwrap(), b"z");
        drop((open, new));
        crate::eventually("dead connections leave the count when closed", GENEROUS, || async {
            proxy.active() == 1
        })
        .await;
    }

    #[tokio::test]
    async fn half_open_stalls_open_connections_only() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut open = connect(&proxy).await;
        assert!(echo(&mut open, b"x", GENEROUS).await.unwrap().is_ok());
        proxy.half_open();
        assert!(echo(&mut open, b"x", SILENCE).await.is_none(), "stalled, not closed");
        assert_eq!(proxy.mode(), ProxyMode::Normal);
        let mut new = connect(&proxy).await;
        assert_eq!(echo(&mut new, b"y", GENEROUS).await.unwrap().unwrap(), b"y");
        assert_eq!((proxy.accepted(), proxy.active()), (2, 2));
    }
}
