//! Consistent hashing over several memcached servers: a ketama-like ring.
//!
//! Owns key-to-server placement only. Each server puts `points` points on a
//! ring of `u32`s (four per SHA-1 digest of `"{name}-{i}"`, as ketama takes
//! four per MD5 digest); a key goes to the first point at or after its own
//! hash, wrapping around. Removing one of N servers moves only the keys that
//! server held (about 1/N of them); every other key stays where it was.

/// The ring: sorted `(point, server index)` pairs.
#[derive(Debug, Clone)]
pub(super) struct Ring {
    points: Vec<(u32, usize)>,
}

fn hash32(bytes: &[u8]) -> u32 {
    let d = sha1_smol::Sha1::from(bytes).digest().bytes();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

impl Ring {
    /// A ring over `names` (their addresses), `points` points each.
    pub(super) fn new(names: &[String], points: usize) -> Self {
        let mut ring = Vec::with_capacity(names.len() * points);
        for (index, name) in names.iter().enumerate() {
            for i in 0..points.div_ceil(4) {
                let d = sha1_smol::Sha1::from(format!("{name}-{i}")).digest().bytes();
                for chunk in d.chunks_exact(4).take(4) {
                    ring.push((u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]), index));
                }
            }
        }
        ring.sort_unstable();
        Ring { points: ring }
    }

    /// The index of the server that holds `key`.
    pub(super) fn server_for(&self, key: &str) -> usize {
        match self.points.len() {
            0 => 0,
            _ => {
                let h = hash32(key.as_bytes());
                let at = self.points.partition_point(|(p, _)| *p < h);
                self.points.get(at).unwrap_or(&self.points[0]).1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    #[test]
    fn removing_one_of_n_servers_moves_about_one_nth_of_the_keys() {
        let n = 5;
        let all = names(n);
        let full = Ring::new(&all, 160);
        let removed = 2;
        let fewer: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, s)| s.clone())
            .collect();
        let smaller = Ring::new(&fewer, 160);
        let keys: Vec<String> = (0..20_000).map(|i| format!("user:profile:{i}")).collect();
        let mut moved = 0;
        for key in &keys {
            let before = &all[full.server_for(key)];
            let after = &fewer[smaller.server_for(key)];
            if before != after {
                moved += 1;
                assert_eq!(before, &all[removed], "{key} moved although its server stayed");
            }
        }
        let share = f64::from(moved) / keys.len() as f64;
        assert!(
            (0.12..0.28).contains(&share),
            "moved {share:.3} of keys, expected about 1/{n}"
        );
    }

    #[test]
    fn spreads_keys_over_every_server() {
        let ring = Ring::new(&names(4), 160);
        let mut counts = [0usize; 4];
        for i in 0..20_000 {
            counts[ring.server_for(&format!("k{i}"))] += 1;
        }
        for c in counts {
            assert!((3_000..7_000).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
