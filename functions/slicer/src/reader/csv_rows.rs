//! CSV: a header row, then one record per row. The delimiter is the campaign's (`ingest.csv_delimiter`) or the
//! one its header line uses most (comma, semicolon, tab or pipe); quoted fields, a UTF-8 BOM and CRLF line ends
//! are read as the csv crate reads them.

use std::io::BufRead;

use clickpacer::ingest::{Columns, Delimiter, FileError, RowContext, validate_csv_record};

use super::{Chunker, ReadError, ReadGuard, io_error, overrun, too_many_rows};

pub(super) fn read(
    mut input: impl BufRead,
    ctx: &RowContext<'_>,
    chunker: &mut Chunker<'_>,
    guard: &ReadGuard,
) -> Result<(), ReadError> {
    let limits = chunker.plan.limits;
    let delimiter = match ctx.mapping.csv_delimiter {
        Some(delimiter) => delimiter,
        None => Delimiter::detect(header_line(input.fill_buf().map_err(io_error)?)),
    };
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delimiter.byte()).flexible(true).has_headers(true).from_reader(input);
    let header = reader.byte_headers().map_err(csv_error)?.clone();
    let names: Vec<&str> = header
        .iter()
        .map(std::str::from_utf8)
        .collect::<Result<_, _>>()
        .map_err(|_| FileError::UnknownFormat("the header row is not UTF-8 text".into()))?;
    if names.iter().all(|n| n.trim().is_empty()) {
        return Err(FileError::Empty.into());
    }
    let columns = Columns::mapped(&names, ctx.mapping)?;
    guard.record_ended(reader.position().byte());
    let mut record = csv::ByteRecord::new();
    let mut row_number = 0u64;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                if let csv::ErrorKind::Io(io) = e.kind()
                    && let Some(limit) = overrun(io)
                {
                    return Err(chunker.stop_at(row_number + 1, limit, b""));
                }
                return Err(csv_error(e));
            }
        }
        guard.record_ended(reader.position().byte());
        row_number += 1;
        if row_number > limits.max_rows {
            return Err(chunker.stop_at(row_number, too_many_rows(&limits), record.as_slice()));
        }
        if chunker.committed(row_number)? {
            continue;
        }
        chunker.push(row_number, validate_csv_record(&columns, &record, row_number, ctx))?;
    }
}

/// The first line of the decoded head (the header row, unless a quoted name spans lines, which no real header
/// does).
fn header_line(head: &[u8]) -> &[u8] {
    head.split(|b| *b == b'\n').next().unwrap_or_default()
}

fn csv_error(e: csv::Error) -> ReadError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io_error(io),
        other => FileError::Read(format!("{other:?}")).into(),
    }
}
