//! How much one click file may hold. Each limit is a setting (the slicer's environment, see
//! [`crate::config::SlicerConfig`]) with a default that fits any real export: past one, the upload ends with a
//! status naming the limit and a rejects entry at the row where reading stopped; every valid row before it is
//! kept.

/// The limits one upload is read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// Largest object read, as stored (compressed or not): checked before reading.
    pub max_object_bytes: u64,
    /// Most bytes a file may decompress to: a gzip bomb stops here, not at the end of memory or of the budget.
    pub max_decompressed_bytes: u64,
    /// Most data rows in one file.
    pub max_rows: u64,
    /// Longest row: a longer one is rejected without being parsed. A CSV record still open this far past it (an
    /// unterminated quote swallowing the rest of the file) ends the file, since no later row can be told apart.
    pub max_row_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_object_bytes: 10 * GIB,
            max_decompressed_bytes: 50 * GIB,
            max_rows: 100_000_000,
            max_row_bytes: 64 * 1024,
        }
    }
}

const GIB: u64 = 1 << 30;

impl IngestLimits {
    /// How far a CSV record may run before reading stops: the row limit plus what the readers buffer.
    pub fn max_record_read(&self) -> u64 {
        (self.max_row_bytes as u64).saturating_mul(4).max(1 << 20)
    }
}
