//! S3 object keys as they arrive in events.

use percent_encoding::percent_decode_str;

use crate::domain::CampaignId;

/// Keys arrive URL-encoded in S3 event notifications, form-style: `+` for a space, `%xx` for other bytes
/// (`%2B` for a literal `+`). Returns `None` when the decoded bytes are not UTF-8.
pub fn decode_event_key(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8().ok().map(|k| k.into_owned())
}

/// Encodes a key the way S3 event notifications carry it (the inverse of [`decode_event_key`]).
pub fn encode_event_key(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The campaign an upload key names: `incoming/<campaign_id>/...`. `None` when the key names none (rows must
/// then carry `campaign_id`); an error when the segment is present but is not a valid campaign id.
pub fn campaign_from_key(key: &str) -> Result<Option<CampaignId>, crate::domain::InvalidId> {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("incoming"), Some(segment), Some(_)) => CampaignId::parse(segment).map(Some),
        _ => Ok(None),
    }
}

/// Where an upload's object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadKey {
    pub bucket: String,
    pub key: String,
}

impl UploadKey {
    /// The rejects report beside the upload: under `rejects/`, the path it had under `incoming/` followed by
    /// `.rejects.csv` (`rejects/<campaign>/clicks.csv.gz.rejects.csv`): plain CSV whatever the upload was, and two
    /// uploads that differ only in their extension keep a report each.
    pub fn rejects_key(&self) -> String {
        let original = self.key.strip_prefix("incoming/").unwrap_or(&self.key);
        format!("rejects/{original}.rejects.csv")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_are_decoded() {
        assert_eq!(decode_event_key("incoming/spring/my+clicks%2B1.csv").unwrap(), "incoming/spring/my clicks+1.csv");
        assert_eq!(decode_event_key("incoming/spring/caf%C3%A9+%E2%82%AC.csv").unwrap(), "incoming/spring/café €.csv");
        assert_eq!(decode_event_key("incoming/%FF.csv"), None);
    }

    #[test]
    fn encoding_round_trips() {
        for key in ["incoming/spring/a b+c%.csv", "incoming/café/€ 1.csv.gz"] {
            assert_eq!(decode_event_key(&encode_event_key(key)).unwrap(), key);
        }
        assert_eq!(encode_event_key("incoming/a b+c.csv"), "incoming/a+b%2Bc.csv");
    }

    #[test]
    fn campaign_comes_from_the_key() {
        assert_eq!(campaign_from_key("incoming/spring/a.csv").unwrap().unwrap().as_str(), "spring");
        assert_eq!(campaign_from_key("incoming/spring/day/a.csv").unwrap().unwrap().as_str(), "spring");
        assert_eq!(campaign_from_key("incoming/a.csv").unwrap(), None);
        assert_eq!(campaign_from_key("other/spring/a.csv").unwrap(), None);
        assert!(campaign_from_key("incoming/bad id/a.csv").is_err());
    }

    #[test]
    fn rejects_sit_beside_the_upload() {
        let key = UploadKey { bucket: "b".into(), key: "incoming/spring/a b.csv.gz".into() };
        assert_eq!(key.rejects_key(), "rejects/spring/a b.csv.gz.rejects.csv");
        let key = UploadKey { bucket: "b".into(), key: "incoming/spring/clicks.csv".into() };
        assert_eq!(key.rejects_key(), "rejects/spring/clicks.csv.rejects.csv");
        let key = UploadKey { bucket: "b".into(), key: "incoming/spring/clicks.ndjson".into() };
        assert_eq!(key.rejects_key(), "rejects/spring/clicks.ndjson.rejects.csv");
    }
}
