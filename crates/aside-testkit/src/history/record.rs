//! The recorded history of one program run, and the fake database it reads.
//!
//! Owns what is remembered: every operation's start and end (ticks of the
//! shared [`Clock`]), what each read returned and each write created, every
//! loader call, every bus delivery each instance processed, and every
//! state of every database row. The invariants are checked on it in `check`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::fault::{Clock, JournalEntry};

use super::program::{Change, Op};

/// The cached value: one database row at one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The row's key.
    pub key: u64,
    /// The row's version (bumped by every write).
    pub version: u64,
}

/// One state of a database row: a version, present or deleted.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct KeyState {
    /// The row's key.
    pub key: u64,
    /// The version.
    pub version: u64,
    /// False when the row was deleted at this version.
    pub exists: bool,
    /// The tick it was written (0 for the initial state).
    pub seq: u64,
    /// Milliseconds since the program started, when it was written.
    pub at_ms: f64,
}

impl KeyState {
    /// The row a loader returns in this state.
    pub fn row(&self) -> Option<Row> {
        self.exists.then_some(Row {
            key: self.key,
            version: self.version,
        })
    }
}

/// The source of truth: keys `1..=n`, each with every state it went through.
#[derive(Debug)]
pub struct Db {
    states: Mutex<Vec<Vec<KeyState>>>,
    reads: AtomicU64,
    clock: Clock,
    started: Instant,
}

impl Db {
    /// Keys `1..=keys` at version 1, present if listed in `present`;
    /// writes are timed from `started`.
    pub fn new(keys: u64, present: &[u64], clock: Clock, started: Instant) -> Self {
        Db {
            states: Mutex::new(
                (1..=keys)
                    .map(|key| {
                        vec![KeyState {
                            key,
                            version: 1,
                            exists: present.contains(&key),
                            seq: 0,
                            at_ms: 0.0,
                        }]
                    })
                    .collect(),
            ),
            reads: AtomicU64::new(0),
            clock,
            started,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<KeyState>>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the current state of `keys` (one database read, counted).
    pub fn read(&self, keys: &[u64]) -> Vec<KeyState> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let states = self.lock();
        keys.iter().filter_map(|k| self.current_in(&states, *k)).collect()
    }

    fn current_in(&self, states: &[Vec<KeyState>], key: u64) -> Option<KeyState> {
        states.get(key.checked_sub(1)? as usize)?.last().copied()
    }

    /// The current state of `key`, without counting a read.
    pub fn current(&self, key: u64) -> Option<KeyState> {
        self.current_in(&self.lock(), key)
    }

    /// Writes a new version of `key`; returns the state written.
    pub fn write(&self, key: u64, change: Change) -> Option<KeyState> {
        let mut states = self.lock();
        let history = states.get_mut(key.checked_sub(1)? as usize)?;
        let last = *history.last()?;
        let state = KeyState {
            key,
            version: last.version + 1,
            exists: change == Change::Update,
            seq: self.clock.tick(),
            at_ms: self.started.elapsed().as_secs_f64() * 1000.0,
        };
        history.push(state);
        Some(state)
    }

    /// Every state of `key`, oldest first.
    pub fn history(&self, key: u64) -> Vec<KeyState> {
        key.checked_sub(1)
            .and_then(|i| self.lock().get(i as usize).cloned())
            .unwrap_or_default()
    }

    /// Database reads so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A read: per key, the version returned (`None`: nothing).
    Read {
        /// `(key, version)` per key read.
        values: Vec<(u64, Option<u64>)>,
        /// Where the value came from, for the `fetch` family.
        source: Option<aside::Source>,
        /// True when `None` means "the row does not exist" (a load or a
        /// cached tombstone); false for `get`, whose `None` is "not cached".
        none_is_absent: bool,
    },
    /// `warm` found this many keys.
    Warmed(usize),
    /// A write: the database states it created, and whether its cache
    /// operation returned `Ok`.
    Write {
        /// The states written.
        states: Vec<KeyState>,
        /// False for a silent write (no cache operation at all).
        cache_op: bool,
        /// The cache operation returned `Ok`.
        ok: bool,
        /// Its error, if any.
        error: Option<String>,
    },
    /// The operation returned an error (a read's loader failed or timed out).
    Failed(String),
    /// The operation was cancelled (dropped) before it finished.
    Cancelled,
    /// The operation did not finish within the harness's deadline.
    Hung,
}

/// One operation as run.
#[derive(Debug, Clone)]
pub struct OpRecord {
    /// Its id (task-local during the call; see [`crate::fault::in_op`]).
    pub id: u64,
    /// The instance that ran it.
    pub instance: usize,
    /// The task of that instance.
    pub task: usize,
    /// Which handle of the namespace ran it (1: the twin).
    pub handle: usize,
    /// The operation.
    pub op: Op,
    /// Tick at its start.
    pub start: u64,
    /// Tick at its end.
    pub end: u64,
    /// Milliseconds since the program started, at its start.
    pub start_ms: f64,
    /// Milliseconds since the program started, at its end.
    pub end_ms: f64,
    /// What it returned.
    pub outcome: Outcome,
}

impl OpRecord {
    /// The state this write created for `key`, if it is a write of `key`.
    pub fn wrote(&self, key: u64) -> Option<KeyState> {
        match &self.outcome {
            Outcome::Write { states, .. } => states.iter().find(|s| s.key == key).copied(),
            _ => None,
        }
    }

    /// True for a write whose cache operation returned `Ok`.
    pub fn write_ok(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Write {
                ok: true,
                cache_op: true,
                ..
            }
        )
    }

    /// True for a write with a cache operation (`invalidate`, `set`), whatever it returned.
    pub fn has_cache_op(&self) -> bool {
        matches!(self.outcome, Outcome::Write { cache_op: true, .. })
    }
}

impl std::fmt::Display for OpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}..{}] {:.1}-{:.1}ms p{}.t{}{} op{} {} -> ",
            self.start,
            self.end,
            self.start_ms,
            self.end_ms,
            self.instance,
            self.task,
            if self.handle == 1 { " (twin)" } else { "" },
            self.id,
            self.op
        )?;
        match &self.outcome {
            Outcome::Read { values, source, .. } => {
                let vs: Vec<String> = values
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}:v{v}"),
                        None => format!("{k}:none"),
                    })
                    .collect();
                write!(f, "{}", vs.join(" "))?;
                if let Some(source) = source {
                    write!(f, " ({source:?})")?;
                }
                Ok(())
            }
            Outcome::Warmed(n) => write!(f, "warmed {n}"),
            Outcome::Write {
                states,
                cache_op: false,
                ..
            } => {
                let vs: Vec<String> = states
                    .iter()
                    .map(|s| format!("{}:v{}{}", s.key, s.version, if s.exists { "" } else { "(deleted)" }))
                    .collect();
                write!(f, "wrote {}, no cache op", vs.join(" "))
            }
            Outcome::Write { states, ok, error, .. } => {
                let vs: Vec<String> = states
                    .iter()
                    .map(|s| format!("{}:v{}{}", s.key, s.version, if s.exists { "" } else { "(deleted)" }))
                    .collect();
                write!(f, "wrote {}, cache op ", vs.join(" "))?;
                match (ok, error) {
                    (true, _) => write!(f, "Ok"),
                    (false, Some(e)) => write!(f, "Err({e})"),
                    (false, None) => write!(f, "Err"),
                }
            }
            Outcome::Failed(e) => write!(f, "error: {e}"),
            Outcome::Cancelled => write!(f, "cancelled"),
            Outcome::Hung => write!(f, "HUNG"),
        }
    }
}

/// Why a loader ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadKind {
    /// A load of the cache's read path (single-flight applies).
    Cached,
    /// A `skip_cache` load (no single-flight promised).
    SkipCache,
    /// A `force_refresh` load: it must not take an older load's result, so
    /// it is not coalesced with the read path (no single-flight promised).
    ForceRefresh,
    /// A load of the quiescence check.
    Check,
}

/// One loader call.
#[derive(Debug, Clone)]
pub struct LoadRecord {
    /// Its index.
    pub id: usize,
    /// The instance whose namespace called it.
    pub instance: usize,
    /// Which handle of the namespace (1: the twin, see `NsConfig::twin_namespaces`).
    pub handle: usize,
    /// The operation whose loader it is.
    pub op: u64,
    /// True when called outside that operation's task (a background refresh).
    pub background: bool,
    /// Why it ran.
    pub kind: LoadKind,
    /// Keys asked for.
    pub keys: Vec<u64>,
    /// Tick at its start.
    pub start: u64,
    /// Tick at its end; `None` while running.
    pub end: Option<u64>,
    /// Milliseconds since the program started, at its start.
    pub start_ms: f64,
    /// Milliseconds since the program started, at its end.
    pub end_ms: Option<f64>,
    /// What it read from the database (empty if it failed or was dropped).
    pub read: Vec<KeyState>,
    /// True when it returned an error (an injected database error).
    pub failed: bool,
    /// True when it was dropped before finishing (a timeout, a cancelled caller).
    pub dropped: bool,
}

impl std::fmt::Display for LoadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = self.end.map_or("running".to_owned(), |e| e.to_string());
        write!(
            f,
            "[{}..{}] p{} load#{} of op{}{} {:?} keys {:?}",
            self.start,
            end,
            self.instance,
            self.id,
            self.op,
            if self.background { " (background)" } else { "" },
            self.kind,
            self.keys
        )?;
        if self.failed {
            write!(f, " -> db error")
        } else if self.dropped {
            write!(f, " -> dropped")
        } else {
            let vs: Vec<String> = self
                .read
                .iter()
                .map(|s| format!("{}:v{}{}", s.key, s.version, if s.exists { "" } else { "(deleted)" }))
                .collect();
            write!(f, " -> read {}", vs.join(" "))
        }
    }
}

/// What one instance's router processed, as `Aside::invalidations()` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryEvent {
    /// An invalidation message.
    Message {
        /// Its namespace.
        namespace: String,
        /// Its full keys.
        keys: Vec<String>,
        /// The publishing `Aside`'s origin id.
        origin: u64,
    },
    /// A reset (the marker after it): every L1 of the instance was cleared.
    Reset,
    /// The recorder lagged and lost this many messages (taken as a reset).
    Lagged(u64),
}

/// One delivery processed by one instance.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The instance.
    pub instance: usize,
    /// Tick when the recorder saw it (after the router processed it).
    pub seq: u64,
    /// Milliseconds since the program started.
    pub at_ms: f64,
    /// What it was.
    pub event: DeliveryEvent,
}

/// Collects the history while a program runs.
#[derive(Debug)]
pub struct Recorder {
    clock: Clock,
    started: Instant,
    ops: Mutex<Vec<OpRecord>>,
    loads: Mutex<Vec<LoadRecord>>,
    deliveries: Mutex<Vec<Delivery>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recorder {
    /// An empty history on `clock`, starting now.
    pub fn new(clock: Clock) -> Self {
        Recorder {
            clock,
            started: Instant::now(),
            ops: Mutex::new(Vec::new()),
            loads: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
        }
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// When the program started (what `*_ms` times count from).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Milliseconds since the program started.
    pub fn ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// Records a finished operation.
    pub fn push_op(&self, record: OpRecord) {
        lock(&self.ops).push(record);
    }

    /// Records that a loader started; the guard records its end.
    #[allow(clippy::too_many_arguments)]
    pub fn load_begin(
        self: &Arc<Self>,
        instance: usize,
        handle: usize,
        op: u64,
        keys: &[u64],
        kind: LoadKind,
        background: bool,
    ) -> LoadGuard {
        let start = self.clock.tick();
        let mut loads = lock(&self.loads);
        let id = loads.len();
        loads.push(LoadRecord {
            id,
            instance,
            handle,
            op,
            background,
            kind,
            keys: keys.to_vec(),
            start,
            end: None,
            start_ms: self.ms(),
            end_ms: None,
            read: Vec::new(),
            failed: false,
            dropped: false,
        });
        LoadGuard {
            recorder: self.clone(),
            id,
            done: false,
        }
    }

    /// Records a delivery processed by `instance`.
    pub fn delivery(&self, instance: usize, event: DeliveryEvent) {
        let seq = self.clock.tick();
        let at_ms = self.ms();
        lock(&self.deliveries).push(Delivery {
            instance,
            seq,
            at_ms,
            event,
        });
    }

    /// True once `instance` processed a message of `namespace` carrying `key`.
    pub fn delivered(&self, instance: usize, namespace: &str, key: &str) -> bool {
        lock(&self.deliveries).iter().any(|d| {
            d.instance == instance
                && matches!(&d.event, DeliveryEvent::Message { namespace: n, keys, .. } if n == namespace && keys.iter().any(|k| k == key))
        })
    }

    /// A snapshot of the operations recorded so far.
    pub fn ops(&self) -> Vec<OpRecord> {
        lock(&self.ops).clone()
    }

    /// A snapshot of the loads recorded so far.
    pub fn loads(&self) -> Vec<LoadRecord> {
        lock(&self.loads).clone()
    }

    /// A snapshot of the deliveries recorded so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }
}

/// Marks the end of a load; dropping it unfinished records a dropped load.
#[derive(Debug)]
pub struct LoadGuard {
    recorder: Arc<Recorder>,
    id: usize,
    done: bool,
}

impl LoadGuard {
    fn end(&mut self, read: Vec<KeyState>, failed: bool, dropped: bool) {
        self.done = true;
        let end = self.recorder.clock.tick();
        let end_ms = self.recorder.ms();
        if let Some(load) = lock(&self.recorder.loads).get_mut(self.id) {
            load.end = Some(end);
            load.end_ms = Some(end_ms);
            load.read = read;
            load.failed = failed;
            load.dropped = dropped;
        }
    }

    /// The load read `read`.
    pub fn finish(mut self, read: Vec<KeyState>) {
        self.end(read, false, false);
    }

    /// The load failed (a database error).
    pub fn fail(mut self) {
        self.end(Vec::new(), true, false);
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if !self.done {
            self.end(Vec::new(), false, true);
        }
    }
}

/// Everything one program run recorded.
#[derive(Debug, Clone)]
pub struct History {
    /// Operations, in the order they finished.
    pub ops: Vec<OpRecord>,
    /// Loader calls, in the order they started.
    pub loads: Vec<LoadRecord>,
    /// Deliveries each instance processed.
    pub deliveries: Vec<Delivery>,
    /// The fault plan's journal (faults injected, every publish).
    pub journal: Vec<JournalEntry>,
    /// Every state of every row, per key (index `key - 1`).
    pub db: Vec<Vec<KeyState>>,
    /// The full store key of each key (index `key - 1`).
    pub full_keys: Vec<String>,
    /// Each instance's bus origin id, once it published something.
    pub origins: Vec<Option<u64>>,
}

impl History {
    /// The full store key of `key`.
    pub fn full(&self, key: u64) -> &str {
        key.checked_sub(1)
            .and_then(|i| self.full_keys.get(i as usize))
            .map_or("", String::as_str)
    }

    /// The key of a full store key, if it is one of the program's.
    pub fn key_of(&self, full: &str) -> Option<u64> {
        self.full_keys.iter().position(|f| f == full).map(|i| i as u64 + 1)
    }

    /// Every state of `key`.
    pub fn states(&self, key: u64) -> &[KeyState] {
        key.checked_sub(1)
            .and_then(|i| self.db.get(i as usize))
            .map_or(&[], Vec::as_slice)
    }

    /// Operations by id.
    pub fn ops_by_id(&self) -> HashMap<u64, &OpRecord> {
        self.ops.iter().map(|o| (o.id, o)).collect()
    }
}
