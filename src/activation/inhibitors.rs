//! Step 7: changes that cannot land live.
//!
//! nixos-rebuild refuses to live-switch when a critical component changes;
//! so does nixgate. The components are compared by their canonical store
//! path (`readlink -e` on the host, so a component missing on both sides is
//! "unchanged", not two different non-existent paths) between
//! `/run/current-system` and the candidate. `init` is not compared: it is
//! rebuilt with every system. When anything changed, the pipeline runs
//! `switch-to-configuration boot` and reports `DeferredPendingReboot`.
//!
//! NixOS 25.11+ has its own inhibitors: `switch`/`test`/`dry-activate` exit 1
//! after printing `Pre-switch check 'switchInhibitors' failed` (then
//! `Pre-switch checks failed`) unless `NIXOS_NO_CHECK=1`. That output is a
//! deferral too, recognised by [`pre_switch_failure`]; nixgate never sets
//! `NIXOS_NO_CHECK`.

use std::collections::BTreeSet;

use anyhow::Context;

use crate::nix::StorePath;
use crate::remote::{Command, Remote};

/// A critical component of a NixOS system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// `<toplevel>/systemd`: the systemd package.
    Systemd,
    /// `<toplevel>/sw/lib/systemd/systemd`: PID 1's binary.
    SystemdBinary,
    /// `<toplevel>/etc/systemd/system/dbus.service`.
    DbusService,
    /// `<toplevel>/kernel`.
    Kernel,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Systemd,
        Component::SystemdBinary,
        Component::DbusService,
        Component::Kernel,
    ];

    /// The path below a toplevel.
    pub fn rel_path(self) -> &'static str {
        match self {
            Component::Systemd => "systemd",
            Component::SystemdBinary => "sw/lib/systemd/systemd",
            Component::DbusService => "etc/systemd/system/dbus.service",
            Component::Kernel => "kernel",
        }
    }

    fn from_rel_path(p: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.rel_path() == p)
    }
}

/// One changed component: canonical targets (empty string: absent).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ComponentChange {
    pub component: Component,
    pub current: String,
    pub candidate: String,
}

/// Prints `<rel>\t<current target>\t<candidate target>` per component,
/// then the units in the `failed` state (`NixgateFailed=<line>`, then
/// `NixgateFailedUnits=listed`, or `=unknown` when `systemctl` failed):
/// the live switch records them before it fires (see
/// [`super::failed_units`]), and nothing is decided between the two reads,
/// so they are one command (one round trip fewer per live switch).
///
/// One `readlink -m` resolves all eight paths (a line each, whether they
/// exist or not) and `[ -e ]` blanks the absent ones: what `readlink -e`
/// of each said, with one process and one subshell instead of eight of
/// each: 2.8 against 11 ms of CPU for the comparison, 200 runs each on
/// this machine. Fewer than eight
/// lines (no GNU `readlink`) answer fewer than four components, an error.
pub(crate) const COMPARE: &str = "cur=$1; cand=$2
ps='systemd sw/lib/systemd/systemd etc/systemd/system/dbus.service kernel'
set --
for p in $ps; do set -- \"$@\" \"$cur/$p\" \"$cand/$p\"; done
readlink -m -- \"$@\" 2>/dev/null | for p in $ps; do
  IFS= read -r c && IFS= read -r n || break
  [ -e \"$cur/$p\" ] || c=; [ -e \"$cand/$p\" ] || n=
  printf '%s\\t%s\\t%s\\n' \"$p\" \"$c\" \"$n\"
done
if failed=$(systemctl list-units --all --state=failed,auto-restart --plain --no-legend --no-pager 2>/dev/null); then
  printf '%s\\n' \"$failed\" | while IFS= read -r l; do [ -z \"$l\" ] || echo \"NixgateFailed=$l\"; done
  echo NixgateFailedUnits=listed
else echo NixgateFailedUnits=unknown; fi";

/// The comparison command (with the failed units' listing, which runs
/// as root like every listing of them).
pub fn compare_command(current_system: &str, candidate: &StorePath, sudo: bool) -> Command {
    Command::script(COMPARE)
        .arg(current_system)
        .arg(candidate.as_str())
        .sudo(sudo)
}

/// Parse the comparison's output into the changed components.
pub fn parse_compare(stdout: &str) -> anyhow::Result<Vec<ComponentChange>> {
    let mut seen = 0;
    let mut changes = Vec::new();
    for line in stdout
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("Nixgate"))
    {
        let mut parts = line.split('\t');
        let (Some(rel), Some(cur), Some(cand)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("unexpected line from the component comparison: {line:?}");
        };
        let component = Component::from_rel_path(rel)
            .with_context(|| format!("unknown component {rel:?} in the comparison"))?;
        seen += 1;
        if cur != cand {
            changes.push(ComponentChange {
                component,
                current: cur.to_owned(),
                candidate: cand.to_owned(),
            });
        }
    }
    anyhow::ensure!(
        seen == Component::ALL.len(),
        "the component comparison answered {seen} of {} lines",
        Component::ALL.len()
    );
    Ok(changes)
}

/// The units the comparison's answer lists as failed; `None` when the
/// listing failed (best effort, as [`super::failed_units::failed_units`]).
pub fn parse_failed(stdout: &str) -> Option<BTreeSet<String>> {
    stdout
        .lines()
        .any(|l| l == "NixgateFailedUnits=listed")
        .then(|| {
            let lines: Vec<&str> = stdout
                .lines()
                .filter_map(|l| l.strip_prefix("NixgateFailed="))
                .collect();
            super::failed_units::parse(&lines.join("\n"))
        })
}

/// What is read on the host before a live switch, in one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeforeLive {
    /// Critical components the candidate changes (step 7).
    pub changes: Vec<ComponentChange>,
    /// Units failed now (`None`: unknown).
    pub failed: Option<BTreeSet<String>>,
}

/// Step 7: which critical components the candidate changes, and which
/// units are failed before the switch.
pub async fn before_live_switch<R: Remote>(
    remote: &R,
    current_system: &str,
    candidate: &StorePath,
    sudo: bool,
) -> anyhow::Result<BeforeLive> {
    let out = remote
        .exec(&compare_command(current_system, candidate, sudo))
        .await
        .with_context(|| format!("comparing critical components on {}", remote.name()))?
        .check("comparing critical components")?;
    let text = out.stdout_str();
    Ok(BeforeLive {
        changes: parse_compare(&text)?,
        failed: parse_failed(&text),
    })
}

/// Where a live rollback goes: `known_good`, unless it differs from
/// `before` (the system the host ran before this run: the one whose
/// systemd and kernel run now, as a candidate changing them is never
/// switched live) in what only a reboot changes. Switched live, it was
/// refused by NixOS 25.11's switch inhibitors (`rollback-failed`, the
/// failing candidate left live), and on older NixOS it ran on the newer
/// systemd and kernel, which nixgate refuses forward: then `before`, and a
/// warning says why. A comparison that cannot be read leaves the
/// known-good (as before). One command, only when the known-good is
/// another system than `before`, on NixOS.
pub async fn live_rollback_target<R: Remote>(
    remote: &R,
    settings: &super::settings::HostSettings,
    before: &StorePath,
    known_good: Option<StorePath>,
    emit: &(dyn Fn(super::events::ActivationEvent) + Send + Sync),
) -> StorePath {
    let Some(k) = known_good.filter(|k| k != before) else {
        return before.clone();
    };
    if settings.os != super::settings::Os::Linux {
        return k;
    }
    let compare = before_live_switch(remote, before.as_str(), &k, settings.sudo);
    let limit = super::settings::STEP_LIMIT;
    match tokio::time::timeout(limit, compare).await {
        Ok(Ok(read)) if !read.changes.is_empty() => {
            emit(super::events::ActivationEvent::Warning {
                warning: super::events::Warning::KnownGoodNeedsReboot {
                    known_good: k,
                    changes: read.changes,
                },
            });
            before.clone()
        }
        _ => k,
    }
}

/// A failed NixOS pre-switch check found in a switch's output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PreSwitchFailure {
    /// The check's name (`switchInhibitors`), when the output names it.
    pub check: Option<String>,
}

impl PreSwitchFailure {
    /// The switch inhibitors refused: defer to boot, do not roll back.
    pub fn is_inhibitor(&self) -> bool {
        self.check.as_deref() == Some("switchInhibitors")
    }
}

/// Find `Pre-switch check '<name>' failed` / `Pre-switch checks failed`.
pub fn pre_switch_failure<S: AsRef<str>>(lines: &[S]) -> Option<PreSwitchFailure> {
    let mut generic = false;
    for line in lines {
        let line = line.as_ref();
        if let Some(rest) = line.split("Pre-switch check '").nth(1)
            && let Some((name, tail)) = rest.split_once('\'')
            && tail.trim_start().starts_with("failed")
        {
            return Some(PreSwitchFailure {
                check: Some(name.to_owned()),
            });
        }
        generic |= line.contains("Pre-switch checks failed");
    }
    generic.then_some(PreSwitchFailure { check: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::local::LocalRemote;
    use crate::remote::scripted::{ScriptedRemote, ok};

    const CAND: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";

    fn sp(s: &str) -> StorePath {
        StorePath::parse(s).unwrap()
    }

    #[tokio::test]
    async fn detects_systemd_change_only() {
        let answer = "systemd\t/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-systemd-256.8\t/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-systemd-257.2\n\
            sw/lib/systemd/systemd\t/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-systemd-256.8/lib/systemd/systemd\t/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-systemd-257.2/lib/systemd/systemd\n\
            etc/systemd/system/dbus.service\t/nix/store/cccccccccccccccccccccccccccccccc-unit-dbus.service/dbus.service\t/nix/store/cccccccccccccccccccccccccccccccc-unit-dbus.service/dbus.service\n\
            kernel\t/nix/store/dddddddddddddddddddddddddddddddd-linux-6.6.60/bzImage\t/nix/store/dddddddddddddddddddddddddddddddd-linux-6.6.60/bzImage\n";
        let r = ScriptedRemote::new("web1", move |_| {
            ok(&format!(
                "{answer}NixgateFailed=x.service loaded failed failed x\nNixgateFailedUnits=listed\n"
            ))
        });
        let changes = before_live_switch(&r, "/run/current-system", &sp(CAND), false)
            .await
            .unwrap()
            .changes;
        assert_eq!(
            changes.iter().map(|c| c.component).collect::<Vec<_>>(),
            vec![Component::Systemd, Component::SystemdBinary]
        );
        assert_eq!(
            r.argvs()[0],
            vec!["sh", "-c", COMPARE, "nixgate", "/run/current-system", CAND]
        );
        assert!(
            parse_compare("systemd\ta\ta\n").is_err(),
            "truncated answer"
        );
        // The failed units come in the same answer.
        let before = before_live_switch(&r, "/run/current-system", &sp(CAND), true)
            .await
            .unwrap();
        assert_eq!(before.changes, changes);
        assert_eq!(
            before.failed.unwrap().into_iter().collect::<Vec<_>>(),
            ["x.service"]
        );
        assert!(r.commands()[1].is_sudo());
        assert_eq!(parse_failed("NixgateFailedUnits=unknown\n"), None);
        assert_eq!(
            parse_failed("NixgateFailedUnits=listed\n"),
            Some(BTreeSet::new())
        );
    }

    /// The script for real: two fake toplevels sharing a kernel, differing
    /// in systemd, dbus.service a file in one and a dangling link in the
    /// other (absent, as `readlink -e` says).
    #[tokio::test]
    async fn real_readlink_comparison() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (top, systemd) in [("cur", "systemd-a"), ("cand", "systemd-b")] {
            std::fs::create_dir_all(d.join(systemd).join("lib/systemd")).unwrap();
            std::fs::write(d.join(systemd).join("lib/systemd/systemd"), "").unwrap();
            std::fs::create_dir_all(d.join(top).join("sw/lib")).unwrap();
            std::os::unix::fs::symlink(d.join(systemd), d.join(top).join("systemd")).unwrap();
            std::os::unix::fs::symlink(
                d.join(systemd).join("lib/systemd"),
                d.join(top).join("sw/lib/systemd"),
            )
            .unwrap();
            std::os::unix::fs::symlink(d.join("bzImage"), d.join(top).join("kernel")).unwrap();
        }
        std::fs::write(d.join("bzImage"), "").unwrap();
        let unit = |top: &str| d.join(top).join("etc/systemd/system");
        std::fs::create_dir_all(unit("cur")).unwrap();
        std::fs::create_dir_all(unit("cand")).unwrap();
        std::fs::write(unit("cur").join("dbus.service"), "").unwrap();
        std::os::unix::fs::symlink(d.join("gone"), unit("cand").join("dbus.service")).unwrap();
        let r = LocalRemote::new("local");
        let out = r
            .exec(
                &Command::script(COMPARE)
                    .arg(d.join("cur").display().to_string())
                    .arg(d.join("cand").display().to_string()),
            )
            .await
            .unwrap();
        let changes = parse_compare(&out.stdout_str()).unwrap();
        assert_eq!(
            changes.iter().map(|c| c.component).collect::<Vec<_>>(),
            vec![
                Component::Systemd,
                Component::SystemdBinary,
                Component::DbusService
            ]
        );
        assert!(changes[0].candidate.ends_with("systemd-b"));
        let top = |t: &str| d.join(t).canonicalize().unwrap().display().to_string();
        assert_eq!(
            changes[1].current,
            format!("{}/lib/systemd/systemd", top("systemd-a"))
        );
        let dbus = &changes[2];
        assert_eq!(
            (dbus.current.as_str(), dbus.candidate.as_str()),
            (
                format!("{}/dbus.service", top("cur/etc/systemd/system")).as_str(),
                ""
            )
        );
    }

    #[test]
    fn recognises_pre_switch_check_output() {
        // NixOS 25.11: the check's script output, then switch-to-configuration's.
        let log = [
            "Checking switch inhibitors... The following switch inhibitors changed:",
            "  systemd: 257.2 -> 258.1",
            "Pre-switch check 'switchInhibitors' failed",
            "Pre-switch checks failed",
        ];
        let f = pre_switch_failure(&log).unwrap();
        assert_eq!(f.check.as_deref(), Some("switchInhibitors"));
        assert!(f.is_inhibitor());
        let f = pre_switch_failure(&["Pre-switch check 'diskSpace' failed"]).unwrap();
        assert!(!f.is_inhibitor());
        let f = pre_switch_failure(&["Pre-switch checks failed"]).unwrap();
        assert_eq!(f.check, None);
        assert_eq!(
            pre_switch_failure(&["activating the configuration..."]),
            None
        );
    }
}
