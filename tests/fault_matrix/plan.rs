//! The matrix's axes: the remote steps of a gated push, and the faults.

use super::knobs::Knob;
use super::lane::Lane;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Copy,
    Realise,
    DryActivate,
    Fire,
    Poll,
    Health,
    Persist,
    Mark,
    Release,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::Copy,
        Step::Realise,
        Step::DryActivate,
        Step::Fire,
        Step::Poll,
        Step::Health,
        Step::Persist,
        Step::Mark,
        Step::Release,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Copy => "copy",
            Step::Realise => "realise",
            Step::DryActivate => "dry-activate",
            Step::Fire => "fire (live switch)",
            Step::Poll => "poll",
            Step::Health => "health checks",
            Step::Persist => "persist",
            Step::Mark => "mark known-good",
            Step::Release => "release",
        }
    }

    /// Its short name in `NIXGATE_MATRIX_CELLS`.
    pub fn key(self) -> &'static str {
        match self {
            Step::Copy => "copy",
            Step::Realise => "realise",
            Step::DryActivate => "dry-activate",
            Step::Fire => "fire",
            Step::Poll => "poll",
            Step::Health => "health",
            Step::Persist => "persist",
            Step::Mark => "mark",
            Step::Release => "release",
        }
    }

    /// What holds the step in its slow part.
    pub fn knob(self, lane: &Lane) -> Knob {
        let host = |name: &str| Knob::on_host(lane.fleet, &lane.host, name);
        match self {
            Step::Copy => host("copy"),
            Step::Realise => host("realise"),
            Step::DryActivate => host("switch-dry-activate"),
            Step::Fire => host("fire"),
            Step::Poll => host("switch-test"),
            Step::Health => host("health"),
            Step::Persist => host("switch-boot"),
            Step::Mark => host("mark"),
            Step::Release => Knob::in_dir(&lane.dir.join("slow"), "release"),
        }
    }

    /// Where the controller's event stream is when the step runs: the
    /// current gate, and the last step or event it may show.
    pub fn markers(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Step::Copy => ("copy", &["gate_started", "copy_progress"]),
            Step::Realise => ("copy", &["realise"]),
            Step::DryActivate => ("dry-activate", &["gate_started"]),
            Step::Fire => ("live-activate", &["fire_switch"]),
            Step::Poll => ("live-activate", &["verify_poll", "polling"]),
            Step::Health => ("health-checks", &["gate_started"]),
            Step::Persist => ("persist", &["fire_switch", "verify_poll", "polling"]),
            Step::Mark => ("mark-known-good", &["gate_started", "mark_known_good"]),
            Step::Release => ("mark-known-good", &["host_finished"]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    SshDrop,
    Kill,
    Reboot,
    BuilderDown,
    /// The host's `/nix` fills up (a small tmpfs, `fleet up --small-nix`).
    DiskFull,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::SshDrop,
        Fault::Kill,
        Fault::Reboot,
        Fault::BuilderDown,
        Fault::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::SshDrop => "SSH connection dropped",
            Fault::Kill => "controller SIGKILL",
            Fault::Reboot => "host rebooted",
            Fault::BuilderDown => "builder unreachable",
            Fault::DiskFull => "host's /nix full",
        }
    }

    /// Its short name in `NIXGATE_MATRIX_CELLS`.
    pub fn key(self) -> &'static str {
        match self {
            Fault::SshDrop => "ssh",
            Fault::Kill => "kill",
            Fault::Reboot => "reboot",
            Fault::BuilderDown => "builder",
            Fault::DiskFull => "disk",
        }
    }

    /// Does the fault apply to the step? `Err` says why not.
    pub fn applies(self, step: Step) -> Result<(), &'static str> {
        match (self, step) {
            (Fault::DiskFull, Step::Copy) => Ok(()),
            (Fault::DiskFull, _) => Err(
                "only the copy writes closures to the host's store (the later steps write \
                 a few links and records)",
            ),
            (Fault::BuilderDown, Step::Copy) => Ok(()),
            (Fault::BuilderDown, Step::Release) => Err(
                "the release is written in the controller's repository and pushed to its remote; \
                 the builder is not involved",
            ),
            (Fault::BuilderDown, _) => Err(
                "the step runs on the host alone (the closure is already there); \
                 the builder is not involved",
            ),
            (Fault::Reboot, Step::Release) => Err(
                "the release is written on the controller after the host's part ended; \
                 the host is not touched",
            ),
            (Fault::SshDrop, Step::Release) => Err(
                "the host's connection is closed as soon as its part ends (the run lets it \
                 go); the release is written on the controller after that, with no \
                 connection to drop",
            ),
            _ => Ok(()),
        }
    }
}
