//! Activation on a host, over SSH with no agent: the seven steps as free
//! functions over `R: Remote`, each with a typed outcome, and the per-host
//! pipeline that runs them gate by gate.
//!
//!   1. [`realise`] — `nix-store --realise`, signature failures kept apart.
//!   2. [`profile::set`] — `nix-env -p <profile> --set <closure>`.
//!   3. [`links::current_system`] — `readlink -f /run/current-system` before the switch.
//!   4. [`switch`] — the detached switch (`systemd-run` / `setsid`), after a lock check.
//!   5. [`verify_poll`] — poll until `/run/current-system` and the job's exit prove it.
//!   6. [`profile::self_correct_profile`] — put a re-pointed profile back.
//!   7. [`inhibitors`] — critical-component changes defer to `boot` + reboot.
//!
//! Around them: [`dry_activate`], [`health`] checks, the on-host
//! [`known_good`] record, [`privilege`] (sudo preflight), the per-host
//! [`host_lock`], [`reach`] (does a new connection get in?), and
//! [`take_back`] after a failed soak.

pub mod darwin_activate;
pub mod deadman;
pub mod detached;
pub mod dry_activate;
pub mod events;
pub mod failed_units;
#[cfg(test)]
pub(crate) mod fake_host;
#[cfg(test)]
mod fault_tests;
pub mod health;
pub mod host_lock;
pub mod host_state;
pub mod inhibitors;
pub mod key_stage;
pub mod known_good;
pub mod leftovers;
pub mod links;
pub mod outcome;
pub mod pipeline;
pub mod privilege;
pub mod profile;
pub mod reach;
pub mod reactivate;
pub mod realise;
pub mod reboot;
pub mod settings;
pub mod switch;
pub mod take_back;
pub mod verify_poll;

pub use events::{ActivationEvent, GateEvidence, Step, Warning};
pub use outcome::{CutOff, FailureReason, HostOutcome};
pub use pipeline::{ActivationRequest, Reconnect, activate_host};
pub use reactivate::{RollbackMode, RollbackOutcome, reactivate};
pub use settings::{HostPaths, HostSettings, Os, RunId};
pub use take_back::take_back;
