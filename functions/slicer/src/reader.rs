//! Reads a click file as a stream, on a blocking thread, and hands validated chunks to the writers.
//!
//! Memory stays flat whatever the file's size: bytes flow from the S3 body through an optional gzip decoder
//! and the CSV or NDJSON reader, and the channel holds a bounded number of chunks.
//!
//! A chunk is a contiguous run of rows none of which is committed yet: rows an earlier invocation committed
//! are read past (not validated again), and a chunk ends where such a run begins.

use std::io::{BufRead, BufReader, Read};

use clickpacer::domain::CampaignId;
use clickpacer::ingest::{
    CampaignDirectory, ClickRow, Columns, FileError, FileFormat, RejectedRow, RowContext, is_gzip, validate_csv_record,
    validate_json_line,
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
    let decoded: Box<dyn Read> = if is_gzip(&plan.key, plan.content_encoding.as_deref(), &head) {
        Box::new(MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let mut input = BufReader::with_capacity(256 * 1024, decoded);
    let head = input.fill_buf().map_err(io_error)?;
    let format = match FileFormat::from_key(&plan.key) {
        Some(format) if !head.is_empty() => format,
        _ => FileFormat::sniff(head)?,
    };
    let ctx = RowContext { key_campaign: plan.key_campaign.as_ref(), campaigns: &plan.campaigns };
    let mut chunker = Chunker { plan, out, chunk: Chunk::default(), next_committed: 0 };
    match format {
        FileFormat::Csv => read_csv(input, &ctx, &mut chunker)?,
        FileFormat::Ndjson => read_ndjson(input, &ctx, &mut chunker)?,
    }
    chunker.flush()
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
}

fn read_csv(input: impl Read, ctx: &RowContext<'_>, chunker: &mut Chunker<'_>) -> Result<(), ReadError> {
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
    let mut record = csv::ByteRecord::new();
    let mut row_number = 0u64;
    while reader.read_byte_record(&mut record).map_err(csv_error)? {
        row_number += 1;
        if chunker.committed(row_number)? {
            continue;
        }
        chunker.push(row_number, validate_csv_record(&columns, &record, row_number, ctx))?;
    }
    Ok(())
}

fn read_ndjson(mut input: impl BufRead, ctx: &RowContext<'_>, chunker: &mut Chunker<'_>) -> Result<(), ReadError> {
    let mut line = Vec::with_capacity(1024);
    let mut row_number = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(io_error)? == 0 {
            return Ok(());
        }
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        row_number += 1;
        if chunker.committed(row_number)? {
            continue;
        }
        chunker.push(row_number, validate_json_line(trimmed, row_number, ctx))?;
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
