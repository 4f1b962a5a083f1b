//! Steps 2 and 6: the system profile.
//!
//! [`set`] points a profile at a closure with `nix-env -p <profile> --set`
//! (needed before `switch`/`boot`: `switch-to-configuration` derives the
//! generation number of the boot entry from that profile). Setting a profile
//! to the closure its NEWEST generation has creates no new generation (Nix
//! compares with the newest, not the selected one: checked against real
//! Nix 2.8 below, and by `known_good`'s mark, which must not delete such a
//! generation when it is undone). [`self_correct_profile`] puts the profile
//! back if an activation script re-pointed it; failing to do so is a typed
//! warning, never a failed switch.

use anyhow::Context;

use super::links::read_store_link;
use crate::nix::StorePath;
use crate::remote::{Command, Remote};

/// `nix-env -p <profile> --set <closure>`.
pub fn set_command(profile: &str, closure: &StorePath, sudo: bool) -> Command {
    Command::new("nix-env")
        .args(["-p", profile, "--set", closure.as_str()])
        .within(super::settings::STEP_LIMIT)
        .sudo(sudo)
}

/// Step 2: point `profile` at `closure`.
pub async fn set<R: Remote>(
    remote: &R,
    profile: &str,
    closure: &StorePath,
    sudo: bool,
) -> anyhow::Result<()> {
    remote
        .exec(&set_command(profile, closure, sudo))
        .await
        .with_context(|| format!("setting {profile} on {}", remote.name()))?
        .check(&format!("nix-env -p {profile} --set {closure}"))?;
    Ok(())
}

/// The closure `profile` points at, `None` if the profile does not exist.
pub async fn read<R: Remote>(remote: &R, profile: &str) -> anyhow::Result<Option<StorePath>> {
    read_store_link(remote, profile).await
}

/// What step 6 found and did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProfileCheck {
    /// The profile points where it should.
    Intact,
    /// The activation re-pointed it; it was put back.
    Corrected {
        found: Option<StorePath>,
        restored: StorePath,
    },
    /// It was re-pointed (or could not be read) and could not be put back.
    /// A warning: the live switch itself happened.
    CorrectionFailed {
        found: Option<StorePath>,
        expected: StorePath,
        error: String,
    },
}

/// Step 6: make sure `profile` points at `expected` after an activation,
/// starting from where the switch's last poll found it (`seen`; `None`:
/// not read there, so read it now). The poll that saw the job exit reads
/// the profile too: one round trip fewer after every switch.
pub async fn self_correct_profile<R: Remote>(
    remote: &R,
    profile: &str,
    expected: &StorePath,
    sudo: bool,
    seen: Option<Option<StorePath>>,
) -> ProfileCheck {
    let read = match seen {
        Some(found) => Ok(found),
        None => read(remote, profile).await,
    };
    let found = match read {
        Ok(found) => found,
        Err(e) => {
            return ProfileCheck::CorrectionFailed {
                found: None,
                expected: expected.clone(),
                error: format!("{e:#}"),
            };
        }
    };
    if found.as_ref() == Some(expected) {
        return ProfileCheck::Intact;
    }
    match set(remote, profile, expected, sudo).await {
        Ok(()) => ProfileCheck::Corrected {
            found,
            restored: expected.clone(),
        },
        Err(e) => ProfileCheck::CorrectionFailed {
            found,
            expected: expected.clone(),
            error: format!("{e:#}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::links::read_link_command;
    use crate::remote::local::LocalRemote;
    use crate::remote::scripted::{ScriptedRemote, fail, ok};

    const A: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";
    const B: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";
    const PROFILE: &str = "/nix/var/nix/profiles/system";

    fn sp(s: &str) -> StorePath {
        StorePath::parse(s).unwrap()
    }

    #[tokio::test]
    async fn set_argv_with_sudo() {
        let r = ScriptedRemote::new("web1", |_| ok(""));
        set(&r, PROFILE, &sp(A), true).await.unwrap();
        let cmd = &r.commands()[0];
        assert_eq!(
            cmd.unlimited().render(),
            format!("sudo -n -- nix-env -p {PROFILE} --set {A}")
        );
        // Ended on the host if it waits too long (behind Nix's GC lock).
        assert_eq!(cmd.limit(), Some(crate::activation::settings::STEP_LIMIT));
    }

    #[tokio::test]
    async fn self_correct_cases() {
        // Intact: one read, no set.
        let r = ScriptedRemote::new("web1", |_| ok(&format!("{A}\n")));
        assert_eq!(
            self_correct_profile(&r, PROFILE, &sp(A), false, None).await,
            ProfileCheck::Intact
        );
        assert_eq!(r.argvs(), vec![read_link_command(PROFILE).argv().to_vec()]);

        // Re-pointed: put back.
        let r = ScriptedRemote::new("web1", |c| {
            if c.program() == "sh" {
                ok(&format!("{B}\n"))
            } else {
                ok("")
            }
        });
        assert_eq!(
            self_correct_profile(&r, PROFILE, &sp(A), false, None).await,
            ProfileCheck::Corrected {
                found: Some(sp(B)),
                restored: sp(A)
            }
        );
        assert_eq!(r.argvs()[1], vec!["nix-env", "-p", PROFILE, "--set", A]);

        // Re-pointed and the set fails: a warning carrying the reason.
        let r = ScriptedRemote::new("web1", |c| {
            if c.program() == "sh" {
                ok(&format!("{B}\n"))
            } else {
                fail(
                    1,
                    "error: opening lock file '/nix/var/nix/profiles/system.lock': Permission denied",
                )
            }
        });
        match self_correct_profile(&r, PROFILE, &sp(A), false, None).await {
            ProfileCheck::CorrectionFailed { found, error, .. } => {
                assert_eq!(found, Some(sp(B)));
                assert!(error.contains("Permission denied"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Real `nix-env --set` on a temporary profile: generations, idempotence,
    /// and self-correction after something else re-points the profile.
    #[tokio::test]
    #[ignore = "needs Nix and a writable store (root): run scripts/test"]
    async fn real_nix_env_profile() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a"), "a\n").unwrap();
        std::fs::write(d.join("b"), "b\n").unwrap();
        let r = LocalRemote::new("local");
        let add = |f: &str| {
            let out = std::process::Command::new("nix-store")
                .arg("--add")
                .arg(d.join(f))
                .output()
                .unwrap();
            assert!(out.status.success());
            sp(String::from_utf8(out.stdout).unwrap().trim())
        };
        let (a, b) = (add("a"), add("b"));
        let profile = d.join("system").display().to_string();
        assert_eq!(read(&r, &profile).await.unwrap(), None);
        set(&r, &profile, &a, false).await.unwrap();
        set(&r, &profile, &a, false).await.unwrap();
        assert_eq!(read(&r, &profile).await.unwrap(), Some(a.clone()));
        assert!(d.join("system-1-link").exists());
        assert!(
            !d.join("system-2-link").exists(),
            "same closure: no new generation"
        );
        set(&r, &profile, &b, false).await.unwrap();
        assert_eq!(
            self_correct_profile(&r, &profile, &a, false, None).await,
            ProfileCheck::Corrected {
                found: Some(b),
                restored: a.clone()
            }
        );
        assert_eq!(read(&r, &profile).await.unwrap(), Some(a.clone()));
        assert_eq!(
            std::fs::read_link(&profile).unwrap().to_str(),
            Some("system-3-link")
        );
    }
}
