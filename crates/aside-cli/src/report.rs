//! Renders a workload [`Summary`]: an aligned plain-text table for people,
//! one JSON object for programs.
//!
//! Owns formatting only; every figure is computed by the workload runner,
//! and the number formats are [`crate::table`]'s.

use crate::error::{Context, Result};
use crate::table::count;
use crate::workload::Summary;

/// The summary as one JSON object on one line.
///
/// # Errors
/// When serialization fails (it cannot for this struct, but is not assumed).
pub fn json(summary: &Summary) -> Result<String> {
    serde_json::to_string(summary).context("cannot encode the summary as JSON")
}

/// The summary as a plain-text table: a title line (`title` and the run's
/// settings), then label, value and remark columns, aligned.
pub fn table(title: &str, summary: &Summary) -> String {
    let s = summary;
    let operations = s.requests + s.writes;
    let mut rows = vec![
        row(
            "requests (reads)",
            count(s.requests),
            format!("{} req/s", count(s.throughput_rps.round() as u64)),
        ),
        row(
            "writes",
            count(s.writes),
            format!("{} of operations", percent(s.writes, operations)),
        ),
        row(
            "hit ratio",
            format!("{:.1}%", s.hit_ratio * 100.0),
            format!("{} hits, {} misses", count(s.hits), count(s.misses)),
        ),
    ];
    if s.tiers {
        rows.push(row(
            "hit ratio L1 / L2",
            format!("{:.1}% / {:.1}%", s.l1_hit_ratio * 100.0, s.l2_hit_ratio * 100.0),
            format!(
                "{} in-process hits, {} store hits",
                count(s.l1_hits),
                count(s.hits - s.l1_hits)
            ),
        ));
    }
    rows.extend([
        row(
            "database queries",
            count(s.db_queries),
            format!("{} of requests", percent(s.db_queries, s.requests)),
        ),
        row("hit latency p50", micros(s.hit_p50_us), String::new()),
        row("hit latency p99", micros(s.hit_p99_us), String::new()),
        row("miss latency p50", micros(s.miss_p50_us), String::new()),
        row("miss latency p99", micros(s.miss_p99_us), String::new()),
        row(
            "misses by source",
            count(s.loaded),
            format!("loaded; {} coalesced, {} stale", count(s.coalesced), count(s.stale)),
        ),
        row(
            "fills refused",
            count(s.fills_refused),
            "a write revoked the lease mid-load".to_owned(),
        ),
        row(
            "store errors",
            count(s.store_errors),
            format!("{} skipped by the breaker", count(s.store_skipped)),
        ),
    ]);
    if s.invalidation_errors > 0 {
        rows.push(row(
            "invalidation errors",
            count(s.invalidation_errors),
            "queued for replay".to_owned(),
        ));
    }
    if s.not_found > 0 {
        rows.push(row("users not found", count(s.not_found), String::new()));
    }

    let label_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let mut out = format!(
        "{title}: store {}{}, strategy {}, {} users, zipf {}, {} tasks, {:.1} s{}\n\n",
        s.store,
        if s.tiers { " behind an L1" } else { "" },
        s.strategy,
        count(s.users),
        s.zipf_exponent,
        s.concurrency,
        s.duration_s,
        if s.interrupted { " (interrupted)" } else { "" },
    );
    for (label, value, remark) in rows {
        let line = format!("  {label:<label_width$}  {value:>value_width$}  {remark}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row(label: &'static str, value: String, remark: String) -> (&'static str, String, String) {
    (label, value, remark)
}

/// `part / whole` as a percentage with one decimal.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "0.0%".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// Microseconds, with one decimal below 1 ms.
fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.1} us")
    } else {
        format!("{} us", count(us.round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_micros() {
        assert_eq!(percent(1, 6), "16.7%");
        assert_eq!(percent(1, 0), "0.0%");
        assert_eq!(micros(2.04), "2.0 us");
        assert_eq!(micros(12_345.6), "12,346 us");
    }
}
