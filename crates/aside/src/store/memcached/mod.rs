//! [`MemcachedStore`]: memcached 1.6+ through its meta text protocol.
//!
//! Owns the memcached mapping of the [`Store`] contract. The lease state
//! machine is memcached's own (the meta flags built for stampedes and stale
//! sets), not emulated with companion keys:
//!
//! | contract | meta command | outcome |
//! |---|---|---|
//! | `lookup_or_lease` | `mg <k> N<lease s> v c f` | `W` without `X`: the miss was vivified, lease granted; `W X`: stale value, lease granted; `Z`: busy (with `X`: stale value offered); else a hit |
//! | `fill(token)` | `ms <k> <len> C<cas> T<ttl> F<entry>` | `HD` stored; `EX` (CAS moved) or `NF` (deleted) refused |
//! | `invalidate` | `md <k>`, or `md <k> I T<keep s>` with `keep_stale` | `I` marks stale, bumps the CAS (fencing every fill in flight) and clears the win flag, so the next `mg` wins |
//! | `lease_for_refresh` | `mg <k> R2592000 c f` | `W` on a current value: refresh lease; the value stays readable (others see `Z`) |
//! | `release(token)` | `md <k> C<cas>` (vivified), `md <k> I C<cas>` (stale), or a CAS-guarded rewrite of the same value (refresh) | the win flag is cleared only by replacing or re-marking the item |
//! | `put_entry` | `ms <k> <len> T<ttl> F<entry>` | new item, new CAS: leases in flight are refused |
//! | `put_entry_if_newer` | `mg`/`ms C` on the write mark, `mg <k> N`, `mg` of the mark, `ms <k> C<cas>` | a CAS protocol of four steps (`versioned`): writes land in version order |
//! | `get` / `set` / `add` / `delete` | `mg v c f` / `ms T` / `ms T ME` / `md` | plain values have client flags 0 |
//! | `incr` | `ma <k> N<ttl> J1 T<ttl> v` | a missing key is created at 1 (0 incremented), the TTL refreshed |
//!
//! **Tokens.** memcached, not the caller, decides who wins, and the item's
//! CAS identifies the win: a lease token is `generation << 50 | cas << 2 |
//! kind` (kind 0: a vivified miss, 1: a stale item, 2: a refresh), so `fill`
//! knows the CAS to send and `release` knows which of the three ways
//! applies. The token offered by the caller is ignored; the one returned in
//! [`LeaseOutcome::Granted`] (and by `lease_for_refresh`) is the one to fill
//! with, and [`Store::peek_entry`] reports the same value.
//!
//! The **generation** is the boot of the server the CAS came from (see
//! `pool`): memcached's CAS counter starts over at a restart, so a bare
//! CAS from before it would match an item written after it, and a fill
//! with a lease granted before the restart would overwrite the lease of a
//! reader after it. Every CAS-guarded request (fill, release, the give-back
//! of a look's win) carries the generation of its CAS and is sent only on
//! a connection to that same boot; on another it is answered as a CAS
//! mismatch without being sent, so a pre-restart fill is refused. A CAS
//! beyond 48 bits (a server past 2.8 * 10^14 writes) cannot be told apart
//! this way: lookups on such a server fail as server errors (a miss, the
//! loader answers) until it restarts.
//!
//! **What memcached 1.6.18 does, checked against the real server** (and
//! asserted by `tests/store_contract.rs`):
//! - `mg k N30 v c f` on a miss creates an empty item (TTL 30 s, client
//!   flags 0) and answers `VA 0 c1 f0 W`; later `mg`s answer `VA 0 c1 f0 Z`.
//!   Flags are applied in order: a `t` before `N` reports `t-1`. The empty
//!   vivified item is never a hit: entries are written with client flags
//!   `ENTRY_FLAG` (`0xA51D`), and an item with `W`/`Z`/`X` without them is a lease
//!   placeholder.
//! - `md k I T30` on a value answers `HD`, bumps the CAS; the next `mg`
//!   (with or without `N`) answers `VA .. X W` and the ones after
//!   `VA .. Z X`. A CAS-guarded `ms` with the new CAS replaces the stale
//!   item with a current one; one with the CAS from before the `md` gets `EX`.
//! - **Any** `mg` on a stale item nobody has won wins it, even one that only
//!   wanted to look. `peek_entry`, `get` and `lease_for_refresh` therefore
//!   give such an accidental win back at once with `md k I C<cas>` (re-marks
//!   stale, clears the win; `EX` if the item changed meanwhile). A lookup by
//!   another reader between the two sees `Z X`: it is offered the stale value
//!   (served if the namespace serves stale values) or waits, bounded, and
//!   looks again; the look after the give-back wins. (`tests/memcached_engine.rs`
//!   first met this as a flaky test whose own peeks took the win.)
//! - `mg k R<s>` wins when the item's remaining TTL is below `s` and nobody
//!   won it; `R2592000` (30 days, the longest relative time) wins on any
//!   item with a TTL, which every item written here has.
//! - `ms k n C<cas>` answers `EX` on a CAS mismatch, `NF` on a missing key;
//!   `md k C<cas>` the same; `ms k n ME` (add) answers `NS` when the key exists.
//! - `ma k N60 J1 T60 v` answers `VA 1` / `1` on a miss and increments after,
//!   `T` resetting the TTL of an existing counter; on a non-numeric value,
//!   `CLIENT_ERROR cannot increment or decrement non-numeric value`.
//! - `stats settings` reports `item_size_max` (1048576 by default); a larger
//!   `ms` answers `SERVER_ERROR object too large for cache`.
//!
//! **Where memcached differs from the table in [`crate::store`].** A win
//! flag has no TTL of its own. A vivified placeholder expires with its TTL
//! (the lease TTL), exactly as the contract says; but a lease on a stale
//! item lasts until the stale value expires (its `keep_stale` TTL), and a
//! refresh lease until the value is replaced or expires. In both cases a
//! crashed holder delays only refreshing, never correctness: readers get
//! the stale or current value, or load without the cache after their
//! bounded wait.
//!
//! **Two families, one keyspace.** Entries carry client flags
//! `ENTRY_FLAG` (`0xA51D`) and plain values 0, and each family's operations see only
//! their own (a plain `get` of an entry is a miss; a lookup of a plain value
//! is an error, as Redis's `WRONGTYPE`), so a key read with two strategies
//! behaves as it does on Redis and in memory.
//!
//! **TTLs** are whole seconds, and memcached's clock ticks once a second: an
//! item set with `T2` was measured to live 1.15 to 1.64 s. So a TTL is sent
//! rounded up plus one second (never 0, which means "never expire"): nothing
//! expires before its TTL, and may outlive it by up to 2 s. Entries carry
//! their exact expiry in the envelope, and the engine never returns one past
//! it; plain values in raw mode live up to 2 s longer than asked. TTLs are
//! capped at 30 days less a second (longer values would be read as Unix times).
//!
//! **Keys** follow memcached's rules: at most 250 bytes (longer keys are
//! replaced by a prefix and their SHA-1), no whitespace or control bytes
//! (refused, so a key can never inject a command). **Values** over the
//! server's `item_size_max` (read at connect, and believed only up to
//! [`MemcachedConfig::max_item_bytes`]) less a per-item overhead are
//! refused with [`StoreError::Refused`] before anything is sent; a response
//! announcing a value over that bound is refused unread, and the
//! connection closed (docs/BOUNDS.md).
//!
//! **Several servers** share keys by consistent hashing (`ring`); batch
//! operations send one pipeline per server, concurrently. **Connections**
//! come from a pool per server (`pool`), bounded in time: see
//! [`MemcachedConfig`].
//!
//! **Why a client of its own** (`proto`, a few hundred lines on tokio): the
//! store needs every meta flag above read back (`W`, `Z`, `X`, `c`, `f`),
//! `md` with `I` and `C` together, pipelines spread over a pool per server
//! and a ring of servers, bounded parsing, and a connection that is closed,
//! never reused, when a call times out or is cancelled.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{EntryView, Fill, FillOutcome, LeaseOutcome, LeaseToken, Store, StoreError, StoreResult, VersionedPut};

mod pool;
mod proto;
mod ring;
mod versioned;

pub(crate) use proto::parse_untrusted;

use pool::{Limits, Server};
use proto::{Meta, Status};

/// Client flags on every entry written by `fill` and `put_entry`. A lease
/// placeholder that memcached vivified has flags 0, which is how the two
/// are told apart.
pub(crate) const ENTRY_FLAG: u32 = 0xA51D;

/// memcached's longest key, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 250;

/// Bytes an item takes besides its key and value (header, CAS, flags,
/// `\r\n`), kept as a margin when checking values against `item_size_max`.
const ITEM_OVERHEAD: usize = 64;

/// The longest TTL sent: 30 days less a second (memcached reads anything
/// above 30 days as an absolute Unix time).
const MAX_TTL_SECS: u64 = 60 * 60 * 24 * 30 - 1;

/// `R` argument of `lease_for_refresh`: wins on any item with a TTL.
const RECACHE_ANY: u64 = 60 * 60 * 24 * 30;

const KIND_VIVIFIED: u64 = 0;
const KIND_STALE: u64 = 1;
const KIND_REFRESH: u64 = 2;

/// Connection settings of a [`MemcachedStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemcachedConfig {
    /// Bound on waiting for a pooled connection and on opening a new one. Default 500 ms.
    pub connect_timeout: Duration,
    /// Bound on one exchange (a request, or a pipeline, and its answers). Default 250 ms.
    pub response_timeout: Duration,
    /// Most open connections per server. Default 32.
    pub max_connections_per_server: usize,
    /// A pooled connection idle for longer is checked with `mn` before use. Default 10 s.
    pub health_check_after: Duration,
    /// Points per server on the consistent-hashing ring. Default 160.
    pub points_per_server: usize,
    /// The largest item this client writes or reads, whatever a server
    /// claims: the bound is the smallest of this, each server's
    /// `item_size_max` and [`MAX_ITEM_BYTES`]. A response announcing a
    /// longer value is refused unread. Default 64 MiB.
    pub max_item_bytes: usize,
}

/// The hard cap on [`MemcachedConfig::max_item_bytes`]: memcached's own
/// ceiling for `item_size_max` (1 GiB).
pub const MAX_ITEM_BYTES: usize = 1024 * 1024 * 1024;

impl Default for MemcachedConfig {
    fn default() -> Self {
        MemcachedConfig {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(250),
            max_connections_per_server: 32,
            health_check_after: Duration::from_secs(10),
            points_per_server: 160,
            max_item_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A store on one or more memcached servers (1.6 or later: the meta protocol).
///
/// Cloning is cheap; clones share the pools.
///
/// # Examples
///
/// Needs the `memcached` feature and a server:
///
/// ```no_run
/// # async fn run() -> Result<(), aside::store::StoreError> {
/// use aside::store::memcached::MemcachedStore;
/// let store = MemcachedStore::connect("127.0.0.1:11211,127.0.0.1:11212").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemcachedStore {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Vec<Server>,
    ring: ring::Ring,
    /// The smallest `item_size_max` of the servers, at most the
    /// client's `max_item_bytes`: the bound on what is written and read.
    item_size_max: usize,
}

impl std::fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedStore")
            .field(
                "servers",
                &self.inner.servers.iter().map(Server::addr).collect::<Vec<_>>(),
            )
            .field("item_size_max", &self.inner.item_size_max)
            .finish()
    }
}

/// One request of a pipeline.
struct Req<'a> {
    key: Cow<'a, str>,
    cmd: &'static str,
    value: Option<&'a [u8]>,
    flags: String,
    /// For a request guarded by a CAS: the generation the CAS belongs to.
    /// It is sent only on a connection to that boot of the server, and
    /// answered `EX` (CAS mismatch) unsent on any other.
    generation: Option<u16>,
}

fn req<'a>(key: Cow<'a, str>, cmd: &'static str, value: Option<&'a [u8]>, flags: String) -> Req<'a> {
    Req {
        key,
        cmd,
        value,
        flags,
        generation: None,
    }
}

impl Req<'_> {
    /// Guards the request by the generation of the CAS it carries.
    fn of_generation(mut self, generation: u16) -> Self {
        self.generation = Some(generation);
        self
    }
}

/// The `T`/`N` argument for `ttl`: whole seconds rounded up, plus one,
/// because memcached's clock ticks once a second and an item set with `T2`
/// lives 1 to 2 s (measured: 1.15 to 1.64 s). Never 0 ("no expiry"), at
/// most [`MAX_TTL_SECS`].
fn secs(ttl: Duration) -> u64 {
    let whole = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    whole.saturating_add(1).clamp(2, MAX_TTL_SECS)
}

/// The key as sent: checked, and hashed when longer than memcached allows.
fn wire_key(key: &str) -> StoreResult<Cow<'_, str>> {
    if key.is_empty() {
        return Err(StoreError::refused("empty key"));
    }
    if let Some(bad) = key.bytes().find(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(StoreError::refused(format!(
            "key {key:?} holds byte {bad:#04x}: memcached keys cannot hold whitespace or control characters"
        )));
    }
    if key.len() <= MAX_KEY_LEN && !looks_hashed(key) {
        return Ok(Cow::Borrowed(key));
    }
    let mut keep = (MAX_KEY_LEN - 41).min(key.len());
    while !key.is_char_boundary(keep) {
        keep -= 1;
    }
    let digest = sha1_smol::Sha1::from(key.as_bytes()).digest().to_string();
    Ok(Cow::Owned(format!("{}#{digest}", &key[..keep])))
}

/// True for a key of the form of a hashed one (up to 209 bytes of a long
/// key, `#` and 40 hex digits: 247 to 250 bytes in all): such a key is
/// hashed too, so that a key crafted to look like the hashed form of a long
/// one never shares its item. (Shorter keys ending in a digest, such as the
/// engine's own `ns:#<sha1>` for long keys, cannot be a wire digest.)
fn looks_hashed(key: &str) -> bool {
    let bytes = key.as_bytes();
    (MAX_KEY_LEN - 3..=MAX_KEY_LEN).contains(&bytes.len())
        && bytes[bytes.len() - 41] == b'#'
        && bytes[bytes.len() - 40..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Bits of a token below the generation: 48 of CAS and 2 of kind.
const GENERATION_SHIFT: u32 = 50;
const CAS_MASK: u64 = (1 << (GENERATION_SHIFT - 2)) - 1;

/// The token of a win of `kind` on an item with `cas`, on a server of
/// `generation`; `None` if the CAS does not fit its 48 bits.
fn token(generation: u16, cas: u64, kind: u64) -> Option<LeaseToken> {
    (cas <= CAS_MASK).then(|| LeaseToken((u64::from(generation) << GENERATION_SHIFT) | (cas << 2) | kind))
}

fn too_large_cas(cas: u64) -> StoreError {
    StoreError::server(format!("CAS {cas} does not fit a lease token"))
}

/// The parts of a token: `(generation, cas, kind)`.
fn token_parts(token: LeaseToken) -> (u16, u64, u64) {
    let generation = (token.0 >> GENERATION_SHIFT) as u16 & ((1 << pool::GENERATION_BITS) - 1);
    (generation, (token.0 >> 2) & CAS_MASK, token.0 & 3)
}

fn unexpected(what: &str, m: &Meta) -> StoreError {
    StoreError::server(format!("unexpected answer {:?} to {what}", m.status))
}

/// An item as an `mg` with `v c f` saw it.
struct Item {
    /// The value; `None` for a lease placeholder (an empty vivified item).
    value: Option<Bytes>,
    /// Written by `fill` or `put_entry` (client flags [`ENTRY_FLAG`]), or a
    /// lease placeholder: an item of the entry family, not a plain value.
    entry: bool,
    cas: u64,
    /// The generation of the server that answered (see the module documentation).
    generation: u16,
    stale: bool,
    won: bool,
    busy: bool,
}

fn item(m: Meta, generation: u16) -> StoreResult<Option<Item>> {
    match m.status {
        Status::Miss => Ok(None),
        Status::Value | Status::Stored => {
            let cas = m.cas.ok_or_else(|| unexpected("mg without a CAS", &m))?;
            let flagged = m.client_flags == Some(ENTRY_FLAG);
            let placeholder = !flagged && (m.won || m.busy || m.stale);
            Ok(Some(Item {
                value: if placeholder { None } else { m.value },
                entry: flagged || placeholder,
                cas,
                generation,
                stale: m.stale,
                won: m.won,
                busy: m.busy,
            }))
        }
        _ => Err(unexpected("mg", &m)),
    }
}

fn lease_outcome((m, generation): (Meta, u16)) -> StoreResult<LeaseOutcome> {
    let Some(it) = item(m, generation)? else {
        // `N` vivifies every miss; a miss means memcached could not allocate.
        return Err(StoreError::server(
            "mg with N missed: memcached could not vivify the key",
        ));
    };
    if !it.entry {
        // As Redis answers WRONGTYPE: the engine loads without the cache.
        return Err(StoreError::server("the key holds a plain value, not an entry"));
    }
    let win = |kind| token(it.generation, it.cas, kind).ok_or_else(|| too_large_cas(it.cas));
    Ok(match (it.stale, it.won, it.value) {
        (true, true, stale) => LeaseOutcome::Granted {
            token: win(KIND_STALE)?,
            stale,
        },
        (true, false, stale) => LeaseOutcome::Busy { stale },
        (false, _, Some(v)) => LeaseOutcome::Hit(v),
        (false, true, None) => LeaseOutcome::Granted {
            token: win(KIND_VIVIFIED)?,
            stale: None,
        },
        (false, false, None) => LeaseOutcome::Busy { stale: None },
    })
}

fn fill_outcome(m: &Meta) -> StoreResult<FillOutcome> {
    match m.status {
        Status::Stored => Ok(FillOutcome::Stored),
        Status::Exists | Status::NotFound | Status::NotStored => Ok(FillOutcome::Refused),
        _ => Err(unexpected("ms with CAS", m)),
    }
}

fn expect_stored(what: &str, m: &Meta) -> StoreResult<()> {
    match m.status {
        Status::Stored => Ok(()),
        _ => Err(unexpected(what, m)),
    }
}

impl MemcachedStore {
    /// Connects with the default [`MemcachedConfig`] to `addrs`: one
    /// `host:port`, or several separated by commas (an optional
    /// `memcached://` in front of each is accepted).
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the list is empty or a server cannot be reached.
    pub async fn connect(addrs: &str) -> StoreResult<Self> {
        Self::connect_with(addrs, MemcachedConfig::default()).await
    }

    /// Connects with explicit settings. Every server is reached once, to
    /// read its `item_size_max`.
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the list is empty or a server cannot be reached.
    pub async fn connect_with(addrs: &str, config: MemcachedConfig) -> StoreResult<Self> {
        let names: Vec<String> = addrs
            .split(',')
            .map(|a| {
                a.trim()
                    .trim_start_matches("memcached://")
                    .trim_end_matches('/')
                    .to_owned()
            })
            .filter(|a| !a.is_empty())
            .collect();
        if names.is_empty() {
            return Err(StoreError::connection(format!("no memcached address in {addrs:?}")));
        }
        let limits = Limits {
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            max_connections: config.max_connections_per_server,
            health_check_after: config.health_check_after,
        };
        let mut servers = Vec::with_capacity(names.len());
        // A server's claim is believed only up to the client's own bound:
        // a peer claiming terabytes must not make us allocate them.
        let mut item_size_max = config.max_item_bytes.min(MAX_ITEM_BYTES);
        for name in &names {
            let server = Server::new(name.clone(), limits);
            let mut conn = server.open().await?;
            let settings = tokio::time::timeout(config.response_timeout, conn.stats_settings())
                .await
                .map_err(|_| StoreError::connection(format!("stats settings of {name} timed out")))??;
            let size = settings
                .iter()
                .find(|(k, _)| k == "item_size_max")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(1024 * 1024);
            item_size_max = item_size_max.min(size);
            server.push_idle(conn);
            servers.push(server);
        }
        Ok(MemcachedStore {
            inner: Arc::new(Inner {
                ring: ring::Ring::new(&names, config.points_per_server),
                servers,
                item_size_max,
            }),
        })
    }

    /// The largest value accepted for `key`, in bytes.
    pub fn max_value_len(&self, key: &str) -> usize {
        self.inner.item_size_max.saturating_sub(key.len() + ITEM_OVERHEAD)
    }

    fn check_size(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        let limit = self.max_value_len(key);
        if value.len() > limit {
            return Err(StoreError::refused(format!(
                "value of {} bytes is over memcached's item size limit for this key ({limit} bytes; item_size_max {})",
                value.len(),
                self.inner.item_size_max
            )));
        }
        Ok(())
    }

    /// Runs a pipeline: one per server involved, concurrently, answers
    /// returned in request order.
    async fn exec(&self, reqs: &[Req<'_>]) -> StoreResult<Vec<Meta>> {
        Ok(self.exec_gen(reqs).await?.into_iter().map(|(m, _)| m).collect())
    }

    /// [`MemcachedStore::exec`], each answer with the generation of the
    /// server that gave it. A request guarded by another generation than
    /// its connection's is left out of the pipeline and answered `EX`.
    async fn exec_gen(&self, reqs: &[Req<'_>]) -> StoreResult<Vec<(Meta, u16)>> {
        let inner = &*self.inner;
        let servers = inner.servers.len();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); servers];
        for (i, r) in reqs.iter().enumerate() {
            let s = if servers == 1 { 0 } else { inner.ring.server_for(&r.key) };
            groups[s].push(i);
        }
        let runs = groups
            .iter()
            .enumerate()
            .filter(|(_, idx)| !idx.is_empty())
            .map(|(s, idx)| async move {
                let mut sent = vec![false; idx.len()];
                let build = |generation: u16| {
                    let mut buf = Vec::new();
                    for (sent, &i) in sent.iter_mut().zip(idx) {
                        let r = &reqs[i];
                        if r.generation.is_none_or(|g| g == generation) {
                            proto::encode(&mut buf, r.cmd, &r.key, r.value, &r.flags);
                            *sent = true;
                        }
                    }
                    let count = sent.iter().filter(|s| **s).count();
                    (buf, count)
                };
                let (metas, generation) = inner.servers[s].run_with(build, inner.item_size_max).await?;
                let mut metas = metas.into_iter();
                let answers: Vec<(usize, Meta)> = idx
                    .iter()
                    .zip(&sent)
                    .map(|(&i, &sent)| {
                        let m = if sent {
                            metas.next()
                        } else {
                            Some(Meta::new(Status::Exists))
                        };
                        m.map(|m| (i, m))
                            .ok_or_else(|| StoreError::server("a pipelined request got no answer"))
                    })
                    .collect::<StoreResult<_>>()?;
                Ok::<_, StoreError>((answers, generation))
            });
        let answered = futures::future::try_join_all(runs).await?;
        let mut out: Vec<Option<(Meta, u16)>> = (0..reqs.len()).map(|_| None).collect();
        for (answers, generation) in answered {
            for (i, m) in answers {
                out[i] = Some((m, generation));
            }
        }
        out.into_iter()
            .map(|m| m.ok_or_else(|| StoreError::server("a pipelined request got no answer")))
            .collect()
    }

    async fn exec_one(&self, r: Req<'_>) -> StoreResult<Meta> {
        Ok(self.exec_one_gen(r).await?.0)
    }

    async fn exec_one_gen(&self, r: Req<'_>) -> StoreResult<(Meta, u16)> {
        let mut metas = self.exec_gen(std::slice::from_ref(&r)).await?;
        metas.pop().ok_or_else(|| StoreError::server("a request got no answer"))
    }

    /// Gives back wins that a look (not a lookup) took on stale items: see
    /// the module documentation. Each is `(key, cas, generation)`.
    async fn give_back(&self, wins: Vec<(Cow<'_, str>, u64, u16)>) -> StoreResult<()> {
        if wins.is_empty() {
            return Ok(());
        }
        let reqs: Vec<Req<'_>> = wins
            .into_iter()
            .map(|(key, cas, generation)| req(key, "md", None, format!("I C{cas}")).of_generation(generation))
            .collect();
        self.exec(&reqs).await.map(drop)
    }

    /// Looks at items with `mg v c f` without keeping any win.
    async fn look(&self, keys: &[&str]) -> StoreResult<Vec<Option<Item>>> {
        let wire: Vec<Cow<'_, str>> = keys.iter().map(|k| wire_key(k)).collect::<StoreResult<_>>()?;
        let reqs: Vec<Req<'_>> = wire
            .iter()
            .map(|k| req(Cow::Borrowed(k.as_ref()), "mg", None, "v c f".into()))
            .collect();
        let items: Vec<Option<Item>> = self
            .exec_gen(&reqs)
            .await?
            .into_iter()
            .map(|(m, generation)| item(m, generation))
            .collect::<StoreResult<_>>()?;
        let wins = wire
            .iter()
            .zip(&items)
            .filter_map(|(k, it)| {
                it.as_ref()
                    .filter(|it| it.won)
                    .map(|it| (Cow::Borrowed(k.as_ref()), it.cas, it.generation))
            })
            .collect();
        self.give_back(wins).await?;
        Ok(items
            .into_iter()
            .map(|it| {
                it.map(|mut it| {
                    // The win was given back: nobody holds the lease now.
                    if it.won {
                        it.won = false;
                        it.busy = false;
                    }
                    it
                })
            })
            .collect())
    }

    /// A plain value: entries and lease placeholders are not (as on Redis,
    /// where they are hashes, and in memory, where they are another slot).
    fn plain(it: Option<Item>) -> Option<Bytes> {
        it.filter(|it| !it.entry).and_then(|it| it.value)
    }

    fn view(it: Option<Item>) -> EntryView {
        let Some(it) = it.filter(|it| it.entry) else {
            return EntryView::default();
        };
        let lease = it.busy.then(|| {
            let kind = match (it.stale, it.value.is_some()) {
                (true, _) => KIND_STALE,
                (false, true) => KIND_REFRESH,
                (false, false) => KIND_VIVIFIED,
            };
            token(it.generation, it.cas, kind)
        });
        EntryView {
            value: it.value,
            stale: it.stale,
            lease: lease.flatten(),
        }
    }

    fn fill_req<'a>(&self, key: &'a str, token: LeaseToken, value: &'a [u8], ttl: Duration) -> StoreResult<Req<'a>> {
        let key = wire_key(key)?;
        self.check_size(&key, value)?;
        let (generation, cas, _) = token_parts(token);
        let flags = format!("C{cas} T{} F{ENTRY_FLAG}", secs(ttl));
        Ok(req(key, "ms", Some(value), flags).of_generation(generation))
    }
}

#[async_trait]
impl Store for MemcachedStore {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn supports_plain_values(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let mut items = self.look(&[key]).await?;
        Ok(Self::plain(items.pop().flatten()))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        let key = wire_key(key)?;
        self.check_size(&key, &value)?;
        let m = self
            .exec_one(req(key, "ms", Some(&value), format!("T{}", secs(ttl))))
            .await?;
        expect_stored("ms", &m)
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<bool> {
        let key = wire_key(key)?;
        self.check_size(&key, &value)?;
        let m = self
            .exec_one(req(key, "ms", Some(&value), format!("T{} ME", secs(ttl))))
            .await?;
        match m.status {
            Status::Stored => Ok(true),
            Status::NotStored => Ok(false),
            _ => Err(unexpected("ms ME", &m)),
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let m = self.exec_one(req(wire_key(key)?, "md", None, String::new())).await?;
        match m.status {
            Status::Stored | Status::NotFound => Ok(()),
            _ => Err(unexpected("md", &m)),
        }
    }

    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        let s = secs(ttl);
        let m = self
            .exec_one(req(wire_key(key)?, "ma", None, format!("N{s} J1 T{s} v")))
            .await?;
        match (m.status, &m.value) {
            (Status::Value, Some(v)) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| StoreError::server(format!("ma answered a non-number: {v:?}"))),
            _ => Err(unexpected("ma", &m)),
        }
    }

    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        let mut items = self.look(&[key]).await?;
        Ok(Self::view(items.pop().flatten()))
    }

    async fn lookup_or_lease(&self, key: &str, _offered: LeaseToken, lease_ttl: Duration) -> StoreResult<LeaseOutcome> {
        let flags = format!("N{} v c f", secs(lease_ttl));
        lease_outcome(self.exec_one_gen(req(wire_key(key)?, "mg", None, flags)).await?)
    }

    async fn lease_for_refresh(
        &self,
        key: &str,
        _offered: LeaseToken,
        _lease_ttl: Duration,
    ) -> StoreResult<Option<LeaseToken>> {
        let key = wire_key(key)?;
        let (m, generation) = self
            .exec_one_gen(req(key.clone(), "mg", None, format!("R{RECACHE_ANY} c f")))
            .await?;
        // Without `v`, a value's presence shows in its client flags.
        let entry = m.client_flags == Some(ENTRY_FLAG);
        match item(m, generation)? {
            Some(it) if it.won && !it.stale && entry => match token(it.generation, it.cas, KIND_REFRESH) {
                Some(token) => Ok(Some(token)),
                None => {
                    self.give_back(vec![(key, it.cas, it.generation)]).await?;
                    Err(too_large_cas(it.cas))
                }
            },
            Some(it) if it.won => {
                // Won a stale item or a placeholder: not a refresh; give it back.
                self.give_back(vec![(key, it.cas, it.generation)]).await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome> {
        fill_outcome(&self.exec_one(self.fill_req(key, token, &value, ttl)?).await?)
    }

    /// memcached has no touch guarded by a CAS, so this reads the item's
    /// CAS and TTL, and touches it (`T`, which keeps the CAS) only if it is
    /// still the item the lease won, and only to lengthen its life. An
    /// invalidation between the read and the touch leaves a placeholder or
    /// stale item living a lease TTL longer, never a value filled.
    async fn renew_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<bool> {
        let (generation, cas, _) = token_parts(token);
        let key = wire_key(key)?;
        let (m, now_generation) = self.exec_one_gen(req(key.clone(), "mg", None, "c t".into())).await?;
        let remaining = m.ttl;
        match item(m, now_generation)? {
            Some(it) if it.cas == cas && it.generation == generation => {
                let wanted = secs(lease_ttl);
                // t-1: the item never expires.
                let short = remaining.is_some_and(|t| t >= 0 && (t as u64) < wanted);
                if short {
                    let touch = req(key, "mg", None, format!("T{wanted}")).of_generation(generation);
                    self.exec_one(touch).await?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        let key = wire_key(key)?;
        // Every request here is guarded by the token's CAS, so by its generation.
        let (generation, cas, kind) = token_parts(token);
        let guarded = |key, flags| req(key, "md", None, flags).of_generation(generation);
        match kind {
            KIND_VIVIFIED => drop(self.exec_one(guarded(key, format!("C{cas}"))).await?),
            KIND_STALE => drop(self.exec_one(guarded(key, format!("I C{cas}"))).await?),
            _ => {
                // A refresh win is cleared only by replacing the item: write
                // the same value back, if it is still the one we won.
                let (m, now_generation) = self
                    .exec_one_gen(req(key.clone(), "mg", None, "v c f t".into()))
                    .await?;
                let ttl = m.ttl;
                let flags = m.client_flags.unwrap_or(0);
                if let Some(Item {
                    value: Some(v),
                    cas: now,
                    stale: false,
                    ..
                }) = item(m, now_generation)?
                    && now == cas
                    && now_generation == generation
                {
                    // t-1: no expiry (T0); otherwise at least one second.
                    let t = ttl.map_or(1, |t| if t < 0 { 0 } else { t.max(1) });
                    let flags = format!("C{cas} T{t} F{flags}");
                    self.exec_one(req(key, "ms", Some(&v), flags).of_generation(generation))
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        let key = wire_key(key)?;
        self.check_size(&key, &value)?;
        let flags = format!("T{} F{ENTRY_FLAG}", secs(ttl));
        expect_stored("ms", &self.exec_one(req(key, "ms", Some(&value), flags)).await?)
    }

    fn supports_versioned_writes(&self) -> bool {
        true
    }

    /// A protocol of CAS-guarded steps, not one atomic call: see
    /// `versioned` for the steps and why no older row lands after a newer
    /// one.
    async fn put_entry_if_newer(&self, put: VersionedPut) -> StoreResult<bool> {
        self.check_size(&wire_key(&put.key)?, &put.value)?;
        let mut write = versioned::VersionedWrite::new(put);
        loop {
            if let Some(written) = write.advance(self).await? {
                return Ok(written);
            }
        }
    }

    /// The mark first, then the delete: a versioned write of an older row
    /// whose step 3 came before the mark moved had its item deleted under
    /// it (its CAS write finds none, and its next look at the mark
    /// refuses it); one whose step 3 came after sees the mark.
    async fn invalidate_if_newer(
        &self,
        key: &str,
        mark_key: &str,
        version: u64,
        mark_ttl: Duration,
    ) -> StoreResult<()> {
        versioned::raise_mark(self, mark_key, version, mark_ttl).await?;
        self.invalidate(key, None).await
    }

    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()> {
        let flags = keep_stale.map_or_else(String::new, |d| format!("I T{}", secs(d)));
        let m = self.exec_one(req(wire_key(key)?, "md", None, flags)).await?;
        match m.status {
            Status::Stored | Status::NotFound => Ok(()),
            _ => Err(unexpected("md", &m)),
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        let inner = &*self.inner;
        let pings = inner.servers.iter().map(|s| async move {
            let m = s.run(b"mn\r\n", 1, 0).await?;
            match m.first().map(|m| m.status) {
                Some(Status::NoOp) => Ok(()),
                _ => Err(StoreError::server(format!("{} did not answer mn with MN", s.addr()))),
            }
        });
        futures::future::try_join_all(pings).await.map(drop)
    }

    async fn get_many(&self, keys: &[String]) -> StoreResult<Vec<Option<Bytes>>> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Ok(self.look(&keys).await?.into_iter().map(Self::plain).collect())
    }

    async fn peek_many(&self, keys: &[String]) -> StoreResult<Vec<EntryView>> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Ok(self.look(&keys).await?.into_iter().map(Self::view).collect())
    }

    async fn lookup_or_lease_many(
        &self,
        keys: &[(String, LeaseToken)],
        lease_ttl: Duration,
    ) -> StoreResult<Vec<LeaseOutcome>> {
        let flags = format!("N{} v c f", secs(lease_ttl));
        let reqs = keys
            .iter()
            .map(|(k, _)| Ok(req(wire_key(k)?, "mg", None, flags.clone())))
            .collect::<StoreResult<Vec<_>>>()?;
        self.exec_gen(&reqs).await?.into_iter().map(lease_outcome).collect()
    }

    async fn fill_many(&self, fills: Vec<Fill>) -> StoreResult<Vec<FillOutcome>> {
        // A value over the size limit is refused on its own; the rest still go.
        let mut reqs = Vec::with_capacity(fills.len());
        let mut at = Vec::with_capacity(fills.len());
        for (i, f) in fills.iter().enumerate() {
            match self.fill_req(&f.key, f.token, &f.value, f.ttl) {
                Ok(r) => {
                    reqs.push(r);
                    at.push(i);
                }
                Err(StoreError::Refused { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut out = vec![FillOutcome::Refused; fills.len()];
        for (i, m) in at.into_iter().zip(self.exec(&reqs).await?) {
            out[i] = fill_outcome(&m)?;
        }
        Ok(out)
    }

    async fn set_many(&self, items: Vec<(String, Bytes, Duration)>) -> StoreResult<()> {
        let reqs = items
            .iter()
            .map(|(k, v, ttl)| {
                let key = wire_key(k)?;
                self.check_size(&key, v)?;
                Ok(req(key, "ms", Some(v.as_ref()), format!("T{}", secs(*ttl))))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        for m in self.exec(&reqs).await? {
            expect_stored("ms", &m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_whole_seconds_never_zero() {
        assert_eq!(secs(Duration::ZERO), 2);
        assert_eq!(secs(Duration::from_millis(30)), 2);
        assert_eq!(secs(Duration::from_millis(1001)), 3);
        assert_eq!(secs(Duration::from_secs(60)), 61);
        assert_eq!(secs(Duration::from_secs(90 * 24 * 3600)), MAX_TTL_SECS);
    }

    #[test]
    fn keys_follow_memcached_rules() {
        assert_eq!(wire_key("user:1").unwrap(), "user:1");
        for bad in ["a b", "a\r\nmg x", "tab\t", "", "nul\0"] {
            assert!(matches!(wire_key(bad), Err(StoreError::Refused { .. })), "{bad:?}");
        }
        let long = format!("ns:{}", "é".repeat(200));
        let hashed = wire_key(&long).unwrap();
        assert!(hashed.len() <= MAX_KEY_LEN, "{}", hashed.len());
        assert_eq!(hashed, wire_key(&long).unwrap());
        assert_ne!(hashed, wire_key(&format!("{long}x")).unwrap());
    }

    /// A fake server that answers nothing until the whole batch has
    /// arrived: a client that waited for each answer before sending the
    /// next request would time out here.
    #[tokio::test]
    async fn batches_are_pipelined_in_one_round_trip() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            // A new connection first asks who the server is (its generation).
            assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("stats"));
            write
                .write_all(b"STAT pid 42\r\nSTAT uptime 5\r\nSTAT time 1700000005\r\nEND\r\n")
                .await
                .unwrap();
            assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("stats settings"));
            write.write_all(b"STAT item_size_max 1048576\r\nEND\r\n").await.unwrap();
            let mut batch = Vec::new();
            while batch.len() < 3 {
                batch.push(lines.next_line().await.unwrap().unwrap());
            }
            write.write_all(b"EN\r\nVA 1 c7 f0\r\nx\r\nEN\r\n").await.unwrap();
            batch
        });
        let store = MemcachedStore::connect(&addr).await.unwrap();
        let keys: Vec<String> = ["a", "b", "c"].iter().map(|k| k.to_string()).collect();
        let got = store.get_many(&keys).await.unwrap();
        assert_eq!(got, vec![None, Some(Bytes::from_static(b"x")), None]);
        assert_eq!(server.await.unwrap(), ["mg a v c f", "mg b v c f", "mg c v c f"]);
    }

    #[test]
    fn tokens_carry_the_generation_the_cas_and_the_kind() {
        let t = token(7, 12345, KIND_STALE).unwrap();
        assert_eq!(token_parts(t), (7, 12345, KIND_STALE));
        assert_ne!(token(0, 1, KIND_VIVIFIED).unwrap().0, 0);
        // The same CAS of two boots of a server makes two tokens.
        assert_ne!(token(0, 1, KIND_VIVIFIED), token(1, 1, KIND_VIVIFIED));
        let last = (1 << pool::GENERATION_BITS) - 1;
        assert_eq!(
            token_parts(token(last, CAS_MASK, KIND_REFRESH).unwrap()),
            (last, CAS_MASK, KIND_REFRESH)
        );
        assert_eq!(token(0, CAS_MASK + 1, KIND_VIVIFIED), None);
    }

    /// A short key that looks like the hashed form of a long one is hashed
    /// too, so it never shares the long key's item.
    #[test]
    fn a_key_shaped_like_a_hashed_one_gets_an_item_of_its_own() {
        let long = format!("ns:{}", "x".repeat(300));
        let hashed = wire_key(&long).unwrap().into_owned();
        assert!(looks_hashed(&hashed));
        let crafted = wire_key(&hashed).unwrap();
        assert_ne!(crafted, hashed);
        assert!(crafted.len() <= MAX_KEY_LEN);
        assert_eq!(wire_key("ns:#not-hex").unwrap(), "ns:#not-hex");
        // The engine's own hashed keys are short: kept as they are.
        let engine_hashed = format!("ns:#{}", "a".repeat(40));
        assert_eq!(wire_key(&engine_hashed).unwrap(), engine_hashed);
    }
}
