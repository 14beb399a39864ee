//! Reads a click file as a stream, on a blocking thread, and hands validated chunks to the writers.
//!
//! Memory stays flat whatever the file's size: bytes flow from the S3 body through an optional gzip decoder
//! and the CSV or NDJSON reader, and the channel holds a bounded number of chunks.
//!
//! A chunk is a contiguous run of rows none of which is committed yet: rows an earlier invocation committed
//! are read past (not validated again), and a chunk ends where such a run begins.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::rc::Rc;

use clickpacer::config::vars;
use clickpacer::domain::CampaignId;
use clickpacer::ingest::rejects::truncate_raw;
use clickpacer::ingest::{
    CampaignDirectory, ClickRow, Columns, FileError, FileFormat, IngestLimits, RejectReason, RejectedRow, RowContext,
    is_gzip, validate_csv_record, validate_json_line,
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
}

/// Reads `body` to the end (or until the receiver is dropped), sending chunks; the last message is `Err` when
/// reading failed.
pub fn read_file(body: impl Read, plan: ReadPlan, out: mpsc::Sender<Result<Chunk, ReadError>>) {
    if let Err(e) = read_into(body, &plan, &out) {
        let _ = out.blocking_send(Err(e));
    }
}

fn read_into(body: impl Read, plan: &ReadPlan, out: &mpsc::Sender<Result<Chunk, ReadError>>) -> Result<(), ReadError> {
    let mut raw = BufReader::with_capacity(256 * 1024, body);
    let head = raw.fill_buf().map_err(io_error)?.to_vec();
    let gzip = is_gzip(&plan.key, plan.content_encoding.as_deref(), &head);
    let decoded: Box<dyn Read> = if gzip { Box::new(MultiGzDecoder::new(raw)) } else { Box::new(raw) };
    let guard = ReadGuard::new(&plan.limits, gzip);
    let mut input = BufReader::with_capacity(READ_BUFFER, Guarded { inner: decoded, guard: Rc::clone(&guard) });
    let head = input.fill_buf().map_err(io_error)?;
    let format = match FileFormat::from_key(&plan.key) {
        Some(format) if !head.is_empty() => format,
        _ => FileFormat::sniff(head)?,
    };
    let ctx = RowContext {
        key_campaign: plan.key_campaign.as_ref(),
        campaigns: &plan.campaigns,
        max_row_bytes: plan.limits.max_row_bytes,
    };
    let mut chunker = Chunker { plan, out, chunk: Chunk::default(), next_committed: 0 };
    let read = match format {
        FileFormat::Csv => read_csv(input, &ctx, &mut chunker, &guard),
        FileFormat::Ndjson => read_ndjson(input, &ctx, &mut chunker),
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
/// reader it wraps and the row loop share it.
struct ReadGuard {
    read: Cell<u64>,
    record_start: Cell<u64>,
    max_total: u64,
    max_record: u64,
    max_row_bytes: usize,
    gzip: bool,
}

/// Why the guard stopped the bytes.
#[derive(Debug)]
enum Overrun {
    Total { limit: u64, gzip: bool },
    Record { limit: usize },
}

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Total { limit, gzip: true } => {
                write!(f, "the file decompresses to more than {limit} bytes ({})", vars::SLICER_MAX_DECOMPRESSED_BYTES)
            }
            Self::Total { limit, gzip: false } => {
                write!(f, "the file holds more than {limit} bytes ({})", vars::SLICER_MAX_DECOMPRESSED_BYTES)
            }
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
    fn new(limits: &IngestLimits, gzip: bool) -> Rc<Self> {
        Rc::new(Self {
            read: Cell::new(0),
            record_start: Cell::new(0),
            max_total: limits.max_decompressed_bytes,
            // What the readers buffer ahead comes on top of the record's own bytes.
            max_record: limits.max_record_read() + READ_BUFFER as u64 + 64 * 1024,
            max_row_bytes: limits.max_row_bytes,
            gzip,
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
        if read.saturating_sub(g.record_start.get()) > g.max_record {
            return Err(std::io::Error::other(Overrun::Record { limit: g.max_row_bytes }));
        }
        // Up to the limit exactly, so every row within it is read; past it only to learn whether the file ends.
        let room = g.max_total.saturating_sub(read);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX)).max(1);
        let n = self.inner.read(&mut buf[..want])?;
        if room == 0 && n > 0 {
            return Err(std::io::Error::other(Overrun::Total { limit: g.max_total, gzip: g.gzip }));
        }
        g.read.set(read + n as u64);
        Ok(n)
    }
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

fn read_csv(
    input: impl Read,
    ctx: &RowContext<'_>,
    chunker: &mut Chunker<'_>,
    guard: &ReadGuard,
) -> Result<(), ReadError> {
    let limits = chunker.plan.limits;
    let mut reader = csv::ReaderBuilder::new().flexible(true).has_headers(true).from_reader(input);
    let header = reader.byte_headers().map_err(csv_error)?.clone();
    let names: Vec<&str> = header
        .iter()
        .map(std::str::from_utf8)
        .collect::<Result<_, _>>()
        .map_err(|_| FileError::UnknownFormat("the header row is not UTF-8 text".into()))?;
    if names.iter().all(|n| n.trim().is_empty()) {
        return Err(FileError::Empty.into());
    }
    let columns = Columns::from_header(&names)?;
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

fn read_ndjson(mut input: impl BufRead, ctx: &RowContext<'_>, chunker: &mut Chunker<'_>) -> Result<(), ReadError> {
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

fn io_error(e: std::io::Error) -> ReadError {
    match e.kind() {
        // flate2 reports corrupt or truncated gzip data this way; retrying cannot help. (A broken connection
        // surfaces as another kind from the S3 body.)
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput | std::io::ErrorKind::UnexpectedEof => {
            FileError::BadCompression(e.to_string()).into()
        }
        _ => ReadError::Transient(e.to_string()),
    }
}

fn csv_error(e: csv::Error) -> ReadError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io_error(io),
        other => FileError::Read(format!("{other:?}")).into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clickpacer::domain::CampaignStatus;

    use super::*;

    /// Reads `body` as `incoming/spring/clicks.csv` and lists the chunks: (first row, last row, clicks, rejects).
    fn chunks_of(body: String, committed: Vec<RowRange>, chunk_rows: usize) -> Vec<(u64, u64, usize, usize)> {
        let spring = CampaignId::parse("spring").unwrap();
        let plan = ReadPlan {
            key: "incoming/spring/clicks.csv".into(),
            content_encoding: None,
            key_campaign: Some(spring.clone()),
            campaigns: CampaignDirectory {
                statuses: HashMap::from([(spring, CampaignStatus::Active)]),
                ..CampaignDirectory::default()
            },
            committed,
            chunk_rows,
            limits: IngestLimits::default(),
        };
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
        let spring = CampaignId::parse("spring").unwrap();
        let plan = ReadPlan {
            key: "incoming/spring/clicks.ndjson".into(),
            content_encoding: None,
            key_campaign: Some(spring.clone()),
            campaigns: CampaignDirectory {
                statuses: HashMap::from([(spring, CampaignStatus::Active)]),
                ..CampaignDirectory::default()
            },
            committed: vec![RowRange { first: 2, last: 3 }],
            chunk_rows: 10,
            limits: IngestLimits::default(),
        };
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
