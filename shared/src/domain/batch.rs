//! The batch state machine (documented in docs/data-model.md).
//!
//! ```text
//!             claim (lease + fence+1)             send + mark            bridge outcome
//!   pending ───────────────────────────► claimed ─────────────► queued ──────────────► delivered
//!      ▲  ▲                                │  │                   │                    partially_failed
//!      │  └── defer (rule says "not now") ─┘  │                   │                    dead
//!      │                                      │ lease expires:    │ retry later
//!      │                                      ▼ claimable again   │ (failed clicks)
//!      └──────────────────────────────────────────────────────────┘
//!   pending | claimed ──── cancel (a person) ────► cancelled
//! ```
//!
//! `claimed` with an expired lease is claimable by the same statement that claims `pending` rows: no separate
//! rescuer. Each claim bumps the fencing value, so a worker holding an older one cannot mark the batch.
//!
//! `queued` carries a lease too: the instant its message is due at the bridge plus [`QUEUED_LEASE`], renewed by
//! the bridge on every pass and requeue. A message lost on the way (redriven to the dead-letter queue, or a
//! bridge killed at its timeout on every receive) lets the lease run out, and the pacer takes the batch back
//! (`Queued -> Claimed`) with a new fence, unless a bridge is delivering it right now.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long past its due instant at the bridge a queued batch waits for its message before a pacer takes it
/// back. Longer than the click queue's redelivery chain (visibility timeout 180 s x maxReceiveCount 10 in
/// `template.yaml`), so a message still being retried is not doubled: a batch taken back while its message is
/// still on its way only makes that copy stale.
pub const QUEUED_LEASE: Duration = Duration::from_secs(3_600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Waiting for its due time (or for a pacing rule to allow it).
    Pending,
    /// Leased by a pacer that is releasing it.
    Claimed,
    /// On the click queue; the bridge owns it now.
    Queued,
    /// Every click confirmed delivered.
    Delivered,
    /// Finished with some clicks delivered and the rest dead-lettered.
    PartiallyFailed,
    /// Finished with no click delivered.
    Dead,
    /// Stopped by a person before release.
    Cancelled,
}

impl BatchState {
    pub const ALL: [BatchState; 7] = [
        Self::Pending,
        Self::Claimed,
        Self::Queued,
        Self::Delivered,
        Self::PartiallyFailed,
        Self::Dead,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Claimed => "claimed",
            Self::Queued => "queued",
            Self::Delivered => "delivered",
            Self::PartiallyFailed => "partially_failed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::PartiallyFailed | Self::Dead | Self::Cancelled)
    }

    /// The transitions the system may make; anything else is a bug.
    pub fn can_become(self, next: BatchState) -> bool {
        use BatchState::*;
        matches!(
            (self, next),
            (Pending, Claimed)
                | (Claimed, Claimed) // an expired lease, reclaimed with a new fence
                | (Claimed, Pending) // deferred by a pacing rule
                | (Claimed, Queued)
                | (Queued, Queued) // redelivered message, or failed clicks sent for a later attempt
                | (Queued, Claimed) // its lease ran out: the message was lost, a pacer takes the batch back
                | (Queued, Delivered)
                | (Queued, PartiallyFailed)
                | (Queued, Dead)
                | (Dead, Pending) // a person replays its dead clicks
                | (PartiallyFailed, Pending)
                | (Pending, Cancelled)
                | (Claimed, Cancelled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_are_final_but_for_a_replay_of_dead_clicks() {
        for from in BatchState::ALL.into_iter().filter(|s| s.is_final()) {
            for to in BatchState::ALL {
                let replay =
                    matches!(from, BatchState::Dead | BatchState::PartiallyFailed) && to == BatchState::Pending;
                assert_eq!(from.can_become(to), replay, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for state in BatchState::ALL {
            assert_eq!(BatchState::parse(state.as_str()), Some(state));
        }
        assert_eq!(BatchState::parse("lost"), None);
    }

    #[test]
    fn every_state_is_reachable_from_pending() {
        let mut seen = vec![BatchState::Pending];
        let mut i = 0;
        while i < seen.len() {
            for to in BatchState::ALL {
                if seen[i].can_become(to) && !seen.contains(&to) {
                    seen.push(to);
                }
            }
            i += 1;
        }
        assert_eq!(seen.len(), BatchState::ALL.len());
    }
}
