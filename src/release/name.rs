//! Release ref names: the branch `release/<target>` and the tags
//! `release/<target>/<UTC>-<shortrev>[-<n>]`.
//!
//! `<UTC>` is the release time in whole seconds (`20261122T203000Z`),
//! `<shortrev>` the first [`SHORTREV_LEN`] hex digits of the commit. A second
//! release of the same commit within the same second gets the suffix `-2`,
//! `-3`, ... (the first free one), so names never collide and stay readable.

use crate::inventory::validate::name_problem;
use crate::state::clock::Utc;

use super::ReleaseError;

/// Hex digits of the commit id in a tag name.
pub const SHORTREV_LEN: usize = 12;

/// The prefix of every release ref below `refs/heads/` and `refs/tags/`.
pub const PREFIX: &str = "release/";

/// Check `target` with the inventory's name rule and with git's own ref-name
/// validation for both the branch and the tag refs it will appear in.
pub fn check_target(target: &str) -> Result<(), ReleaseError> {
    let bad = |problem: &str| ReleaseError::InvalidTarget {
        target: target.to_owned(),
        problem: problem.to_owned(),
    };
    if let Some(problem) = name_problem(target) {
        return Err(bad(problem));
    }
    let branch = format!("refs/heads/{}", branch(target));
    let tag = format!("refs/tags/{}", tag(target, 0, &"0".repeat(40), 1));
    for r in [&branch, &tag] {
        if !git2::Reference::is_valid_name(r) {
            return Err(bad("git refuses it as part of a ref name"));
        }
    }
    Ok(())
}

/// `release/<target>`
pub fn branch(target: &str) -> String {
    format!("{PREFIX}{target}")
}

/// `release/<target>/<UTC>-<shortrev>` for attempt 1, `...-<n>` after that.
pub fn tag(target: &str, unix_secs: i64, commit_hex: &str, attempt: u32) -> String {
    let stamp = Utc::from_unix(unix_secs).compact();
    let short = &commit_hex[..SHORTREV_LEN.min(commit_hex.len())];
    if attempt <= 1 {
        format!("{PREFIX}{target}/{stamp}-{short}")
    } else {
        format!("{PREFIX}{target}/{stamp}-{short}-{attempt}")
    }
}

/// The target named by a release tag or branch name (`release/<t>/...` or
/// `release/<t>`), if it has that shape.
pub fn target_of(short_ref: &str) -> Option<&str> {
    let rest = short_ref.strip_prefix(PREFIX)?;
    let target = rest.split('/').next()?;
    (!target.is_empty()).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn tag_names() {
        assert_eq!(
            tag("web1", 1_795_379_400, C, 1),
            "release/web1/20261122T203000Z-0123456789ab"
        );
        assert_eq!(
            tag("web1", 1_795_379_400, C, 3),
            "release/web1/20261122T203000Z-0123456789ab-3"
        );
        assert_eq!(branch("web1"), "release/web1");
        assert_eq!(target_of("release/web1/x"), Some("web1"));
        assert_eq!(target_of("release/web1"), Some("web1"));
        assert_eq!(target_of("other/web1"), None);
    }

    #[test]
    fn targets_are_checked() {
        for good in ["web1", "db-2.eu", "a_b"] {
            assert_eq!(check_target(good), Ok(()), "{good}");
        }
        for bad in [
            "", "-x", ".x", "a/b", "a..b", "x.", "x.lock", "a b", "a~b", "a^b", "a:b", "a@{b",
            "a*", "a?", "a[b", "a\\b", "a\u{7f}",
        ] {
            assert!(
                matches!(check_target(bad), Err(ReleaseError::InvalidTarget { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn git_rules_alone_refuse_ref_breaking_names() {
        // The inventory rule is the first line of defence; git's validation
        // is the second, and agrees on the cases the inventory names.
        for bad in ["a..b", "x.lock", "a@{b", "a b"] {
            assert!(!git2::Reference::is_valid_name(&format!(
                "refs/heads/release/{bad}"
            )));
        }
    }
}
