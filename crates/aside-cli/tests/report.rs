//! `--report FILE.html` drawn by a real browser: `aside demo` (the main
//! workload and the race scenario) and `aside bench` write their pages,
//! headless Chromium (Debian's `chromium`) renders each one, and the test
//! checks that the charts are there (the DOM Chromium built holds the
//! `<svg>` charts with the expected bars and lines, and the labels) and
//! drawn (the screenshot holds the series' colours, in chart-sized amounts).

use std::path::{Path, PathBuf};
use std::process::Command;

use aside_testkit::RedisServer;
use serde_json::Value;

/// The bound on each store operation of the runs (`--op-timeout-ms`): they
/// check counts (loads, hits, store errors), which a call past the 250 ms
/// default on a loaded machine turns into a miss or an error.
const PATIENT_MS: &str = "60000";

/// The first series' colour (`#4269d0`) and the reference line's (`#c00`).
const FIRST_SERIES: [u8; 3] = [0x42, 0x69, 0xd0];
const REFERENCE: [u8; 3] = [0xcc, 0x00, 0x00];
/// A page wide enough for two charts side by side and tall enough for all.
const WINDOW: &str = "--window-size=1100,2600";

/// Runs `aside` with `args`, checks it succeeded and returns its stdout as JSON.
fn aside_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_aside"))
        .env("ASIDE_OP_TIMEOUT_MS", PATIENT_MS)
        .args(args)
        .output()
        .expect("the aside binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "aside {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// Debian's `chromium`, or a failure saying how to install it.
fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed, and the --report tests render their pages in it: \
             install it with `sudo apt-get install -y chromium` (scripts/test does so when run as root)"
        )
    })
}

/// What Chromium made of a page: its DOM after parsing, and a screenshot.
struct Rendered {
    dom: String,
    pixels: Vec<[u8; 3]>,
}

impl Rendered {
    /// Pixels of exactly `color`.
    fn count(&self, color: [u8; 3]) -> usize {
        self.pixels.iter().filter(|&&p| p == color).count()
    }
}

/// Renders `page` in headless Chromium: `--dump-dom`, then `--screenshot`
/// (kept beside the page as `page.png`, to be looked at).
fn render(page: &Path) -> Rendered {
    let chromium = chromium();
    let profile = tempfile::tempdir().expect("a profile directory");
    let url = format!("file://{}", page.display());
    let browser = |extra: &[&str]| {
        let out = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                WINDOW,
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "chromium {extra:?} failed: {stderr}");
        out.stdout
    };
    let dom = String::from_utf8(browser(&["--dump-dom"])).expect("the DOM is UTF-8");
    let png = page.with_extension("png");
    browser(&[&format!("--screenshot={}", png.display())]);
    Rendered {
        dom,
        pixels: decode(&png),
    }
}

/// The RGB pixels of a PNG screenshot.
fn decode(png: &Path) -> Vec<[u8; 3]> {
    let file = std::io::BufReader::new(std::fs::File::open(png).expect("chromium wrote the screenshot"));
    let mut reader = png::Decoder::new(file).read_info().expect("the screenshot is a PNG");
    let mut buffer = vec![0; reader.output_buffer_size().expect("a screenshot of a sane size")];
    let frame = reader.next_frame(&mut buffer).expect("the screenshot decodes");
    assert_eq!(frame.bit_depth, png::BitDepth::Eight, "{frame:?}");
    let channels = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("a screenshot in {other:?}"),
    };
    buffer[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// Checks the page is self-contained and its charts are in the DOM, and
/// returns how many bars it has.
fn check_dom(rendered: &Rendered, charts: usize, labels: &[&str]) -> usize {
    let dom = &rendered.dom;
    for outside in ["<script", "<link", "src=\"http", "href=\"http", "url("] {
        assert!(!dom.contains(outside), "the page loads {outside}: not self-contained");
    }
    assert_eq!(dom.matches("<svg").count(), charts, "charts in the DOM");
    for label in labels {
        assert!(dom.contains(label), "{label:?} missing from the page");
    }
    dom.matches("class=\"bar\"").count()
}

/// Checks the screenshot is not blank: past the legends' swatches (12 by
/// 12 pixels, one per chart), the first series' colour covers at least
/// 2,000 more pixels: its bars or its line.
fn check_drawn(rendered: &Rendered, charts: usize) {
    let first = rendered.count(FIRST_SERIES);
    let swatches = charts * 12 * 12;
    assert!(
        first >= swatches + 2_000,
        "the screenshot shows {first} pixels of the first series' colour, {swatches} of them legend: \
         the charts are not drawn"
    );
}

fn report_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn race_report_charts_stale_reads_per_strategy() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let page = report_path(dir.path(), "race.html");
    let json = aside_json(&[
        "demo",
        "--scenario",
        "race",
        "--duration",
        "0.5",
        "--json",
        "--report",
        page.to_str().expect("a UTF-8 path"),
    ]);
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "{json}");

    let rendered = render(&page);
    let labels = [
        "Stale reads per strategy",
        "Stale entries left per strategy",
        "Hit ratio per strategy",
        "Miss latency per strategy",
        "delete",
        "double-delete",
        "versioned",
        "lease",
        "results (4 rows)",
    ];
    let bars = check_dom(&rendered, 4, &labels);
    // Per strategy: stale reads, stale entries, hits and fresh hits, p50
    // and p99 of the miss latency.
    assert_eq!(bars, 4 * 6, "bars in the race page");
    check_drawn(&rendered, 4);
}

#[test]
fn demo_report_charts_hit_ratio_and_latency_over_time() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let page = report_path(dir.path(), "demo.html");
    let summary = aside_json(&[
        "demo",
        "--duration",
        "1",
        "--users",
        "500",
        "--concurrency",
        "4",
        "--json",
        "--report",
        page.to_str().expect("a UTF-8 path"),
    ]);
    let timeline = summary["timeline"].as_array().expect("the summary has a timeline");
    assert!(!timeline.is_empty(), "{summary}");
    let reads: u64 = timeline.iter().map(|i| i["reads"].as_u64().expect("reads")).sum();
    assert_eq!(
        Some(reads),
        summary["requests"].as_u64(),
        "every read is in one interval"
    );

    let rendered = render(&page);
    let labels = [
        "Hit ratio over time",
        "Read latency over time",
        "Latency of hits and misses",
    ];
    let bars = check_dom(&rendered, 4, &labels);
    assert_eq!(bars, 4 + 4, "hit and miss p50 and p99; four sources of answers");
    // The hit ratio's line, and the latency's p50 and p99.
    assert_eq!(rendered.dom.matches("class=\"line\"").count(), 3);
    check_drawn(&rendered, 4);
}

#[test]
fn bench_report_charts_ratios_against_the_floors() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let page = report_path(dir.path(), "bench.html");
    let json = aside_json(&[
        "bench",
        "--redis",
        &server.url(),
        "--ops",
        "200",
        "--keys",
        "20",
        "--repeat",
        "2",
        "--concurrency",
        "1,4",
        "--no-redis-benchmark",
        "--json",
        "--report",
        page.to_str().expect("a UTF-8 path"),
    ]);
    let results = json["results"].as_array().expect("results");
    for row in results {
        let (low, mid, high) = (
            row["ratio_to_floor_min"].as_f64().expect("ratio_to_floor_min"),
            row["ratio_to_floor"].as_f64().expect("ratio_to_floor"),
            row["ratio_to_floor_max"].as_f64().expect("ratio_to_floor_max"),
        );
        assert!(low > 0.0 && low <= high, "{row}");
        if row["subject"] == row["floor"] {
            assert_eq!((low, mid, high), (1.0, 1.0, 1.0), "a floor is its own floor: {row}");
        }
    }
    let not_floors = results.iter().filter(|r| r["subject"] != r["floor"]).count();

    let rendered = render(&page);
    let labels = [
        "Throughput ÷ redis-rs-get (redis)",
        "Throughput ÷ moka-get (in-process)",
        "floor: redis-rs-get",
        "floor: moka-get",
        "aside-redis",
        "aside-l1",
    ];
    // Per tier: the ratios to the floor, and the throughputs.
    let bars = check_dom(&rendered, 4, &labels);
    assert_eq!(
        bars,
        results.len() + not_floors,
        "a throughput bar per row, a ratio bar per non-floor row"
    );
    assert_eq!(
        rendered.dom.matches("class=\"spread\"").count(),
        bars,
        "a whisker per bar"
    );
    assert_eq!(
        rendered.dom.matches("class=\"reference\"").count(),
        2,
        "one floor line per tier"
    );
    check_drawn(&rendered, 4);
    assert!(rendered.count(REFERENCE) > 100, "the floor lines are drawn");
}

/// Runs `aside demo --scenario NAME` with `args` and `--report`, renders
/// the page, and returns its JSON, what Chromium made of it and its bars.
fn scenario_page(dir: &Path, scenario: &str, args: &[&str], charts: usize) -> (Value, Rendered, usize) {
    let page = report_path(dir, &format!("{scenario}.html"));
    let mut all = vec!["demo", "--scenario", scenario, "--json", "--report"];
    all.push(page.to_str().expect("a UTF-8 path"));
    all.extend(args);
    let json = aside_json(&all);
    let rendered = render(&page);
    let bars = check_dom(&rendered, charts, &[&format!("aside demo --scenario {scenario}")]);
    check_drawn(&rendered, charts);
    (json, rendered, bars)
}

fn rows(json: &Value) -> usize {
    json["results"].as_array().expect("results").len()
}

#[test]
fn every_other_scenario_gets_its_charts() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir = dir.path();

    let (json, rendered, bars) = scenario_page(dir, "stampede", &["--clients", "20"], 2);
    assert_eq!(bars, rows(&json) * (3 + 1), "p50, p99, max and queries per mode");
    assert!(rendered.dom.contains("Stampede latency per mode"));

    let (json, _, bars) = scenario_page(dir, "expiry", &["--duration", "0.6", "--ttl", "0.2"], 3);
    assert_eq!(
        bars,
        rows(&json) * (4 + 1 + 1),
        "four latencies, queries and hit ratio per mode"
    );

    let outage = [
        "--duration",
        "0.6",
        "--outage-start-s",
        "0.2",
        "--outage-end-s",
        "0.4",
        "--ttl",
        "0.1",
    ];
    let (json, _, bars) = scenario_page(dir, "db-outage", &outage, 2);
    assert_eq!(
        bars,
        rows(&json) * (2 + 2),
        "answered ratios, errors and stale answers per mode"
    );

    let (json, rendered, bars) = scenario_page(dir, "patterns", &["--duration", "0.3"], 3);
    assert_eq!(
        bars,
        rows(&json) * (2 + 3 + 2),
        "per pattern: stale and lost, latencies, database load"
    );
    assert!(rendered.dom.contains("cache-aside"));

    let (json, rendered, bars) = scenario_page(dir, "chaos", &["--duration", "1", "--programs", "20"], 3);
    // Per run: four findings, three counts, and one bar per kind of fault.
    assert_eq!(bars, rows(&json) * (4 + 3 + 12));
    assert!(rendered.dom.contains("bus_subscribe_error"));
}
