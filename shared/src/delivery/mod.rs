//! Delivering a click to a partner, as pure functions: no clock, no randomness, no I/O.
//!
//! - [`render`]: a [`Partner`](crate::domain::Partner) and a [`ClickForDelivery`] become a [`RenderedRequest`]
//!   (GET URL template, POST JSON body template or POST form, custom headers, `Idempotency-Key`, optional HMAC
//!   signature). [`CompiledPartner`] parses its templates once so the bridge renders many clicks without
//!   re-parsing.
//! - [`validate`]: everything wrong with a partner, field by field, when it is saved.
//! - [`outcome`]: what a partner's answer (or a transport error) means: [`Outcome::Delivered`],
//!   [`Outcome::Retry`] or [`Outcome::Permanent`].
//! - [`backoff`]: capped exponential backoff with full jitter, combined with Retry-After.
//! - [`health`]: the adaptive per-partner allowance (AIMD) the pacer reads.
//! - [`pace`]: send-time pacing for partners without a configured rate (slow start, learned rate, slots).
//! - [`ssrf`]: which addresses a partner URL may reach.
//!
//! The bridge supplies what is impure: the current time, a random number for jitter, DNS answers, the network.

pub mod backoff;
pub mod health;
pub mod outcome;
pub mod pace;
pub mod render;
pub mod ssrf;
mod template;
pub mod validate;

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::domain::{CampaignId, ClickId, PartnerId};
use crate::ingest::row::ClickRow;

pub use backoff::{attempts_exhausted, backoff, next_attempt_at};
pub use health::{HealthChange, ObservedHealth, PartnerHealth};
pub use outcome::{Outcome, TransportError, classify, classify_transport, parse_retry_after};
pub use render::{
    CompiledPartner, IDEMPOTENCY_HEADER, RenderError, RenderRequestError, RenderedRequest, SIGNATURE_HEADER,
    SignatureError, render_request, sign, verify_signature,
};
pub use ssrf::{SsrfError, check_ip, check_url, filter_resolved, is_forbidden};
pub use validate::{sample_click, validate_partner};

/// One click as the bridge delivers it: the stored click plus what identifies this delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct ClickForDelivery {
    pub campaign_id: CampaignId,
    pub click_id: ClickId,
    pub clicked_at: DateTime<Utc>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub landing_url: Option<String>,
    pub sub_id: Option<String>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The batch this click was released in (`{batch_id}`).
    pub batch_id: i64,
    /// Sent as `Idempotency-Key` on every attempt; see [`idempotency_key`].
    pub idempotency_key: String,
}

impl ClickForDelivery {
    /// The click of a stored row, with the stable key of its delivery to `partner_id`.
    pub fn from_row(row: &ClickRow, partner_id: &PartnerId, batch_id: i64) -> Self {
        Self {
            idempotency_key: idempotency_key(partner_id, &row.campaign_id, &row.click_id),
            campaign_id: row.campaign_id.clone(),
            click_id: row.click_id.clone(),
            clicked_at: row.clicked_at,
            ip: row.ip,
            user_agent: row.user_agent.clone(),
            landing_url: row.landing_url.clone(),
            sub_id: row.sub_id.clone(),
            attributes: row.attributes.clone(),
            batch_id,
        }
    }
}

/// The idempotency key of one click's delivery to one partner: the same on every attempt, every redelivery and
/// every replay (it does not depend on the batch, the attempt or the time), different for another click or
/// partner. 32 hex digits of SHA-256 over the three ids (length-prefixed, so no two id triples collide by
/// concatenation); opaque to partners and free of anything they could read a click's data from.
pub fn idempotency_key(partner_id: &PartnerId, campaign_id: &CampaignId, click_id: &ClickId) -> String {
    let mut hash = Sha256::new();
    for part in [partner_id.as_str(), campaign_id.as_str(), click_id.as_str()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    format!("cp1-{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_stable_and_distinct() {
        let p = PartnerId::parse("acme").unwrap();
        let c = CampaignId::parse("spring").unwrap();
        let k = idempotency_key(&p, &c, &ClickId::parse("c1").unwrap());
        assert_eq!(k, idempotency_key(&p, &c, &ClickId::parse("c1").unwrap()));
        assert_eq!(k.len(), 4 + 32);
        assert!(k.starts_with("cp1-"));
        assert_ne!(k, idempotency_key(&p, &c, &ClickId::parse("c2").unwrap()));
        assert_ne!(k, idempotency_key(&PartnerId::parse("other").unwrap(), &c, &ClickId::parse("c1").unwrap()));
        // Length prefixes: ("ab", "c") and ("a", "bc") differ.
        let c_ab = CampaignId::parse("ab").unwrap();
        let c_a = CampaignId::parse("a").unwrap();
        assert_ne!(
            idempotency_key(&p, &c_ab, &ClickId::parse("c").unwrap()),
            idempotency_key(&p, &c_a, &ClickId::parse("bc").unwrap())
        );
    }
}
