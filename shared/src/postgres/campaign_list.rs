//! Campaigns a page at a time, for the management API: filters, a sort key from an allowlist and keyset
//! pagination (a page starts after the sort key and id of the last row of the page before it, so pages stay
//! stable and cheap however deep they go). Every value is a query parameter; only allowlisted column names are
//! ever written into the SQL.

use tokio_postgres::GenericClient;

use super::DbError;
use super::campaigns::{COLUMNS, STORED, StoredCampaign, stored_from_row};
use crate::domain::{CampaignStatus, PartnerId};

/// What a campaign list is sorted by; the campaign id breaks ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CampaignSort {
    #[default]
    CampaignId,
    Name,
    CreatedAt,
    UpdatedAt,
}

impl CampaignSort {
    pub const NAMES: [&'static str; 4] = ["campaign_id", "name", "created_at", "updated_at"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "campaign_id" => Some(Self::CampaignId),
            "name" => Some(Self::Name),
            "created_at" => Some(Self::CreatedAt),
            "updated_at" => Some(Self::UpdatedAt),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The column, and the type its key is compared as.
    fn column(self) -> (&'static str, &'static str) {
        match self {
            Self::CampaignId => ("campaign_id", "text"),
            Self::Name => ("name", "text"),
            Self::CreatedAt => ("created_at", "timestamptz"),
            Self::UpdatedAt => ("updated_at", "timestamptz"),
        }
    }
}

/// Which campaigns a list holds; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CampaignFilter {
    pub status: Option<CampaignStatus>,
    pub partner_id: Option<PartnerId>,
    /// Found in the campaign's id or name, ignoring case.
    pub text: Option<String>,
}

/// Where a page starts: just after this sort key and campaign id, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub sort: CampaignSort,
    pub descending: bool,
    pub key: String,
    pub campaign_id: String,
}

impl Cursor {
    /// An opaque token for clients (hex, so it needs no escaping in a query string).
    pub fn encode(&self) -> String {
        let order = if self.descending { "desc" } else { "asc" };
        hex::encode(format!("{}\u{1f}{order}\u{1f}{}\u{1f}{}", self.sort.name(), self.key, self.campaign_id))
    }

    pub fn decode(token: &str) -> Option<Self> {
        let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
        let mut parts = text.split('\u{1f}');
        let (sort, order, key, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let descending = match order {
            "asc" => false,
            "desc" => true,
            _ => return None,
        };
        Some(Self { sort: CampaignSort::parse(sort)?, descending, key: key.into(), campaign_id: id.into() })
    }
}

/// One page, and the cursor of the next when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignPage {
    pub items: Vec<StoredCampaign>,
    pub next: Option<Cursor>,
}

/// Up to `limit` (at least 1) campaigns matching `filter` in `sort` order, after `after` (whose sort and order win).
pub async fn page(
    db: &impl GenericClient,
    filter: &CampaignFilter,
    sort: CampaignSort,
    descending: bool,
    after: Option<&Cursor>,
    limit: u32,
) -> Result<CampaignPage, DbError> {
    let limit = limit.max(1);
    let (sort, descending) = after.map_or((sort, descending), |c| (c.sort, c.descending));
    let (column, key_type) = sort.column();
    let (cmp, order) = if descending { ("<", "DESC") } else { (">", "ASC") };
    let sql = format!(
        "SELECT {COLUMNS}, {STORED}, {column}::text AS sort_key FROM campaigns
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR partner_id = $2)
           AND ($3::text IS NULL OR strpos(lower(campaign_id), lower($3)) > 0 OR strpos(lower(name), lower($3)) > 0)
           AND ($4::text IS NULL OR ({column}, campaign_id) {cmp} ($4::{key_type}, $5::text))
         ORDER BY {column} {order}, campaign_id {order}
         LIMIT $6"
    );
    let status = filter.status.map(CampaignStatus::as_str);
    let partner = filter.partner_id.as_ref().map(PartnerId::as_str);
    let (key, id) = after.map_or((None, None), |c| (Some(c.key.as_str()), Some(c.campaign_id.as_str())));
    // One row more than the page says whether another page follows.
    let rows = db.query(&sql, &[&status, &partner, &filter.text, &key, &id, &(i64::from(limit) + 1)]).await?;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = match page.last() {
        Some(last) if rows.len() > page.len() => {
            Some(Cursor { sort, descending, key: last.try_get("sort_key")?, campaign_id: last.try_get("campaign_id")? })
        }
        _ => None,
    };
    let items = page.iter().map(stored_from_row).collect::<Result<_, _>>()?;
    Ok(CampaignPage { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_anything_else() {
        let c = Cursor {
            sort: CampaignSort::CreatedAt,
            descending: true,
            key: "2026-12-01 10:00:00.123456+00".into(),
            campaign_id: "spring".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode(&hex::encode("colour\u{1f}asc\u{1f}k\u{1f}id")), None);
    }
}
