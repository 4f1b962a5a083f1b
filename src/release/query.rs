//! Reading releases back: [`list`] the release tags, [`show`] one with its
//! evidence, [`resolve`] a tag or `release/<target>` branch name to the
//! release it stands for.
//!
//! A tag under `release/` is a release only if it is annotated, points at a
//! commit, carries a readable record, and the record agrees with the tag
//! (same commit, same target as the tag name). Anything else is reported as
//! [`ReleaseError::NotARelease`] by [`show`] and skipped (with a warning) by
//! [`list`].

use std::path::Path;

use anyhow::Context;
use git2::{ErrorCode, ObjectType, Repository};

use super::create::ref_target;
use super::record::Record;
use super::{ReleaseDetail, ReleaseError, ReleaseInfo, name, open};

/// Every release, grouped by target (in name order), newest first within a
/// target. `targets` restricts the list to those targets.
pub fn list(repo_path: &Path, targets: Option<&[String]>) -> anyhow::Result<Vec<ReleaseInfo>> {
    let repo = open(repo_path)?;
    let mut out = Vec::new();
    for r in list_details(&repo, targets)? {
        out.push(r.info);
    }
    Ok(out)
}

/// One release tag (`release/<target>/<stamp>` or `refs/tags/...`) with its
/// full evidence.
pub fn show(repo_path: &Path, tag: &str) -> anyhow::Result<ReleaseDetail> {
    let repo = open(repo_path)?;
    let short = tag.strip_prefix("refs/tags/").unwrap_or(tag);
    read_tag(&repo, short)?.ok_or_else(|| {
        ReleaseError::NotFound {
            spec: tag.to_owned(),
        }
        .into()
    })
}

/// A release tag by name, or `release/<target>` (the branch): the newest
/// release of that target on the branch's tip commit.
pub fn resolve(repo_path: &Path, spec: &str) -> anyhow::Result<ReleaseDetail> {
    let repo = open(repo_path)?;
    let not_found = || -> anyhow::Error {
        ReleaseError::NotFound {
            spec: spec.to_owned(),
        }
        .into()
    };
    let tag = spec.strip_prefix("refs/tags/").unwrap_or(spec);
    if let Some(found) = read_tag(&repo, tag)? {
        return Ok(found);
    }
    let branch = spec.strip_prefix("refs/heads/").unwrap_or(spec);
    let Some(target) = name::target_of(branch) else {
        return Err(not_found());
    };
    if branch != name::branch(target) {
        return Err(not_found());
    }
    let branch_ref = format!("refs/heads/{branch}");
    if !git2::Reference::is_valid_name(&branch_ref) {
        return Err(not_found());
    }
    let Some(tip) = ref_target(&repo, &branch_ref)? else {
        return Err(not_found());
    };
    let tip = tip.to_string();
    list_details(&repo, Some(&[target.to_owned()]))?
        .into_iter()
        .find(|r| r.info.commit == tip)
        .ok_or_else(|| {
            ReleaseError::NoTagOnBranchTip {
                branch: branch.to_owned(),
                target: target.to_owned(),
                commit: tip,
            }
            .into()
        })
}

fn list_details(
    repo: &Repository,
    targets: Option<&[String]>,
) -> anyhow::Result<Vec<ReleaseDetail>> {
    let prefix = format!("refs/tags/{}", name::PREFIX);
    let mut names = Vec::new();
    for r in repo.references().context("listing refs")? {
        let r = r.context("reading a ref")?;
        // Names that are not UTF-8 cannot be nixgate's.
        let Ok(full) = r.name() else {
            continue;
        };
        if !full.starts_with(&prefix) {
            continue;
        }
        let Some(short) = full.strip_prefix("refs/tags/") else {
            continue;
        };
        let wanted = match (targets, name::target_of(short)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(ts), Some(t)) => ts.iter().any(|x| x == t),
        };
        if wanted {
            names.push(short.to_owned());
        }
    }
    let mut out = Vec::new();
    for short in names {
        match read_tag(repo, &short) {
            Ok(Some(d)) => out.push(d),
            Ok(None) => {} // deleted meanwhile
            Err(e) => match e.downcast_ref::<ReleaseError>() {
                Some(ReleaseError::NotARelease { .. }) => {
                    tracing::warn!(tag = %short, error = %e, "skipping a tag that is not a nixgate release");
                }
                _ => return Err(e),
            },
        }
    }
    out.sort_by(|a, b| {
        a.info
            .target
            .cmp(&b.info.target)
            .then(b.info.time_unix_ns.cmp(&a.info.time_unix_ns))
            .then(b.info.tag.cmp(&a.info.tag))
    });
    Ok(out)
}

/// The release behind `refs/tags/<short>`; `None` if there is no such tag.
fn read_tag(repo: &Repository, short: &str) -> anyhow::Result<Option<ReleaseDetail>> {
    let refname = format!("refs/tags/{short}");
    if !git2::Reference::is_valid_name(&refname) {
        return Ok(None);
    }
    let not_release = |problem: String| -> anyhow::Error {
        ReleaseError::NotARelease {
            tag: short.to_owned(),
            problem,
        }
        .into()
    };
    let Some(oid) = ref_target(repo, &refname)? else {
        return Ok(None);
    };
    let tag = match repo.find_tag(oid) {
        Ok(t) => t,
        Err(e) if e.code() == ErrorCode::NotFound => {
            return Err(not_release(
                "a lightweight tag, not an annotated one".into(),
            ));
        }
        Err(e) => return Err(e).with_context(|| format!("reading tag {short}")),
    };
    if tag.target_type() != Some(ObjectType::Commit) {
        return Err(not_release("it does not point at a commit".into()));
    }
    let message = tag
        .message()
        .map_err(|_| not_release("its message is not UTF-8".into()))?
        .unwrap_or_default()
        .to_owned();
    let record = Record::from_message(&message).map_err(|e| not_release(e.to_string()))?;
    let commit = tag.target_id().to_string();
    if record.commit != commit {
        return Err(not_release(format!(
            "it records commit {} but points at {commit}",
            record.commit
        )));
    }
    if name::target_of(short) != Some(record.target.as_str()) {
        return Err(not_release(format!(
            "it records target {:?}, which its name does not",
            record.target
        )));
    }
    let tagger = tag.tagger().map_or_else(String::new, |s| {
        format!(
            "{} <{}>",
            String::from_utf8_lossy(s.name_bytes()),
            String::from_utf8_lossy(s.email_bytes())
        )
    });
    let info = ReleaseInfo {
        tag: short.to_owned(),
        target: record.target,
        time: record.time,
        time_unix_ns: record.time_unix_ns,
        commit,
        closure: record.closure,
        builder: record.builder,
        run_id: record.run_id,
        nixgate_version: record.nixgate_version,
        forced_from: record.forced_from,
        tagger,
    };
    Ok(Some(ReleaseDetail {
        info,
        evidence: record.evidence,
        message,
    }))
}
