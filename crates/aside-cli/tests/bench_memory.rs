//! End-to-end test of `aside bench --scenario memory`: every subject is
//! reported with positive bytes per entry, and the floor's ratio is 1. No
//! figure is asserted beyond that: memory is for the report.

use std::process::Command;

use serde_json::Value;

#[test]
fn reports_bytes_per_entry_of_every_subject_against_the_floor() {
    let out = Command::new(env!("CARGO_BIN_EXE_aside"))
        .args([
            "bench",
            "--scenario",
            "memory",
            "--entries",
            "20000",
            "--repeat",
            "1",
            "--json",
        ])
        .output()
        .expect("the aside binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report["bench"], "memory");
    let results = report["results"].as_array().expect("results");
    let subjects: Vec<&str> = results
        .iter()
        .map(|r| r["subject"].as_str().expect("subject"))
        .collect();
    assert_eq!(subjects, ["moka", "aside-memory", "aside-l1"]);
    for row in results {
        assert_eq!(row["entries"], 20_000, "{row}");
        for field in ["bytes_per_entry", "ratio_to_floor"] {
            let v = row[field].as_f64().unwrap_or_else(|| panic!("{field} in {row}"));
            assert!(v > 0.0, "{field} in {row}");
        }
    }
    assert_eq!(results[0]["ratio_to_floor"].as_f64(), Some(1.0));
}
