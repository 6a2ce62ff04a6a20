//! The page of `aside bench --report`: per tier, each subject's throughput
//! as a ratio to its floor's at each concurrency (median over rounds, with
//! the lowest and highest round's ratio), and its throughput, then the
//! bench's JSON as tables.

use serde_json::Value;

use super::Page;
use super::chart::{BarChart, BarSeries, Chart};
use crate::bench::BenchResult;

/// The bench's page; `report` is its `--json` output.
pub fn page(results: &[BenchResult], report: &Value) -> Page {
    let mut page = Page::new("aside bench");
    page.note(
        "Bars are medians over rounds; whiskers span the lowest and the highest round. \
         A ratio compares a subject's throughput with its floor's in the same round: \
         1.0 (the dashed line) is as fast as the floor.",
    );
    let mut charts = Vec::new();
    for tier in tiers(results) {
        let rows: Vec<&BenchResult> = results.iter().filter(|r| r.tier == tier).collect();
        charts.extend(ratio_chart(tier, &rows));
        charts.push(throughput_chart(tier, &rows));
    }
    page.charts("Against the floors", &charts);
    page.json_tables("Results (the --json output)", report);
    page
}

/// The tiers in order of first appearance.
fn tiers(results: &[BenchResult]) -> Vec<&'static str> {
    let mut tiers = Vec::new();
    for result in results {
        if !tiers.contains(&result.tier) {
            tiers.push(result.tier);
        }
    }
    tiers
}

/// Distinct values of `key` over `rows`, in order of first appearance.
fn distinct<K: PartialEq + Copy>(rows: &[&BenchResult], key: fn(&BenchResult) -> K) -> Vec<K> {
    let mut values = Vec::new();
    for row in rows {
        let value = key(row);
        if !values.contains(&value) {
            values.push(value);
        }
    }
    values
}

fn concurrency_labels(concurrencies: &[usize]) -> Vec<String> {
    concurrencies.iter().map(|c| format!("{c} task(s)")).collect()
}

/// The tier's subjects other than the floor, as ratios to it; none when the
/// tier has only its floor.
fn ratio_chart(tier: &str, rows: &[&BenchResult]) -> Option<Chart> {
    let concurrencies = distinct(rows, |r| r.concurrency);
    let floor = rows.first()?.floor;
    let mut chart = BarChart::new(
        format!("Throughput ÷ {floor} ({tier})"),
        "ratio to the floor",
        concurrency_labels(&concurrencies),
    );
    chart.reference = Some((1.0, format!("floor: {floor}")));
    for subject in distinct(rows, |r| r.subject) {
        if subject != floor {
            chart = chart.series(subject_series(rows, &concurrencies, subject, |r| {
                (r.ratio_to_floor, r.ratio_to_floor_min, r.ratio_to_floor_max)
            }));
        }
    }
    if chart.series.is_empty() {
        None
    } else {
        Some(Chart::Bar(chart))
    }
}

/// Every subject of the tier, its floor included, in reads per second.
fn throughput_chart(tier: &str, rows: &[&BenchResult]) -> Chart {
    let concurrencies = distinct(rows, |r| r.concurrency);
    let mut chart = BarChart::new(
        format!("Throughput ({tier})"),
        "reads per second",
        concurrency_labels(&concurrencies),
    );
    for subject in distinct(rows, |r| r.subject) {
        chart = chart.series(subject_series(rows, &concurrencies, subject, |r| {
            (r.ops_per_sec, r.ops_per_sec_min, r.ops_per_sec_max)
        }));
    }
    Chart::Bar(chart)
}

/// One subject's bars, one per concurrency: `figure` gives a row's median,
/// lowest and highest; a concurrency the subject has no row for gets 0.
fn subject_series(
    rows: &[&BenchResult],
    concurrencies: &[usize],
    subject: &str,
    figure: fn(&BenchResult) -> (f64, f64, f64),
) -> BarSeries {
    let figures: Vec<(f64, f64, f64)> = concurrencies
        .iter()
        .map(|&c| {
            rows.iter()
                .find(|r| r.subject == subject && r.concurrency == c)
                .map_or((0.0, 0.0, 0.0), |r| figure(r))
        })
        .collect();
    BarSeries {
        name: subject.to_owned(),
        values: figures.iter().map(|f| f.0).collect(),
        spread: Some(figures.iter().map(|f| (f.1, f.2)).collect()),
    }
}
