//! Copying closures to hosts, by copy mode: relay (builder -> controller ->
//! host, only the missing paths, streamed with bounded memory; see
//! [`super::fanout`]), builder
//! (the builder copies straight to the host; see [`super::builder_copy`]), substitute (the host fetches
//! from its substituters). Every mode verifies the result on the host.
//!
//! Substitute: the host's own `nix-store --realise`, given the inventory's
//! `substituters` / `trusted_public_keys` as `--option`s of that one call
//! (never its `nix.conf`), so the controller carries no closure bytes. The
//! call also sets `narinfo-cache-negative-ttl 0`: Nix remembers a path a
//! cache lacked for an hour by default, which would make a host that asked
//! before the push keep failing after it. Why it failed is typed
//! ([`SubstituteFailed`]): a signature no trusted key made (its own outcome,
//! like `require_signatures`), paths no substituter has, anything else.
//!
//! Measured (`scripts/bench-fleet substitute 20`, BENCHMARKS.md): 20 hosts
//! taking a 19 MiB, 321-path change put 3.1 MiB on the controller's links
//! with substitute (no closure bytes) against 421.8 MiB with the relay; on
//! one 2-core machine it took 40 s against 24 s (each host fetches a
//! narinfo and a NAR per path from one Python file server): its gain is
//! where the bytes travel, not speed on loopback.

use std::collections::HashSet;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::StorePath;
use super::closure::{PathInfo, missing};
use crate::remote::{Command, Remote};

/// Progress of one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CopyProgress {
    pub bytes: u64,
    pub paths: u64,
    pub total_paths: u64,
    /// Seconds the host has taken no bytes and added no path while the copy
    /// waits on it (0: it is moving): said every 10 s of such a wait, so a
    /// stuck host is named long before its `copy_stall_timeout`.
    pub idle_secs: u64,
}

/// How a copy ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CopyOutcome {
    /// The host already had the whole closure: nothing was sent.
    AlreadyPresent,
    /// These many paths and stream bytes were sent; `fanout` is
    /// the part other hosts copied with it got from the same builder read.
    Copied {
        paths: u64,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        fanout: Option<super::fanout::Shared>,
    },
    /// The host realised the closure itself.
    Substituted,
}

/// What `target` lacks of `closure` (one query).
pub async fn lacking<T: Remote>(
    target: &T,
    closure: &[PathInfo],
) -> anyhow::Result<HashSet<StorePath>> {
    let all: Vec<StorePath> = closure.iter().map(|p| p.path.clone()).collect();
    Ok(missing(target, &all).await?.into_iter().collect())
}

/// After a copy: every path of `closure` is valid on `target`.
pub async fn verify_complete<T: Remote>(target: &T, closure: &[PathInfo]) -> anyhow::Result<()> {
    let still = lacking(target, closure).await?;
    if let Some(first) = still.iter().next() {
        anyhow::bail!(
            "after the copy {} still lacks {} path(s), e.g. {first}",
            target.name(),
            still.len()
        );
    }
    Ok(())
}

/// The outcome of a relay copy that sent something.
pub fn copied(r: super::fanout::Received) -> CopyOutcome {
    CopyOutcome::Copied {
        paths: r.paths,
        bytes: r.bytes,
        fanout: (r.shared.hosts > 1).then_some(r.shared),
    }
}

/// Where a host pulls from: empty lists leave the host's own settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PullFrom<'a> {
    pub substituters: &'a [String],
    pub trusted_public_keys: &'a [String],
}

/// `nix-store --realise TOP` with the pull settings as options of the call.
pub fn substitute_command(toplevel: &StorePath, from: PullFrom<'_>) -> Command {
    let mut c = Command::new("nix-store").args(["--realise", toplevel.as_str()]);
    if !from.substituters.is_empty() {
        c = c.args(["--option", "substituters"]);
        c = c.arg(from.substituters.join(" "));
    }
    if !from.trusted_public_keys.is_empty() {
        c = c.args(["--option", "trusted-public-keys"]);
        c = c.arg(from.trusted_public_keys.join(" "));
        // Keys given: they are checked, whatever the host's nix.conf says.
        c = c.args(["--option", "require-sigs", "true"]);
    }
    c.args(["--option", "narinfo-cache-negative-ttl", "0"])
}

/// Why a host could not fetch its closure (nothing on it changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstituteFailed {
    /// A path is signed by no key the host trusts for this call.
    #[error("{} path(s) not signed by a key the host trusts, e.g. {}:\n  {}", untrusted.len(), untrusted.first().map_or("?", String::as_str), tail.join("\n  "))]
    Untrusted {
        untrusted: Vec<String>,
        tail: Vec<String>,
    },
    /// No substituter has (all of) the closure.
    #[error("the substituters {substituters} lack the closure (or a path of it): push it there ([cache] push_to), or check `substituters`; a login user the host's nix-daemon does not trust cannot choose substituters (trusted-users)\n  {}", tail.join("\n  "))]
    Missing {
        substituters: String,
        tail: Vec<String>,
    },
    #[error("nix-store --realise failed:\n  {}", tail.join("\n  "))]
    Failed { tail: Vec<String> },
}

/// Classify a failed substitution from Nix's words (2.8 and 2.26 say the
/// same): "not signed by any of the keys" is a trust failure, "don't know
/// how to build these paths" (the closure or a path of it is in no cache)
/// is a missing path.
pub fn substitute_failure(
    exit: &crate::remote::Exit,
    stderr: &str,
    tail: Vec<String>,
    from: PullFrom<'_>,
) -> SubstituteFailed {
    use crate::activation::realise::{RealiseOutcome, classify_realise};
    match classify_realise(exit, stderr, tail.clone()) {
        RealiseOutcome::SignatureMismatch { untrusted, tail } => {
            SubstituteFailed::Untrusted { untrusted, tail }
        }
        _ if stderr.contains("don't know how to build these paths")
            || stderr.contains("no substituter that can build it") =>
        {
            SubstituteFailed::Missing {
                substituters: if from.substituters.is_empty() {
                    "(the host's own)".into()
                } else {
                    from.substituters.join(" ")
                },
                tail,
            }
        }
        _ => SubstituteFailed::Failed { tail },
    }
}

/// The host realises the closure from its substituters.
pub async fn copy_substitute<T: Remote>(
    target: &T,
    toplevel: &StorePath,
    from: PullFrom<'_>,
) -> anyhow::Result<CopyOutcome> {
    if missing(target, std::slice::from_ref(toplevel))
        .await?
        .is_empty()
    {
        return Ok(CopyOutcome::AlreadyPresent);
    }
    let out = target
        .exec(&substitute_command(toplevel, from))
        .await
        .with_context(|| format!("realising on {}", target.name()))?;
    if !out.success() {
        let why = substitute_failure(&out.exit, &out.stderr_str(), out.tail(10), from);
        return Err(why.into());
    }
    Ok(CopyOutcome::Substituted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = "/nix/store/irk0jw9bd4r75gjl6vw4v2pclc9czdbn-nixos-system-light1-24.05";

    #[test]
    fn substitute_options_are_for_the_call() {
        let subs = vec!["http://127.0.0.9:8080".to_string(), "s3://b".to_string()];
        let keys = vec!["k1:AAAA".to_string(), "k2:BBBB".to_string()];
        let from = PullFrom {
            substituters: &subs,
            trusted_public_keys: &keys,
        };
        let c = substitute_command(&StorePath::parse(TOP).unwrap(), from);
        assert_eq!(
            c.argv(),
            [
                "nix-store",
                "--realise",
                TOP,
                "--option",
                "substituters",
                "http://127.0.0.9:8080 s3://b",
                "--option",
                "trusted-public-keys",
                "k1:AAAA k2:BBBB",
                "--option",
                "require-sigs",
                "true",
                "--option",
                "narinfo-cache-negative-ttl",
                "0"
            ]
        );
        let own = substitute_command(&StorePath::parse(TOP).unwrap(), PullFrom::default());
        assert_eq!(own.argv().len(), 6);
    }

    #[test]
    fn substitution_failures_as_nix_words_them() {
        let subs = vec!["http://127.0.0.9:8080".to_string()];
        let from = PullFrom {
            substituters: &subs,
            trusted_public_keys: &[],
        };
        let exit = crate::remote::Exit::Code { code: 1 };
        // Nix 2.8 (2.26 says "ignoring substitute for '...' from '...', as
        // it's not signed by any of the keys in 'trusted-public-keys'").
        let untrusted = format!(
            "warning: the substitute for '{TOP}' from 'http://127.0.0.9:8080' is not signed by any of the keys in 'trusted-public-keys'\n\
             error: build of '{TOP}' failed\n"
        );
        assert_eq!(
            substitute_failure(&exit, &untrusted, vec![], from),
            SubstituteFailed::Untrusted {
                untrusted: vec![TOP.into()],
                tail: vec![]
            }
        );
        // Both versions, for a closure the cache lacks a path of.
        let lacking = format!(
            "these 2 paths will be fetched (0.01 MiB download, 0.01 MiB unpacked):\n\
             don't know how to build these paths:\n  {TOP}\nerror: build of '{TOP}' failed\n"
        );
        assert!(matches!(
            substitute_failure(&exit, &lacking, vec![], from),
            SubstituteFailed::Missing { substituters, .. } if substituters == "http://127.0.0.9:8080"
        ));
        assert!(matches!(
            substitute_failure(&exit, "error: disk full", vec![], from),
            SubstituteFailed::Failed { .. }
        ));
    }
}
