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
    /// Delete now and once more after `delay` (one timer task for all keys).
    /// Narrows the race to loads slower than `delay`.
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

/// The article's double-delete delay.
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
pub fn jittered(ttl: Duration, jitter: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 0.999);
    if jitter == 0.0 {
        return ttl;
    }
    let factor = 1.0 + jitter * (2.0 * rand::random::<f64>() - 1.0);
    ttl.mul_f64(factor).max(Duration::from_millis(1))
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
