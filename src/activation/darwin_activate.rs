//! nix-darwin's activation as `darwin-rebuild` runs it, for every nix-darwin
//! release a host may run or be taken back to.
//!
//! Up to nix-darwin 24.11 a system had two scripts: `activate-user`, run
//! first AS THE USER (user defaults, `~/Library/LaunchAgents`, the
//! `*UserActivation` hooks, and the checks), then `activate`, run as root.
//! nixgate ran `activate` alone, so on such a system the user half of every
//! change was never applied, and a rollback to one left the user's agents
//! and defaults as the candidate had made them. Since 25.05 activation is
//! root-only (nix-darwin commit 2ca29474, "get rid of user activation");
//! `activate-user` stays as a stub for older tools, marked by a line
//! `# nix-darwin: deprecated` (its second), which prints a deprecation
//! warning when run. `darwin-rebuild` from then on runs `activate-user` only
//! when it is executable and has no such line; so does this.
//!
//! The user is the one nixgate logs in as: the activation runs as root
//! through `sudo`, which names that user in `SUDO_USER`, and `activate-user`
//! is run back as them (`sudo -H`: `~` is their home, as it was for
//! `darwin-rebuild`); logged in as root (no `SUDO_USER`), it runs as root,
//! as `darwin-rebuild` run as root did. Going forward (the candidate), a
//! failing `activate-user` stops there, as in `darwin-rebuild` (`set -e`):
//! `activate` is not run, the activation's exit is its exit and its last
//! line says so, so the gate fails with the job's log.
//!
//! Going back (the dead-man revert, the controller's rollback: `back`),
//! `activate` runs all the same, and a line in the log says the user half
//! failed; the exit is `activate`'s. The root half is what takes the host
//! back (its launchd daemons, `/run/current-system`, `/etc`): stopped
//! there, a revert left the candidate live, the very system it was taking
//! the host away from, for a failure of the user's defaults or agents.

/// `activate_darwin CLOSURE [back]`: the shell function that activates a
/// nix-darwin system (see the module docs); `back` when it takes the host
/// back to it. Shared by the switch's job ([`ACTIVATE`]) and the dead-man
/// revert ([`super::deadman::REVERT`]), so a system is activated the same
/// way forward and back.
macro_rules! activate_darwin {
    () => {
        r#"activate_darwin() {
  user_script="$1/activate-user"
  if [ -x "$user_script" ] && ! grep -qx '# nix-darwin: deprecated' "$user_script" 2>/dev/null; then
    as_user=${SUDO_USER:-}
    if [ -n "$as_user" ] && [ "$as_user" != "$(id -un)" ]; then sudo -n -H -u "$as_user" -- "$user_script"
    else "$user_script"; fi
    user_rc=$?
    if [ "$user_rc" != 0 ] && [ "${2:-}" != back ]; then
      echo "nixgate: $user_script exited $user_rc (as ${as_user:-$(id -un)}): $1/activate not run" >&2
      return "$user_rc"
    fi
    if [ "$user_rc" != 0 ]; then
      echo "nixgate: $user_script exited $user_rc (as ${as_user:-$(id -un)}): the user's half of $1 failed; going back, $1/activate runs all the same" >&2
    fi
  fi
  "$1/activate"
}
"#
    };
}
pub(crate) use activate_darwin;

/// The detached job's program on nix-darwin: `$1` the closure, `$2`
/// `back` for a rollback's job.
pub const ACTIVATE: &str = concat!(activate_darwin!(), r#"activate_darwin "$1" "${2:-}""#);

/// The argv that activates `closure` on nix-darwin; `back`: the host is
/// taken back to it (a rollback), see the module docs.
pub fn program(closure: &crate::nix::StorePath, back: bool) -> Vec<String> {
    let mut argv = [
        "/bin/sh",
        "-c",
        ACTIVATE,
        "nixgate-activate",
        closure.as_str(),
    ]
    .map(String::from)
    .to_vec();
    if back {
        argv.push("back".to_owned());
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::local::executable;

    /// A fake nix-darwin system in `d/sys`: `activate` and, when given,
    /// `activate-user`, each logging its run (and the user it ran as, and
    /// its `HOME`) to `d/calls`; `sudo` played by a stub that logs its
    /// arguments and runs the command.
    fn system(d: &str, user_script: Option<&str>) -> String {
        let sys = format!("{d}/sys");
        std::fs::create_dir_all(format!("{d}/bin")).unwrap();
        std::fs::create_dir_all(&sys).unwrap();
        let log = format!("{d}/calls");
        executable(
            format!("{d}/bin/sudo"),
            &format!(
                "#!/bin/sh\necho \"sudo $*\" >> {log}\nwhile [ \"$1\" != -- ]; do shift; done; shift\nHOME=/home/alice exec \"$@\"\n"
            ),
        );
        executable(
            format!("{sys}/activate"),
            &format!("#!/bin/sh\necho \"activate\" >> {log}\n"),
        );
        if let Some(body) = user_script {
            executable(format!("{sys}/activate-user"), body);
        }
        sys
    }

    fn run(
        d: &str,
        sys: &str,
        sudo_user: Option<&str>,
    ) -> (std::process::ExitStatus, String, String) {
        run_as(d, sys, sudo_user, false)
    }

    /// [`run`], `back`: as a rollback's job runs it.
    fn run_as(
        d: &str,
        sys: &str,
        sudo_user: Option<&str>,
        back: bool,
    ) -> (std::process::ExitStatus, String, String) {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", ACTIVATE, "nixgate-activate", sys])
            .args(back.then_some("back"))
            .env("PATH", format!("{d}/bin:/usr/bin:/bin"))
            .env_remove("SUDO_USER");
        if let Some(u) = sudo_user {
            cmd.env("SUDO_USER", u);
        }
        let out = cmd.output().unwrap();
        let calls = std::fs::read_to_string(format!("{d}/calls")).unwrap_or_default();
        (
            out.status,
            calls,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A nix-darwin 24.11 system: its `activate-user` runs first, as the
    /// user `sudo` names, with their home; then `activate`.
    #[test]
    fn an_old_system_runs_activate_user_as_the_user_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let old =
            format!("#!/bin/sh\nset -e\necho \"activate-user HOME=$HOME\" >> {d}/calls\nexit 0\n");
        let sys = system(d, Some(&old));
        let (status, calls, err) = run(d, &sys, Some("nixgate-test-alice"));
        assert!(status.success(), "{err}");
        assert_eq!(
            calls,
            format!(
                "sudo -n -H -u nixgate-test-alice -- {sys}/activate-user\n\
                 activate-user HOME=/home/alice\nactivate\n"
            )
        );
        // Logged in as root: no sudo, run as is.
        std::fs::remove_file(format!("{d}/calls")).unwrap();
        let (status, calls, err) = run(d, &sys, None);
        assert!(status.success(), "{err}");
        assert!(
            calls.ends_with("activate\n") && !calls.contains("sudo"),
            "{calls}"
        );
        assert!(calls.starts_with("activate-user"), "{calls}");
    }

    /// A failing `activate-user` stops the activation with its exit code,
    /// and says so; `activate` is not run.
    #[test]
    fn a_failing_activate_user_stops_the_activation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let sys = system(d, Some("#!/bin/sh\necho checks failed >&2\nexit 2\n"));
        let (status, calls, err) = run(d, &sys, Some("nixgate-test-alice"));
        assert_eq!(status.code(), Some(2), "{err}");
        assert!(!calls.contains("activate\n"), "{calls}");
        assert!(
            err.contains(&format!(
                "{sys}/activate-user exited 2 (as nixgate-test-alice)"
            )),
            "{err}"
        );
    }

    /// Going back (a rollback, the revert), a failing `activate-user` does
    /// not stop `activate`, which takes the host back: the exit is
    /// `activate`'s, and a line says the user half failed.
    #[test]
    fn going_back_a_failing_activate_user_does_not_stop_activate() {
        for activate_exit in [0, 3] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            let sys = system(d, Some("#!/bin/sh\necho checks failed >&2\nexit 2\n"));
            let activate = format!("#!/bin/sh\necho activate >> {d}/calls\nexit {activate_exit}\n");
            executable(format!("{sys}/activate"), &activate);
            let (status, calls, err) = run_as(d, &sys, Some("nixgate-test-alice"), true);
            assert_eq!(status.code(), Some(activate_exit), "{err}");
            assert!(calls.ends_with("activate\n"), "{calls}");
            assert!(
                err.contains(&format!(
                    "{sys}/activate-user exited 2 (as nixgate-test-alice): the user's half"
                )),
                "{err}"
            );
        }
    }

    /// A rollback's job says it goes back; the candidate's does not.
    #[test]
    fn only_a_job_going_back_says_so() {
        let sys = crate::nix::StorePath::parse(
            "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-darwin-system-24.11",
        )
        .unwrap();
        assert_eq!(
            program(&sys, false).last().map(String::as_str),
            Some(sys.as_str())
        );
        assert_eq!(program(&sys, true)[4..], [sys.as_str(), "back"]);
    }

    /// nix-darwin 25.05 on: the `activate-user` stub (or none) is not run.
    #[test]
    fn a_new_system_runs_activate_alone() {
        for stub in [
            Some("#! /bin/sh\n# nix-darwin: deprecated\necho stub >> /dev/null\nexit 9\n"),
            None,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            let sys = system(d, stub);
            let (status, calls, err) = run(d, &sys, Some("nixgate-test-alice"));
            assert!(status.success(), "{err}");
            assert_eq!(calls, "activate\n");
        }
    }
}
