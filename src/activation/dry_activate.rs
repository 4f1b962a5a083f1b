//! The dry-activate gate: `<closure>/bin/switch-to-configuration dry-activate`
//! (nix-darwin: `checkActivation=1 <closure>/activate`, see [`DRY_DARWIN`]).
//! It changes nothing, so it runs in the SSH session. A non-zero exit fails the gate; the unit
//! lines it prints on stderr (`would stop the following units: a, b`, ...)
//! become typed lists. A 25.11 switch-inhibitor refusal is reported apart.

use anyhow::Context;

use super::inhibitors::{PreSwitchFailure, pre_switch_failure};
use super::settings::Os;
use crate::nix::StorePath;
use crate::remote::{Command, Exit, Remote};

/// What a dry activation says the switch would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DryActivateReport {
    pub would_stop: Vec<String>,
    /// Changed units with `stopIfChanged = false` / `restartIfChanged = false`.
    pub would_not_stop: Vec<String>,
    pub would_reload: Vec<String>,
    pub would_restart: Vec<String>,
    pub would_start: Vec<String>,
    pub would_restart_systemd: bool,
    pub would_stop_swap: Vec<String>,
}

/// How the dry activation ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DryActivateOutcome {
    Passed(DryActivateReport),
    /// NixOS's switch inhibitors refuse a live switch: only `boot` can land it.
    Inhibited {
        tail: Vec<String>,
    },
    /// `switch-to-configuration` exited 100: the new `init` is incompatible
    /// with the running one. Both the perl script and switch-to-configuration-ng
    /// check this before the dry-activate branch, so a dry activation says it
    /// too; the live switch would defer to boot (exit 100 there), and so does
    /// the gated goal.
    InitInterfaceChanged {
        tail: Vec<String>,
    },
    /// Another pre-switch check failed.
    PreSwitchCheckFailed {
        check: Option<String>,
        tail: Vec<String>,
    },
    Failed {
        exit: Exit,
        tail: Vec<String>,
    },
}

/// The dry-activate command for `os`.
pub fn dry_activate_command(closure: &StorePath, os: Os, sudo: bool) -> Command {
    match os {
        Os::Linux => Command::new(format!("{closure}/bin/switch-to-configuration"))
            .arg("dry-activate")
            .sudo(sudo),
        Os::Darwin => Command::script(DRY_DARWIN)
            .arg(closure.as_str())
            .env("checkActivation", "1")
            .sudo(sudo),
    }
}

/// nix-darwin's checks: its `activate` runs the checks and, with
/// `checkActivation=1`, exits before it changes anything. But its shebang
/// is `#!/usr/bin/env -i <bash>` (nix-darwin 25.05 on): run as a program,
/// `env -i` empties the environment, `checkActivation` with it, and the
/// "dry" run activated the candidate for real, in the SSH session, with no
/// revert armed (upstream's own `darwin-rebuild check` does the same:
/// nix-darwin#1700). So the shebang's interpreter (past `env`, its
/// options and assignments; with its own arguments) runs the script
/// itself, in this environment. Before 25.05 the checks and their early
/// exit were in `activate-user` (what `darwin-rebuild check` ran), and
/// `activate` had none: run, it activated. So the script that names
/// `checkActivation` is the one run, and with neither the gate fails,
/// running nothing. `$1`: the closure.
pub const DRY_DARWIN: &str = r#"f="$1/activate"
if ! grep -q checkActivation "$f" 2>/dev/null; then
  f="$1/activate-user"
  grep -q checkActivation "$f" 2>/dev/null || {
    echo "nixgate: neither $1/activate nor activate-user has a check-only mode (checkActivation): nothing run" >&2
    exit 3
  }
fi
IFS= read -r first < "$f" || { echo "nixgate: cannot read $f" >&2; exit 127; }
case $first in
  '#!'*) ;;
  *) echo "nixgate: $f does not start with #!" >&2; exit 127 ;;
esac
set -f
set -- ${first#??}
case ${1:-} in
  env | */env)
    shift
    while [ "$#" -gt 0 ]; do
      case $1 in -* | *=*) shift ;; *) break ;; esac
    done
    ;;
esac
[ "$#" -gt 0 ] || { echo "nixgate: $f names no interpreter" >&2; exit 127; }
exec "$@" "$f""#;

fn units(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parse the `would ...` lines of a dry activation.
pub fn parse_report(text: &str) -> DryActivateReport {
    let mut r = DryActivateReport::default();
    for line in text.lines().map(str::trim) {
        if let Some(l) = line.strip_prefix("would stop the following units:") {
            r.would_stop.extend(units(l));
        } else if let Some(l) = line.strip_prefix("would NOT stop the following changed units:") {
            r.would_not_stop.extend(units(l));
        } else if let Some(l) = line.strip_prefix("would reload the following units:") {
            r.would_reload.extend(units(l));
        } else if let Some(l) = line.strip_prefix("would restart the following units:") {
            r.would_restart.extend(units(l));
        } else if let Some(l) = line.strip_prefix("would start the following units:") {
            r.would_start.extend(units(l));
        } else if let Some(l) = line.strip_prefix("would stop swap device:") {
            r.would_stop_swap.extend(units(l));
        } else if line == "would restart systemd" {
            r.would_restart_systemd = true;
        }
    }
    r
}

/// Classify a finished dry activation.
pub fn classify(exit: &Exit, stdout: &str, stderr: &str) -> DryActivateOutcome {
    let all = format!("{stdout}\n{stderr}");
    let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail: Vec<String> = lines[lines.len().saturating_sub(20)..]
        .iter()
        .map(|l| l.to_string())
        .collect();
    if exit.success() {
        return DryActivateOutcome::Passed(parse_report(&all));
    }
    match pre_switch_failure(&lines) {
        Some(f @ PreSwitchFailure { .. }) if f.is_inhibitor() => {
            DryActivateOutcome::Inhibited { tail }
        }
        Some(PreSwitchFailure { check }) => {
            DryActivateOutcome::PreSwitchCheckFailed { check, tail }
        }
        None if init_interface_changed(exit, &lines) => {
            DryActivateOutcome::InitInterfaceChanged { tail }
        }
        None => DryActivateOutcome::Failed {
            exit: exit.clone(),
            tail,
        },
    }
}

/// Exit 100 with switch-to-configuration's own warning ("the new NixOS
/// configuration has an 'init' that is incompatible with the current
/// configuration"): a Darwin `activate` or a wrapper exiting 100 for its
/// own reasons stays a failure.
fn init_interface_changed(exit: &Exit, lines: &[&str]) -> bool {
    exit.code() == Some(100)
        && lines
            .iter()
            .any(|l| l.contains("incompatible with the current configuration"))
}

/// Run the dry activation of `closure` on the host.
pub async fn dry_activate<R: Remote>(
    remote: &R,
    closure: &StorePath,
    os: Os,
    sudo: bool,
) -> anyhow::Result<DryActivateOutcome> {
    let out = remote
        .exec(&dry_activate_command(closure, os, sudo))
        .await
        .with_context(|| format!("dry-activating {closure} on {}", remote.name()))?;
    Ok(classify(&out.exit, &out.stdout_str(), &out.stderr_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Output;
    use crate::remote::local::executable;
    use crate::remote::scripted::{ScriptedRemote, fail};

    const SYS: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";

    #[tokio::test]
    async fn parses_real_dry_activate_output() {
        // Shape of switch-to-configuration-ng's dry-activate stderr.
        let stderr = "would stop the following units: accounts-daemon.service\n\
            would NOT stop the following changed units: systemd-journald.service\n\
            would activate the configuration...\n\
            setting up /etc...\n\
            would restart systemd\n\
            would reload the following units: dbus.service\n\
            would restart the following units: nginx.service, polkit.service\n\
            would start the following units: accounts-daemon.service, nixgate-health.timer\n";
        let r = ScriptedRemote::new("web1", move |_| {
            Output::new(Exit::Code { code: 0 }, "", stderr)
        });
        let sys = StorePath::parse(SYS).unwrap();
        let out = dry_activate(&r, &sys, Os::Linux, true).await.unwrap();
        assert_eq!(
            out,
            DryActivateOutcome::Passed(DryActivateReport {
                would_stop: vec!["accounts-daemon.service".into()],
                would_not_stop: vec!["systemd-journald.service".into()],
                would_reload: vec!["dbus.service".into()],
                would_restart: vec!["nginx.service".into(), "polkit.service".into()],
                would_start: vec![
                    "accounts-daemon.service".into(),
                    "nixgate-health.timer".into()
                ],
                would_restart_systemd: true,
                would_stop_swap: vec![],
            })
        );
        assert_eq!(
            r.commands()[0].render(),
            format!("sudo -n -- {SYS}/bin/switch-to-configuration dry-activate")
        );
    }

    #[test]
    fn exit_100_with_the_init_warning_needs_a_reboot_and_without_it_fails() {
        let said = "Warning: the new NixOS configuration has an ‘init’ that is\n\
                    incompatible with the current configuration.  The new configuration\n\
                    won't take effect until you reboot the system.\n";
        assert!(matches!(
            classify(&Exit::Code { code: 100 }, "", said),
            DryActivateOutcome::InitInterfaceChanged { .. }
        ));
        assert!(matches!(
            classify(&Exit::Code { code: 100 }, "", "activate: error\n"),
            DryActivateOutcome::Failed { .. }
        ));
    }

    #[test]
    fn failures() {
        match classify(
            &Exit::Code { code: 1 },
            "",
            "Checking switch inhibitors...\nPre-switch check 'switchInhibitors' failed\nPre-switch checks failed\n",
        ) {
            DryActivateOutcome::Inhibited { tail } => assert_eq!(tail.len(), 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(
                &Exit::Code { code: 2 },
                "",
                "This is not a NixOS installation!\n"
            ),
            DryActivateOutcome::Failed { .. }
        ));
        let f = fail(
            1,
            "Pre-switch check 'diskSpace' failed\nPre-switch checks failed\n",
        );
        assert_eq!(
            classify(&f.exit, "", &f.stderr_str()),
            DryActivateOutcome::PreSwitchCheckFailed {
                check: Some("diskSpace".into()),
                tail: vec![
                    "Pre-switch check 'diskSpace' failed".into(),
                    "Pre-switch checks failed".into()
                ]
            }
        );
    }

    #[test]
    fn darwin_command() {
        let sys = StorePath::parse(SYS).unwrap();
        let c = dry_activate_command(&sys, Os::Darwin, true);
        assert!(
            c.render()
                .starts_with("sudo -n -- env checkActivation=1 sh -c "),
            "{}",
            c.render()
        );
        assert_eq!(c.argv().last().map(String::as_str), Some(SYS));
    }

    /// nix-darwin before 25.05: `activate` has no check-only mode (it
    /// activates whatever the environment), `activate-user` has: that one
    /// runs. Neither: nothing runs, the gate fails.
    #[test]
    fn darwin_runs_only_a_script_that_can_check() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let write = |name: &str, body: String| executable(format!("{d}/{name}"), &body);
        write("activate", format!("#!/bin/sh\ntouch {d}/activated\n"));
        let run = || {
            std::process::Command::new("sh")
                .args(["-c", DRY_DARWIN, "nixgate", d])
                .env("checkActivation", "1")
                .output()
                .unwrap()
        };
        let out = run();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        write(
            "activate-user",
            "#!/bin/sh\nif [ \"${checkActivation:-0}\" -eq 1 ]; then echo ok >&2; exit 0; fi\nexit 9\n".into(),
        );
        let out = run();
        assert!(out.status.success(), "{out:?}");
        assert!(!std::path::Path::new(&format!("{d}/activated")).exists());
    }

    /// nix-darwin's `activate` with its `env -i` shebang: run as a program
    /// it loses `checkActivation` and activates; the gate only checks.
    #[test]
    fn darwin_checks_only_even_behind_env_i() {
        // Linux hands a shebang's words to `env` as one: `-S` splits them
        // as macOS does.
        let shebangs = [
            "#!/usr/bin/env -S -i /bin/sh",
            "#!/usr/bin/env -i /bin/sh",
            "#!/bin/sh",
            "#! /bin/sh ",
            "#!/bin/sh -e",
            "#!/usr/bin/env -S -i FOO=1 /bin/sh -e",
        ];
        for shebang in shebangs {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            let activate = format!(
                "{shebang}\nset -e\nif [ \"${{checkActivation:-0}}\" -eq 1 ]; then echo ok >&2; exit 0; fi\ntouch {d}/activated\n"
            );
            executable(format!("{d}/activate"), &activate);
            let out = std::process::Command::new("sh")
                .args(["-c", DRY_DARWIN, "nixgate", d])
                .env("checkActivation", "1")
                .output()
                .unwrap();
            assert!(out.status.success(), "{shebang}: {out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr).trim(),
                "ok",
                "{shebang}"
            );
            assert!(
                !std::path::Path::new(&format!("{d}/activated")).exists(),
                "{shebang}: the dry run activated"
            );
        }
    }
}
