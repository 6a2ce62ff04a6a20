//! Parsers of the input the tool takes from strangers: `aside serve`'s id
//! in a path and `?ids=` list, and `aside warm`'s input file, read line by
//! line with a bound on a line's length.
//!
//! Owns what a valid id is (a `u64` the database can hold as an `i64`),
//! the error texts of a bad one, and how a line of `warm`'s input becomes
//! an id. Each parser returns an error or a value for any input, never
//! panics, and holds no more memory than its bound: a `warm` line longer
//! than the bound is read to its end in chunks and dropped, never kept.
//! The `fuzz_*` functions are the fuzz targets' entry points; they check
//! what each parser promises and panic only when a promise is broken.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader};
use std::sync::LazyLock;

use regex::Regex;

/// An id as the database holds it: a non-negative `i64`, surrounding
/// whitespace ignored. `None` for anything else.
pub fn id(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|id| i64::try_from(*id).is_ok())
}

/// The id of a path such as `/users/{id}`, from the (percent-decoded)
/// segment.
///
/// # Errors
/// The message of a 400: the segment is not a `u64` (the text axum's own
/// `Path<u64>` gives), or one past the largest `i64`.
pub fn path_id(segment: &str) -> Result<u64, String> {
    let id = segment
        .parse::<u64>()
        .map_err(|_| format!("Invalid URL: Cannot parse `{segment}` to a `u64`"))?;
    if i64::try_from(id).is_err() {
        return Err(format!("id {id} is out of range"));
    }
    Ok(id)
}

/// Parses a batch's `1,2,3` into distinct ids, in the order first seen.
///
/// # Errors
/// The message of a 400: an item that is not an id, or more than
/// `max_batch` distinct ids.
pub fn id_list(raw: &str, max_batch: usize) -> Result<Vec<u64>, String> {
    let mut parsed = Vec::new();
    // The set makes a list of many repeats linear, not quadratic.
    let mut seen = HashSet::new();
    for item in raw.split(',') {
        let item = item.trim();
        let id = item
            .parse::<u64>()
            .ok()
            .filter(|id| i64::try_from(*id).is_ok())
            .ok_or_else(|| format!("ids: {item:?} is not an id; expected ids=1,2,3"))?;
        if seen.insert(id) {
            parsed.push(id);
        }
        if parsed.len() > max_batch {
            return Err(format!("ids: at most {max_batch} ids per request"));
        }
    }
    Ok(parsed)
}

/// Default bound on a line of `aside warm`'s input, in bytes (newline not
/// counted): an id or an access-log line is far shorter.
pub const DEFAULT_MAX_LINE_BYTES: usize = 4096;

/// What one read of [`read_line_bounded`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineRead {
    /// A line within the bound, now in the buffer without its newline.
    Line,
    /// A line past the bound: read to its newline (or the end) and
    /// dropped; the buffer is empty.
    TooLong,
    /// The end of the input: nothing was read.
    End,
}

/// Reads one line into `line` (cleared first), without its `\n`, keeping
/// at most `max_bytes` of it. A longer line is consumed chunk by chunk, as
/// the reader's buffer holds it, up to its newline, and none of it is kept:
/// the memory used is `max_bytes` plus the reader's buffer, whatever the
/// input.
///
/// # Errors
/// What the reader returns, except `Interrupted`, which is retried.
pub fn read_line_bounded(reader: &mut impl BufRead, line: &mut Vec<u8>, max_bytes: usize) -> io::Result<LineRead> {
    line.clear();
    let (mut read_any, mut too_long) = (false, false);
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(match (read_any, too_long) {
                (false, _) => LineRead::End,
                (true, true) => LineRead::TooLong,
                (true, false) => LineRead::Line,
            });
        }
        read_any = true;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let content = &chunk[..newline.unwrap_or(chunk.len())];
        if !too_long {
            if line.len() + content.len() > max_bytes {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(content);
            }
        }
        let used = newline.map_or(chunk.len(), |at| at + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(if too_long { LineRead::TooLong } else { LineRead::Line });
        }
    }
}

/// What one line of `aside warm`'s input yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarmLine {
    /// An id to warm.
    Id(u64),
    /// An empty or all-blank line, without a pattern: skipped, not counted as bad.
    Blank,
    /// A line the pattern does not match: skipped.
    Unmatched,
    /// A line whose id (the whole line, or the pattern's first capture
    /// group) is not an id: skipped.
    BadId,
    /// A line past the length bound: dropped unread.
    TooLong,
}

/// The id of one line (without its newline): the whole line, or with
/// `pattern` the first capture group of its first match. Invalid UTF-8 is
/// replaced, not fatal.
pub fn warm_line(line: &[u8], pattern: Option<&Regex>) -> WarmLine {
    let text = String::from_utf8_lossy(line);
    let parsed = match pattern {
        None if text.trim().is_empty() => return WarmLine::Blank,
        None => id(&text),
        Some(regex) => match regex.captures(&text) {
            None => return WarmLine::Unmatched,
            Some(found) => found.get(1).and_then(|m| id(m.as_str())),
        },
    };
    parsed.map_or(WarmLine::BadId, WarmLine::Id)
}

/// Reads `aside warm`'s input to its end, calling `each` once per line
/// with what the line yields; lines longer than `max_line_bytes` yield
/// [`WarmLine::TooLong`] without being held in memory.
///
/// # Errors
/// What the reader returns.
pub fn read_warm_lines(
    mut reader: impl BufRead,
    pattern: Option<&Regex>,
    max_line_bytes: usize,
    mut each: impl FnMut(WarmLine),
) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        match read_line_bounded(&mut reader, &mut line, max_line_bytes)? {
            LineRead::End => return Ok(()),
            LineRead::TooLong => each(WarmLine::TooLong),
            LineRead::Line => each(warm_line(&line, pattern)),
        }
    }
}

/// Fuzz entry point of `serve`'s parsers: the bytes (as UTF-8, lossily)
/// as a path's id and as a `?ids=` list, with a small batch bound so the
/// bound is reached too.
pub fn fuzz_serve_ids(data: &[u8]) {
    const FUZZ_MAX_BATCH: usize = 16;
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = path_id(&text) {
        assert!(i64::try_from(id).is_ok(), "path id {id} past i64");
        assert_eq!(text.parse::<u64>().ok(), Some(id), "path id differs from the text");
    }
    if let Ok(ids) = id_list(&text, FUZZ_MAX_BATCH) {
        assert!(!ids.is_empty() && ids.len() <= FUZZ_MAX_BATCH, "{} ids", ids.len());
        assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            ids.len(),
            "repeated ids: {ids:?}"
        );
        assert!(
            ids.iter().all(|id| i64::try_from(*id).is_ok()),
            "an id past i64: {ids:?}"
        );
        let items = text.split(',').count();
        assert!(ids.len() <= items, "{} ids from {items} items", ids.len());
    }
}

/// The patterns [`fuzz_warm_line`] picks from (the first byte chooses).
static FUZZ_PATTERNS: LazyLock<[Regex; 3]> =
    LazyLock::new(|| [r"GET /users/(\w+)", r"id=(\d+)$", r"^(\S*)\s"].map(|p| Regex::new(p).expect("a valid pattern")));

/// Fuzz entry point of `warm`'s input: the first byte picks no pattern or
/// one of a few, the second the line bound (1 to 64 bytes), the third the
/// reader's buffer (1 to 16 bytes, so lines span many chunks); the rest is
/// the file. Checks that every line yields exactly one outcome, that a
/// line is dropped exactly when it is past the bound, and that a kept line
/// yields what [`warm_line`] gives for it.
pub fn fuzz_warm_line(data: &[u8]) {
    let [choice, bound, buffer, file @ ..] = data else {
        return;
    };
    let pattern = match choice % 4 {
        0 => None,
        n => Some(&FUZZ_PATTERNS[usize::from(n - 1)]),
    };
    let max_line_bytes = usize::from(bound % 64) + 1;
    let reader = BufReader::with_capacity(usize::from(buffer % 16) + 1, file);
    let mut outcomes = Vec::new();
    read_warm_lines(reader, pattern, max_line_bytes, |line| outcomes.push(line)).expect("a slice reads");

    let mut expected: Vec<&[u8]> = file.split(|&b| b == b'\n').collect();
    if file.is_empty() || file.ends_with(b"\n") {
        // No line after the last newline (nor in an empty file).
        expected.pop();
    }
    assert_eq!(outcomes.len(), expected.len(), "lines read");
    for (outcome, line) in outcomes.iter().zip(expected) {
        if line.len() > max_line_bytes {
            assert_eq!(*outcome, WarmLine::TooLong, "a line of {} bytes", line.len());
        } else {
            assert_eq!(*outcome, warm_line(line, pattern), "line {line:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_ids_keep_axums_texts() {
        assert_eq!(path_id("42"), Ok(42));
        assert_eq!(path_id("9223372036854775807"), Ok(i64::MAX as u64));
        assert_eq!(
            path_id("abc").unwrap_err(),
            "Invalid URL: Cannot parse `abc` to a `u64`"
        );
        assert_eq!(path_id("-1").unwrap_err(), "Invalid URL: Cannot parse `-1` to a `u64`");
        assert_eq!(
            path_id("9223372036854775808").unwrap_err(),
            "id 9223372036854775808 is out of range"
        );
    }

    #[test]
    fn id_lists_are_distinct_in_order_and_bounded() {
        assert_eq!(id_list("1,2, 3,2", 10), Ok(vec![1, 2, 3]));
        assert_eq!(id_list("7,".repeat(10_000).trim_end_matches(','), 2), Ok(vec![7]));
        assert_eq!(id_list("1,2,3", 2).unwrap_err(), "ids: at most 2 ids per request");
        assert_eq!(
            id_list("1,,2", 10).unwrap_err(),
            "ids: \"\" is not an id; expected ids=1,2,3"
        );
    }

    fn lines(input: &[u8], max: usize, buffer: usize) -> Vec<(LineRead, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(buffer, input);
        let mut line = Vec::new();
        let mut out = Vec::new();
        loop {
            let read = read_line_bounded(&mut reader, &mut line, max).unwrap();
            if read == LineRead::End {
                return out;
            }
            out.push((read, line.clone()));
        }
    }

    #[test]
    fn long_lines_are_read_through_and_dropped() {
        let input = b"12\n123456\n1234\n\nabcdefghij";
        for buffer in [1, 2, 3, 7, 64] {
            assert_eq!(
                lines(input, 4, buffer),
                [
                    (LineRead::Line, b"12".to_vec()),
                    (LineRead::TooLong, vec![]),
                    (LineRead::Line, b"1234".to_vec()),
                    (LineRead::Line, vec![]),
                    (LineRead::TooLong, vec![]),
                ],
                "buffer of {buffer}"
            );
        }
        assert_eq!(lines(b"", 4, 8), []);
    }

    #[test]
    fn warm_lines_yield_ids_from_the_line_or_the_pattern() {
        let pattern = Regex::new(r"GET /users/(\w+)$").unwrap();
        assert_eq!(warm_line(b" 7 ", None), WarmLine::Id(7));
        assert_eq!(warm_line(b"  ", None), WarmLine::Blank);
        assert_eq!(warm_line(b"x7", None), WarmLine::BadId);
        assert_eq!(warm_line(b"\xff", None), WarmLine::BadId);
        assert_eq!(warm_line(b"GET /users/5", Some(&pattern)), WarmLine::Id(5));
        assert_eq!(warm_line(b"GET /users/me", Some(&pattern)), WarmLine::BadId);
        assert_eq!(warm_line(b"GET /health", Some(&pattern)), WarmLine::Unmatched);
    }
}
