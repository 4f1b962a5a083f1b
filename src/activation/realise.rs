//! Step 1: make sure the closure is complete and trusted on the host.
//!
//! `nix-store --realise <closure>` forces every path to be valid (fetching
//! what is missing from the host's substituters, which checks signatures). A
//! trust failure is its own outcome, [`RealiseOutcome::SignatureMismatch`],
//! never folded into a generic failure. With `require_signatures`, the
//! closure's signatures are then checked explicitly with
//! `nix store verify --recursive --no-contents --sigs-needed 1` (works from
//! Nix 2.4 / Lix on; exit status bit 2 means "untrusted").

use anyhow::Context;

use crate::nix::StorePath;
use crate::remote::{Command, Exit, Remote};

/// How realising the closure on the host ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RealiseOutcome {
    /// Every path is valid (and, if required, signed by a trusted key).
    Realised,
    /// A path lacks a signature by a key the host trusts.
    SignatureMismatch {
        /// The paths Nix named as untrusted, when it named them.
        untrusted: Vec<String>,
        tail: Vec<String>,
    },
    /// Realising failed for another reason (missing path, disk full, ...).
    Failed { exit: Exit, tail: Vec<String> },
}

/// `nix-store --realise <closure>`.
pub fn realise_command(closure: &StorePath) -> Command {
    Command::new("nix-store")
        .arg("--realise")
        .arg(closure.as_str())
}

/// `nix --extra-experimental-features nix-command store verify --recursive
/// --no-contents --sigs-needed 1 <closure>`.
pub fn verify_command(closure: &StorePath) -> Command {
    verify_command_trusting(closure, &[])
}

/// [`verify_command`] trusting `keys` (when any) for this call only:
/// `--option trusted-public-keys "k1 k2"`.
pub fn verify_command_trusting(closure: &StorePath, keys: &[String]) -> Command {
    let mut c = Command::new("nix").args(["--extra-experimental-features", "nix-command"]);
    if !keys.is_empty() {
        c = c
            .args(["--option", "trusted-public-keys"])
            .arg(keys.join(" "));
    }
    c.args(["store", "verify", "--recursive", "--no-contents"])
        .args(["--sigs-needed", "1"])
        .arg(closure.as_str())
}

/// Messages Nix (2.4 .. current, and Lix) prints when a path is not trusted.
const TRUST_MARKERS: [&str; 6] = [
    "lacks a valid signature",
    "lacks a signature by a trusted key",
    "is not signed by",
    "not signed by any of the keys",
    "is untrusted",
    "untrusted public key",
];

fn is_trust_failure(text: &str) -> bool {
    TRUST_MARKERS.iter().any(|m| text.contains(m))
}

/// Store paths quoted in lines that report a trust failure.
fn untrusted_paths(text: &str) -> Vec<String> {
    let mut paths: Vec<String> = text
        .lines()
        .filter(|l| is_trust_failure(l))
        .filter_map(|l| {
            let start = l.find("'/nix/store/")? + 1;
            let len = l[start..].find('\'')?;
            Some(l[start..start + len].to_owned())
        })
        .collect();
    paths.dedup();
    paths
}

/// Classify the output of [`realise_command`].
pub fn classify_realise(exit: &Exit, stderr: &str, tail: Vec<String>) -> RealiseOutcome {
    if exit.success() {
        RealiseOutcome::Realised
    } else if is_trust_failure(stderr) {
        RealiseOutcome::SignatureMismatch {
            untrusted: untrusted_paths(stderr),
            tail,
        }
    } else {
        RealiseOutcome::Failed {
            exit: exit.clone(),
            tail,
        }
    }
}

/// Classify the output of [`verify_command`]. `nix store verify` exits with
/// a bit mask: 1 corrupted, 2 untrusted, 4 other failure.
pub fn classify_verify(exit: &Exit, stderr: &str, tail: Vec<String>) -> RealiseOutcome {
    match exit.code() {
        Some(0) => RealiseOutcome::Realised,
        Some(code) if code & 2 != 0 || is_trust_failure(stderr) => {
            RealiseOutcome::SignatureMismatch {
                untrusted: untrusted_paths(stderr),
                tail,
            }
        }
        _ => RealiseOutcome::Failed {
            exit: exit.clone(),
            tail,
        },
    }
}

/// Step 1: realise the closure, then (if `require_signatures`) verify its
/// signatures. Runs as the login user: Nix's daemon enforces trust for it.
pub async fn realise<R: Remote>(
    remote: &R,
    closure: &StorePath,
    require_signatures: bool,
) -> anyhow::Result<RealiseOutcome> {
    realise_trusting(remote, closure, require_signatures, &[]).await
}

/// [`realise`], the signature check trusting `keys` (when any).
pub async fn realise_trusting<R: Remote>(
    remote: &R,
    closure: &StorePath,
    require_signatures: bool,
    keys: &[String],
) -> anyhow::Result<RealiseOutcome> {
    let out = remote
        .exec(&realise_command(closure))
        .await
        .with_context(|| format!("realising {closure} on {}", remote.name()))?;
    let outcome = classify_realise(&out.exit, &out.stderr_str(), out.tail(10));
    if outcome != RealiseOutcome::Realised || !require_signatures {
        return Ok(outcome);
    }
    let out = remote
        .exec(&verify_command_trusting(closure, keys))
        .await
        .with_context(|| format!("verifying signatures of {closure} on {}", remote.name()))?;
    Ok(classify_verify(&out.exit, &out.stderr_str(), out.tail(10)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::scripted::{ScriptedRemote, fail, ok};

    const SYS: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";
    const DEP: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-openssl-3.0.13";

    fn sys() -> StorePath {
        StorePath::parse(SYS).unwrap()
    }

    #[tokio::test]
    async fn realised_without_signature_check() {
        let r = ScriptedRemote::new("web1", |_| ok(&format!("{SYS}\n")));
        assert_eq!(
            realise(&r, &sys(), false).await.unwrap(),
            RealiseOutcome::Realised
        );
        assert_eq!(r.argvs(), vec![vec!["nix-store", "--realise", SYS]]);
    }

    #[tokio::test]
    async fn substitution_refused_for_missing_signature() {
        let stderr = format!(
            "warning: ignoring substitute for '{DEP}' from 'https://cache.example.org', as it's not signed by any of the keys in 'trusted-public-keys'\n\
             error: path '{DEP}' is required, but there is no substituter that can build it\n"
        );
        let r = ScriptedRemote::new("web1", move |_| fail(1, &stderr));
        match realise(&r, &sys(), true).await.unwrap() {
            RealiseOutcome::SignatureMismatch { untrusted, .. } => {
                assert_eq!(untrusted, vec![DEP.to_string()])
            }
            other => panic!("{other:?}"),
        }
        // No verify after a failed realise.
        assert_eq!(r.argvs().len(), 1);
    }

    #[tokio::test]
    async fn import_refused_lacks_valid_signature() {
        let stderr = format!("error: cannot add path '{DEP}' because it lacks a valid signature\n");
        let r = ScriptedRemote::new("web1", move |_| fail(1, &stderr));
        assert!(matches!(
            realise(&r, &sys(), false).await.unwrap(),
            RealiseOutcome::SignatureMismatch { .. }
        ));
    }

    #[tokio::test]
    async fn other_failures_are_not_signature_failures() {
        let stderr = format!(
            "don't know how to build these paths:\n  {SYS}\nerror: build of '{SYS}' failed\n"
        );
        let r = ScriptedRemote::new("web1", move |_| fail(1, &stderr));
        match realise(&r, &sys(), false).await.unwrap() {
            RealiseOutcome::Failed { exit, tail } => {
                assert_eq!(exit, Exit::Code { code: 1 });
                assert!(tail.last().unwrap().contains("failed"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn verify_untrusted_is_signature_mismatch() {
        // Real Nix 2.8 output of `nix store verify --sigs-needed 1` on an
        // unsigned input-addressed path: exit 2.
        let r = ScriptedRemote::new("web1", |c| {
            if c.program() == "nix-store" {
                ok(SYS)
            } else {
                fail(
                    2,
                    &format!("checking '{SYS}'...\npath '{SYS}' is untrusted\n"),
                )
            }
        });
        match realise(&r, &sys(), true).await.unwrap() {
            RealiseOutcome::SignatureMismatch { untrusted, .. } => {
                assert_eq!(untrusted, vec![SYS.to_string()])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.argvs()[1],
            vec![
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "store",
                "verify",
                "--recursive",
                "--no-contents",
                "--sigs-needed",
                "1",
                SYS
            ]
        );
    }
}

/// The real Nix on this machine (2.8): an unsigned, locally built
/// input-addressed path is untrusted under `--sigs-needed 1`; a
/// content-addressed one (`nix-store --add`) is trusted without signatures.
#[cfg(test)]
mod local_nix {
    use super::*;
    use crate::remote::local::LocalRemote;

    fn sh(script: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[tokio::test]
    #[ignore = "needs Nix and a writable store (root): run scripts/test"]
    async fn real_nix_store_verify() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let built = sh(&format!(
            "cd {d} && printf '%s' 'derivation {{ name = \"ng-realise\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo {unique} > $out\" ]; }}' > d.nix && \
             nix-build --option sandbox false --option build-users-group '' --option substituters '' --no-out-link d.nix 2>/dev/null"
        ));
        let built = StorePath::parse(&built).unwrap();
        let r = LocalRemote::new("local");
        match realise(&r, &built, true).await.unwrap() {
            RealiseOutcome::SignatureMismatch { untrusted, .. } => {
                assert_eq!(untrusted, vec![built.to_string()])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            realise(&r, &built, false).await.unwrap(),
            RealiseOutcome::Realised
        );
        let added = sh(&format!("echo {unique} > {d}/f && nix-store --add {d}/f"));
        let added = StorePath::parse(&added).unwrap();
        assert_eq!(
            realise(&r, &added, true).await.unwrap(),
            RealiseOutcome::Realised
        );
    }
}
