//! A campaign as people write it: the management API's request body, checked field by field into a
//! [`Campaign`]. Every problem is reported at once, each against the field that has it, so a form can show them
//! next to their inputs. What needs the database (that the partner exists and is enabled) is checked by the caller.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::campaign::{Campaign, CampaignStatus, CatchUp, HourlyWeights, Micros, PacingMode};
use super::ids::{CampaignId, PartnerId};
use crate::ingest::IngestMapping;

/// One invalid field of a request: the field's path (`hourly_weights[3]`, `flight_end`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// The largest batch a campaign may cut its clicks into (one SQS message carries one batch).
pub const MAX_BATCH_SIZE: i64 = 10_000;

/// A campaign's configuration: everything a campaign manager sets. Its status changes through actions (pause,
/// resume, archive), not through this body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// 1-128 characters: letters, digits, `_`, `.`, `-`, starting with a letter or digit. Fixed once created; the
    /// slicer finds the campaign of a file by it (`incoming/<campaign_id>/...`).
    #[cfg_attr(feature = "openapi", schema(example = "spring-sale"))]
    pub campaign_id: String,
    /// What people call it, 1-200 characters.
    pub name: String,
    /// The partner its clicks go to; it must exist and be enabled.
    pub partner_id: String,
    /// IANA zone of the campaign's day (daily caps, daily budgets, hourly curves, even pacing).
    #[serde(default = "utc")]
    #[cfg_attr(feature = "openapi", schema(example = "America/New_York"))]
    pub time_zone: String,
    /// RFC 3339; nothing is released before it.
    #[serde(default)]
    pub flight_start: Option<String>,
    /// RFC 3339, after `flight_start`; nothing is released from it on.
    #[serde(default)]
    pub flight_end: Option<String>,
    /// `asap`, `even` or `hourly_curve`.
    #[serde(default = "asap")]
    pub pacing_mode: String,
    /// For `hourly_curve`: 24 non-negative weights, local hour 0 first, with a positive sum.
    #[serde(default)]
    pub hourly_weights: Option<Vec<f64>>,
    /// Behind plan, how `even` and `hourly_curve` catch up: `spread` (the default), `ahead` or `asap`.
    #[serde(default = "spread")]
    pub catch_up: String,
    /// For `ahead`: the pace in % of `spread`'s, 100-1000 (DV360's "ahead" is about 120).
    #[serde(default)]
    pub catch_up_percent: Option<i64>,
    #[serde(default)]
    pub max_per_second: Option<i64>,
    #[serde(default)]
    pub max_per_minute: Option<i64>,
    #[serde(default)]
    pub max_per_hour: Option<i64>,
    /// Clicks per local day; 0 releases nothing.
    #[serde(default)]
    pub daily_cap: Option<i64>,
    /// Integer micros of the account currency (1 unit = 1,000,000 micros).
    #[serde(default)]
    pub cost_per_click_micros: i64,
    #[serde(default)]
    pub daily_budget_micros: Option<i64>,
    #[serde(default)]
    pub total_budget_micros: Option<i64>,
    /// Clicks per batch, 1-10,000.
    #[serde(default = "default_batch_size")]
    pub batch_size: i64,
    /// How the campaign's click files map onto clicks: source columns, derived click ids, the zone of naive
    /// timestamps, the CSV delimiter. Every part may be left out.
    #[serde(default, skip_serializing_if = "IngestMapping::is_default")]
    pub ingest: IngestMapping,
}

fn utc() -> String {
    "UTC".into()
}
fn asap() -> String {
    "asap".into()
}
fn spread() -> String {
    "spread".into()
}
fn default_batch_size() -> i64 {
    100
}

impl CampaignSpec {
    /// The campaign this spec describes, with `status`; or every field that is wrong.
    pub fn validate(&self, status: CampaignStatus) -> Result<Campaign, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut check = |field: &str, message: Option<String>| {
            if let Some(message) = message {
                errors.push(FieldError::new(field, message));
            }
        };
        let campaign_id = CampaignId::parse(self.campaign_id.clone());
        check("campaign_id", campaign_id.as_ref().err().map(|e| e.reason.to_string()));
        let name_len = self.name.chars().count();
        check(
            "name",
            (!(1..=200).contains(&name_len) || self.name.trim().is_empty())
                .then(|| format!("must be 1-200 characters and not blank (got {name_len})")),
        );
        let partner_id = PartnerId::parse(self.partner_id.clone());
        check("partner_id", partner_id.as_ref().err().map(|e| e.reason.to_string()));
        let time_zone = self.time_zone.parse::<Tz>();
        check(
            "time_zone",
            time_zone.is_err().then(|| format!("{:?} is not an IANA time zone (e.g. Europe/Berlin)", self.time_zone)),
        );
        let flight_start = parse_instant(self.flight_start.as_deref());
        check("flight_start", flight_start.as_ref().err().cloned());
        let flight_end = parse_instant(self.flight_end.as_deref());
        check("flight_end", flight_end.as_ref().err().cloned());
        if let (Ok(Some(start)), Ok(Some(end))) = (&flight_start, &flight_end) {
            check("flight_end", (end <= start).then(|| "must be after flight_start".to_string()));
        }

        let pacing = match (self.pacing_mode.as_str(), &self.hourly_weights) {
            ("asap", None) => Some(PacingMode::Asap),
            ("even", None) => Some(PacingMode::Even),
            ("asap" | "even", Some(_)) => {
                check("hourly_weights", Some("only an hourly_curve campaign has hourly weights".into()));
                None
            }
            ("hourly_curve", None) => {
                check("hourly_weights", Some("an hourly_curve campaign needs 24 hourly weights".into()));
                None
            }
            ("hourly_curve", Some(weights)) => match weight_errors(weights) {
                Some((field, message)) => {
                    check(&field, Some(message));
                    None
                }
                None => HourlyWeights::parse(weights).ok().map(PacingMode::HourlyCurve),
            },
            (other, _) => {
                check("pacing_mode", Some(format!("{other:?} is not one of asap, even, hourly_curve")));
                None
            }
        };
        let catch_up = match (self.catch_up.as_str(), self.catch_up_percent) {
            ("spread", None) => Some(CatchUp::Spread),
            ("asap", None) => Some(CatchUp::Asap),
            ("spread" | "asap", Some(_)) => {
                check("catch_up_percent", Some("only the ahead catch-up takes a percent".into()));
                None
            }
            ("ahead", None) => {
                check("catch_up_percent", Some("the ahead catch-up needs a percent, 100-1000".into()));
                None
            }
            ("ahead", Some(p)) => match u16::try_from(p).ok().filter(|p| CatchUp::AHEAD_PERCENT.contains(p)) {
                Some(p) => Some(CatchUp::Ahead(p)),
                None => {
                    check("catch_up_percent", Some(format!("must be 100-1000 (got {p})")));
                    None
                }
            },
            (other, _) => {
                check("catch_up", Some(format!("{other:?} is not one of spread, ahead, asap")));
                None
            }
        };

        let mut rate = |field: &str, value: Option<i64>| -> Option<u32> {
            let value = value?;
            match u32::try_from(value).ok().filter(|v| (1..=i32::MAX as u32).contains(v)) {
                Some(v) => Some(v),
                None => {
                    check(field, Some(format!("must be a whole number from 1 to {} (got {value})", i32::MAX)));
                    None
                }
            }
        };
        let max_per_second = rate("max_per_second", self.max_per_second);
        let max_per_minute = rate("max_per_minute", self.max_per_minute);
        let max_per_hour = rate("max_per_hour", self.max_per_hour);
        let mut non_negative = |field: &str, value: Option<i64>| -> Option<i64> {
            let value = value?;
            if value < 0 {
                check(field, Some(format!("must not be negative (got {value})")));
            }
            Some(value.max(0))
        };
        let daily_cap = non_negative("daily_cap", self.daily_cap).map(|v| v as u64);
        let cost_per_click =
            Micros(non_negative("cost_per_click_micros", Some(self.cost_per_click_micros)).unwrap_or(0));
        let daily_budget = non_negative("daily_budget_micros", self.daily_budget_micros).map(Micros);
        let total_budget = non_negative("total_budget_micros", self.total_budget_micros).map(Micros);
        check(
            "batch_size",
            (!(1..=MAX_BATCH_SIZE).contains(&self.batch_size))
                .then(|| format!("must be from 1 to {MAX_BATCH_SIZE} (got {})", self.batch_size)),
        );
        for (field, message) in self.ingest.problems() {
            check(&field, Some(message));
        }

        match (campaign_id, partner_id, time_zone, flight_start, flight_end, pacing, catch_up) {
            (
                Ok(campaign_id),
                Ok(partner_id),
                Ok(time_zone),
                Ok(flight_start),
                Ok(flight_end),
                Some(pacing),
                Some(catch_up),
            ) if errors.is_empty() => Ok(Campaign {
                campaign_id,
                name: self.name.clone(),
                partner_id,
                status,
                time_zone,
                flight_start,
                flight_end,
                pacing,
                catch_up,
                max_per_second,
                max_per_minute,
                max_per_hour,
                daily_cap,
                cost_per_click,
                daily_budget,
                total_budget,
                batch_size: self.batch_size as u32,
                ingest: self.ingest.clone(),
            }),
            _ => Err(errors),
        }
    }
}

impl From<&Campaign> for CampaignSpec {
    fn from(c: &Campaign) -> Self {
        Self {
            campaign_id: c.campaign_id.to_string(),
            name: c.name.clone(),
            partner_id: c.partner_id.to_string(),
            time_zone: c.time_zone.name().into(),
            flight_start: c.flight_start.map(|t| t.to_rfc3339()),
            flight_end: c.flight_end.map(|t| t.to_rfc3339()),
            pacing_mode: c.pacing.name().into(),
            hourly_weights: match &c.pacing {
                PacingMode::HourlyCurve(w) => Some(w.weights().to_vec()),
                _ => None,
            },
            catch_up: c.catch_up.name().into(),
            catch_up_percent: match c.catch_up {
                CatchUp::Ahead(p) => Some(i64::from(p)),
                _ => None,
            },
            max_per_second: c.max_per_second.map(i64::from),
            max_per_minute: c.max_per_minute.map(i64::from),
            max_per_hour: c.max_per_hour.map(i64::from),
            daily_cap: c.daily_cap.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
            cost_per_click_micros: c.cost_per_click.0,
            daily_budget_micros: c.daily_budget.map(|m| m.0),
            total_budget_micros: c.total_budget.map(|m| m.0),
            batch_size: i64::from(c.batch_size),
            ingest: c.ingest.clone(),
        }
    }
}

fn parse_instant(value: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("{v:?} is not an RFC 3339 date-time such as 2026-12-01T00:00:00Z ({e})"))
        })
        .transpose()
}

/// The first problem with hourly weights, against its field: the count, or the first bad value, or the sum.
fn weight_errors(weights: &[f64]) -> Option<(String, String)> {
    if weights.len() != 24 {
        return Some(("hourly_weights".into(), format!("needs 24 values, one per local hour (got {})", weights.len())));
    }
    if let Some((hour, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite() || **w < 0.0) {
        return Some((format!("hourly_weights[{hour}]"), format!("must be finite and not negative (got {w})")));
    }
    (weights.iter().sum::<f64>() <= 0.0)
        .then(|| ("hourly_weights".into(), "at least one hour needs a positive weight".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CampaignSpec {
        serde_json::from_value(serde_json::json!({
            "campaign_id": "spring", "name": "Spring sale", "partner_id": "acme"
        }))
        .unwrap()
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_make_an_unlimited_asap_campaign() {
        let c = spec().validate(CampaignStatus::Active).unwrap();
        let mut expected = Campaign::unlimited(CampaignId::parse("spring").unwrap(), PartnerId::parse("acme").unwrap());
        expected.name = "Spring sale".into();
        assert_eq!(c, expected);
        assert_eq!(CampaignSpec::from(&c), spec(), "a campaign's spec reads back as it was written");
    }

    #[test]
    fn every_invalid_field_is_reported_against_its_name() {
        let mut s = spec();
        s.campaign_id = "bad id".into();
        s.name = " ".into();
        s.time_zone = "Mars/Olympus".into();
        s.flight_start = Some("2026-12-02T00:00:00Z".into());
        s.flight_end = Some("2026-12-01T00:00:00Z".into());
        s.max_per_second = Some(0);
        s.daily_cap = Some(-1);
        s.daily_budget_micros = Some(-5);
        s.batch_size = 10_001;
        s.catch_up = "ahead".into();
        s.catch_up_percent = Some(50);
        let errors = s.validate(CampaignStatus::Active).unwrap_err();
        assert_eq!(
            fields(errors),
            [
                "campaign_id",
                "name",
                "time_zone",
                "flight_end",
                "catch_up_percent",
                "max_per_second",
                "daily_cap",
                "daily_budget_micros",
                "batch_size"
            ]
        );
    }

    #[test]
    fn hourly_weights_are_checked_value_by_value() {
        let mut s = spec();
        s.pacing_mode = "hourly_curve".into();
        assert_eq!(fields(s.validate(CampaignStatus::Active).unwrap_err()), ["hourly_weights"]);
        let mut w = vec![1.0; 24];
        w[3] = -1.0;
        s.hourly_weights = Some(w);
        let errors = s.validate(CampaignStatus::Active).unwrap_err();
        assert_eq!(errors, [FieldError::new("hourly_weights[3]", "must be finite and not negative (got -1)")]);
        s.hourly_weights = Some(vec![0.0; 24]);
        assert_eq!(fields(s.validate(CampaignStatus::Active).unwrap_err()), ["hourly_weights"]);
        s.hourly_weights = Some(vec![1.0; 23]);
        assert_eq!(fields(s.validate(CampaignStatus::Active).unwrap_err()), ["hourly_weights"]);
        let mut w = vec![0.0; 24];
        w[9] = 2.0;
        s.hourly_weights = Some(w);
        let c = s.validate(CampaignStatus::Paused).unwrap();
        assert!(matches!(c.pacing, PacingMode::HourlyCurve(_)));
        assert_eq!(c.status, CampaignStatus::Paused);
        s.pacing_mode = "even".into();
        assert_eq!(fields(s.validate(CampaignStatus::Active).unwrap_err()), ["hourly_weights"]);
        s.pacing_mode = "fast".into();
        assert_eq!(fields(s.validate(CampaignStatus::Active).unwrap_err()), ["pacing_mode"]);
    }

    #[test]
    fn dates_and_unknown_fields_are_answered_precisely() {
        let mut s = spec();
        s.flight_start = Some("tomorrow".into());
        let errors = s.validate(CampaignStatus::Active).unwrap_err();
        assert_eq!(errors[0].field, "flight_start");
        assert!(errors[0].message.contains("RFC 3339"), "{errors:?}");
        let e = serde_json::from_value::<CampaignSpec>(serde_json::json!({
            "campaign_id": "c", "name": "n", "partner_id": "p", "daily_capp": 5
        }))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `daily_capp`"), "{e}");
    }
}
