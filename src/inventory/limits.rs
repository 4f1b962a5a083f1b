//! Bounds on what an inventory may ask for: the largest file read, the most
//! errors printed, and the longest duration per key.
//!
//! Why bounds at all: a duration is added to `Instant::now()` (a timeout, a
//! deadline, a soak), and `Instant + Duration` panics on overflow, so
//! `connect_timeout = "10000000000000000000s"` crashed `check`, and a huge
//! health-check timeout crashed a push after the live switch (the host left
//! on the candidate, no rollback). Refusing at load turns both into an
//! inventory error with `file:line:col` and exit 2. The maxima are far above
//! anything a working fleet needs, and low enough that a typo (`"10d"` for
//! `"10s"`) is caught instead of hanging a run for days:
//!
//! - `connect_timeout` <= 10 min: it bounds TCP connect + SSH handshake +
//!   authentication for one hop. Satellite links and a jump host through a
//!   VPN take seconds; a connection that has not come up in 10 minutes is not
//!   coming, and a run that waits longer per host (per retry) looks hung.
//! - `activation_timeout` <= 24 h: a switch may run long migrations (a
//!   database's schema upgrade in an activation script or a unit's start);
//!   a day covers the slowest we know of. A switch still running after a day
//!   wants a human, not a longer wait.
//! - health check `timeout` <= 1 h: one probe of one check; retries come on
//!   top. A probe that needs an hour is a job, not a health check.
//! - `copy_stall_timeout` <= 1 h: a relay copy that has moved nothing for
//!   an hour is stuck on the host, and the hosts copied with it wait as long.
//! - wave `soak` <= 7 d: the longest canary bake a demanding user asks for is
//!   a week (a weekly batch job seen once on the new system); longer belongs
//!   in separate pushes, since a run holds the controller lock while it soaks.

use std::time::Duration;

/// The largest inventory read (16 MiB): 40 times a 10,000-host inventory.
/// The file is read through a bounded reader, so `-i /dev/zero` (or a FIFO
/// that never ends) stops at the cap instead of filling memory.
pub const MAX_INVENTORY_BYTES: u64 = 16 * 1024 * 1024;

/// The most hosts worked on at once (`max_parallel`, `exec --parallel`):
/// far above what one controller's file descriptors and a builder serve,
/// and a bound for the runner's semaphore (tokio panics past `usize::MAX
/// >> 3` permits: `exec --parallel 18446744073709551615` crashed).
pub const MAX_PARALLEL: i64 = 10_000;

/// How many errors are printed in full; the rest are counted ("and N more").
/// The first hundred by position are what a user fixes first; after the fix
/// the next run shows the next ones.
pub const MAX_ERRORS_SHOWN: usize = 100;

/// How many name comparisons "did you mean" may make in one load. Each
/// unknown name is compared with every candidate: 10,000 unknown names in
/// a wave against 10,000 hosts took 30 s. Past the budget (about 0.3 s of
/// work), errors come without a suggestion.
pub const SUGGESTION_BUDGET: usize = 1_000_000;

/// The range a duration key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationLimit {
    /// Zero is refused (a timeout of zero can never succeed).
    pub positive: bool,
    pub max: Duration,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// `confirm_timeout` <= 1 h: the host reverts itself this long after a live
/// switch nobody confirmed; a host cut off for longer than that waits for a
/// person anyway, and a window that long keeps a bad system live.
pub const CONFIRM_TIMEOUT: DurationLimit = DurationLimit {
    positive: true,
    max: Duration::from_secs(HOUR),
};

pub const COPY_STALL_TIMEOUT: DurationLimit = DurationLimit {
    positive: true,
    max: Duration::from_secs(HOUR),
};

pub const CONNECT_TIMEOUT: DurationLimit = DurationLimit {
    positive: true,
    max: Duration::from_secs(10 * MINUTE),
};

pub const ACTIVATION_TIMEOUT: DurationLimit = DurationLimit {
    positive: true,
    max: Duration::from_secs(DAY),
};

pub const HEALTH_CHECK_TIMEOUT: DurationLimit = DurationLimit {
    positive: true,
    max: Duration::from_secs(HOUR),
};

pub const NOTIFY_TIMEOUT: DurationLimit = DurationLimit {
    positive: true,
    max: Duration::from_secs(HOUR),
};

pub const SOAK: DurationLimit = DurationLimit {
    positive: false,
    max: Duration::from_secs(7 * DAY),
};
