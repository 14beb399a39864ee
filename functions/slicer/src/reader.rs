//! Reads a click file as a stream, on a blocking thread, and hands validated chunks to the writer.
//!
//! Memory stays flat whatever the file's size: bytes flow from the S3 body through an optional gzip decoder
//! and the CSV or NDJSON reader, and at most two chunks wait in the channel.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use clickpacer::domain::{CampaignId, CampaignStatus};
use clickpacer::ingest::{
    ClickRow, Columns, FileError, FileFormat, RejectedRow, RowContext, is_gzip, validate_csv_record, validate_json_line,
};
use flate2::read::MultiGzDecoder;
use tokio::sync::mpsc;

/// Rows validated together and written in one transaction.
#[derive(Debug, Default)]
pub struct Chunk {
    pub clicks: Vec<ClickRow>,
    pub rejects: Vec<RejectedRow>,
    /// Data rows this chunk covers (clicks + rejects).
    pub rows: u64,
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
    pub campaigns: HashMap<CampaignId, CampaignStatus>,
    /// Rows already committed by an earlier invocation: read past, not validated again.
    pub skip_rows: u64,
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
    let mut chunker = Chunker { plan, out, chunk: Chunk::default() };
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
}

impl Chunker<'_> {
    fn push(&mut self, row: Result<ClickRow, RejectedRow>) -> Result<(), ReadError> {
        match row {
            Ok(click) => self.chunk.clicks.push(click),
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
        if row_number <= chunker.plan.skip_rows {
            continue;
        }
        chunker.push(validate_csv_record(&columns, &record, row_number, ctx))?;
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
        if row_number <= chunker.plan.skip_rows {
            continue;
        }
        chunker.push(validate_json_line(trimmed, row_number, ctx))?;
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
