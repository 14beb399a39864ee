//! How much time an invocation has left. Lambda stops a function at its timeout, wherever it is: work that
//! must be recorded (a delivery pass, a chunk of an upload) is sized to end before the deadline, with a
//! reserve for the last writes.

use std::time::{Duration, SystemTime};

/// The time left; Lambda answers from its deadline, tests inject their own.
pub trait TimeBudget: Send + Sync {
    fn remaining(&self) -> Duration;
}

/// The budget of an invocation that ends at a wall-clock instant (Lambda's `Context::deadline`).
pub struct Deadline(pub SystemTime);

impl Deadline {
    /// An invocation that started now and may run for `timeout`.
    pub fn after(timeout: Duration) -> Self {
        Self(SystemTime::now() + timeout)
    }
}

impl TimeBudget for Deadline {
    fn remaining(&self) -> Duration {
        self.0.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

/// No deadline worth the name (benchmarks and tests that do not exercise one): a day.
pub struct Unlimited;

impl TimeBudget for Unlimited {
    fn remaining(&self) -> Duration {
        Duration::from_secs(86_400)
    }
}
