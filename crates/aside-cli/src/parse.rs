//! The value parsers of the command-line flags the subcommands share.
//!
//! Owns what a valid number of seconds, exponent, fraction, strategy and
//! seed are, and the message clap shows (after `invalid value`) when a flag
//! is not one; each subcommand names the parser in its `value_parser`.

use aside::Strategy;

/// Seconds greater than 0 (durations, TTLs that must not be 0).
///
/// # Errors
/// Not a number, or not in `(0, 1e9]`.
pub fn seconds(s: &str) -> Result<f64, String> {
    let seconds = number_of_seconds(s)?;
    if seconds > 0.0 {
        Ok(seconds)
    } else {
        Err("expected a number of seconds greater than 0".to_owned())
    }
}

/// Seconds, 0 included (offsets, a TTL where 0 turns the cache off).
///
/// # Errors
/// Not a number, or not in `[0, 1e9]`.
pub fn seconds_or_zero(s: &str) -> Result<f64, String> {
    let seconds = number_of_seconds(s)?;
    if seconds >= 0.0 {
        Ok(seconds)
    } else {
        Err("expected a number of seconds, 0 or more".to_owned())
    }
}

/// A finite number of seconds at most 1e9 (about 31 years).
fn number_of_seconds(s: &str) -> Result<f64, String> {
    let seconds: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if seconds.is_finite() && seconds <= 1e9 {
        Ok(seconds)
    } else {
        Err("expected a number of seconds up to 1e9".to_owned())
    }
}

/// A finite exponent, 0 or more (the Zipf skew).
///
/// # Errors
/// Not a number, negative or not finite.
pub fn exponent(s: &str) -> Result<f64, String> {
    let exponent: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if exponent.is_finite() && exponent >= 0.0 {
        Ok(exponent)
    } else {
        Err("expected a number >= 0".to_owned())
    }
}

/// A fraction in `[0, 1]`.
///
/// # Errors
/// Not a number, or outside `[0, 1]`.
pub fn fraction(s: &str) -> Result<f64, String> {
    let fraction: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&fraction) {
        Ok(fraction)
    } else {
        Err("expected a number between 0 and 1".to_owned())
    }
}

/// An invalidation strategy by name: `delete`, `double-delete`, `versioned` or `lease`.
///
/// # Errors
/// Any other name (the message lists the valid ones).
pub fn strategy(s: &str) -> Result<Strategy, String> {
    s.parse::<Strategy>().map_err(|e| e.to_string())
}

/// A seed, decimal or `0x` hex, as a failing chaos run prints it.
///
/// # Errors
/// Not a 64-bit number.
pub fn seed(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("not a seed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(seconds("1.5"), Ok(1.5));
        assert!(seconds("0").is_err());
        assert_eq!(seconds_or_zero("0"), Ok(0.0));
        for bad in ["-1", "nan", "inf", "2e9", "soon"] {
            assert!(seconds(bad).is_err(), "{bad}");
            assert!(seconds_or_zero(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fractions_exponents_strategies_and_seeds() {
        assert_eq!(fraction("1"), Ok(1.0));
        assert!(fraction("1.5").is_err());
        assert_eq!(exponent("0"), Ok(0.0));
        assert!(exponent("-1").is_err());
        assert_eq!(strategy("lease"), Ok(Strategy::Lease));
        assert!(strategy("nope").unwrap_err().contains("double-delete"));
        assert_eq!(seed("0x10"), Ok(16));
        assert_eq!(seed("16"), Ok(16));
        assert!(seed("0xzz").is_err());
    }
}
