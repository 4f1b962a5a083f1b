//! Diffs as text for human reporters (pure functions; reporters call them).

use super::drift::Drift;
use super::packages::{Change, PackageDiff};
use super::structural::{Cause, Structural};

fn bytes(b: u64) -> String {
    let mib = b as f64 / (1024.0 * 1024.0);
    if mib >= 0.1 {
        format!("{mib:.1} MiB")
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

pub fn render_change(name: &str, c: &Change) -> String {
    match c {
        Change::Upgraded { from, to } | Change::Downgraded { from, to } => {
            format!("{name} {from} -> {to}")
        }
        Change::Changed { from, to } => format!("{name} {} -> {}", from.join(", "), to.join(", ")),
        Change::Added { versions } => format!("+ {name} {}", versions.join(", "))
            .trim_end()
            .to_owned(),
        Change::Removed { versions } => format!("- {name} {}", versions.join(", "))
            .trim_end()
            .to_owned(),
        Change::Rebuilt { version, .. } => {
            format!("~ {name} {} rebuilt", version.as_deref().unwrap_or("")).replace("  ", " ")
        }
    }
}

pub fn render_packages(d: &PackageDiff) -> Vec<String> {
    let mut out: Vec<String> = d
        .changes
        .iter()
        .map(|c| {
            format!(
                "{}{}",
                if c.selected { "" } else { "  (dep) " },
                render_change(&c.name, &c.change)
            )
        })
        .collect();
    let s = &d.size;
    out.push(format!(
        "size: +{} path(s) -{} path(s), +{} -{} ({} -> {})",
        s.paths_added,
        s.paths_removed,
        bytes(s.bytes_added),
        bytes(s.bytes_removed),
        bytes(s.old_total),
        bytes(s.new_total)
    ));
    out
}

fn short_path(p: &str) -> String {
    p.rsplit('/')
        .next()
        .map(|b| b.get(33..).unwrap_or(b).to_owned())
        .unwrap_or_default()
}

/// A long value as the words it lost and gained, store paths by name.
fn value_diff(old: &str, new: &str) -> String {
    let word = |w: &str| {
        if w.starts_with("/nix/store/") {
            short_path(w)
        } else {
            w.to_owned()
        }
    };
    let a: Vec<String> = old.split_whitespace().map(word).collect();
    let b: Vec<String> = new.split_whitespace().map(word).collect();
    let gone: Vec<&String> = a.iter().filter(|w| !b.contains(w)).collect();
    let came: Vec<&String> = b.iter().filter(|w| !a.contains(w)).collect();
    let list = |v: &[&String], sign: char| {
        v.iter()
            .map(|w| format!("{sign}{w}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!("{} {}", list(&gone, '-'), list(&came, '+'))
        .trim()
        .to_owned()
}

/// The dependency changes already explained, by (old, new) derivation:
/// the node's identity in the cause tree. Not by name: curl's `source` and
/// nginx's `source` are different derivations, and abbreviating the second
/// as "(as above)" hid its change from the plan the operator approves.
type Seen = std::collections::HashSet<(String, String)>;

fn cause_lines(c: &Cause, depth: usize, out: &mut Vec<String>) {
    cause_lines_seen(c, depth, out, &mut Seen::new());
}

fn cause_lines_seen(c: &Cause, depth: usize, out: &mut Vec<String>, seen: &mut Seen) {
    let pad = "  ".repeat(depth);
    let short = |p: &str| short_path(p);
    match c {
        Cause::Env {
            key,
            old: Some(o),
            new: Some(n),
        } if o.len() + n.len() > 120 => out.push(format!("{pad}env {key}: {}", value_diff(o, n))),
        Cause::Env { key, old, new } => out.push(format!(
            "{pad}env {key}: {} -> {}",
            old.as_deref()
                .map_or("(unset)".into(), |v| format!("{v:?}")),
            new.as_deref()
                .map_or("(unset)".into(), |v| format!("{v:?}"))
        )),
        Cause::Builder { old, new } => out.push(format!("{pad}builder: {old} -> {new}")),
        Cause::Args { .. } => out.push(format!("{pad}builder arguments changed")),
        Cause::System { old, new } => out.push(format!("{pad}system: {old} -> {new}")),
        Cause::Source { name, .. } => out.push(format!("{pad}source {name} changed")),
        Cause::SourceAdded { path } => out.push(format!("{pad}source added: {}", short(path))),
        Cause::SourceRemoved { path } => out.push(format!("{pad}source removed: {}", short(path))),
        Cause::Outputs { old, new } => out.push(format!(
            "{pad}outputs: {} -> {}",
            old.join(","),
            new.join(",")
        )),
        Cause::InputAdded { drv } => out.push(format!("{pad}new dependency {}", short(drv))),
        Cause::InputRemoved { drv } => out.push(format!("{pad}dropped dependency {}", short(drv))),
        Cause::Input {
            name,
            old,
            new,
            causes,
        } => {
            if !seen.insert((old.clone(), new.clone())) {
                out.push(format!("{pad}{name}: (as above)"));
                return;
            }
            out.push(format!("{pad}{name}:"));
            render_list(causes, depth + 1, out, seen);
        }
    }
}

/// Sibling causes: local ones first, then changed dependencies, where
/// dependencies with the same explanation (300 fillers with one changed
/// salt) are named together and explained once.
fn render_list(causes: &[Cause], depth: usize, out: &mut Vec<String>, seen: &mut Seen) {
    let pad = "  ".repeat(depth);
    type Group<'a> = (Vec<&'a str>, Vec<String>);
    let mut groups: Vec<Group> = Vec::new();
    for c in causes {
        match c {
            Cause::Input {
                name,
                old,
                new,
                causes: sub,
            } if !seen.contains(&(old.clone(), new.clone())) => {
                let mut inner = seen.clone();
                inner.insert((old.clone(), new.clone()));
                let mut lines = Vec::new();
                render_list(sub, depth + 1, &mut lines, &mut inner);
                seen.extend(inner);
                match groups
                    .iter_mut()
                    .find(|g| !lines.is_empty() && g.1 == lines)
                {
                    Some(g) => g.0.push(name),
                    None => groups.push((vec![name], lines)),
                }
            }
            Cause::Input { .. } => cause_lines_seen(c, depth, out, seen),
            other => cause_lines_seen(other, depth, out, seen),
        }
    }
    for (names, lines) in groups {
        let head = match names.len() {
            1..=3 => names.join(", "),
            n => format!(
                "{}, {}, {} and {} more ({n} dependencies)",
                names[0],
                names[1],
                names[2],
                n - 3
            ),
        };
        out.push(format!("{pad}{head}:"));
        out.extend(lines);
    }
}

pub fn render_causes(s: &Structural) -> Vec<String> {
    match s {
        Structural::Identical => vec!["derivations identical".into()],
        Structural::OldDerivationMissing { old_drv } => vec![match old_drv {
            Some(d) => format!("old derivation {d} is gone from the builder: no structural diff"),
            None => "the running system's derivation is unknown: no structural diff".into(),
        }],
        Structural::Explained { causes, .. } => {
            let mut out = Vec::new();
            render_list(causes, 0, &mut out, &mut Seen::new());
            out
        }
    }
}

pub fn render_drift(d: &[Drift]) -> Vec<String> {
    d.iter()
        .map(|x| {
            let mut lines = Vec::new();
            for c in &x.causes {
                cause_lines(c, 0, &mut lines);
            }
            let why = if lines.is_empty() {
                String::new()
            } else {
                format!(" ({})", lines.join("; ").trim())
            };
            format!("unexpected: {}{why}", render_change(&x.package, &x.change))
        })
        .collect()
}

/// Flake input changes, one line each.
pub fn render_inputs(inputs: &[super::flake_lock::InputChange]) -> Vec<String> {
    use super::flake_lock::InputChange as I;
    let short = |r: &Option<String>| {
        r.as_deref()
            .map(|r| r.get(..12).unwrap_or(r).to_owned())
            .unwrap_or_else(|| "?".into())
    };
    inputs
        .iter()
        .map(|i| match i {
            I::Added { name, rev } => format!("flake input + {name} {}", short(rev)),
            I::Removed { name, rev } => format!("flake input - {name} {}", short(rev)),
            I::Updated {
                name,
                old_rev,
                new_rev,
                ..
            } => format!(
                "flake input {name} {} -> {}",
                short(old_rev),
                short(new_rev)
            ),
        })
        .collect()
}

/// The line for flake inputs whose change is not known.
pub fn render_inputs_unknown(why: &super::flake_lock::InputsUnknown) -> String {
    format!("flake inputs: unknown ({why})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, causes: Vec<Cause>) -> Cause {
        Cause::Input {
            name: name.into(),
            old: format!("/nix/store/{}-{name}.drv", "0".repeat(32)),
            new: format!("/nix/store/{}-{name}.drv", "1".repeat(32)),
            causes,
        }
    }

    fn salt() -> Vec<Cause> {
        vec![Cause::Env {
            key: "salt".into(),
            old: Some("a".into()),
            new: Some("b".into()),
        }]
    }

    /// A system explained by `causes`.
    fn explained(causes: Vec<Cause>) -> Structural {
        let sys =
            |c: &str| crate::nix::StorePath::parse(&format!("/nix/store/{}-sys.drv", c.repeat(32)));
        Structural::Explained {
            old_drv: sys("0").unwrap(),
            new_drv: sys("1").unwrap(),
            causes,
        }
    }

    fn rev(old: &str, new: &str) -> Vec<Cause> {
        vec![Cause::Env {
            key: "rev".into(),
            old: Some(old.into()),
            new: Some(new.into()),
        }]
    }

    /// Two different `source` derivations (curl's and nginx's) share a
    /// name: nginx's must not be abbreviated as curl's, or the plan the
    /// operator approves hides its change (a rev of "evil").
    #[test]
    fn a_different_derivation_of_the_same_name_is_shown_in_full() {
        let source = |h: char, causes| Cause::Input {
            name: "source".into(),
            old: format!("/nix/store/{}-source.drv", "0".repeat(31) + &h.to_string()),
            new: format!("/nix/store/{}-source.drv", "1".repeat(31) + &h.to_string()),
            causes,
        };
        let s = explained(vec![
            input("curl-8.7.1", vec![source('a', rev("v8.7.1", "v8.7.1-fix"))]),
            input("nginx-1.25.3", vec![source('b', rev("v1.25.3", "evil"))]),
        ]);
        let lines = render_causes(&s);
        assert_eq!(
            lines,
            [
                "curl-8.7.1:",
                "  source:",
                "    env rev: \"v8.7.1\" -> \"v8.7.1-fix\"",
                "nginx-1.25.3:",
                "  source:",
                "    env rev: \"v1.25.3\" -> \"evil\"",
            ],
            "{lines:#?}"
        );
    }

    /// The same derivation change reached twice is still explained once.
    #[test]
    fn the_same_derivation_change_twice_is_as_above() {
        let shared = || input("openssl-3.0.14", rev("a", "b"));
        let s = explained(vec![
            input(
                "curl-8.7.1",
                vec![
                    shared(),
                    Cause::InputAdded {
                        drv: format!("/nix/store/{}-zstd.drv", "2".repeat(32)),
                    },
                ],
            ),
            input("nginx-1.25.3", vec![shared()]),
        ]);
        let lines = render_causes(&s);
        assert_eq!(
            lines,
            [
                "curl-8.7.1:",
                "  new dependency zstd.drv",
                "  openssl-3.0.14:",
                "    env rev: \"a\" -> \"b\"",
                "nginx-1.25.3:",
                "  openssl-3.0.14: (as above)",
            ],
            "{lines:#?}"
        );
    }

    #[test]
    fn same_explanations_are_named_together_once() {
        let mut deps: Vec<Cause> = (0..5)
            .map(|i| input(&format!("filler-{i}"), salt()))
            .collect();
        deps.push(input(
            "nginx-1.25.3",
            vec![Cause::InputAdded {
                drv: format!("/nix/store/{}-pcre2.drv", "2".repeat(32)),
            }],
        ));
        let s = explained(vec![input("system-path", deps)]);
        let lines = render_causes(&s);
        assert_eq!(
            lines,
            [
                "system-path:",
                "  filler-0, filler-1, filler-2 and 2 more (5 dependencies):",
                "    env salt: \"a\" -> \"b\"",
                "  nginx-1.25.3:",
                "    new dependency pcre2.drv",
            ],
            "{lines:#?}"
        );
    }
}
