//! Apache Parquet, as Spark, Athena and warehouse unloads write it. Parquet keeps its index at the end of the
//! file, so the decoded bytes are spooled to a temporary file first (bounded by the decompressed-size limit,
//! like every format); then the file is read one row group at a time through the `parquet` crate's row
//! iterator, so memory holds one row group's pages, not the file.
//!
//! The top-level columns are the header: they are mapped like CSV's (aliases, the campaign's mapping, derived
//! click ids). Each row becomes a JSON object and is validated like a JSON row: numbers and strings are values,
//! timestamps (milliseconds or microseconds, INT96 included) are instants written as RFC 3339 in UTC, dates and
//! decimals are their text, and nested groups, lists and maps are kept whole as attributes.
//!
//! Row groups an earlier invocation committed entirely are skipped without being decoded.

use std::io::{Read, Seek};

use chrono::{DateTime, SecondsFormat, Utc};
use clickpacer::ingest::rejects::truncate_raw;
use clickpacer::ingest::{Columns, FileError, RejectedRow, RowContext, validate_json_object};
use clickpacer::postgres::uploads::RowRange;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{Map, Value};

use super::{Chunker, ReadError, io_error, overrun, too_many_rows};

pub(super) fn read(mut input: impl Read, ctx: &RowContext<'_>, chunker: &mut Chunker<'_>) -> Result<(), ReadError> {
    let limits = chunker.plan.limits;
    let mut spool = tempfile::tempfile().map_err(|e| ReadError::Transient(format!("a temporary file: {e}")))?;
    if let Err(e) = std::io::copy(&mut input, &mut spool) {
        return Err(match overrun(&e) {
            Some(limit) => chunker.stop_at(1, limit, b""),
            None => io_error(e),
        });
    }
    spool.rewind().map_err(|e| ReadError::Transient(format!("the temporary file: {e}")))?;
    let reader = SerializedFileReader::new(spool).map_err(unreadable)?;
    let metadata = reader.metadata();
    let names: Vec<&str> =
        metadata.file_metadata().schema_descr().root_schema().get_fields().iter().map(|f| f.name()).collect();
    Columns::mapped(&names, ctx.mapping)?;

    let mut row_number = 0u64;
    for group in 0..metadata.num_row_groups() {
        let rows = u64::try_from(metadata.row_group(group).num_rows()).unwrap_or(0);
        if rows > 0 && chunker.all_committed(RowRange { first: row_number + 1, last: row_number + rows })? {
            row_number += rows;
            continue;
        }
        let group_reader = reader.get_row_group(group).map_err(unreadable)?;
        for row in group_reader.get_row_iter(None).map_err(unreadable)? {
            let row = row.map_err(unreadable)?;
            row_number += 1;
            let object = object_of(&row);
            if row_number > limits.max_rows {
                let raw = Value::Object(object).to_string();
                return Err(chunker.stop_at(row_number, too_many_rows(&limits), raw.as_bytes()));
            }
            if chunker.committed(row_number)? {
                continue;
            }
            let validated = validate_json_object(&object, row_number, ctx).map_err(|reason| RejectedRow {
                row_number,
                reason,
                raw: truncate_raw(Value::Object(object.clone()).to_string().as_bytes()),
            });
            chunker.push(row_number, validated)?;
        }
    }
    Ok(())
}

/// A Parquet error while reading the file's structure or pages: the file is not what it claims to be (a crate
/// error is never a broken connection here: the bytes are on local disk).
fn unreadable(e: parquet::errors::ParquetError) -> ReadError {
    FileError::Read(format!("not a readable Parquet file: {e}")).into()
}

/// One row as a JSON object, column by column.
fn object_of(row: &Row) -> Map<String, Value> {
    row.get_column_iter().map(|(name, field)| (name.clone(), value_of(field))).collect()
}

fn value_of(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float16(n) => float(f64::from(*n)),
        Field::Float(n) => float(f64::from(*n)),
        Field::Double(n) => float(*n),
        Field::Str(s) => Value::String(s.clone()),
        // Text stored as bytes (no UTF8 annotation) is common; anything else is kept as hex.
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(text) => Value::String(text.to_owned()),
            Err(_) => Value::String(format!("0x{}", hex::encode(b.data()))),
        },
        Field::TimestampMillis(ms) => instant(DateTime::from_timestamp_millis(*ms), SecondsFormat::Millis),
        Field::TimestampMicros(us) => instant(DateTime::from_timestamp_micros(*us), SecondsFormat::Micros),
        Field::Decimal(_) | Field::Date(_) | Field::TimeMillis(_) | Field::TimeMicros(_) => {
            Value::String(field.to_string())
        }
        Field::Group(row) => Value::Object(object_of(row)),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(value_of).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(key, value)| {
                    let key = match value_of(key) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, value_of(value))
                })
                .collect(),
        ),
    }
}

fn float(n: f64) -> Value {
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

/// A timestamp as RFC 3339 in UTC (out-of-range values, which no click has, as null: the click is then rejected
/// for a missing time, or the attribute is dropped).
fn instant(at: Option<DateTime<Utc>>, precision: SecondsFormat) -> Value {
    at.map_or(Value::Null, |at| Value::String(at.to_rfc3339_opts(precision, true)))
}
