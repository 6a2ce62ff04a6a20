//! Policies of a namespace: TTL with jitter, and the invalidation strategy.
//!
//! Owns the choices a user makes per namespace and the small pure functions
//! that apply them. No I/O happens here.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// How writes invalidate cached entries, and how reads fill them.
///
/// The article's strategies are all here so they can be compared on the same
/// workload (`aside demo --scenario race`). Only [`Strategy::Lease`] promises
/// that no stale entry outlives a write; the others are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Delete the key after the database write; fills are unconditional.
    /// Leaves the article's read-write race open.
    Delete,
    /// Delete now and once more after `delay` (one timer task for all keys;
    /// the article's is [`DEFAULT_DOUBLE_DELETE_DELAY`], 500 ms). Narrows
    /// the race to loads slower than `delay`.
    DoubleDelete {
        /// Delay before the second delete.
        delay: Duration,
    },
    /// A version counter per key; the data lives under the current version
    /// and a write bumps the version, orphaning old data until it expires.
    /// Costs a second store round trip on every read.
    Versioned,
    /// Leases (the default): a miss takes a lease, the fill is applied only
    /// if no invalidation revoked it, and an invalidation deletes the value
    /// and revokes any lease in flight.
    #[default]
    Lease,
}

impl Strategy {
    /// The name used on the command line and in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Delete => "delete",
            Strategy::DoubleDelete { .. } => "double-delete",
            Strategy::Versioned => "versioned",
            Strategy::Lease => "lease",
        }
    }

    /// Every strategy, with a 500 ms double-delete delay as in the article.
    pub fn all() -> [Strategy; 4] {
        [
            Strategy::Delete,
            Strategy::DoubleDelete {
                delay: DEFAULT_DOUBLE_DELETE_DELAY,
            },
            Strategy::Versioned,
            Strategy::Lease,
        ]
    }
}

/// When a value is reloaded before it expires, so a hot key never expires
/// under load (the stampede on expiry).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum EarlyRefresh {
    /// Probabilistic early expiration (Vattani et al., VLDB 2015): refresh
    /// when `now - delta * beta * ln(rand) >= expiry`, with `delta` the
    /// measured load time stored in the entry. `beta = 1` is the paper's
    /// default; larger refreshes earlier.
    XFetch {
        /// The paper's beta (> 0).
        beta: f64,
    },
    /// Refresh once this fraction of the TTL has passed (0 <= f < 1).
    AfterFraction(f64),
}

impl EarlyRefresh {
    /// True when a value expiring at `expires_at_ms` whose load took
    /// `load_time` should be refreshed at `now_ms`, for entries of `ttl`.
    pub(crate) fn due(&self, now_ms: u64, expires_at_ms: u64, load_time: Duration, ttl: Duration) -> bool {
        match *self {
            EarlyRefresh::XFetch { beta } => {
                // -ln(U) for U in (0, 1]: an exponential draw, mean 1.
                let draw = -(1.0 - rand::random::<f64>()).ln();
                let gap_ms = load_time.as_secs_f64() * 1000.0 * beta * draw;
                now_ms as f64 + gap_ms >= expires_at_ms as f64
            }
            EarlyRefresh::AfterFraction(fraction) => {
                let remaining = ttl.mul_f64((1.0 - fraction).clamp(0.0, 1.0)).as_millis() as u64;
                now_ms >= expires_at_ms.saturating_sub(remaining)
            }
        }
    }
}

/// The article's double-delete delay (used by [`Strategy::all`] and the
/// command line).
pub const DEFAULT_DOUBLE_DELETE_DELAY: Duration = Duration::from_millis(500);

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = Error;

    /// Parses `delete`, `double-delete`, `versioned` or `lease`.
    fn from_str(s: &str) -> Result<Self, Error> {
        Strategy::all()
            .into_iter()
            .find(|strategy| strategy.name() == s)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("unknown strategy {s:?}: expected delete, double-delete, versioned or lease"),
                )
            })
    }
}

/// Spreads `ttl` uniformly over `ttl * (1 ± jitter)` so that entries filled
/// together do not all expire together. `jitter` is clamped to `[0, 1)`.
///
/// Never panics: a NaN jitter is no jitter, and a product past
/// `Duration::MAX` saturates.
pub(crate) fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter.is_nan() {
        return ttl;
    }
    let jitter = jitter.clamp(0.0, 0.999);
    if jitter == 0.0 {
        return ttl;
    }
    let factor = 1.0 + jitter * (2.0 * rand::random::<f64>() - 1.0);
    Duration::try_from_secs_f64(ttl.as_secs_f64() * factor)
        .unwrap_or(Duration::MAX)
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_round_trip() {
        for s in Strategy::all() {
            assert_eq!(s.name().parse::<Strategy>().unwrap().name(), s.name());
        }
        assert!("nope".parse::<Strategy>().is_err());
    }

    #[test]
    fn xfetch_refreshes_more_often_near_expiry_and_with_slower_loads() {
        let policy = EarlyRefresh::XFetch { beta: 1.0 };
        let ttl = Duration::from_secs(60);
        let share = |now: u64, load_ms: u64| {
            (0..10_000)
                .filter(|_| policy.due(now, 100_000, Duration::from_millis(load_ms), ttl))
                .count()
        };
        assert_eq!(share(40_000, 100), 0, "far from expiry: never");
        assert_eq!(share(100_000, 100), 10_000, "at expiry: always");
        let near = share(99_900, 100);
        assert!(
            near > 3_000 && near < 4_400,
            "100 ms before expiry with a 100 ms load: P = 1/e, got {near}"
        );
        assert!(share(99_900, 1_000) > near, "slower loads refresh earlier");
    }

    #[test]
    fn fraction_refreshes_after_its_share_of_the_ttl() {
        let policy = EarlyRefresh::AfterFraction(0.8);
        let ttl = Duration::from_secs(100);
        // Expires at 100 s: due from 80 s on.
        assert!(!policy.due(79_000, 100_000, Duration::ZERO, ttl));
        assert!(policy.due(80_000, 100_000, Duration::ZERO, ttl));
    }

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let ttl = Duration::from_secs(600);
        let samples: Vec<_> = (0..1000).map(|_| jittered(ttl, 0.1)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_secs(540) && *d <= Duration::from_secs(660))
        );
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 900);
        assert_eq!(jittered(ttl, 0.0), ttl);
    }
}
