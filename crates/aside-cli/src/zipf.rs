//! A Zipf sampler over ranks `1..=n`, for skewed ("a few keys are hot") workloads.
//!
//! Owns the distribution only: a precomputed cumulative distribution and a
//! binary search per sample, so sampling costs `O(log n)` and no allocation.
//! Rank `k` is drawn with probability proportional to `1 / k^s`; `s = 0` is
//! uniform, and the larger `s`, the hotter the first ranks.

use rand::Rng;

/// Draws ranks `1..=n` with probability proportional to `1 / rank^exponent`.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// `cdf[i]` is the probability of drawing a rank `<= i + 1`; the last is 1.
    cdf: Vec<f64>,
}

/// Why a [`Zipf`] could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZipfError {
    /// There must be at least one rank.
    #[error("a Zipf distribution needs at least one rank")]
    NoRanks,
    /// The exponent must be finite and not negative.
    #[error("the Zipf exponent must be a finite number >= 0, not {0}")]
    BadExponent(f64),
}

impl Zipf {
    /// A sampler over ranks `1..=n` with the given exponent (0.99 is the
    /// classic YCSB skew).
    ///
    /// # Errors
    /// [`ZipfError`] when `n` is 0 or the exponent is negative or not finite.
    pub fn new(n: u64, exponent: f64) -> Result<Self, ZipfError> {
        if n == 0 {
            return Err(ZipfError::NoRanks);
        }
        if !exponent.is_finite() || exponent < 0.0 {
            return Err(ZipfError::BadExponent(exponent));
        }
        let len = usize::try_from(n).map_err(|_| ZipfError::NoRanks)?;
        let mut cdf = Vec::with_capacity(len);
        let mut total = 0.0_f64;
        for rank in 1..=n {
            total += (rank as f64).powf(-exponent);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        // Rounding must never leave a uniform draw past the last bucket.
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Ok(Zipf { cdf })
    }

    /// The number of ranks, `n`.
    pub fn ranks(&self) -> u64 {
        self.cdf.len() as u64
    }

    /// Draws a rank in `1..=len()`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.random();
        let index = self.cdf.partition_point(|&c| c <= u);
        // `u < 1.0 == cdf[last]`, so `index <= last`; the `min` guards the invariant.
        index.min(self.cdf.len() - 1) as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Empirical frequency of each rank over `draws` samples.
    fn counts(zipf: &Zipf, draws: usize, seed: u64) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = vec![0_u64; zipf.ranks() as usize + 1];
        for _ in 0..draws {
            let rank = zipf.sample(&mut rng);
            assert!((1..=zipf.ranks()).contains(&rank), "rank {rank} out of range");
            counts[rank as usize] += 1;
        }
        counts
    }

    #[test]
    fn rank_one_over_rank_two_follows_the_exponent() {
        const DRAWS: usize = 1_000_000;
        for exponent in [0.5, 0.99, 1.5] {
            let zipf = Zipf::new(1_000, exponent).unwrap();
            let c = counts(&zipf, DRAWS, 42);
            // P(1) / P(2) = 2^exponent: 1.41, 1.99 and 2.83 here, while a
            // uniform or inverted sampler would give 1 or less.
            let observed = c[1] as f64 / c[2] as f64;
            let expected = 2_f64.powf(exponent);
            assert!(
                (observed / expected - 1.0).abs() < 0.05,
                "exponent {exponent}: rank1/rank2 = {observed:.3}, expected {expected:.3}"
            );
            // And rank 1 itself is drawn with probability 1 / H(n, exponent).
            let harmonic: f64 = (1..=1_000).map(|k| f64::from(k).powf(-exponent)).sum();
            let p1 = c[1] as f64 / DRAWS as f64;
            assert!(
                (p1 * harmonic - 1.0).abs() < 0.05,
                "exponent {exponent}: P(rank 1) = {p1:.4}, expected {:.4}",
                1.0 / harmonic
            );
        }
    }

    #[test]
    fn zero_exponent_is_uniform() {
        let zipf = Zipf::new(10, 0.0).unwrap();
        let c = counts(&zipf, 100_000, 7);
        for (rank, &n) in c.iter().enumerate().skip(1) {
            assert!((9_000..11_000).contains(&n), "rank {rank} drawn {n} times");
        }
    }

    #[test]
    fn single_rank_and_bad_parameters() {
        let one = Zipf::new(1, 0.99).unwrap();
        assert_eq!(counts(&one, 100, 1)[1], 100);
        assert_eq!(Zipf::new(0, 1.0).unwrap_err(), ZipfError::NoRanks);
        assert!(matches!(Zipf::new(10, -1.0), Err(ZipfError::BadExponent(_))));
        assert!(matches!(Zipf::new(10, f64::NAN), Err(ZipfError::BadExponent(_))));
    }
}
