//! Uploads: every click file with its counts, status and reasons, newest first; one upload with its
//! reconciliation (accepted = delivered + dead + cancelled + pending), its rejected rows grouped by reason, and a
//! short-lived link to its rejects report; and links a browser uploads a click file with.

use axum::extract::{Path, State};
use axum::{Json, Router, routing};
use chrono::{DateTime, Utc};
use clickpacer::domain::{CampaignId, CampaignStatus, FieldError};
use clickpacer::postgres::campaigns;
use clickpacer::postgres::reports::{self, ClickFates, RejectGroup};
use clickpacer::postgres::upload_list::{self, UploadFilter, UploadStatus, UploadSummary};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{JsonBody, QueryParams, id_cursor, page_limit};
use crate::problem::Problem;

/// How long a rejects report link works: long enough to click, short enough that a link pasted somewhere stops
/// working soon.
pub const REPORT_LINK_VALID_FOR: std::time::Duration = std::time::Duration::from_secs(15 * 60);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/uploads", routing::get(list))
        .route("/uploads/links", routing::post(upload_link))
        .route("/uploads/{upload_id}", routing::get(read))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Uploads of this campaign (the campaign their key names).
    campaign_id: Option<String>,
    /// `processing`, `completed` or `failed`.
    status: Option<String>,
    /// 1-200, 50 by default.
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadList {
    pub items: Vec<UploadSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One upload in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadDetail {
    #[serde(flatten)]
    pub upload: UploadSummary,
    /// Its accepted clicks by fate; `holds` says whether every row and every click is accounted for.
    pub reconciliation: UploadReconciliation,
    /// Rejected rows grouped by reason (reasons that differ only in the values they quote are one group), most
    /// frequent first.
    pub rejects: Vec<RejectGroup>,
    /// A link to the rejects report, when rows were rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects_report: Option<ReportLink>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadReconciliation {
    /// `rows = accepted + rejected + duplicate`, every accepted row stored, and every click accounted for.
    pub holds: bool,
    /// Clicks stored for the upload: equals `accepted_rows`.
    pub stored_clicks: i64,
    #[serde(flatten)]
    pub fates: ClickFates,
}

/// A presigned link: it reads the object from S3 directly, without other credentials, until `expires_at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// Lists uploads a page at a time, newest first.
#[utoipa::path(get, path = "/uploads", tag = "uploads", params(ListParams),
    responses((status = 200, body = UploadList), (status = 400, body = Problem)))]
pub async fn list(
    State(app): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Json<UploadList>, Problem> {
    let campaign_id = p
        .campaign_id
        .map(|c| CampaignId::parse(c).map_err(|e| Problem::malformed(format!("campaign_id: {e}"))))
        .transpose()?;
    let status = p
        .status
        .as_deref()
        .map(|s| {
            UploadStatus::parse(s).ok_or_else(|| {
                Problem::malformed(format!("status {s:?} is not one of {}", UploadStatus::NAMES.join(", ")))
            })
        })
        .transpose()?;
    let limit = page_limit(p.limit)?;
    let before = id_cursor(p.cursor)?;
    let client = app.client().await?;
    let (items, next) = upload_list::page(&**client, &UploadFilter { campaign_id, status }, before, limit).await?;
    Ok(Json(UploadList { items, next_cursor: next.map(|id| id.to_string()) }))
}

/// One upload: counts, status, reconciliation, rejected rows by reason and a link to its rejects report.
#[utoipa::path(get, path = "/uploads/{upload_id}", tag = "uploads", params(("upload_id" = i64, Path)),
    responses((status = 200, body = UploadDetail), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn read(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<UploadDetail>, Problem> {
    let upload_id = id
        .parse::<i64>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| Problem::malformed(format!("upload id {id:?} is not a positive integer")))?;
    let client = app.client().await?;
    let Some(upload) = upload_list::get(&**client, upload_id).await? else {
        return Err(Problem::not_found(format!("no upload {upload_id}")));
    };
    let reconciled = reports::upload(&**client, upload_id).await?;
    drop(client);
    let rejects_report = match &upload.rejects_key {
        Some(key) => {
            let url = app.objects.presigned_get(&upload.bucket, key, REPORT_LINK_VALID_FOR).await?;
            let expires_at = Utc::now() + REPORT_LINK_VALID_FOR;
            Some(ReportLink { url, expires_at })
        }
        None => None,
    };
    let (reconciliation, rejects) = match reconciled {
        Some(r) => {
            (UploadReconciliation { holds: r.holds(), stored_clicks: r.stored_clicks, fates: r.fates }, r.rejects)
        }
        None => (UploadReconciliation { holds: true, stored_clicks: 0, fates: ClickFates::default() }, Vec::new()),
    };
    Ok(Json(UploadDetail { upload, reconciliation, rejects, rejects_report }))
}

/// A file to upload into a campaign's folder.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// An existing campaign that is not archived.
    pub campaign_id: String,
    /// The file's name, 1-200 characters, no `/` or control characters; its extension tells the format (see the
    /// README's "Click files").
    pub file_name: String,
}

/// A presigned link a browser uploads one file with: `PUT` the file's bytes to `url` before `expires_at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadLink {
    pub method: &'static str,
    pub url: String,
    pub key: String,
    pub expires_at: DateTime<Utc>,
}

/// A link to upload one click file into `incoming/<campaign>/` of the upload bucket: the slicer takes it from
/// there as it takes any upload.
#[utoipa::path(post, path = "/uploads/links", tag = "uploads", request_body = UploadRequest,
    responses((status = 200, body = UploadLink), (status = 400, body = Problem), (status = 422, body = Problem)))]
pub async fn upload_link(
    State(app): State<AppState>,
    JsonBody(request): JsonBody<UploadRequest>,
) -> Result<Json<UploadLink>, Problem> {
    let mut errors = Vec::new();
    let name = request.file_name.trim();
    if !(1..=200).contains(&name.chars().count()) || name.contains('/') || name.chars().any(char::is_control) {
        errors.push(FieldError::new("file_name", "must have 1 to 200 characters, without / or control characters"));
    }
    match CampaignId::parse(request.campaign_id.clone()) {
        Err(e) => errors.push(FieldError::new("campaign_id", e.to_string())),
        Ok(id) => {
            let client = app.client().await?;
            match campaigns::get(&**client, &id).await? {
                None => errors.push(FieldError::new("campaign_id", format!("no campaign {:?}", id.as_str()))),
                Some(c) if c.status == CampaignStatus::Archived => {
                    errors.push(FieldError::new("campaign_id", format!("campaign {:?} is archived", id.as_str())))
                }
                Some(_) => {}
            }
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let key = format!("incoming/{}/{name}", request.campaign_id);
    let url = app.objects.presigned_put(&app.upload_bucket, &key, UPLOAD_LINK_VALID_FOR).await?;
    Ok(Json(UploadLink { method: "PUT", url, key, expires_at: Utc::now() + UPLOAD_LINK_VALID_FOR }))
}

/// How long an upload link works: long enough for a large file over a slow line.
pub const UPLOAD_LINK_VALID_FOR: std::time::Duration = std::time::Duration::from_secs(60 * 60);
