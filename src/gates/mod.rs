//! The gates of a deploy as data: the [`Goal`] a user asks for, the
//! [`Gate`]s it passes through (derived, never hand-listed per call site), and
//! the `switch-to-configuration` [`SwitchAction`] it needs on the host.
//!
//! Only the last gate of the default goal, [`Goal::Gated`], earns the
//! known-good label: dry-activate -> live `test` -> health checks -> persist
//! (profile set + `boot`) -> mark known-good.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a deploy should achieve on each host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Goal {
    /// Build, diff and copy the closure; change nothing on the host.
    Copy,
    /// Also run `switch-to-configuration dry-activate`.
    DryActivate,
    /// Activate live (`test`): the boot default is untouched.
    Test,
    /// Make it the boot default (`nix-env --set` + `boot`), no live change.
    Boot,
    /// `nix-env --set` + `switch`, like `nixos-rebuild switch`.
    Switch,
    /// The default: dry-activate -> live test -> health checks -> persist
    /// (profile set + `boot`) -> mark known-good.
    #[default]
    Gated,
}

/// One gate of a deploy, in the order a host passes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    Build,
    Diff,
    Copy,
    DryActivate,
    LiveActivate,
    HealthChecks,
    Persist,
    MarkKnownGood,
}

/// The action given to `<closure>/bin/switch-to-configuration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchAction {
    Switch,
    Boot,
    Test,
    DryActivate,
}

impl SwitchAction {
    /// The word `switch-to-configuration` expects.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchAction::Switch => "switch",
            SwitchAction::Boot => "boot",
            SwitchAction::Test => "test",
            SwitchAction::DryActivate => "dry-activate",
        }
    }

    /// Does this action change `/run/current-system`?
    pub fn changes_running_system(self) -> bool {
        matches!(self, SwitchAction::Switch | SwitchAction::Test)
    }

    /// Does this action write the boot loader entries (the boot default)?
    pub fn writes_boot_default(self) -> bool {
        matches!(self, SwitchAction::Switch | SwitchAction::Boot)
    }
}

impl fmt::Display for SwitchAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Goal {
    pub const ALL: [Goal; 6] = [
        Goal::Copy,
        Goal::DryActivate,
        Goal::Test,
        Goal::Boot,
        Goal::Switch,
        Goal::Gated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Goal::Copy => "copy",
            Goal::DryActivate => "dry-activate",
            Goal::Test => "test",
            Goal::Boot => "boot",
            Goal::Switch => "switch",
            Goal::Gated => "gated",
        }
    }

    /// Does the goal point the system profile at the candidate
    /// (`nix-env -p <profile> --set`)? `switch`/`boot` read that profile for the
    /// generation number they write into boot entries.
    pub fn should_set_profile(self) -> bool {
        matches!(self, Goal::Boot | Goal::Switch | Goal::Gated)
    }

    /// Does a run with this goal write the hosts' keys? Only one that
    /// changes the host (`copy` and `dry-activate` change nothing).
    pub fn writes_keys(self) -> bool {
        self.activates_live() || self == Goal::Boot
    }

    /// Does the goal change the running system?
    pub fn activates_live(self) -> bool {
        matches!(self, Goal::Test | Goal::Switch | Goal::Gated)
    }

    pub fn runs_dry_activate(self) -> bool {
        matches!(self, Goal::DryActivate | Goal::Gated)
    }

    /// Health checks run after every live activation.
    pub fn runs_health_checks(self) -> bool {
        self.activates_live()
    }

    /// Does the goal make the candidate the boot default?
    pub fn persists_boot(self) -> bool {
        matches!(self, Goal::Boot | Goal::Switch | Goal::Gated)
    }

    /// Only the gated goal earns the known-good label.
    pub fn marks_known_good(self) -> bool {
        matches!(self, Goal::Gated)
    }

    /// The action of the goal's main `switch-to-configuration` run. For
    /// [`Goal::Gated`] that is the live `test`; persisting is a separate `boot`
    /// run ([`Goal::persist_action`]).
    pub fn switch_action(self) -> Option<SwitchAction> {
        match self {
            Goal::Copy => None,
            Goal::DryActivate => Some(SwitchAction::DryActivate),
            Goal::Test | Goal::Gated => Some(SwitchAction::Test),
            Goal::Boot => Some(SwitchAction::Boot),
            Goal::Switch => Some(SwitchAction::Switch),
        }
    }

    /// The separate persisting run after the live one, if any.
    pub fn persist_action(self) -> Option<SwitchAction> {
        match self {
            Goal::Gated => Some(SwitchAction::Boot),
            _ => None,
        }
    }

    /// The gates a host passes through for this goal, in order.
    pub fn gates(self) -> Vec<Gate> {
        let mut gates = vec![Gate::Build, Gate::Diff, Gate::Copy];
        if self.runs_dry_activate() {
            gates.push(Gate::DryActivate);
        }
        match self {
            Goal::Copy | Goal::DryActivate => {}
            // `boot` alone: the persisting run is the whole activation.
            Goal::Boot => gates.push(Gate::Persist),
            // `switch` persists in the same run as the live activation.
            Goal::Test | Goal::Switch => gates.extend([Gate::LiveActivate, Gate::HealthChecks]),
            Goal::Gated => gates.extend([
                Gate::LiveActivate,
                Gate::HealthChecks,
                Gate::Persist,
                Gate::MarkKnownGood,
            ]),
        }
        gates
    }

    /// The gates run on the host by the activation pipeline (after copy).
    pub fn host_gates(self) -> Vec<Gate> {
        self.gates()
            .into_iter()
            .filter(|g| *g > Gate::Copy)
            .collect()
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A goal name that nixgate does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown goal {0:?}: expected one of copy, dry-activate, test, boot, switch, gated")]
pub struct UnknownGoal(pub String);

impl FromStr for Goal {
    type Err = UnknownGoal;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Goal::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| UnknownGoal(s.to_owned()))
    }
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Build => "build",
            Gate::Diff => "diff",
            Gate::Copy => "copy",
            Gate::DryActivate => "dry-activate",
            Gate::LiveActivate => "live-activate",
            Gate::HealthChecks => "health-checks",
            Gate::Persist => "persist",
            Gate::MarkKnownGood => "mark-known-good",
        }
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Gate::*;

    #[test]
    fn gates_per_goal() {
        assert_eq!(Goal::Copy.gates(), vec![Build, Diff, Copy]);
        assert_eq!(
            Goal::DryActivate.gates(),
            vec![Build, Diff, Copy, DryActivate]
        );
        assert_eq!(
            Goal::Test.gates(),
            vec![Build, Diff, Copy, LiveActivate, HealthChecks]
        );
        assert_eq!(Goal::Boot.gates(), vec![Build, Diff, Copy, Persist]);
        assert_eq!(
            Goal::Switch.gates(),
            vec![Build, Diff, Copy, LiveActivate, HealthChecks]
        );
        assert_eq!(
            Goal::Gated.gates(),
            vec![
                Build,
                Diff,
                Copy,
                DryActivate,
                LiveActivate,
                HealthChecks,
                Persist,
                MarkKnownGood
            ]
        );
        assert_eq!(
            Goal::Gated.host_gates(),
            vec![
                DryActivate,
                LiveActivate,
                HealthChecks,
                Persist,
                MarkKnownGood
            ]
        );
        assert_eq!(Goal::default(), Goal::Gated);
    }

    #[test]
    fn gates_are_in_order_and_agree_with_predicates() {
        for goal in Goal::ALL {
            let gates = goal.gates();
            assert!(gates.windows(2).all(|w| w[0] < w[1]), "{goal}: {gates:?}");
            assert_eq!(gates.contains(&DryActivate), goal.runs_dry_activate());
            assert_eq!(gates.contains(&LiveActivate), goal.activates_live());
            assert_eq!(gates.contains(&HealthChecks), goal.runs_health_checks());
            assert_eq!(gates.contains(&MarkKnownGood), goal.marks_known_good());
            // Persisting happens either in its own gate or inside `switch`.
            assert_eq!(
                gates.contains(&Persist) || goal.switch_action() == Some(SwitchAction::Switch),
                goal.persists_boot(),
                "{goal}"
            );
            assert_eq!(goal.should_set_profile(), goal.persists_boot(), "{goal}");
            assert_eq!(goal.as_str().parse::<Goal>().unwrap(), goal);
        }
    }

    #[test]
    fn switch_actions() {
        assert_eq!(Goal::Copy.switch_action(), None);
        assert_eq!(
            Goal::DryActivate.switch_action(),
            Some(SwitchAction::DryActivate)
        );
        assert_eq!(Goal::Test.switch_action(), Some(SwitchAction::Test));
        assert_eq!(Goal::Boot.switch_action(), Some(SwitchAction::Boot));
        assert_eq!(Goal::Switch.switch_action(), Some(SwitchAction::Switch));
        assert_eq!(Goal::Gated.switch_action(), Some(SwitchAction::Test));
        assert_eq!(Goal::Gated.persist_action(), Some(SwitchAction::Boot));
        assert_eq!(Goal::Switch.persist_action(), None);
        assert!(SwitchAction::Test.changes_running_system());
        assert!(!SwitchAction::Test.writes_boot_default());
        assert!(SwitchAction::Boot.writes_boot_default());
        assert!(!SwitchAction::Boot.changes_running_system());
        assert_eq!(
            "reboot".parse::<Goal>().unwrap_err().to_string(),
            "unknown goal \"reboot\": expected one of copy, dry-activate, test, boot, switch, gated"
        );
    }
}
