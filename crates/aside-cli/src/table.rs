//! Plain-text tables and numbers for people: the column layout every
//! scenario's table uses, and thousands separators.
//!
//! Owns formatting only; what goes in a table is its owner's (each
//! scenario renders its own rows, the workload report its own lines).

/// Renders one row of cells per item under headers, each column as wide as
/// its widest cell: the first column left-aligned, the others
/// right-aligned, then the footnote, if any, on a line of its own.
pub fn render<T>(headers: &[&str], items: &[T], row: impl Fn(&T) -> Vec<String>, footnote: Option<&str>) -> String {
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                out.push_str(&format!("{cell:<w$}"));
            } else {
                out.push_str(&format!("  {cell:>w$}"));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers);
    for row in &rows {
        out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    if let Some(note) = footnote {
        out.push_str(note);
        out.push('\n');
    }
    out
}

/// `1234567` as `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn columns_align_to_their_widest_cell() {
        let items = [("lease", 1), ("a", 1234)];
        let row = |&(mode, n): &(&str, u64)| vec![mode.to_owned(), n.to_string()];
        assert_eq!(
            render(&["mode", "n"], &items, row, Some("note")),
            "mode      n\nlease     1\na      1234\nnote\n"
        );
    }
}
