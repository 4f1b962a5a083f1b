//! nix/package-files.txt is the package's whole source set, and the
//! flake's `checks.unit-tests` runs `cargo test --lib` in it: every file a
//! unit test reads from the repository (through `CARGO_MANIFEST_DIR`, or
//! `include_str!`/`include_bytes!`) must be in the list, or that check
//! fails where only Nix runs it. `scripts/check-nix package` proves the
//! list builds; this proves it covers what the unit tests read. (Here, not
//! a unit test: the list itself is not in the package.)

use std::path::{Component, Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The list's paths (a directory stands for everything under it).
fn listed() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("nix/package-files.txt")).unwrap();
    (text.lines().map(str::trim))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect()
}

fn covered(listed: &[String], path: &str) -> bool {
    listed
        .iter()
        .any(|l| path == l || path.starts_with(&format!("{l}/")))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The first string literal in `s`, up to the end of its statement.
fn first_literal(s: &str) -> Option<&str> {
    let statement = &s[..s.find(';').unwrap_or(s.len())];
    let start = statement.find('"')? + 1;
    let len = statement[start..].find('"')?;
    Some(&statement[start..start + len])
}

/// `a/b/../c` as `a/c`, relative to the repository.
fn normal(path: &Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(p) => parts.push(p.to_str().unwrap()),
            _ => {}
        }
    }
    parts.join("/")
}

/// Every repository path the crate's sources read: `(file, path)`.
fn reads() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(root()).unwrap();
        let name = rel.display().to_string();
        for (at, _) in text.match_indices("CARGO_MANIFEST_DIR\"") {
            let after = &text[at + "CARGO_MANIFEST_DIR\"".len()..];
            let Some(path) = first_literal(after) else {
                panic!("{name}: a read under CARGO_MANIFEST_DIR without a literal path to check")
            };
            out.push((name.clone(), path.trim_start_matches('/').to_owned()));
        }
        for mac in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(mac) {
                let after = &text[at + mac.len()..];
                let path = &after[..after.find('"').unwrap()];
                let path = normal(&rel.parent().unwrap().join(path));
                out.push((name.clone(), path));
            }
        }
    }
    out
}

#[test]
fn the_package_files_cover_what_the_unit_tests_read() {
    let listed = listed();
    let reads = reads();
    assert!(
        reads.iter().any(|(f, _)| f.ends_with("short_ecdsa.rs")),
        "the scan found none of the known reads: {reads:?}"
    );
    let missing: Vec<_> = reads.iter().filter(|(_, p)| !covered(&listed, p)).collect();
    assert!(
        missing.is_empty(),
        "read by the crate but not in nix/package-files.txt (add them, or \
         `checks.unit-tests` fails in the Nix build): {missing:?}"
    );
}
