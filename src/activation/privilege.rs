//! Privilege: hosts reached as a non-root user with `sudo = true` run their
//! privileged steps through `sudo -n`. [`sudo_preflight`] proves that works
//! before anything on the host changes, and says precisely why not.

use anyhow::Context;

use crate::remote::{Command, Exit, Remote};

/// The result of `sudo -n true` on a host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SudoCheck {
    /// Passwordless sudo works.
    Ready,
    /// sudo wants a password: grant NOPASSWD for the deploy user, or connect as root.
    PasswordRequired,
    /// sudo asked for a password and refused the one the run has.
    WrongPassword,
    /// The user may not use sudo at all.
    NotInSudoers,
    /// There is no `sudo` on the host.
    SudoMissing,
    /// sudo refused for another reason; the output says which.
    Refused { exit: Exit, tail: Vec<String> },
}

impl SudoCheck {
    pub fn is_ready(&self) -> bool {
        matches!(self, SudoCheck::Ready)
    }
}

/// The command: `sudo -n -- true`.
pub fn preflight_command() -> Command {
    Command::new("true").sudo(true)
}

/// Classify the output of [`preflight_command`].
pub fn classify(exit: &Exit, stderr: &str, tail: Vec<String>) -> SudoCheck {
    let lower = stderr.to_ascii_lowercase();
    if exit.success() {
        SudoCheck::Ready
    } else if lower.contains("password is required") || lower.contains("no askpass") {
        SudoCheck::PasswordRequired
    } else if lower.contains("not in the sudoers") || lower.contains("is not allowed to") {
        SudoCheck::NotInSudoers
    } else if exit.code() == Some(127) && lower.contains("sudo") {
        SudoCheck::SudoMissing
    } else {
        SudoCheck::Refused {
            exit: exit.clone(),
            tail,
        }
    }
}

/// Run `sudo -n true` on the host and classify the answer. `Err` only when the
/// command could not be run at all.
pub async fn sudo_preflight<R: Remote>(remote: &R) -> anyhow::Result<SudoCheck> {
    let out = remote
        .exec(&preflight_command())
        .await
        .with_context(|| format!("checking sudo on {}", remote.name()))?;
    Ok(classify(&out.exit, &out.stderr_str(), out.tail(5)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::scripted::{ScriptedRemote, fail, ok};

    #[tokio::test]
    async fn classifies_real_sudo_messages() {
        let cases = [
            (ok(""), SudoCheck::Ready),
            (
                fail(1, "sudo: a password is required\n"),
                SudoCheck::PasswordRequired,
            ),
            (
                fail(
                    1,
                    "deploy is not in the sudoers file.  This incident will be reported.\n",
                ),
                SudoCheck::NotInSudoers,
            ),
            (
                fail(
                    1,
                    "Sorry, user deploy is not allowed to execute '/run/current-system/sw/bin/true' as root on web1.\n",
                ),
                SudoCheck::NotInSudoers,
            ),
            (
                fail(127, "bash: line 1: sudo: command not found\n"),
                SudoCheck::SudoMissing,
            ),
        ];
        for (out, want) in cases {
            let r = ScriptedRemote::new("web1", move |_| out.clone());
            assert_eq!(sudo_preflight(&r).await.unwrap(), want);
            assert_eq!(r.commands()[0].render(), "sudo -n -- true");
        }
        let r = ScriptedRemote::new("web1", |_| fail(1, "sudo: account validation failure"));
        assert!(matches!(
            sudo_preflight(&r).await.unwrap(),
            SudoCheck::Refused { .. }
        ));
    }
}
