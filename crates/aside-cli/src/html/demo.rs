//! The charts of `aside demo --report`: the main workload's timeline and
//! latencies, and each scenario's own figures.
//!
//! Owns which figures each run charts ([`Charted`], one implementation per
//! scenario's result type, so a renamed field fails to compile rather than
//! dropping a chart) and the main workload's page ([`summary_page`]). The
//! pages put the run's JSON under the charts as tables.

use aside_testkit::fault::FaultCounts;
use serde_json::Value;

use super::Page;
use super::chart::{BarChart, BarSeries, Chart, LineChart, LineSeries};
use crate::scenario::chaos::ChaosResult;
use crate::scenario::db_outage::OutageResult;
use crate::scenario::expiry::ExpiryResult;
use crate::scenario::patterns::PatternResult;
use crate::scenario::race::RaceResult;
use crate::scenario::stampede::StampedeResult;
use crate::workload::Summary;

/// A scenario's results, as the charts of its report.
pub trait Charted: Sized {
    /// The charts of `results` (one result per strategy, mode or run).
    fn charts(results: &[Self]) -> Vec<Chart>;
}

/// The page of a scenario: its charts, then `report` (the scenario's JSON)
/// as tables.
pub fn scenario_page<T: Charted>(scenario: &str, store: &str, results: &[T], report: &Value) -> Page {
    let mut page = Page::new(format!("aside demo --scenario {scenario}"));
    page.note(&format!(
        "On the {store} store; {} result(s). Hover a bar for its value.",
        results.len()
    ));
    page.charts("Charts", &T::charts(results));
    page.json_tables("Results (the --json output)", report);
    page
}

/// The page of the main workload: hit ratio and latency over time, the
/// latencies of hits and misses, then the summary as tables.
pub fn summary_page(summary: &Summary, report: &Value) -> Page {
    let s = summary;
    let mut page = Page::new("aside demo");
    page.note(&format!(
        "Store {}{}, strategy {}, {} users, zipf {}, write ratio {}, {} tasks, {:.1} s{}: {} reads, hit ratio {:.1}%.",
        s.store,
        if s.tiers { " behind an L1" } else { "" },
        s.strategy,
        s.users,
        s.zipf_exponent,
        s.write_ratio,
        s.concurrency,
        s.duration_s,
        if s.interrupted { " (interrupted)" } else { "" },
        s.requests,
        s.hit_ratio * 100.0,
    ));
    let at_end = |f: fn(&crate::workload::Interval) -> f64| -> Vec<(f64, f64)> {
        s.timeline.iter().map(|i| (i.end_s, f(i))).collect()
    };
    let over_time = vec![
        Chart::Line(LineChart {
            title: "Hit ratio over time".to_owned(),
            x_label: "seconds into the run (end of each interval)".to_owned(),
            y_label: "hit ratio (%)".to_owned(),
            series: vec![LineSeries {
                name: "hit ratio".to_owned(),
                points: at_end(|i| i.hit_ratio * 100.0),
            }],
        }),
        Chart::Line(LineChart {
            title: "Read latency over time".to_owned(),
            x_label: "seconds into the run (end of each interval)".to_owned(),
            y_label: "latency (µs)".to_owned(),
            series: vec![
                LineSeries {
                    name: "p50".to_owned(),
                    points: at_end(|i| i.p50_us),
                },
                LineSeries {
                    name: "p99".to_owned(),
                    points: at_end(|i| i.p99_us),
                },
            ],
        }),
    ];
    page.charts("Over time", &over_time);
    let latency = BarChart::new(
        "Latency of hits and misses",
        "latency (µs)",
        vec!["hit".to_owned(), "miss".to_owned()],
    )
    .series(BarSeries::new("p50", vec![s.hit_p50_us, s.miss_p50_us]))
    .series(BarSeries::new("p99", vec![s.hit_p99_us, s.miss_p99_us]));
    let reads = BarChart::new(
        "Where the reads were answered",
        "reads",
        vec![
            "hit".to_owned(),
            "loaded".to_owned(),
            "coalesced".to_owned(),
            "stale".to_owned(),
        ],
    )
    .series(BarSeries::new(
        "reads",
        [s.hits, s.loaded, s.coalesced, s.stale].map(|n| n as f64).to_vec(),
    ));
    page.charts("Whole run", &[Chart::Bar(latency), Chart::Bar(reads)]);
    page.json_tables("Summary (the --json output)", report);
    page
}

/// `name`, with the run's number when the scenario ran more than once.
fn label(name: &str, run: u32, runs: usize) -> String {
    if runs > 1 {
        format!("{name} #{run}")
    } else {
        name.to_owned()
    }
}

/// A series of a bar chart: its name, and its value for one result.
type Field<T> = (&'static str, fn(&T) -> f64);

/// One bar series per `(name, value)` field over the results.
fn bars<T>(title: &str, y_label: &str, categories: &[String], results: &[T], fields: &[Field<T>]) -> Chart {
    let mut chart = BarChart::new(title, y_label, categories.to_vec());
    for (name, value) in fields {
        chart = chart.series(BarSeries::new(*name, results.iter().map(value).collect()));
    }
    Chart::Bar(chart)
}

impl Charted for RaceResult {
    fn charts(results: &[Self]) -> Vec<Chart> {
        let runs = results.iter().map(|r| r.run).max().unwrap_or(1) as usize;
        let names: Vec<String> = results.iter().map(|r| label(&r.strategy, r.run, runs)).collect();
        let l1 = results.iter().any(|r| r.l1);
        let mut stale: Vec<Field<Self>> = vec![("stale entries left", |r| r.stale_entries as f64)];
        if l1 {
            stale.push(("stale L2 entries left", |r| r.stale_l2_entries as f64));
        }
        vec![
            bars(
                "Stale reads per strategy",
                "stale reads",
                &names,
                results,
                &[("stale reads", |r| r.stale_reads as f64)],
            ),
            bars("Stale entries left per strategy", "entries", &names, results, &stale),
            bars(
                "Hit ratio per strategy",
                "hit ratio (%)",
                &names,
                results,
                &[
                    ("hits", |r| r.hit_ratio * 100.0),
                    ("fresh hits", |r| r.fresh_hit_ratio * 100.0),
                ],
            ),
            bars(
                "Miss latency per strategy",
                "latency (ms)",
                &names,
                results,
                &[("p50", |r| r.miss_p50_ms), ("p99", |r| r.miss_p99_ms)],
            ),
        ]
    }
}

impl Charted for StampedeResult {
    fn charts(results: &[Self]) -> Vec<Chart> {
        let runs = results.iter().map(|r| r.run).max().unwrap_or(1) as usize;
        let names: Vec<String> = results.iter().map(|r| label(&r.mode, r.run, runs)).collect();
        vec![
            bars(
                "Stampede latency per mode",
                "latency (ms)",
                &names,
                results,
                &[("p50", |r| r.p50_ms), ("p99", |r| r.p99_ms), ("max", |r| r.max_ms)],
            ),
            bars(
                "Database queries per mode",
                "queries",
                &names,
                results,
                &[("queries", |r| r.db_queries as f64)],
            ),
        ]
    }
}

impl Charted for ExpiryResult {
    fn charts(results: &[Self]) -> Vec<Chart> {
        let names: Vec<String> = results.iter().map(|r| r.mode.clone()).collect();
        vec![
            bars(
                "Read latency per mode",
                "latency (ms)",
                &names,
                results,
                &[
                    ("p50", |r| r.p50_ms),
                    ("p99", |r| r.p99_ms),
                    ("p99.9", |r| r.p999_ms),
                    ("max", |r| r.max_ms),
                ],
            ),
            bars(
                "Database queries per key per TTL",
                "queries",
                &names,
                results,
                &[("queries", |r| r.queries_per_key_per_ttl)],
            ),
            bars(
                "Hit ratio per mode",
                "hit ratio (%)",
                &names,
                results,
                &[("hits", |r| r.hit_ratio * 100.0)],
            ),
        ]
    }
}

impl Charted for OutageResult {
    fn charts(results: &[Self]) -> Vec<Chart> {
        let names: Vec<String> = results.iter().map(|r| r.mode.clone()).collect();
        vec![
            bars(
                "Reads answered per mode",
                "answered (%)",
                &names,
                results,
                &[
                    ("whole run", |r| r.answered_ratio * 100.0),
                    ("during the outage", |r| r.outage_answered_ratio * 100.0),
                ],
            ),
            bars(
                "Errors and stale answers per mode",
                "reads",
                &names,
                results,
                &[
                    ("errors", |r| r.errors as f64),
                    ("stale served", |r| r.stale_served as f64),
                ],
            ),
        ]
    }
}

impl Charted for ChaosResult {
    fn charts(results: &[Self]) -> Vec<Chart> {
        let names: Vec<String> = results.iter().map(|r| format!("run {}", r.run)).collect();
        let mut faults = BarChart::new(
            "Faults injected by kind",
            "faults",
            FAULT_KINDS.iter().map(|(kind, _)| (*kind).to_owned()).collect(),
        );
        for (name, result) in names.iter().zip(results) {
            let counts = FAULT_KINDS
                .iter()
                .map(|(_, count)| count(&result.faults_by_kind) as f64)
                .collect();
            faults = faults.series(BarSeries::new(name.clone(), counts));
        }
        vec![
            bars(
                "History checker findings per run",
                "findings",
                &names,
                results,
                &[
                    ("stale reads", |r| r.stale_reads as f64),
                    ("stale entries", |r| r.stale_entries as f64),
                    ("load overlaps", |r| r.load_overlaps as f64),
                    ("liveness", |r| r.liveness as f64),
                ],
            ),
            bars(
                "Operations and faults per run",
                "count",
                &names,
                results,
                &[
                    ("operations", |r| r.operations as f64),
                    ("faults", |r| r.faults as f64),
                    ("database reads", |r| r.db_reads as f64),
                ],
            ),
            Chart::Bar(faults),
        ]
    }
}

/// A kind of fault: its name in the JSON, and its count.
type FaultKind = (&'static str, fn(&FaultCounts) -> u64);

/// The kinds of faults charted, as named in the JSON.
const FAULT_KINDS: [FaultKind; 12] = [
    ("error_before", |c| c.error_before),
    ("error_after", |c| c.error_after),
    ("delay", |c| c.delay),
    ("hang_before", |c| c.hang_before),
    ("hang_after", |c| c.hang_after),
    ("restart", |c| c.restart),
    ("bus_error_before", |c| c.bus_error_before),
    ("bus_error_after", |c| c.bus_error_after),
    ("bus_delay", |c| c.bus_delay),
    ("bus_drop", |c| c.bus_drop),
    ("bus_subscribe_error", |c| c.bus_subscribe_error),
    ("db_error", |c| c.db_error),
];

impl Charted for PatternResult {
    fn charts(results: &[Self]) -> Vec<Chart> {
        let names: Vec<String> = results.iter().map(|r| r.pattern.clone()).collect();
        vec![
            bars(
                "Stale reads and lost writes per pattern",
                "count",
                &names,
                results,
                &[
                    ("stale reads", |r| r.stale_reads as f64),
                    ("lost writes", |r| r.lost_writes as f64),
                ],
            ),
            bars(
                "Latency per pattern",
                "latency (µs)",
                &names,
                results,
                &[
                    ("read p50", |r| r.read_p50_us),
                    ("write p50", |r| r.write_p50_us),
                    ("write p99", |r| r.write_p99_us),
                ],
            ),
            bars(
                "Database load per pattern",
                "statements",
                &names,
                results,
                &[
                    ("database reads", |r| r.db_reads as f64),
                    ("database writes", |r| r.db_writes as f64),
                ],
            ),
        ]
    }
}
