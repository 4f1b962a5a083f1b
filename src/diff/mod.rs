//! Gate 2: closure diff and root-cause analysis. Before anything switches,
//! each host's candidate is diffed against what runs on it, from metadata
//! only (nothing is copied): package versions ([`packages`]), derivation
//! structure ([`structural`]), accidental drift ([`drift`]), flake inputs
//! ([`flake_lock`]), and text for people ([`render`]).

pub mod aterm;
pub mod drift;
mod drv_reads;
pub mod flake_lock;
pub mod names;
pub mod packages;
pub mod render;
pub mod source_tree;
pub mod structural;

use serde::{Deserialize, Serialize};

use crate::nix::StorePath;
use crate::nix::closure::{self, PathInfo};
use crate::remote::Remote;
pub use drift::Drift;
pub use packages::PackageDiff;
pub use structural::Structural;

/// One host's diff: what runs vs the candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDiff {
    pub current: Option<StorePath>,
    pub candidate: StorePath,
    pub packages: Option<PackageDiff>,
    pub structural: Structural,
    pub drift: Vec<Drift>,
    /// Flake inputs changed between the commit the host's known-good was
    /// built from and the candidate's (when both are known and have a flake.lock).
    pub flake_inputs: Option<Vec<flake_lock::InputChange>>,
    /// Why the flake inputs' change is not known, when it is not (the base
    /// commit is not in the local clone, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flake_inputs_unknown: Option<flake_lock::InputsUnknown>,
    /// The host runs a system that is none of its known-good generations
    /// (changed outside nixgate, deployed by a goal that does not mark, or
    /// never deployed by it): the diff is against what it runs, not against
    /// what nixgate proved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unvalidated: bool,
    /// The host stands where a `nixgate rollback` took it, away from this
    /// very candidate: the diff gate refuses it unless the push allows it
    /// (`--allow-rolled-back`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<crate::activation::known_good::RolledAway>,
    /// The candidate's closure as the builder reported it (the copy gate
    /// reuses it instead of asking again).
    #[serde(skip)]
    pub candidate_closure: Option<std::sync::Arc<Vec<PathInfo>>>,
}

impl HostDiff {
    /// Text lines for people.
    pub fn render(&self) -> Vec<String> {
        let mut out = self.basis();
        if let Some(p) = &self.packages
            && !self.no_change()
        {
            out.extend(render::render_packages(p));
        }
        let causes = render::render_causes(&self.structural);
        if !causes.is_empty() && !matches!(self.structural, Structural::Identical) {
            out.push("why:".into());
            out.extend(causes.into_iter().map(|l| format!("  {l}")));
        }
        if let Some(inputs) = &self.flake_inputs {
            out.extend(render::render_inputs(inputs));
        }
        if let Some(why) = &self.flake_inputs_unknown {
            out.push(render::render_inputs_unknown(why));
        }
        out.extend(render::render_drift(&self.drift));
        out
    }

    /// What the diff is against, when that is not simply the known-good
    /// the host runs: an unvalidated system, no system known, or the
    /// candidate itself.
    pub fn basis(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.unvalidated {
            out.push(
                "runs a system that is not one of its known-good generations (changed outside \
                 nixgate, deployed by a goal that does not mark, or never deployed by it): the \
                 diff is against what it runs"
                    .into(),
            );
        }
        if let Some(away) = &self.rolled_back {
            out.push(format!(
                "a `nixgate rollback` (run {}, {}) took it away from this candidate to known-good \
                 generation {}",
                away.run_id, away.at, away.generation
            ));
        }
        if self.no_change() {
            out.push("no change: the host already runs the candidate".into());
        }
        if self.packages.is_none() {
            out.push("the host runs no known system: everything is new".into());
        }
        out
    }

    fn no_change(&self) -> bool {
        self.packages.as_ref().is_some_and(|p| p.is_empty())
            && self.current.as_ref() == Some(&self.candidate)
    }
}

/// A candidate built on the builder, with what is already known of it.
pub struct Built<'a> {
    pub toplevel: &'a StorePath,
    pub drv: &'a StorePath,
    /// Its closure, when already fetched (else it is queried).
    pub closure: Option<std::sync::Arc<Vec<PathInfo>>>,
    /// The closure of what the host runs, when the builder had it (a store
    /// path's registration is the same in every store that holds it); else
    /// the host is asked.
    pub current_closure: Option<std::sync::Arc<Vec<PathInfo>>>,
}

/// `--expect` on a host that runs no system nixgate can read: there is no
/// change to check against the expected packages (the diff gate refuses it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the host runs no known system: --expect has nothing to check the change against (every package would be new)"
)]
pub struct ExpectUnchecked;

/// Diff a host's running system against a candidate built on the builder.
/// With `expect`, a host that runs no known system is an error
/// ([`ExpectUnchecked`]): its drift cannot be known.
pub async fn diff_host<H: Remote, B: Remote>(
    host: &H,
    builder: &B,
    current: Option<&StorePath>,
    built: Built<'_>,
    expect: Option<&[String]>,
    drvs: &structural::SharedDrvCache,
) -> anyhow::Result<HostDiff> {
    if expect.is_some() && current.is_none() {
        return Err(ExpectUnchecked.into());
    }
    let (candidate, candidate_drv) = (built.toplevel, built.drv);
    let new = match built.closure {
        Some(k) => k,
        None => std::sync::Arc::new(closure::closure(builder, candidate).await?),
    };
    let (packages, old_drv) = match current {
        Some(cur) => {
            let old = match built.current_closure {
                Some(known) => known,
                None => std::sync::Arc::new(closure::closure(host, cur).await?),
            };
            let deriver = old
                .iter()
                .find(|p| p.path == *cur)
                .and_then(|p| p.deriver.clone());
            (
                Some(packages::package_diff(&old, cur, &new, candidate)),
                deriver,
            )
        }
        None => (None, None),
    };
    let structural = if current == Some(candidate) {
        Structural::Identical
    } else {
        structural::structural_diff(builder, drvs, old_drv.as_ref(), candidate_drv).await?
    };
    let drift = match (&packages, expect) {
        (Some(p), Some(e)) => drift::drift(p, &structural, e),
        _ => Vec::new(),
    };
    Ok(HostDiff {
        current: current.cloned(),
        candidate: candidate.clone(),
        packages,
        structural,
        drift,
        flake_inputs: None,
        flake_inputs_unknown: None,
        unvalidated: false,
        rolled_back: None,
        candidate_closure: Some(new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::closure::PathRecord;
    use crate::remote::scripted::{ScriptedRemote, ok};

    /// With `--expect`, a host that runs no readable system has nothing to
    /// check the expectation against: no diff that would pass it as ready.
    #[tokio::test]
    async fn expect_on_a_host_with_no_current_system_is_an_error_not_an_empty_drift() {
        let cand =
            StorePath::parse("/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web-24.11")
                .unwrap();
        let drv = StorePath::parse(
            "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web-24.11.drv",
        )
        .unwrap();
        let closure = vec![PathInfo::from(PathRecord {
            path: cand.clone(),
            nar_size: 1,
            nar_hash: None,
            references: vec![],
            deriver: Some(drv.clone()),
        })];
        let host = ScriptedRemote::new("web1", |_| ok(""));
        let builder = ScriptedRemote::new("builder", |_| ok(""));
        let built = || Built {
            toplevel: &cand,
            drv: &drv,
            closure: Some(std::sync::Arc::new(closure.clone())),
            current_closure: None,
        };
        let drvs = structural::SharedDrvCache::default();
        let expect = ["nginx".to_owned()];
        let r = diff_host(&host, &builder, None, built(), Some(&expect), &drvs).await;
        let e = r.expect_err("no current system: --expect cannot be checked");
        assert!(e.downcast_ref::<ExpectUnchecked>().is_some(), "{e:#}");
        assert!(format!("{e}").contains("--expect"), "{e}");
        // Without --expect, a host with no system gets everything as new.
        let d = diff_host(&host, &builder, None, built(), None, &drvs)
            .await
            .unwrap();
        assert_eq!(d.packages, None);
    }
}
