//! What the activation steps need to know about a host: its OS, privilege,
//! profile, timeouts, health checks, and the well-known paths on it. The lead
//! maps the inventory into [`HostSettings`]; nothing here reads files.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::health::HealthCheck;

/// The operating system of a host, which decides how a switch is fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    /// NixOS: `switch-to-configuration` under `systemd-run`.
    #[default]
    Linux,
    /// nix-darwin: `activate` detached with `setsid` + `nohup`.
    Darwin,
}

/// A deploy run's identifier, used in unit names and file names on hosts, so
/// it is restricted to `[A-Za-z0-9_.-]`, 1 to 64 characters, not starting with
/// `.` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

/// Why a string cannot be a run id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid run id (1-64 characters of A-Z a-z 0-9 _ . -, not starting with . or -)"
)]
pub struct InvalidRunId(pub String);

impl RunId {
    pub fn parse(s: &str) -> Result<Self, InvalidRunId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with(['.', '-'])
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(RunId(s.to_owned()))
        } else {
            Err(InvalidRunId(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RunId {
    type Error = InvalidRunId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RunId::parse(&s)
    }
}

impl From<RunId> for String {
    fn from(r: RunId) -> String {
        r.0
    }
}

/// The longest a small step on a host may take (reading links, setting a
/// profile, writing a record). They take milliseconds, but Nix waits behind
/// its garbage collector's lock, and a connection can hang while its
/// keepalives still succeed: after this the step fails, saying so, instead
/// of the run hanging. State-changing steps are also ended on the host
/// itself after this long ([`crate::remote::Command::within`]), so one the
/// controller gave up on cannot finish later.
pub const STEP_LIMIT: Duration = Duration::from_secs(120);

/// Well-known paths on a host. Defaults are the real ones; tests that drive a
/// real local machine point them into a temporary directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPaths {
    pub current_system: String,
    pub booted_system: String,
    /// Where detached switch jobs write `<job>.status` and `<job>.log`.
    pub job_dir: String,
    /// The lock `switch-to-configuration` holds while it runs.
    pub switch_lock: String,
    /// The GC-rooted profile whose generations are the known-good history.
    pub known_good_profile: String,
    /// Where the tag record of each known-good generation is written.
    pub known_good_records: String,
    /// The record of the system the host ran before its first known-good
    /// mark, and its GC root.
    pub baseline: String,
    pub baseline_root: String,
    /// Where a run roots the closure it copied to the host ahead of the
    /// host's wave (one link per run, named for it), so the host's garbage
    /// collector keeps it until the activation (see
    /// [`crate::nix::gcroots`]).
    pub staged_roots: String,
    pub boot_id: String,
}

impl HostPaths {
    pub fn for_os(os: Os) -> Self {
        HostPaths {
            current_system: "/run/current-system".into(),
            booted_system: "/run/booted-system".into(),
            job_dir: match os {
                Os::Linux => "/run/nixgate".into(),
                Os::Darwin => "/var/run/nixgate".into(),
            },
            switch_lock: "/run/nixos/switch-to-configuration.lock".into(),
            known_good_profile: "/nix/var/nix/profiles/nixgate-known-good".into(),
            known_good_records: "/var/lib/nixgate/known-good".into(),
            baseline: "/var/lib/nixgate/baseline.json".into(),
            baseline_root: "/nix/var/nix/gcroots/nixgate-baseline".into(),
            staged_roots: "/nix/var/nix/gcroots/nixgate-staged".into(),
            boot_id: "/proc/sys/kernel/random/boot_id".into(),
        }
    }
}

/// Everything the activation of one host depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    pub os: Os,
    /// Run privileged steps through `sudo -n`.
    pub sudo: bool,
    /// The system profile (`/nix/var/nix/profiles/system`).
    pub system_profile: String,
    /// The budget from firing a switch to a settled `/run/current-system`:
    /// firing, confirming a fire whose answer was lost, and every poll
    /// share it; a switch still running at its end counts as hung.
    pub activation_timeout: Duration,
    /// Magic rollback: arm a dead-man revert before a live switch, to be
    /// confirmed over a new connection within this long after the switch
    /// settles (`None`: off).
    pub confirm_timeout: Option<Duration>,
    /// Magic rollback off: a new connection must still reach the host on
    /// the candidate within this long after the switch settles, or the
    /// controller rolls it back (the inventory's `confirm_timeout`).
    pub new_connection_within: Duration,
    /// Time between two polls of a running switch.
    pub poll_interval: Duration,
    /// Check the closure's signatures on the host before activating.
    pub require_signatures: bool,
    /// Keys the signature check trusts, as an option of that call (the
    /// inventory's `trusted_public_keys`); empty: the host's own.
    pub trusted_public_keys: Vec<String>,
    pub health_checks: Vec<HealthCheck>,
    /// May nixgate reboot the host when a change can only land by rebooting?
    pub allow_reboot: bool,
    /// How long a reboot may take until the host answers again.
    pub reboot_timeout: Duration,
    /// Pass `NIXOS_INSTALL_BOOTLOADER=1` to `switch`/`boot`.
    pub install_bootloader: bool,
    pub paths: HostPaths,
    /// Its wave's soak re-checks the host after this run: its known-good
    /// mark is provisional until that passes (`soak_pending`).
    pub soak_follows: bool,
}

impl HostSettings {
    /// Defaults for a host of this OS: root, system profile, 5 minute
    /// activation timeout, 2 s polls, no health checks, no reboots.
    pub fn new(os: Os) -> Self {
        HostSettings {
            os,
            sudo: false,
            system_profile: "/nix/var/nix/profiles/system".into(),
            activation_timeout: Duration::from_secs(300),
            confirm_timeout: None,
            new_connection_within: Duration::from_secs(60),
            poll_interval: Duration::from_secs(2),
            require_signatures: false,
            trusted_public_keys: Vec::new(),
            health_checks: Vec::new(),
            allow_reboot: false,
            reboot_timeout: Duration::from_secs(600),
            install_bootloader: false,
            paths: HostPaths::for_os(os),
            soak_follows: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids() {
        assert!(RunId::parse("20250101T120000Z-ab12cd").is_ok());
        for bad in ["", ".x", "-x", "a b", "a/b", "a;b", &"x".repeat(65)] {
            assert!(RunId::parse(bad).is_err(), "{bad:?}");
        }
        let id: RunId = serde_json::from_str("\"r1\"").unwrap();
        assert_eq!(id.as_str(), "r1");
        assert!(serde_json::from_str::<RunId>("\"r 1\"").is_err());
    }
}
