//! Campaigns and the pacing rules they carry.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::ids::{CampaignId, PartnerId};

/// Money in integer micros of the account currency (1 unit = 1,000,000 micros), as ad platforms count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Micros(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Active,
    Paused,
    Archived,
}

impl CampaignStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Archived => "archived",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "active" => Some(Self::Active),
            "paused" => Some(Self::Paused),
            "archived" => Some(Self::Archived),
            _ => None,
        }
    }

    /// Whether a person may move a campaign from this status to `to`: archiving is for good.
    pub fn transition(self, to: Self) -> Result<(), String> {
        match (self, to) {
            (Self::Archived, Self::Active | Self::Paused) => {
                Err("the campaign is archived: an archived campaign cannot be paused or resumed".into())
            }
            _ => Ok(()),
        }
    }
}

/// 24 non-negative weights, one per local hour (hour 0 first), not all zero. A zero hour is a daypart in
/// which the campaign delivers nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f64>", into = "Vec<f64>")]
pub struct HourlyWeights([f64; 24]);

impl HourlyWeights {
    pub fn parse(weights: &[f64]) -> Result<Self, String> {
        let array: [f64; 24] =
            weights.try_into().map_err(|_| format!("hourly weights need 24 values, got {}", weights.len()))?;
        if array.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err("hourly weights must be finite and non-negative".into());
        }
        if array.iter().sum::<f64>() <= 0.0 {
            return Err("at least one hourly weight must be positive".into());
        }
        Ok(Self(array))
    }

    pub fn weights(&self) -> &[f64; 24] {
        &self.0
    }

    /// The share of the day's volume planned for `hour` (0..24).
    pub fn share(&self, hour: usize) -> f64 {
        self.0[hour] / self.0.iter().sum::<f64>()
    }
}

impl TryFrom<Vec<f64>> for HourlyWeights {
    type Error = String;
    fn try_from(value: Vec<f64>) -> Result<Self, String> {
        Self::parse(&value)
    }
}

impl From<HourlyWeights> for Vec<f64> {
    fn from(value: HourlyWeights) -> Self {
        value.0.to_vec()
    }
}

/// How a campaign's clicks are spread over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", content = "hourly_weights", rename_all = "snake_case")]
pub enum PacingMode {
    /// As soon as the other rules allow.
    Asap,
    /// Evenly across the local day (or the flight, when it is shorter than a day).
    Even,
    /// Following a 24-hour curve in local time (dayparting).
    HourlyCurve(HourlyWeights),
}

impl PacingMode {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Asap => "asap",
            Self::Even => "even",
            Self::HourlyCurve(_) => "hourly_curve",
        }
    }
}

/// What even and curve pacing do when delivery is behind plan: a file dropped at 15:00, a pause, an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "catch_up", content = "percent", rename_all = "snake_case")]
pub enum CatchUp {
    /// The volume still to go spreads over the rest of the plan window: even (or along the curve) from now on,
    /// re-planned at each UTC hour. The default.
    Spread,
    /// Faster than [`CatchUp::Spread`] by `percent` % (100-1000), never ahead of the original plan: behind plan
    /// it catches up within the day at a bounded pace (DV360's "ahead" pacing spends at about 120 %).
    Ahead(u16),
    /// At once, as fast as the rate limits allow.
    Asap,
}

impl CatchUp {
    pub const AHEAD_PERCENT: std::ops::RangeInclusive<u16> = 100..=1000;

    pub fn name(self) -> &'static str {
        match self {
            Self::Spread => "spread",
            Self::Ahead(_) => "ahead",
            Self::Asap => "asap",
        }
    }

    /// The stored pair (name, percent for `ahead`) read back; `None` for a pair this code does not know.
    pub fn parse(name: &str, percent: Option<u16>) -> Option<Self> {
        match (name, percent) {
            ("spread", _) => Some(Self::Spread),
            ("asap", _) => Some(Self::Asap),
            ("ahead", Some(p)) if Self::AHEAD_PERCENT.contains(&p) => Some(Self::Ahead(p)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub campaign_id: CampaignId,
    pub name: String,
    pub partner_id: PartnerId,
    pub status: CampaignStatus,
    /// IANA zone in which the campaign's day (daily cap, daily budget, dayparts) starts and ends.
    #[serde(with = "tz_name")]
    pub time_zone: Tz,
    pub flight_start: Option<DateTime<Utc>>,
    pub flight_end: Option<DateTime<Utc>>,
    pub pacing: PacingMode,
    /// Behind plan, how even and curve pacing catch up (ASAP pacing has no plan to be behind).
    pub catch_up: CatchUp,
    pub max_per_second: Option<u32>,
    pub max_per_minute: Option<u32>,
    pub max_per_hour: Option<u32>,
    pub daily_cap: Option<u64>,
    pub cost_per_click: Micros,
    pub daily_budget: Option<Micros>,
    pub total_budget: Option<Micros>,
    pub batch_size: u32,
    /// How this campaign's click files map onto clicks.
    #[serde(default, skip_serializing_if = "crate::ingest::IngestMapping::is_default")]
    pub ingest: crate::ingest::IngestMapping,
}

impl Campaign {
    /// A new active campaign with no limits: the starting point for builders in tests and seeds.
    pub fn unlimited(campaign_id: CampaignId, partner_id: PartnerId) -> Self {
        Self {
            name: campaign_id.to_string(),
            campaign_id,
            partner_id,
            status: CampaignStatus::Active,
            time_zone: Tz::UTC,
            flight_start: None,
            flight_end: None,
            pacing: PacingMode::Asap,
            catch_up: CatchUp::Spread,
            max_per_second: None,
            max_per_minute: None,
            max_per_hour: None,
            daily_cap: None,
            cost_per_click: Micros(0),
            daily_budget: None,
            total_budget: None,
            batch_size: 100,
            ingest: crate::ingest::IngestMapping::default(),
        }
    }
}

mod tz_name {
    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(|_| serde::de::Error::custom(format!("unknown IANA time zone {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_weights_are_validated() {
        assert!(HourlyWeights::parse(&[1.0; 23]).is_err());
        assert!(HourlyWeights::parse(&[0.0; 24]).is_err());
        let mut w = [0.0; 24];
        w[9] = 3.0;
        w[10] = 1.0;
        let weights = HourlyWeights::parse(&w).unwrap();
        assert_eq!(weights.share(9), 0.75);
        assert_eq!(weights.share(0), 0.0);
    }

    #[test]
    fn time_zone_round_trips_by_name() {
        let mut c = Campaign::unlimited(CampaignId::parse("c1").unwrap(), PartnerId::parse("p1").unwrap());
        c.time_zone = chrono_tz::Europe::Berlin;
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["time_zone"], "Europe/Berlin");
        assert_eq!(serde_json::from_value::<Campaign>(json).unwrap(), c);
    }
}
