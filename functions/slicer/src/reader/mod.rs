//! Reads a click file as a stream, on a blocking thread, and hands validated chunks to the writers.
//!
//! Memory stays flat whatever the file's size: bytes flow from the S3 body through a decoder (gzip, zstd or
//! bzip2, when the file is compressed) and the reader of its format ([`csv_rows`], [`json_rows`] for NDJSON and
//! JSON arrays, [`parquet_rows`]), and the channel holds a bounded number of chunks. Parquet alone needs random
//! access: its decoded bytes are spooled to a temporary file first and read one row group at a time.
//!
//! A chunk is a contiguous run of rows none of which is committed yet: rows an earlier invocation committed
//! are read past (not validated again), and a chunk ends where such a run begins.

mod csv_rows;
mod json_rows;
mod parquet_rows;

use std::cell::Cell;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::rc::Rc;

use chrono_tz::Tz;
use clickpacer::config::vars;
use clickpacer::domain::CampaignId;
use clickpacer::ingest::rejects::truncate_raw;
use clickpacer::ingest::{
    CampaignDirectory, ClickRow, Compression, FileError, FileFormat, IngestLimits, IngestMapping, RejectReason,
    RejectedRow, RowContext,
};
use clickpacer::postgres::uploads::{ChunkRows, RowRange, StagedClick};
use flate2::read::MultiGzDecoder;
use tokio::sync::mpsc;

/// Rows validated together and written in one transaction.
#[derive(Debug, Default)]
pub struct Chunk {
    pub clicks: Vec<StagedClick>,
    pub rejects: Vec<RejectedRow>,
    /// The first data row of the chunk (1-based).
    pub first_row: u64,
    /// Data rows this chunk covers (clicks + rejects), from `first_row` on.
    pub rows: u64,
}

impl Chunk {
    pub fn range(&self) -> RowRange {
        RowRange { first: self.first_row, last: self.first_row + self.rows - 1 }
    }

    pub fn as_rows(&self) -> ChunkRows<'_> {
        ChunkRows { rows: self.range(), clicks: &self.clicks, rejects: &self.rejects }
    }
}

/// Why reading stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file itself is unreadable: the upload fails with this reason.
    #[error(transparent)]
    File(#[from] FileError),
    /// The connection to S3 broke: worth retrying from the checkpoint.
    #[error("reading the object failed: {0}")]
    Transient(String),
}

pub struct ReadPlan {
    pub key: String,
    pub content_encoding: Option<String>,
    pub key_campaign: Option<CampaignId>,
    pub campaigns: CampaignDirectory,
    /// Rows already committed by an earlier invocation, in order and disjoint: read past, not validated again.
    pub committed: Vec<RowRange>,
    pub chunk_rows: usize,
    pub limits: IngestLimits,
    /// The key campaign's ingest mapping (the default when the key names none).
    pub mapping: IngestMapping,
    /// The zone naive timestamps are read in.
    pub naive_zone: Tz,
}

/// Reads `body` to the end (or until the receiver is dropped), sending chunks; the last message is `Err` when
/// reading failed.
pub fn read_file(body: impl Read, plan: ReadPlan, out: mpsc::Sender<Result<Chunk, ReadError>>) {
    if let Err(e) = read_into(body, &plan, &out) {
        let _ = out.blocking_send(Err(e));
    }
}

fn read_into(body: impl Read, plan: &ReadPlan, out: &mpsc::Sender<Result<Chunk, ReadError>>) -> Result<(), ReadError> {
    let mut raw = BufReader::with_capacity(256 * 1024, Body(body));
    let head = raw.fill_buf().map_err(io_error)?.to_vec();
    let compression = Compression::detect(&plan.key, plan.content_encoding.as_deref(), &head);
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(MultiGzDecoder::new(raw)),
        // Every frame of a multi-frame file, like every member of a gzip file.
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw).map_err(io_error)?),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(raw)),
    };
    let guard = ReadGuard::new(&plan.limits, compression);
    let mut input = BufReader::with_capacity(READ_BUFFER, Guarded { inner: decoded, guard: Rc::clone(&guard) });
    let head = input.fill_buf().map_err(io_error)?;
    let format = FileFormat::of(&plan.key, head)?;
    let ctx = RowContext {
        key_campaign: plan.key_campaign.as_ref(),
        campaigns: &plan.campaigns,
        max_row_bytes: plan.limits.max_row_bytes,
        mapping: &plan.mapping,
        naive_zone: plan.naive_zone,
    };
    let mut chunker = Chunker { plan, out, chunk: Chunk::default(), next_committed: 0 };
    let read = match format {
        FileFormat::Csv => {
            guard.watch_records.set(true);
            csv_rows::read(input, &ctx, &mut chunker, &guard)
        }
        FileFormat::Ndjson => json_rows::read_lines(input, &ctx, &mut chunker),
        FileFormat::JsonArray => json_rows::read_array(input, &ctx, &mut chunker),
        FileFormat::Parquet => parquet_rows::read(input, &ctx, &mut chunker),
    };
    match read {
        // The file cannot be read on: the valid rows read so far are kept. (A transient failure is not flushed:
        // the retry reads the chunk again.)
        Err(ReadError::File(e)) => {
            chunker.flush()?;
            Err(ReadError::File(e))
        }
        other => {
            other?;
            chunker.flush()
        }
    }
}

/// The buffer between the decoded stream and the row readers.
const READ_BUFFER: usize = 256 * 1024;

/// Watches the decoded bytes as the row readers pull them: the file's total against
/// [`IngestLimits::max_decompressed_bytes`], and (for CSV) how far the record being read runs past its start. The
/// reader it wraps and the row loop share it. (The line and element readers bound each row themselves, and
/// Parquet has no rows in its byte stream, so only CSV has its records watched.)
struct ReadGuard {
    read: Cell<u64>,
    record_start: Cell<u64>,
    watch_records: Cell<bool>,
    max_total: u64,
    max_record: u64,
    max_row_bytes: usize,
    compression: Compression,
}

/// Why the guard stopped the bytes.
#[derive(Debug)]
enum Overrun {
    Total { limit: u64, compression: Compression },
    Record { limit: usize },
}

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Total { limit, compression: Compression::None } => {
                write!(f, "the file holds more than {limit} bytes ({})", vars::SLICER_MAX_DECOMPRESSED_BYTES)
            }
            Self::Total { limit, compression } => write!(
                f,
                "the {} file decompresses to more than {limit} bytes ({})",
                compression.name(),
                vars::SLICER_MAX_DECOMPRESSED_BYTES
            ),
            Self::Record { limit } => write!(
                f,
                "a row runs on far past the longest allowed, {limit} bytes (an unterminated quote?), so no later \
                 row can be told apart ({})",
                vars::SLICER_MAX_ROW_BYTES
            ),
        }
    }
}

impl std::error::Error for Overrun {}

impl ReadGuard {
    fn new(limits: &IngestLimits, compression: Compression) -> Rc<Self> {
        Rc::new(Self {
            read: Cell::new(0),
            record_start: Cell::new(0),
            watch_records: Cell::new(false),
            max_total: limits.max_decompressed_bytes,
            // What the readers buffer ahead comes on top of the record's own bytes.
            max_record: limits.max_record_read() + READ_BUFFER as u64 + 64 * 1024,
            max_row_bytes: limits.max_row_bytes,
            compression,
        })
    }

    /// The CSV reader finished a record at byte `offset` of the decoded stream.
    fn record_ended(&self, offset: u64) {
        self.record_start.set(offset);
    }
}

struct Guarded<R> {
    inner: R,
    guard: Rc<ReadGuard>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let g = &self.guard;
        let read = g.read.get();
        if g.watch_records.get() && read.saturating_sub(g.record_start.get()) > g.max_record {
            return Err(std::io::Error::other(Overrun::Record { limit: g.max_row_bytes }));
        }
        // Up to the limit exactly, so every row within it is read; past it only to learn whether the file ends.
        let room = g.max_total.saturating_sub(read);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX)).max(1);
        let n = self.inner.read(&mut buf[..want]).map_err(|e| {
            if g.compression == Compression::None || from_the_body(&e) {
                e
            } else {
                // Any other failure is the decoder's refusal of the bytes (flate2, zstd and bzip2 report them
                // with different kinds): it names the compression, and no retry can help.
                std::io::Error::new(ErrorKind::InvalidData, format!("{}: {e}", g.compression.name()))
            }
        })?;
        if room == 0 && n > 0 {
            return Err(std::io::Error::other(Overrun::Total { limit: g.max_total, compression: g.compression }));
        }
        g.read.set(read + n as u64);
        Ok(n)
    }
}

/// The object's byte stream: its failures are marked as its own, so that a broken connection under a decoder is
/// told apart from the decoder's refusal of corrupt bytes.
struct Body<R>(R);

#[derive(Debug)]
struct BodyError(std::io::Error);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {}

impl<R: Read> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| std::io::Error::new(e.kind(), BodyError(e)))
    }
}

fn from_the_body(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<BodyError>())
}

/// The guard's refusal inside an I/O error, if that is what it is.
fn overrun(e: &std::io::Error) -> Option<String> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Overrun>()).map(Overrun::to_string)
}

struct Chunker<'a> {
    plan: &'a ReadPlan,
    out: &'a mpsc::Sender<Result<Chunk, ReadError>>,
    chunk: Chunk,
    /// The first committed range not entirely behind the rows read so far.
    next_committed: usize,
}

impl Chunker<'_> {
    /// Whether row `row_number` (rows come in order) was committed before: then it is read past, and the chunk
    /// being built ends before it.
    fn committed(&mut self, row_number: u64) -> Result<bool, ReadError> {
        let committed = &self.plan.committed;
        while committed.get(self.next_committed).is_some_and(|r| r.last < row_number) {
            self.next_committed += 1;
        }
        if committed.get(self.next_committed).is_some_and(|r| r.first <= row_number) {
            self.flush()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether every row of `rows` (which start after the rows read so far) was committed before: then they are
    /// skipped whole, and the chunk being built ends before them.
    fn all_committed(&mut self, rows: RowRange) -> Result<bool, ReadError> {
        let mut next = rows.first;
        for range in &self.plan.committed[self.next_committed..] {
            if range.last < next {
                continue;
            }
            if range.first > next {
                break;
            }
            next = range.last + 1;
            if next > rows.last {
                break;
            }
        }
        if next > rows.last {
            self.flush()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn push(&mut self, row_number: u64, row: Result<ClickRow, RejectedRow>) -> Result<(), ReadError> {
        if self.chunk.rows == 0 {
            self.chunk.first_row = row_number;
            // Sized once: a vector grown by doubling would hold up to twice the memory while the chunk waits.
            self.chunk.clicks.reserve_exact(self.plan.chunk_rows);
        }
        debug_assert_eq!(row_number, self.chunk.first_row + self.chunk.rows, "a chunk's rows are contiguous");
        match row {
            Ok(click) => self.chunk.clicks.push(click.into()),
            Err(reject) => self.chunk.rejects.push(reject),
        }
        self.chunk.rows += 1;
        if self.chunk.rows as usize >= self.plan.chunk_rows { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), ReadError> {
        if self.chunk.rows == 0 {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        // A closed channel means the writer stopped (time budget, error): stop reading quietly.
        self.out.blocking_send(Ok(chunk)).map_err(|_| ReadError::Transient("writer stopped".into()))
    }

    /// A limit was reached at `row_number`: that row is rejected with the reason (unless an earlier invocation
    /// already recorded it), the rows before it are sent, and reading ends.
    fn stop_at(&mut self, row_number: u64, limit: String, raw: &[u8]) -> ReadError {
        let recorded = match self.committed(row_number) {
            Ok(recorded) => recorded,
            Err(e) => return e,
        };
        if !recorded {
            let reject =
                RejectedRow { row_number, reason: RejectReason::LimitReached(limit.clone()), raw: truncate_raw(raw) };
            if let Err(e) = self.push(row_number, Err(reject)).and_then(|()| self.flush()) {
                return e;
            }
        }
        FileError::LimitReached { row: row_number, limit }.into()
    }
}

fn too_many_rows(limits: &IngestLimits) -> String {
    format!("the file has more than {} rows ({})", limits.max_rows, vars::SLICER_MAX_ROWS)
}

fn io_error(e: std::io::Error) -> ReadError {
    if from_the_body(&e) {
        // The connection to S3 broke: the retry reads on from the checkpoint.
        return ReadError::Transient(e.to_string());
    }
    match e.kind() {
        // A decoder's refusal of corrupt or truncated data: retrying cannot help.
        ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::UnexpectedEof => {
            FileError::BadCompression(e.to_string()).into()
        }
        _ => ReadError::Transient(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clickpacer::domain::CampaignStatus;

    use super::*;

    /// A plan for `key` of the active campaign `spring`, with the default mapping.
    fn plan(key: &str, committed: Vec<RowRange>, chunk_rows: usize) -> ReadPlan {
        let spring = CampaignId::parse("spring").unwrap();
        ReadPlan {
            key: key.into(),
            content_encoding: None,
            key_campaign: Some(spring.clone()),
            campaigns: CampaignDirectory {
                statuses: HashMap::from([(spring, CampaignStatus::Active)]),
                ..CampaignDirectory::default()
            },
            committed,
            chunk_rows,
            limits: IngestLimits::default(),
            mapping: IngestMapping::default(),
            naive_zone: Tz::UTC,
        }
    }

    /// Reads `body` as `incoming/spring/clicks.csv` and lists the chunks: (first row, last row, clicks, rejects).
    fn chunks_of(body: String, committed: Vec<RowRange>, chunk_rows: usize) -> Vec<(u64, u64, usize, usize)> {
        let plan = plan("incoming/spring/clicks.csv", committed, chunk_rows);
        let (tx, mut rx) = mpsc::channel(1);
        let reading = std::thread::spawn(move || read_file(std::io::Cursor::new(body.into_bytes()), plan, tx));
        let mut chunks = Vec::new();
        while let Some(message) = rx.blocking_recv() {
            let chunk = message.unwrap();
            let range = chunk.range();
            let rows: Vec<u64> = chunk
                .clicks
                .iter()
                .map(|c| c.click.row_number)
                .chain(chunk.rejects.iter().map(|r| r.row_number))
                .collect();
            assert_eq!(rows.len() as u64, chunk.rows);
            assert!(rows.iter().all(|r| (range.first..=range.last).contains(r)), "{rows:?} in {range:?}");
            chunks.push((range.first, range.last, chunk.clicks.len(), chunk.rejects.len()));
        }
        reading.join().unwrap();
        chunks
    }

    fn body(rows: u64) -> String {
        let mut body = String::from("click_id,clicked_at,ip\n");
        for i in 1..=rows {
            // Every fifth row is rejected (bad IP address).
            let ip = if i % 5 == 0 { "999.0.0.1" } else { "10.0.0.1" };
            body.push_str(&format!("c{i},1764324000,{ip}\n"));
        }
        body
    }

    #[test]
    fn chunks_are_contiguous_runs_of_uncommitted_rows() {
        assert_eq!(
            chunks_of(body(10), vec![], 4),
            vec![(1, 4, 4, 0), (5, 8, 3, 1), (9, 10, 1, 1)],
            "a fresh file: chunks of 4 rows"
        );
        let committed = vec![
            RowRange { first: 1, last: 2 },
            RowRange { first: 4, last: 4 },
            RowRange { first: 7, last: 9 },
            RowRange { first: 12, last: 12 },
        ];
        assert_eq!(
            chunks_of(body(14), committed, 4),
            vec![(3, 3, 1, 0), (5, 6, 1, 1), (10, 11, 1, 1), (13, 14, 2, 0)],
            "a chunk ends where committed rows begin and starts again after them"
        );
        assert_eq!(chunks_of(body(6), vec![RowRange { first: 1, last: 6 }], 4), vec![], "all committed");
        assert_eq!(
            chunks_of(body(6), vec![RowRange { first: 1, last: 100 }], 4),
            vec![],
            "a committed range past the end"
        );
    }

    #[test]
    fn ndjson_rows_skip_committed_ranges_too() {
        let plan = plan("incoming/spring/clicks.ndjson", vec![RowRange { first: 2, last: 3 }], 10);
        let body = (1..=5).map(|i| format!("{{\"click_id\":\"n{i}\",\"ts\":1764324000}}\n\n")).collect::<String>();
        let (tx, mut rx) = mpsc::channel(1);
        let reading = std::thread::spawn(move || read_file(std::io::Cursor::new(body.into_bytes()), plan, tx));
        let mut ranges = Vec::new();
        while let Some(message) = rx.blocking_recv() {
            let chunk = message.unwrap();
            let ids: Vec<String> = chunk.clicks.iter().map(|c| c.click.click_id.to_string()).collect();
            ranges.push((chunk.range(), ids));
        }
        reading.join().unwrap();
        assert_eq!(
            ranges,
            vec![
                (RowRange { first: 1, last: 1 }, vec!["n1".to_string()]),
                (RowRange { first: 4, last: 5 }, vec!["n4".to_string(), "n5".to_string()]),
            ],
            "blank lines are not rows"
        );
    }
}
