//! Charts as inline SVG: a bar chart (grouped bars, with an optional spread
//! per bar and an optional reference line) and a line chart, each with a
//! title, axes, ticks, axis labels and a legend.
//!
//! Owns the geometry and the SVG text only; what is charted is decided by
//! the report pages. Values are expected to be finite and not negative (the
//! y axis starts at 0); a value that is not finite is drawn as 0. Every text
//! is escaped. Bars carry `class="bar"` and lines `class="line"`, so a
//! test can count them in the rendered page.

use std::fmt::Write as _;

use super::escape;

/// Width of every chart, in SVG units (pixels at 100% zoom): two side by
/// side on a page 1,040 wide.
const WIDTH: f64 = 500.0;
/// Height of every chart.
const HEIGHT: f64 = 330.0;
/// Room left of the plot for the y ticks and the y label.
const LEFT: f64 = 78.0;
/// Room right of the plot.
const RIGHT: f64 = 20.0;
/// Room above the plot for the title, before the legend's rows.
const TOP: f64 = 34.0;
/// Height of one row of the legend.
const LEGEND_ROW: f64 = 17.0;
/// Room below the plot for the x ticks or categories and the x label.
const BOTTOM: f64 = 62.0;
/// The reference line's colour.
const REFERENCE_COLOR: &str = "#cc0000";
/// The series' colours, in order (cycled past the last).
const PALETTE: [&str; 8] = [
    "#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5",
];

/// A chart of either kind.
#[derive(Debug, Clone)]
pub enum Chart {
    /// Grouped bars.
    Bar(BarChart),
    /// Lines over a numeric x axis.
    Line(LineChart),
}

impl Chart {
    /// The chart as one `<svg>` element.
    pub fn svg(&self) -> String {
        match self {
            Chart::Bar(chart) => chart.svg(),
            Chart::Line(chart) => chart.svg(),
        }
    }
}

/// One series of a bar chart: one value per category.
#[derive(Debug, Clone)]
pub struct BarSeries {
    /// Its name in the legend.
    pub name: String,
    /// One value per category.
    pub values: Vec<f64>,
    /// Per category, the lowest and highest value the bar's value summarizes
    /// (drawn as a whisker), if known.
    pub spread: Option<Vec<(f64, f64)>>,
}

impl BarSeries {
    /// A series without spread.
    pub fn new(name: impl Into<String>, values: Vec<f64>) -> Self {
        BarSeries {
            name: name.into(),
            values,
            spread: None,
        }
    }
}

/// Bars grouped by category: in each category, one bar per series.
#[derive(Debug, Clone)]
pub struct BarChart {
    /// Above the chart.
    pub title: String,
    /// Along the y axis (the unit).
    pub y_label: String,
    /// Below each group of bars.
    pub categories: Vec<String>,
    /// The bars.
    pub series: Vec<BarSeries>,
    /// A horizontal line across the plot at this value, with its label.
    pub reference: Option<(f64, String)>,
}

impl BarChart {
    /// A chart of `series` over `categories`, with no reference line.
    pub fn new(title: impl Into<String>, y_label: impl Into<String>, categories: Vec<String>) -> Self {
        BarChart {
            title: title.into(),
            y_label: y_label.into(),
            categories,
            series: Vec::new(),
            reference: None,
        }
    }

    /// Adds a series (builder style).
    pub fn series(mut self, series: BarSeries) -> Self {
        self.series.push(series);
        self
    }

    fn svg(&self) -> String {
        let mut top = 0.0_f64;
        for series in &self.series {
            top = top.max(series.values.iter().copied().map(finite).fold(0.0, f64::max));
            for &(_, high) in series.spread.iter().flatten() {
                top = top.max(finite(high));
            }
        }
        if let Some((value, _)) = &self.reference {
            top = top.max(finite(*value));
        }
        let axis = Axis::new(0.0, top);
        let mut entries: Vec<(&str, Marker)> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), Marker::Swatch(color(i))))
            .collect();
        if let Some((_, label)) = &self.reference {
            entries.push((label, Marker::Dashed(REFERENCE_COLOR)));
        }
        let legend = Legend::new(&entries);
        let plot = Plot::new(&legend);
        let mut svg = plot.open(&self.title);
        plot.y_axis(&mut svg, &axis, &self.y_label);
        legend.draw(&mut svg);

        let groups = self.categories.len().max(1) as f64;
        let group_width = plot.width() / groups;
        let bars = self.series.len().max(1) as f64;
        let bar_width = (group_width * 0.8 / bars).min(60.0);
        let label_values = bar_width >= 22.0;
        // Labels wider than their group are slanted so that they do not
        // run into each other (about 7 units per character).
        let crowded = self
            .categories
            .iter()
            .any(|c| 7.0 * c.chars().count() as f64 > group_width);
        for (c, category) in self.categories.iter().enumerate() {
            let group_left = plot.left + group_width * c as f64;
            let bars_left = group_left + (group_width - bar_width * bars) / 2.0;
            for (s, series) in self.series.iter().enumerate() {
                let Some(&value) = series.values.get(c) else {
                    continue;
                };
                let value = finite(value);
                let x = bars_left + bar_width * s as f64;
                let y = plot.y(&axis, value);
                let _ = write!(
                    svg,
                    r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{color}"><title>{name}, {category}: {v}</title></rect>"#,
                    w = (bar_width - 2.0).max(1.0),
                    h = (plot.bottom() - y).max(0.0),
                    color = color(s),
                    name = escape(&series.name),
                    category = escape(category),
                    v = format_value(value),
                );
                let middle = x + (bar_width - 2.0) / 2.0;
                let mut label_y = y;
                if let Some(&(low, high)) = series.spread.as_ref().and_then(|s| s.get(c)) {
                    let (y_low, y_high) = (plot.y(&axis, finite(low)), plot.y(&axis, finite(high)));
                    let _ = write!(
                        svg,
                        r##"<path class="spread" d="M{middle:.1},{y_low:.1}V{y_high:.1}M{a:.1},{y_low:.1}H{b:.1}M{a:.1},{y_high:.1}H{b:.1}" stroke="#222" fill="none"/>"##,
                        a = middle - 4.0,
                        b = middle + 4.0,
                    );
                    label_y = label_y.min(y_high);
                }
                if label_values {
                    let _ = write!(
                        svg,
                        r#"<text class="value" x="{middle:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                        label_y - 3.0,
                        escape(&format_value(value)),
                    );
                }
            }
            let (x, y) = (group_left + group_width / 2.0, plot.bottom() + 18.0);
            if crowded {
                let _ = write!(
                    svg,
                    r#"<text class="category" x="{x:.1}" y="{y:.1}" transform="rotate(-25 {x:.1} {y:.1})" text-anchor="end" font-size="11">{}</text>"#,
                    escape(category),
                );
            } else {
                let _ = write!(
                    svg,
                    r#"<text class="category" x="{x:.1}" y="{y:.1}" text-anchor="middle" font-size="12">{}</text>"#,
                    escape(category),
                );
            }
        }
        if let Some((value, _)) = &self.reference {
            // On a pixel's middle, so that the line is crisp.
            let y = plot.y(&axis, finite(*value)).round() + 0.5;
            let _ = write!(
                svg,
                r#"<line class="reference" x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{REFERENCE_COLOR}" stroke-dasharray="6 4"/>"#,
                plot.left,
                plot.right(),
            );
        }
        plot.frame(&mut svg);
        svg.push_str("</svg>");
        svg
    }
}

/// One line of a line chart: its points, in x order.
#[derive(Debug, Clone)]
pub struct LineSeries {
    /// Its name in the legend.
    pub name: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
}

/// Lines over a numeric x axis.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Above the chart.
    pub title: String,
    /// Below the x axis.
    pub x_label: String,
    /// Along the y axis.
    pub y_label: String,
    /// The lines.
    pub series: Vec<LineSeries>,
}

impl LineChart {
    fn svg(&self) -> String {
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let x_top = points().map(|p| finite(p.0)).fold(0.0, f64::max);
        let y_top = points().map(|p| finite(p.1)).fold(0.0, f64::max);
        let (x_axis, y_axis) = (Axis::new(0.0, x_top), Axis::new(0.0, y_top));
        let entries: Vec<(&str, Marker)> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), Marker::Swatch(color(i))))
            .collect();
        let legend = Legend::new(&entries);
        let plot = Plot::new(&legend);
        let mut svg = plot.open(&self.title);
        plot.y_axis(&mut svg, &y_axis, &self.y_label);
        for tick in x_axis.ticks() {
            let x = plot.x(&x_axis, tick);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{b:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"##,
                plot.bottom() + 4.0,
                plot.bottom() + 17.0,
                escape(&format_value(tick)),
                b = plot.bottom(),
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12">{}</text>"#,
            plot.left + plot.width() / 2.0,
            HEIGHT - 14.0,
            escape(&self.x_label),
        );
        legend.draw(&mut svg);
        for (s, series) in self.series.iter().enumerate() {
            let mut d = String::new();
            for (i, &(x, y)) in series.points.iter().enumerate() {
                let (x, y) = (plot.x(&x_axis, finite(x)), plot.y(&y_axis, finite(y)));
                let _ = write!(d, "{}{x:.1},{y:.1}", if i == 0 { 'M' } else { 'L' });
            }
            let _ = write!(
                svg,
                r#"<path class="line" d="{d}" fill="none" stroke="{}" stroke-width="2"><title>{}</title></path>"#,
                color(s),
                escape(&series.name),
            );
            // A lone point draws no line: a dot shows it.
            if let [(x, y)] = series.points[..] {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    plot.x(&x_axis, finite(x)),
                    plot.y(&y_axis, finite(y)),
                    color(s),
                );
            }
        }
        plot.frame(&mut svg);
        svg.push_str("</svg>");
        svg
    }
}

/// A value axis from `low` to a round number at or above `high`, with
/// round ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    low: f64,
    high: f64,
    step: f64,
}

impl Axis {
    /// About five ticks of 1, 2 or 5 times a power of ten.
    fn new(low: f64, high: f64) -> Self {
        let span = if high > low { high - low } else { 1.0 };
        let rough = span / 5.0;
        let power = 10f64.powf(rough.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * power)
            .find(|&s| s >= rough)
            .unwrap_or(10.0 * power);
        Axis {
            low,
            high: low + (span / step).ceil() * step,
            step,
        }
    }

    fn ticks(&self) -> Vec<f64> {
        let count = ((self.high - self.low) / self.step).round() as usize;
        (0..=count).map(|i| self.low + self.step * i as f64).collect()
    }
}

/// The plot area inside a chart.
struct Plot {
    left: f64,
    top: f64,
}

impl Plot {
    /// The plot under the title and `legend`.
    fn new(legend: &Legend) -> Self {
        Plot {
            left: LEFT,
            top: TOP + LEGEND_ROW * legend.rows as f64 + 10.0,
        }
    }

    fn width(&self) -> f64 {
        WIDTH - LEFT - RIGHT
    }

    fn height(&self) -> f64 {
        HEIGHT - self.top - BOTTOM
    }

    fn right(&self) -> f64 {
        self.left + self.width()
    }

    fn bottom(&self) -> f64 {
        self.top + self.height()
    }

    fn x(&self, axis: &Axis, value: f64) -> f64 {
        self.left + (value - axis.low) / (axis.high - axis.low) * self.width()
    }

    fn y(&self, axis: &Axis, value: f64) -> f64 {
        self.bottom() - (value - axis.low) / (axis.high - axis.low) * self.height()
    }

    /// The `<svg>` opening, a white background and the title.
    fn open(&self, title: &str) -> String {
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}" font-family="sans-serif"><rect width="100%" height="100%" fill="#fff"/><text class="title" x="{x}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{t}</text>"##,
            x = WIDTH / 2.0,
            t = escape(title),
        )
    }

    /// Grid lines, ticks and labels of the y axis, and its label.
    fn y_axis(&self, svg: &mut String, axis: &Axis, label: &str) {
        for tick in axis.ticks() {
            let y = self.y(axis, tick);
            let _ = write!(
                svg,
                r##"<line x1="{l:.1}" x2="{r:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
                self.left - 6.0,
                y + 4.0,
                escape(&format_value(tick)),
                l = self.left,
                r = self.right(),
            );
        }
        let (x, y) = (16.0, self.top + self.height() / 2.0);
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{y:.1}" transform="rotate(-90 {x} {y:.1})" text-anchor="middle" font-size="12">{}</text>"#,
            escape(label),
        );
    }

    /// The x and y axis lines, drawn last so that bars do not cover them.
    fn frame(&self, svg: &mut String) {
        let _ = write!(
            svg,
            r##"<path class="axis" d="M{l:.1},{t:.1}V{b:.1}H{r:.1}" fill="none" stroke="#333"/>"##,
            l = self.left,
            t = self.top,
            b = self.bottom(),
            r = self.right(),
        );
    }
}

/// How a legend entry is marked.
#[derive(Debug, Clone, Copy)]
enum Marker {
    /// A filled square (a series).
    Swatch(&'static str),
    /// A dashed line (the reference line).
    Dashed(&'static str),
}

/// The legend under the title: one marker and name per entry, in rows as
/// wide as the chart.
struct Legend {
    /// `(x, row, name, marker)`.
    entries: Vec<(f64, usize, String, Marker)>,
    rows: usize,
}

impl Legend {
    fn new(entries: &[(&str, Marker)]) -> Self {
        let mut placed = Vec::new();
        let (mut x, mut row) = (LEFT, 0);
        for &(name, marker) in entries {
            // About 7 units per character at this size.
            let width = 16.0 + 7.0 * name.chars().count() as f64 + 14.0;
            if x > LEFT && x + width > WIDTH - RIGHT {
                (x, row) = (LEFT, row + 1);
            }
            placed.push((x, row, name.to_owned(), marker));
            x += width;
        }
        Legend {
            rows: if placed.is_empty() { 0 } else { row + 1 },
            entries: placed,
        }
    }

    fn draw(&self, svg: &mut String) {
        for (x, row, name, marker) in &self.entries {
            let top = TOP + LEGEND_ROW * *row as f64;
            let _ = match marker {
                Marker::Swatch(fill) => write!(
                    svg,
                    r#"<rect class="swatch" x="{x:.1}" y="{top:.1}" width="12" height="12" fill="{fill}"/>"#,
                ),
                Marker::Dashed(stroke) => write!(
                    svg,
                    r#"<line x1="{x:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{stroke}" stroke-width="2" stroke-dasharray="4 2"/>"#,
                    x + 12.0,
                    y = top + 6.0,
                ),
            };
            let _ = write!(
                svg,
                r#"<text class="legend" x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
                x + 16.0,
                top + 10.0,
                escape(name),
            );
        }
    }
}

fn color(series: usize) -> &'static str {
    PALETTE[series % PALETTE.len()]
}

/// A value that is not finite counts as 0.
fn finite(value: f64) -> f64 {
    if value.is_finite() { value } else { 0.0 }
}

/// A tick or bar value: integers with thousands separators, else 4
/// significant digits.
fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        let sign = if value < 0.0 { "-" } else { "" };
        format!("{sign}{}", crate::table::count(value.abs() as u64))
    } else {
        super::significant(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(Axis::new(0.0, 97.0).ticks(), [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let empty = Axis::new(0.0, 0.0);
        assert_eq!((empty.step, empty.high, empty.ticks().len()), (0.2, 1.0, 6));
        let axis = Axis::new(0.0, 1234.0);
        assert_eq!((axis.step, axis.high), (500.0, 1500.0));
    }

    #[test]
    fn values_read_well() {
        assert_eq!(format_value(12345.0), "12,345");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1.5), "1.5");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(123.45), "123.5");
        assert_eq!(format_value(0.6000000000000001), "0.6");
    }

    #[test]
    fn a_bar_chart_draws_one_bar_per_value_and_escapes_its_text() {
        let chart = BarChart::new("a <b> & c", "ms", vec!["x\"1".to_owned(), "y".to_owned()])
            .series(BarSeries::new("p50", vec![1.0, 2.0]))
            .series(BarSeries {
                name: "p99".to_owned(),
                values: vec![3.0, f64::NAN],
                spread: Some(vec![(2.0, 4.0), (0.0, 0.0)]),
            });
        let svg = Chart::Bar(BarChart {
            reference: Some((1.0, "floor".to_owned())),
            ..chart
        })
        .svg();
        assert_eq!(svg.matches(r#"class="bar""#).count(), 4, "{svg}");
        assert_eq!(svg.matches(r#"class="spread""#).count(), 2, "{svg}");
        assert_eq!(svg.matches(r#"class="reference""#).count(), 1, "{svg}");
        assert!(svg.contains("a &lt;b&gt; &amp; c"), "{svg}");
        assert!(svg.contains("x&quot;1"), "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn a_line_chart_draws_one_path_per_series() {
        let chart = LineChart {
            title: "hit ratio".to_owned(),
            x_label: "s".to_owned(),
            y_label: "%".to_owned(),
            series: vec![
                LineSeries {
                    name: "p50".to_owned(),
                    points: vec![(0.25, 1.0), (0.5, 2.0), (0.75, 1.5)],
                },
                LineSeries {
                    name: "p99".to_owned(),
                    points: vec![(0.25, 9.0)],
                },
            ],
        };
        let svg = Chart::Line(chart).svg();
        assert_eq!(svg.matches(r#"class="line""#).count(), 2, "{svg}");
        assert!(svg.contains(r#"d="M"#), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "a lone point is a dot: {svg}");
    }
}
