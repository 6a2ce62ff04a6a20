//! `--report FILE.html`: one self-contained HTML page of a run's charts and
//! of its JSON as tables.
//!
//! Owns the page (inline CSS, inline SVG, no script and no external
//! resource), HTML escaping, and turning a JSON report into tables. The
//! charts are drawn by [`chart`]; which charts a run gets is decided by
//! [`demo`] (the main workload and every scenario) and [`bench`].

pub mod bench;
pub mod chart;
pub mod demo;

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use self::chart::Chart;
use crate::error::{Context, Result};

/// The page's style sheet.
const STYLE: &str = "body{font-family:sans-serif;margin:24px auto;max-width:1060px;color:#222;padding:0 12px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}h3{font-size:15px}\
.charts{display:flex;flex-wrap:wrap;gap:16px}\
figure{margin:0;border:1px solid #ddd;border-radius:4px}\
table{border-collapse:collapse;font-size:13px;margin:8px 0}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;white-space:nowrap}\
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.scroll{overflow-x:auto}";

/// An HTML page under construction: a title, then sections in order.
#[derive(Debug, Clone)]
pub struct Page {
    title: String,
    body: String,
}

impl Page {
    /// An empty page with `title` as its `<title>` and `<h1>`.
    pub fn new(title: impl Into<String>) -> Self {
        Page {
            title: title.into(),
            body: String::new(),
        }
    }

    /// A paragraph of text.
    pub fn note(&mut self, text: &str) {
        let _ = write!(self.body, "<p>{}</p>", escape(text));
    }

    /// A heading, then the charts side by side (as wide as the page allows).
    pub fn charts(&mut self, heading: &str, charts: &[Chart]) {
        if charts.is_empty() {
            return;
        }
        let _ = write!(self.body, "<h2>{}</h2><div class=\"charts\">", escape(heading));
        for chart in charts {
            let _ = write!(self.body, "<figure>{}</figure>", chart.svg());
        }
        self.body.push_str("</div>");
    }

    /// `report` as tables: its scalar fields (nested objects flattened to
    /// `outer.inner`) in one two-column table, then each of its arrays of
    /// objects as a table of its own, one row per element. Fractional
    /// numbers are shown to 4 significant digits (`--json` has them all).
    pub fn json_tables(&mut self, heading: &str, report: &Value) {
        let _ = write!(self.body, "<h2>{}</h2>", escape(heading));
        let mut scalars = Vec::new();
        let mut arrays = Vec::new();
        match report {
            Value::Object(fields) => {
                for (key, value) in fields {
                    match value {
                        Value::Array(items) if items.iter().any(Value::is_object) => arrays.push((key, items)),
                        _ => flatten(key, value, &mut scalars),
                    }
                }
            }
            other => flatten("value", other, &mut scalars),
        }
        if !scalars.is_empty() {
            self.body.push_str("<table><tr><th>field</th><th>value</th></tr>");
            for (key, value) in &scalars {
                let _ = write!(self.body, "<tr><th>{}</th>{}</tr>", escape(key), cell(value));
            }
            self.body.push_str("</table>");
        }
        for (key, items) in arrays {
            self.array_table(key, items);
        }
    }

    /// One array of JSON objects as a table; the columns that name things
    /// (text in every row) first, the others after, each group in order of
    /// first appearance; a field an element lacks left empty.
    fn array_table(&mut self, key: &str, items: &[Value]) {
        let rows: Vec<Vec<(String, String)>> = items
            .iter()
            .map(|item| {
                let mut row = Vec::new();
                flatten("", item, &mut row);
                row
            })
            .collect();
        let mut columns: Vec<&str> = Vec::new();
        for (column, _) in rows.iter().flatten() {
            if !columns.contains(&column.as_str()) {
                columns.push(column);
            }
        }
        let names = |column: &str| {
            rows.iter().all(|row| {
                row.iter()
                    .find(|(c, _)| c == column)
                    .is_some_and(|(_, v)| !v.is_empty() && v.parse::<f64>().is_err() && v != "true" && v != "false")
            })
        };
        columns.sort_by_key(|column| !names(column));
        let _ = write!(
            self.body,
            "<h3>{} ({} rows)</h3><div class=\"scroll\"><table><tr>",
            escape(key),
            rows.len()
        );
        for column in &columns {
            let _ = write!(self.body, "<th>{}</th>", escape(column));
        }
        self.body.push_str("</tr>");
        for row in &rows {
            self.body.push_str("<tr>");
            for column in &columns {
                let value = row.iter().find(|(c, _)| c == column).map_or("", |(_, v)| v.as_str());
                self.body.push_str(&cell(value));
            }
            self.body.push_str("</tr>");
        }
        self.body.push_str("</table></div>");
    }

    /// The whole page.
    pub fn html(&self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>{}</body></html>\n",
            self.body,
            t = escape(&self.title),
        )
    }

    /// Writes the page to `path`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.html()).context(format!("cannot write the report {}", path.display()))
    }
}

/// `value`'s scalars as `(name, text)` pairs under `prefix`: objects
/// flattened with dots, arrays of scalars joined with commas, arrays of
/// objects counted.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                flatten(&join(key), value, out);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            out.push((prefix.to_owned(), format!("{} items", items.len())));
        }
        Value::Array(items) => {
            let texts: Vec<String> = items.iter().map(scalar).collect();
            out.push((prefix.to_owned(), texts.join(", ")));
        }
        scalar_value => out.push((prefix.to_owned(), scalar(scalar_value))),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Number(n) if n.is_f64() => n.as_f64().map_or_else(|| n.to_string(), significant),
        other => other.to_string(),
    }
}

/// `value` to 4 significant digits, trailing zeros dropped.
fn significant(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return value.to_string();
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = usize::try_from(3 - magnitude).unwrap_or(0).min(12);
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A table cell; numbers aligned right.
fn cell(text: &str) -> String {
    let class = if text.parse::<f64>().is_ok() {
        " class=\"num\""
    } else {
        ""
    };
    format!("<td{class}>{}</td>", escape(text))
}

/// `text` safe in HTML text and in a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn fractions_keep_four_significant_digits() {
        assert_eq!(significant(0.067946824), "0.06795");
        assert_eq!(significant(21.747879), "21.75");
        assert_eq!(significant(12873.158), "12873");
        assert_eq!(significant(0.5), "0.5");
        assert_eq!(significant(0.0), "0");
    }

    #[test]
    fn json_becomes_tables() {
        let report = serde_json::json!({
            "scenario": "race",
            "store": "<memory>",
            "results": [
                {"strategy": "lease", "stale_reads": 0, "nested": {"a": 1}, "seeds": [1, 2]},
                {"strategy": "delete", "stale_reads": 7, "extra": null}
            ]
        });
        let mut page = Page::new("t & u");
        page.json_tables("JSON", &report);
        let html = page.html();
        assert!(html.contains("<title>t &amp; u</title>"), "{html}");
        assert!(html.contains("&lt;memory&gt;"), "{html}");
        assert!(html.contains("<h3>results (2 rows)</h3>"), "{html}");
        for column in ["strategy", "stale_reads", "nested.a", "seeds", "extra"] {
            assert!(html.contains(&format!("<th>{column}</th>")), "{column}: {html}");
        }
        assert!(html.contains("<td>1, 2</td>"), "{html}");
        assert!(
            html.find("<th>strategy</th>") < html.find("<th>nested.a</th>"),
            "names first: {html}"
        );
        assert!(html.contains("<td class=\"num\">7</td>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
    }
}
