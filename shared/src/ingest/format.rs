//! What a click file is: its compression and its format, from the key's extensions, the object's
//! Content-Encoding and the first bytes.
//!
//! | format | extensions | first bytes |
//! |---|---|---|
//! | CSV (comma, semicolon, tab or pipe; quoted fields, BOM, CRLF) | `.csv`, `.tsv` | printable text |
//! | NDJSON, one object per line | `.ndjson`, `.jsonl`, `.json` | `{` |
//! | a JSON array of objects (streamed element by element) | `.json` | `[` |
//! | Apache Parquet | `.parquet`, `.pq` | `PAR1` |
//!
//! | compression | extensions | Content-Encoding | magic bytes |
//! |---|---|---|---|
//! | gzip (every member) | `.gz`, `.gzip` | `gzip` | `1f 8b` |
//! | zstd | `.zst`, `.zstd` | `zstd` | `28 b5 2f fd` |
//! | bzip2 | `.bz2` | `bzip2` | `BZh` |

use super::columns::FileError;

/// How the object's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Bzip2,
}

impl Compression {
    const BY_EXTENSION: [(&str, Self); 5] = [
        (".gz", Self::Gzip),
        (".gzip", Self::Gzip),
        (".zst", Self::Zstd),
        (".zstd", Self::Zstd),
        (".bz2", Self::Bzip2),
    ];

    /// By the key's last extension, then Content-Encoding, then the magic bytes.
    pub fn detect(key: &str, content_encoding: Option<&str>, head: &[u8]) -> Self {
        let lower = key.to_ascii_lowercase();
        if let Some((_, c)) = Self::BY_EXTENSION.iter().find(|(ext, _)| lower.ends_with(ext)) {
            return *c;
        }
        match content_encoding.map(str::to_ascii_lowercase).as_deref() {
            Some("gzip" | "x-gzip") => return Self::Gzip,
            Some("zstd") => return Self::Zstd,
            Some("bzip2" | "x-bzip2") => return Self::Bzip2,
            _ => {}
        }
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b)) {
            Self::Bzip2
        } else {
            Self::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
        }
    }

    /// The key without a compression extension.
    fn strip(key: &str) -> &str {
        let lower = key.to_ascii_lowercase();
        Self::BY_EXTENSION
            .iter()
            .find(|(ext, _)| lower.ends_with(ext))
            .map_or(key, |(ext, _)| &key[..key.len() - ext.len()])
    }
}

/// The formats a click file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Delimited text with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
    /// One JSON array of objects.
    JsonArray,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format the key's extension names (after any compression extension), when it names exactly one:
    /// `.json` may be NDJSON or an array, so the first bytes decide.
    pub fn from_key(key: &str) -> Option<Self> {
        let name = Compression::strip(key).to_ascii_lowercase();
        if name.ends_with(".csv") || name.ends_with(".tsv") {
            Some(Self::Csv)
        } else if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
            Some(Self::Ndjson)
        } else if name.ends_with(".parquet") || name.ends_with(".pq") {
            Some(Self::Parquet)
        } else {
            None
        }
    }

    /// Decides from the (decompressed) first bytes: `PAR1` is Parquet, `[` a JSON array, `{` NDJSON, a printable
    /// first line CSV. Anything else (binary, another text format) is refused with a clear reason.
    pub fn sniff(head: &[u8]) -> Result<Self, FileError> {
        if head.starts_with(b"PAR1") {
            return Ok(Self::Parquet);
        }
        let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
        let first = text.iter().copied().find(|b| !b.is_ascii_whitespace()).ok_or(FileError::Empty)?;
        match first {
            b'{' => return Ok(Self::Ndjson),
            b'[' => return Ok(Self::JsonArray),
            _ => {}
        }
        let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
        // The head may end inside a multi-byte character: judge only the complete ones.
        let valid = match std::str::from_utf8(line) {
            Ok(l) => l,
            Err(e) if e.error_len().is_none() => std::str::from_utf8(&line[..e.valid_up_to()]).unwrap_or_default(),
            Err(_) => return Err(FileError::UnknownFormat("the first line is not text".into())),
        };
        if valid.chars().all(|c| !c.is_control() || c == '\r' || c == '\t') {
            Ok(Self::Csv)
        } else {
            Err(FileError::UnknownFormat("the first line is not text".into()))
        }
    }

    /// The format of a key and its decompressed first bytes: the key's extension when it names one, else the bytes.
    pub fn of(key: &str, head: &[u8]) -> Result<Self, FileError> {
        match Self::from_key(key) {
            Some(format) if !head.is_empty() => Ok(format),
            _ => Self::sniff(head),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Csv => "CSV",
            Self::Ndjson => "NDJSON",
            Self::JsonArray => "JSON array",
            Self::Parquet => "Parquet",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_by_key_then_bytes() {
        assert_eq!(FileFormat::from_key("incoming/c/a.CSV.gz"), Some(FileFormat::Csv));
        assert_eq!(FileFormat::from_key("incoming/c/a.tsv.zst"), Some(FileFormat::Csv));
        assert_eq!(FileFormat::from_key("incoming/c/a.jsonl"), Some(FileFormat::Ndjson));
        assert_eq!(FileFormat::from_key("incoming/c/a.parquet"), Some(FileFormat::Parquet));
        assert_eq!(FileFormat::from_key("incoming/c/a.json.bz2"), None, ".json is decided by its bytes");
        assert_eq!(FileFormat::sniff(b"\n {\"click_id\":1}").unwrap(), FileFormat::Ndjson);
        assert_eq!(FileFormat::sniff(b"\xef\xbb\xbf[\n  {\"click_id\": 1}").unwrap(), FileFormat::JsonArray);
        assert_eq!(FileFormat::sniff(b"click_id,ts\n").unwrap(), FileFormat::Csv);
        assert_eq!(FileFormat::sniff(b"PAR1\x15\x04").unwrap(), FileFormat::Parquet);
        assert_eq!(FileFormat::sniff("click_id;caf\u{e9}".as_bytes()).unwrap(), FileFormat::Csv);
        assert!(matches!(FileFormat::sniff(b"\x00\x01\x02"), Err(FileError::UnknownFormat(_))));
        assert_eq!(FileFormat::sniff(b"  \n"), Err(FileError::Empty));
    }

    #[test]
    fn compression_by_extension_encoding_and_magic() {
        assert_eq!(Compression::detect("a.csv.GZ", None, b""), Compression::Gzip);
        assert_eq!(Compression::detect("a.csv.zst", None, b""), Compression::Zstd);
        assert_eq!(Compression::detect("a.csv.bz2", None, b""), Compression::Bzip2);
        assert_eq!(Compression::detect("a.csv", Some("gzip"), b""), Compression::Gzip);
        assert_eq!(Compression::detect("a.csv", Some("zstd"), b""), Compression::Zstd);
        assert_eq!(Compression::detect("a.csv", None, &[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::detect("a.csv", None, &[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(Compression::detect("a.csv", None, b"BZh91AY&SY"), Compression::Bzip2);
        assert_eq!(Compression::detect("a.csv", None, b"BZh,ts"), Compression::None, "a CSV header, not bzip2");
        assert_eq!(Compression::detect("a.csv", None, b"click_id"), Compression::None);
    }
}
