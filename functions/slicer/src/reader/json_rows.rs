//! JSON rows: NDJSON (one object per line) and a JSON array of objects (what many tools export, often
//! pretty-printed over many lines). An array is streamed element by element, never held whole: a scanner finds
//! where each top-level element ends (outside strings, at depth zero) and each element is validated like an NDJSON
//! line, so one broken element is one rejected row and the elements around it are kept.

use std::io::BufRead;

use clickpacer::ingest::rejects::truncate_raw;
use clickpacer::ingest::{FileError, RejectReason, RejectedRow, RowContext, validate_json_line};

use super::{Chunker, ReadError, io_error, overrun, too_many_rows};

pub(super) fn read_lines(
    mut input: impl BufRead,
    ctx: &RowContext<'_>,
    chunker: &mut Chunker<'_>,
) -> Result<(), ReadError> {
    let limits = chunker.plan.limits;
    let max_row_bytes = limits.max_row_bytes;
    let mut line = Vec::with_capacity(1024);
    let mut row_number = 0u64;
    loop {
        line.clear();
        let (consumed, overlong) = match read_line_bounded(&mut input, &mut line, max_row_bytes) {
            Ok(read) => read,
            Err(e) => match overrun(&e) {
                Some(limit) => return Err(chunker.stop_at(row_number + 1, limit, &line)),
                None => return Err(io_error(e)),
            },
        };
        if consumed == 0 {
            return Ok(());
        }
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() && !overlong {
            continue;
        }
        row_number += 1;
        if row_number > limits.max_rows {
            return Err(chunker.stop_at(row_number, too_many_rows(&limits), trimmed));
        }
        if chunker.committed(row_number)? {
            continue;
        }
        let row = if overlong {
            Err(RejectedRow { row_number, reason: RejectReason::RowTooLong(max_row_bytes), raw: truncate_raw(&line) })
        } else {
            validate_json_line(trimmed, row_number, ctx)
        };
        chunker.push(row_number, row)?;
    }
}

/// Reads one line (through its newline) into `line`, keeping at most `max` bytes of it: a longer line is read
/// past, never held whole. Returns the bytes consumed (0 at the end) and whether the line was longer than `max`.
fn read_line_bounded(input: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> std::io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut overlong = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok((consumed, overlong));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buf.len(), false),
        };
        let room = max.saturating_sub(line.len());
        let keep = take.min(room);
        line.extend_from_slice(&buf[..keep]);
        // The newline itself does not count against the row's length.
        let content = if done { take - 1 } else { take };
        if content > room {
            overlong = true;
        }
        input.consume(take);
        consumed += take;
        if done {
            return Ok((consumed, overlong));
        }
    }
}

/// Reads a JSON array of objects: each element is a row, numbered from 1.
pub(super) fn read_array(
    mut input: impl BufRead,
    ctx: &RowContext<'_>,
    chunker: &mut Chunker<'_>,
) -> Result<(), ReadError> {
    let limits = chunker.plan.limits;
    let max_row_bytes = limits.max_row_bytes;
    let mut scanner = ArrayScanner::default();
    let mut element = Vec::with_capacity(1024);
    let mut row_number = 0u64;
    loop {
        element.clear();
        let next = match scanner.next_element(&mut input, &mut element, max_row_bytes) {
            Ok(next) => next,
            Err(e) => match overrun(&e) {
                Some(limit) => return Err(chunker.stop_at(row_number + 1, limit, &element)),
                None => return Err(io_error(e)),
            },
        };
        let overlong = match next {
            Next::End => return Ok(()),
            Next::Malformed(reason) => return Err(FileError::Read(reason).into()),
            Next::Element { overlong } => overlong,
        };
        row_number += 1;
        if row_number > limits.max_rows {
            return Err(chunker.stop_at(row_number, too_many_rows(&limits), &element));
        }
        if chunker.committed(row_number)? {
            continue;
        }
        let row = if overlong {
            Err(RejectedRow {
                row_number,
                reason: RejectReason::RowTooLong(max_row_bytes),
                raw: truncate_raw(&element),
            })
        } else {
            validate_json_line(element.trim_ascii(), row_number, ctx)
        };
        chunker.push(row_number, row)?;
    }
}

/// What the scanner found next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// An element's bytes (at most the row limit of them; `overlong` when it was longer). An element cut off by
    /// the end of the file is returned as it is (it fails validation as invalid JSON) and the next call says why
    /// the file is malformed.
    Element { overlong: bool },
    /// The array's closing bracket, with nothing but whitespace after it.
    End,
    /// The bytes are not one JSON array: the file cannot be read on.
    Malformed(String),
}

/// Where the scanner is in the array.
#[derive(Debug, Default, PartialEq, Eq)]
enum Position {
    /// Before the opening bracket.
    #[default]
    Start,
    /// Between elements.
    Inside,
    /// The file ended before the closing bracket.
    Truncated,
    /// After the closing bracket.
    Closed,
}

#[derive(Debug, Default)]
struct ArrayScanner {
    position: Position,
}

impl ArrayScanner {
    fn next_element(&mut self, input: &mut impl BufRead, element: &mut Vec<u8>, max: usize) -> std::io::Result<Next> {
        match self.position {
            Position::Start => {
                skip(input, |b| b.is_ascii_whitespace() || matches!(b, 0xef | 0xbb | 0xbf))?;
                if peek(input)? != Some(b'[') {
                    return Ok(Next::Malformed("the file does not start with a JSON array".into()));
                }
                input.consume(1);
                self.position = Position::Inside;
            }
            Position::Truncated => {
                return Ok(Next::Malformed("the file ends before the JSON array's closing bracket".into()));
            }
            Position::Closed => return Ok(Next::End),
            Position::Inside => {}
        }
        // Separators: whitespace and commas (a missing or doubled comma is forgiven; the elements still parse).
        skip(input, |b| b.is_ascii_whitespace() || b == b',')?;
        match peek(input)? {
            None => {
                self.position = Position::Truncated;
                return self.next_element(input, element, max);
            }
            Some(b']') => {
                input.consume(1);
                self.position = Position::Closed;
                skip(input, |b| b.is_ascii_whitespace())?;
                if peek(input)?.is_some() {
                    return Ok(Next::Malformed("the file has more after the JSON array's closing bracket".into()));
                }
                return Ok(Next::End);
            }
            Some(_) => {}
        }
        let (mut depth, mut in_string, mut escaped, mut overlong) = (0usize, false, false, false);
        loop {
            let buf = input.fill_buf()?;
            if buf.is_empty() {
                self.position = Position::Truncated;
                return Ok(Next::Element { overlong });
            }
            // How many bytes of `buf` belong to the element, and whether it ends there.
            let mut end = None;
            for (i, &b) in buf.iter().enumerate() {
                if in_string {
                    match b {
                        _ if escaped => escaped = false,
                        b'\\' => escaped = true,
                        b'"' => in_string = false,
                        _ => {}
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    // A bracket closing the array ends a scalar element before it.
                    b'}' | b']' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    b',' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let take = end.unwrap_or(buf.len());
            let keep = take.min(max.saturating_sub(element.len()));
            element.extend_from_slice(&buf[..keep]);
            overlong |= keep < take;
            input.consume(take);
            if end.is_some() {
                return Ok(Next::Element { overlong });
            }
        }
    }
}

fn peek(input: &mut impl BufRead) -> std::io::Result<Option<u8>> {
    Ok(input.fill_buf()?.first().copied())
}

/// Consumes bytes while `skippable` holds.
fn skip(input: &mut impl BufRead, skippable: impl Fn(u8) -> bool) -> std::io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len();
        let n = buf.iter().position(|&b| !skippable(b)).unwrap_or(len);
        input.consume(n);
        if n < len {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The elements the scanner finds in `text`, read through a buffer of `capacity` bytes, and how it ends.
    fn elements(text: &str, capacity: usize, max: usize) -> (Vec<String>, Next) {
        let mut input = std::io::BufReader::with_capacity(capacity, text.as_bytes());
        let mut scanner = ArrayScanner::default();
        let mut found = Vec::new();
        loop {
            let mut element = Vec::new();
            match scanner.next_element(&mut input, &mut element, max).unwrap() {
                Next::Element { overlong } => {
                    let text = String::from_utf8(element).unwrap().trim().to_owned();
                    found.push(if overlong { format!("{text}…") } else { text });
                }
                other => return (found, other),
            }
        }
    }

    #[test]
    fn a_pretty_printed_array_yields_one_element_per_object() {
        let text = "\u{feff}[\n  {\n    \"click_id\": \"a\",\n    \"extra\": {\"k\": [1, 2]}\n  },\n  {\"click_id\": \"b]},\\\"\"}\n]\n";
        for capacity in [1, 3, 7, 64, 8192] {
            let (found, end) = elements(text, capacity, 1024);
            assert_eq!(
                found,
                vec![
                    "{\n    \"click_id\": \"a\",\n    \"extra\": {\"k\": [1, 2]}\n  }".to_owned(),
                    "{\"click_id\": \"b]},\\\"\"}".to_owned()
                ],
                "buffer of {capacity}"
            );
            assert_eq!(end, Next::End);
        }
    }

    #[test]
    fn scalars_long_elements_and_broken_arrays_are_told_apart() {
        assert_eq!(elements("[1, \"x\" ,{}]", 4, 100), (vec!["1".into(), "\"x\"".into(), "{}".into()], Next::End));
        assert_eq!(elements("[]", 4, 100), (vec![], Next::End));
        let (found, end) = elements("[{\"a\":\"0123456789\"},{}]", 4, 8);
        assert_eq!(
            found,
            vec!["{\"a\":\"01…".to_owned(), "{}".to_owned()],
            "an overlong element is cut, the next one kept"
        );
        assert_eq!(end, Next::End);
        let (found, end) = elements("[{\"a\":1},{\"b\":", 4, 100);
        assert_eq!(found, vec!["{\"a\":1}".to_owned(), "{\"b\":".to_owned()]);
        assert!(matches!(end, Next::Malformed(m) if m.contains("closing bracket")));
        assert!(matches!(elements("[{}] [{}]", 4, 100).1, Next::Malformed(m) if m.contains("more after")));
        assert!(matches!(elements("{}", 4, 100).1, Next::Malformed(m) if m.contains("does not start")));
    }
}
