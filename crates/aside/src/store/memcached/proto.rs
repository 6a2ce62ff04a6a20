//! The meta text protocol on the wire: request encoding and bounded
//! response parsing over one TCP connection.
//!
//! Owns bytes only: no pooling, no timeouts (the pool bounds every
//! exchange), no cache semantics. Every request this client sends gets
//! exactly one response line (no `q` flag), so a pipeline of n requests is
//! answered by n responses in order. Nothing read from the network can make
//! it panic: lines are bounded, value lengths are checked against the
//! store's bound (the smallest of the server's `item_size_max` and the
//! client's [`MemcachedConfig::max_item_bytes`](super::MemcachedConfig))
//! before anything is allocated, a value's buffer grows only as its bytes
//! arrive, and anything
//! unexpected is a [`StoreError::Server`]. After an error the connection is
//! in an unknown state, so the pool closes it instead of reusing it.

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::store::{StoreError, StoreResult};

/// Longest response line accepted (a `VA` header with every flag we ask for
/// is under 100 bytes; `stats settings` lines are short too).
const MAX_LINE: u64 = 2048;
/// Most `STAT` lines accepted from `stats settings`.
const MAX_STATS: usize = 512;
/// The capacity a value's buffer starts with, whatever length is claimed.
const INITIAL_VALUE_CAPACITY: usize = 64 * 1024;

/// The status of one meta response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// `VA <len> <flags>*` followed by the value.
    Value,
    /// `HD <flags>*`: success without a value.
    Stored,
    /// `EN`: miss (mg).
    Miss,
    /// `NF`: not found (ms with CAS, md, ma).
    NotFound,
    /// `NS`: not stored (ms in add mode on an existing key).
    NotStored,
    /// `EX`: CAS mismatch.
    Exists,
    /// `MN`: answer to the no-op `mn`.
    NoOp,
}

/// One parsed meta response with the flags this client reads.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub status: Status,
    pub value: Option<Bytes>,
    /// `c`: the item's CAS.
    pub cas: Option<u64>,
    /// `f`: the item's client flags.
    pub client_flags: Option<u32>,
    /// `t`: remaining TTL in seconds, -1 for none.
    pub ttl: Option<i64>,
    /// `W`: this request won the right to recache the item.
    pub won: bool,
    /// `Z`: another request already won it.
    pub busy: bool,
    /// `X`: the item is marked stale.
    pub stale: bool,
}

impl Meta {
    pub(super) fn new(status: Status) -> Self {
        Meta {
            status,
            value: None,
            cas: None,
            client_flags: None,
            ttl: None,
            won: false,
            busy: false,
            stale: false,
        }
    }
}

fn protocol(what: impl Into<String>) -> StoreError {
    StoreError::server(what)
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::connection("memcached I/O failed").with_source(e)
}

/// Appends one meta command: `<cmd> <key> [<len>] <flags>\r\n[<value>\r\n]`.
/// Keys are checked by the store before they get here.
pub(super) fn encode(buf: &mut Vec<u8>, cmd: &str, key: &str, value: Option<&[u8]>, flags: &str) {
    buf.extend_from_slice(cmd.as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(key.as_bytes());
    if let Some(v) = value {
        buf.push(b' ');
        buf.extend_from_slice(v.len().to_string().as_bytes());
    }
    if !flags.is_empty() {
        buf.push(b' ');
        buf.extend_from_slice(flags.as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    if let Some(v) = value {
        buf.extend_from_slice(v);
        buf.extend_from_slice(b"\r\n");
    }
}

/// One open connection to one server.
#[derive(Debug)]
pub(super) struct Conn {
    responses: Responses<BufReader<TcpStream>>,
    /// The generation (see `pool::Server::generation_of`) of the server
    /// process this connection reached, set by the pool when it opens it.
    pub(super) generation: u16,
}

impl Conn {
    /// Opens a connection (not bounded here: the pool bounds it).
    pub(super) async fn open(addr: &str) -> StoreResult<Self> {
        let stream = TcpStream::connect(addr).await.map_err(io_error)?;
        stream.set_nodelay(true).map_err(io_error)?;
        Ok(Conn {
            responses: Responses::new(BufReader::with_capacity(16 * 1024, stream)),
            generation: 0,
        })
    }

    async fn send(&mut self, request: &[u8]) -> StoreResult<()> {
        let stream = self.responses.stream.get_mut();
        stream.write_all(request).await.map_err(io_error)
    }

    /// Writes a pipeline of `count` requests, then reads `count` responses.
    /// Values longer than `max_value` are refused unread.
    pub(super) async fn exchange(&mut self, request: &[u8], count: usize, max_value: usize) -> StoreResult<Vec<Meta>> {
        self.send(request).await?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.responses.read_meta(max_value).await?);
        }
        Ok(out)
    }

    /// Reads `stats settings` into `(name, value)` pairs.
    pub(super) async fn stats_settings(&mut self) -> StoreResult<Vec<(String, String)>> {
        self.stats(b"stats settings\r\n").await
    }

    /// The identity of the server process: its `pid` and its start time
    /// (`time - uptime` of the general `stats`, the same every time it is
    /// asked, since both come from one clock reading). A restarted server
    /// has another. 0 when the server reports neither (a proxy, another
    /// implementation): then every boot looks the same, as before.
    pub(super) async fn boot_identity(&mut self) -> StoreResult<u64> {
        let stats = self.stats(b"stats\r\n").await?;
        let stat = |name: &str| {
            stats
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.trim().parse::<i64>().ok())
        };
        Ok(match (stat("pid"), stat("time"), stat("uptime")) {
            (Some(pid), Some(time), Some(uptime)) => {
                let started = time.wrapping_sub(uptime) as u64;
                (pid as u64).rotate_left(40) ^ started
            }
            _ => 0,
        })
    }

    /// Sends a `stats` request and reads its `STAT name value` lines.
    async fn stats(&mut self, request: &[u8]) -> StoreResult<Vec<(String, String)>> {
        self.send(request).await?;
        self.responses.read_stats().await
    }
}

/// The read side of a connection: bounded parsing of responses from any
/// buffered reader (a connection, or the fuzz target's bytes).
#[derive(Debug)]
pub(super) struct Responses<R> {
    stream: R,
    line: Vec<u8>,
}

impl<R: AsyncBufRead + Unpin> Responses<R> {
    pub(super) fn new(stream: R) -> Self {
        Responses {
            stream,
            line: Vec::with_capacity(128),
        }
    }

    /// Reads `STAT name value` lines up to `END`.
    pub(super) async fn read_stats(&mut self) -> StoreResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line == "END" {
                return Ok(out);
            }
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("STAT"), Some(name), Some(value)) if out.len() < MAX_STATS => {
                    out.push((name.to_owned(), value.to_owned()));
                }
                _ => return Err(protocol(format!("unexpected line in stats settings: {line:?}"))),
            }
        }
    }

    /// One line without its `\r\n`, at most [`MAX_LINE`] bytes, as text.
    async fn read_line(&mut self) -> StoreResult<String> {
        self.line.clear();
        let n = (&mut self.stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.line)
            .await
            .map_err(io_error)?;
        if n == 0 {
            return Err(StoreError::connection("connection closed by the server"));
        }
        if !self.line.ends_with(b"\r\n") {
            return Err(protocol(format!(
                "response line longer than {MAX_LINE} bytes or cut short"
            )));
        }
        self.line.truncate(self.line.len() - 2);
        String::from_utf8(std::mem::take(&mut self.line)).map_err(|_| protocol("response line is not UTF-8"))
    }

    /// Reads a value of `n` bytes and its `\r\n`. `n` was checked against
    /// the bound, but it is still only the peer's claim: the buffer starts
    /// small and grows as bytes arrive (at most doubling), so a peer that
    /// claims a large value and sends little commits little memory.
    async fn read_value(&mut self, n: usize) -> StoreResult<Bytes> {
        let want = n.saturating_add(2);
        let mut value = Vec::with_capacity(want.min(INITIAL_VALUE_CAPACITY));
        let got = (&mut self.stream)
            .take(want as u64)
            .read_to_end(&mut value)
            .await
            .map_err(io_error)?;
        if got < want {
            return Err(StoreError::connection(format!(
                "connection closed after {got} of the {want} bytes of a value"
            )));
        }
        if !value.ends_with(b"\r\n") {
            return Err(protocol("value not terminated by \\r\\n"));
        }
        value.truncate(n);
        Ok(Bytes::from(value))
    }

    pub(super) async fn read_meta(&mut self, max_value: usize) -> StoreResult<Meta> {
        let line = self.read_line().await?;
        let mut tokens = line.split(' ');
        let head = tokens.next().unwrap_or_default();
        let status = match head {
            "VA" => Status::Value,
            "HD" => Status::Stored,
            "EN" => Status::Miss,
            "NF" => Status::NotFound,
            "NS" => Status::NotStored,
            "EX" => Status::Exists,
            "MN" => Status::NoOp,
            "SERVER_ERROR" if line.contains("too large") => {
                return Err(StoreError::refused(format!("memcached: {line}")));
            }
            "ERROR" | "CLIENT_ERROR" | "SERVER_ERROR" => return Err(protocol(format!("memcached: {line}"))),
            _ => return Err(protocol(format!("unexpected response {line:?}"))),
        };
        let mut meta = Meta::new(status);
        let mut len = None;
        if status == Status::Value {
            let raw = tokens.next().unwrap_or_default();
            let n: usize = raw
                .parse()
                .map_err(|_| protocol(format!("bad value length in {line:?}")))?;
            if n > max_value {
                return Err(protocol(format!(
                    "value of {n} bytes is over the {max_value}-byte bound"
                )));
            }
            len = Some(n);
        }
        for token in tokens {
            let (flag, rest) = token.split_at(token.chars().next().map_or(0, char::len_utf8));
            let bad = || protocol(format!("bad flag {token:?} in {line:?}"));
            match flag {
                "c" => meta.cas = Some(rest.parse().map_err(|_| bad())?),
                "f" => meta.client_flags = Some(rest.parse().map_err(|_| bad())?),
                "t" => meta.ttl = Some(rest.parse().map_err(|_| bad())?),
                "W" => meta.won = true,
                "Z" => meta.busy = true,
                "X" => meta.stale = true,
                // Flags we did not ask for (or empty tokens) are ignored.
                _ => {}
            }
        }
        if let Some(n) = len {
            meta.value = Some(self.read_value(n).await?);
        }
        Ok(meta)
    }
}

/// The fuzz target's entry (`aside::fuzzing::memcached_responses`): the
/// first byte of `data` picks what is parsed (meta responses, or `stats`
/// lines), the rest is what a server sent. A byte slice never makes a read
/// wait, so one poll runs the parse to its end.
pub(crate) fn parse_untrusted(data: &[u8]) {
    /// Small, so values both under and over the bound are reached.
    const BOUND: usize = 4096;
    let Some((&mode, wire)) = data.split_first() else {
        return;
    };
    let parse = std::pin::pin!(async {
        let mut responses = Responses::new(wire);
        if mode & 1 == 0 {
            while responses.read_meta(BOUND).await.is_ok() {}
        } else {
            let _ = responses.read_stats().await;
        }
    });
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(parse.poll(&mut cx).is_ready(), "a parse of in-memory bytes waited");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_with_and_without_values() {
        let mut buf = Vec::new();
        encode(&mut buf, "mg", "k", None, "v c");
        encode(&mut buf, "ms", "k", Some(b"ab"), "T5");
        assert_eq!(buf, b"mg k v c\r\nms k 2 T5\r\nab\r\n");
    }

    async fn parse(wire: &[u8], max_value: usize) -> StoreResult<Vec<Meta>> {
        let wire = wire.to_vec();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&wire).await.unwrap();
        });
        let mut conn = Conn::open(&addr).await.unwrap();
        let out = conn.exchange(b"", 1, max_value).await;
        server.await.unwrap();
        out
    }

    proptest::proptest! {
        /// Arbitrary bytes, alone or after a valid header, end in a value
        /// or an error; `fuzz/` runs the same entry with coverage guidance.
        #[test]
        fn any_bytes_parse_without_panicking(
            head in proptest::sample::select(vec![&b""[..], b"\0VA 5 c1\r\n", b"\0VA 4096 c1\r\n", b"\x01STAT a b\r\n"]),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            parse_untrusted(&[head, &tail[..]].concat());
        }
    }

    #[tokio::test]
    async fn parses_flags_and_values() {
        let m = parse(b"VA 2 c3 f1 t30 Z X\r\nhi\r\n", 100).await.unwrap();
        assert_eq!(m[0].status, Status::Value);
        assert_eq!(m[0].value.as_deref(), Some(&b"hi"[..]));
        assert_eq!((m[0].cas, m[0].client_flags, m[0].ttl), (Some(3), Some(1), Some(30)));
        assert!(m[0].busy && m[0].stale && !m[0].won);
    }

    #[tokio::test]
    async fn refuses_bad_network_data_without_panicking() {
        for wire in [
            &b"VA 999999 c1\r\n"[..],
            b"VA x\r\n",
            b"VA 2 cZZ\r\nhi\r\n",
            b"VA 2\r\nhiXY",
            b"WHAT\r\n",
            b"SERVER_ERROR out of memory\r\n",
            b"\xff\xfe\r\n",
        ] {
            assert!(parse(wire, 100).await.is_err(), "{wire:?}");
        }
        assert!(matches!(
            parse(&[b'H'; 5000], 100).await,
            Err(StoreError::Server { .. })
        ));
        assert!(matches!(parse(b"", 100).await, Err(StoreError::Connection { .. })));
        assert!(matches!(
            parse(b"SERVER_ERROR object too large for cache\r\n", 100).await,
            Err(StoreError::Refused { .. })
        ));
    }
}
