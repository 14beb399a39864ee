//! Where one click stands, as a person searching clicks asks it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ClickState {
    /// Its batch waits for the pacer (due, deferred, or replayed).
    Pending,
    /// Its batch is claimed or queued: the bridge is delivering it (attempts may already have failed).
    InFlight,
    /// The partner accepted it.
    Delivered,
    /// It failed for the last time and has not been replayed since.
    Dead,
    /// A person cancelled it before it went.
    Cancelled,
}

impl ClickState {
    pub const ALL: [Self; 5] = [Self::Pending, Self::InFlight, Self::Delivered, Self::Dead, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InFlight => "in_flight",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_name() {
        for s in ClickState::ALL {
            assert_eq!(ClickState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(ClickState::parse("queued"), None);
    }
}
