//! The inventory's keys for a fleet past one builder: `[builder]
//! remote_builders` / `builders_use_substitutes` / `max_jobs` (Nix's
//! distributed builds), `[cache]` (a binary cache the builder pushes to) and
//! a host's `substituters` / `trusted_public_keys` (where it pulls from).
//!
//! Every value ends up as an option on a Nix command line, so each is
//! checked here for the shape Nix reads it in, and refused at its
//! `file:line:col` (the field of a machine line, when the string has no
//! escapes) instead of surfacing as a Nix error in the middle of a run:
//!
//! - a machine line is Nix's machine-spec syntax, 1 to 8 fields separated by
//!   blanks (store URI, systems, SSH key, max jobs, speed factor, supported
//!   features, mandatory features, base64 host key; `-` for a default). Nix
//!   splits the `builders` setting on `;` and newlines and drops what follows
//!   `#`, so an entry holding one of those, or starting with `@` (a file
//!   include), would silently be something else;
//! - store URIs are `scheme://...` with no blanks (Nix splits `substituters`
//!   on blanks) and no leading `-`;
//! - public keys are `name:base64` of an Ed25519 key (32 bytes).

use std::ops::Range;

use toml::de::DeTable;

use super::model::{Cache, RemoteBuilds};
use super::validate;
use super::walk::{At, Val, Walker, get, key_span};

/// Keys of `[cache]`.
pub const CACHE_KEYS: &[&str] = &["push_to", "signing_key"];

/// What is wrong with one field of a machine line: the byte range of the
/// field in the line, the message and a help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub range: Range<usize>,
    pub message: String,
    pub help: &'static str,
}

const FIELDS: [&str; 8] = [
    "store URI",
    "systems",
    "SSH key",
    "max jobs",
    "speed factor",
    "supported features",
    "mandatory features",
    "host key",
];

const SPEC_HELP: &str = "a machine is `URI SYSTEMS SSH-KEY MAX-JOBS SPEED SUPPORTED MANDATORY HOST-KEY` (Nix's machine-spec syntax; `-` for a default), e.g. \"ssh://root@10.0.0.5 x86_64-linux /etc/nix/builder-key 8 1 big-parallel\"";

/// The fields of `line` with their byte ranges.
fn fields(line: &str) -> Vec<(Range<usize>, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s..i, &line[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s..line.len(), &line[s..]));
    }
    out
}

/// Why `spec` is not one machine in Nix's machine-spec syntax, if it is not.
pub fn machine_spec_problem(spec: &str) -> Option<SpecProblem> {
    let whole = |message: String| SpecProblem {
        range: 0..spec.len(),
        message,
        help: SPEC_HELP,
    };
    if let Some(i) = spec.find([';', '\n', '\r', '#']) {
        return Some(SpecProblem {
            range: i..i + 1,
            message: format!(
                "{:?} separates machines (or starts a comment) in Nix's `builders`: write one machine per entry",
                &spec[i..i + 1]
            ),
            help: SPEC_HELP,
        });
    }
    if spec.contains(|c: char| c.is_control() && !c.is_whitespace()) {
        return Some(whole("has control characters".into()));
    }
    let fs = fields(spec);
    let Some((_, uri)) = fs.first() else {
        return Some(whole("is empty".into()));
    };
    if uri.starts_with('@') {
        return Some(whole(
            "starts with '@' (a file of machines): list the machines themselves".into(),
        ));
    }
    if fs.len() > FIELDS.len() {
        return Some(SpecProblem {
            range: fs[FIELDS.len()].0.start..spec.len(),
            message: format!("has {} fields; a machine has at most 8", fs.len()),
            help: SPEC_HELP,
        });
    }
    fs.iter()
        .enumerate()
        .find_map(|(i, (range, f))| {
            field_problem(i, f).map(|why| (range.clone(), format!("{} {f:?} {why}", FIELDS[i])))
        })
        .map(|(range, message)| SpecProblem {
            range,
            message,
            help: SPEC_HELP,
        })
}

/// Why field `i` of a machine line is wrong, if it is.
fn field_problem(i: usize, f: &str) -> Option<&'static str> {
    let default = f == "-";
    let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    match i {
        0 => builder_uri_problem(f),
        1 if !default
            && !f.split(',').all(|s| {
                s.split_once('-').is_some_and(|(a, o)| {
                    !a.is_empty() && !o.is_empty() && s.chars().all(|c| word(c) && c != '.')
                })
            }) =>
        {
            Some("is not a comma-separated list of systems like x86_64-linux")
        }
        2 if !default && !f.starts_with('/') => Some("must be an absolute path (or -)"),
        3 if !default && f.parse::<u32>().is_err() => Some("must be a whole number (or -)"),
        4 if !default && !f.parse::<f64>().is_ok_and(|x| x > 0.0 && x.is_finite()) => {
            Some("must be a positive number (or -)")
        }
        5 | 6 if !default && !f.split(',').all(|s| !s.is_empty() && s.chars().all(word)) => {
            Some("is not a comma-separated list of feature names")
        }
        7 if !default
            && !f
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')) =>
        {
            Some("is not base64 (the host's public key line, base64-encoded)")
        }
        _ => None,
    }
}

/// A remote builder's URI: `ssh://`, `ssh-ng://` or a bare `[user@]host`
/// (Nix adds `ssh://`).
fn builder_uri_problem(uri: &str) -> Option<&'static str> {
    let rest = match uri.split_once("://") {
        Some(("ssh" | "ssh-ng", rest)) => rest,
        Some(_) => return Some("must be ssh://, ssh-ng:// or a bare [user@]host"),
        None => uri,
    };
    if rest.is_empty() || rest.starts_with(['-', '?', '@']) {
        return Some("names no host");
    }
    None
}

/// Why `uri` is not a store URI Nix can take as one word, if it is not.
pub fn store_uri_problem(uri: &str) -> Option<&'static str> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Some("is not a store URI (scheme://...)");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Some("has no valid scheme (file://, http://, https://, s3://, ssh://, ...)");
    }
    if rest.is_empty() {
        return Some("names nothing after the scheme");
    }
    if uri.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some("has blanks or control characters (Nix splits store lists on blanks)");
    }
    None
}

/// Why `key` is not `name:base64` of an Ed25519 public key, if it is not.
pub fn public_key_problem(key: &str) -> Option<&'static str> {
    let Some((name, b64)) = key.split_once(':') else {
        return Some("is not name:base64 (as nix-store --generate-binary-cache-key writes it)");
    };
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some("has an empty name or blanks in it");
    }
    let body = b64.trim_end_matches('=');
    let padding = b64.len() - body.len();
    let base64 = body
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/'));
    if !base64 || padding > 2 || b64.len() % 4 != 0 || body.len() * 3 / 4 != 32 {
        return Some("is not the base64 of a 32-byte Ed25519 public key");
    }
    None
}

/// The span of bytes `range` of a string value: exact when the value was
/// written without escapes (`"..."` or `'...'`), else the whole string.
fn inner_span(s: &At<String>, range: &Range<usize>) -> Range<usize> {
    if s.span.len() == s.value.len() + 2 {
        s.span.start + 1 + range.start..s.span.start + 1 + range.end
    } else {
        s.span.clone()
    }
}

/// `remote_builders = [...]`: each one machine line.
pub fn remote_builders(w: &mut Walker, v: &Val<'_>) -> Vec<String> {
    let items = w.strings("remote_builders", v).unwrap_or_default();
    let mut out = Vec::new();
    for (n, s) in items.into_iter().enumerate() {
        match machine_spec_problem(&s.value) {
            None => out.push(s.value.trim().to_owned()),
            Some(p) => w.error_help(
                format!("remote builder {}: {}", n + 1, p.message),
                inner_span(&s, &p.range),
                p.help,
            ),
        }
    }
    out
}

/// `substituters = [...]` (per host or in `[defaults]`).
pub fn store_uris(w: &mut Walker, key: &str, v: &Val<'_>) -> Option<Vec<String>> {
    let items = w.strings(key, v)?;
    let mut ok = true;
    for s in &items {
        if let Some(why) = store_uri_problem(&s.value) {
            ok = false;
            w.error_help(
                format!("`{key}` entry {:?} {why}", s.value),
                s.span.clone(),
                "write a store URI such as \"http://cache.site.example:5000\" or \"s3://bucket?region=eu-west-1\"",
            );
        }
    }
    ok.then(|| items.into_iter().map(|s| s.value).collect())
}

/// `trusted_public_keys = [...]` (per host or in `[defaults]`).
pub fn public_keys(w: &mut Walker, v: &Val<'_>) -> Option<Vec<String>> {
    let items = w.strings("trusted_public_keys", v)?;
    let mut ok = true;
    for s in &items {
        if let Some(why) = public_key_problem(&s.value) {
            ok = false;
            w.error_help(
                format!("`trusted_public_keys` entry {:?} {why}", s.value),
                s.span.clone(),
                "copy the line of the cache's public key file, e.g. \"cache.site-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\"",
            );
        }
    }
    ok.then(|| items.into_iter().map(|s| s.value).collect())
}

/// The `[builder]` keys of distributed builds. `max_jobs = 0` with no
/// remote builder is refused: nothing could build.
pub fn remote_builds(w: &mut Walker, t: &DeTable<'_>) -> RemoteBuilds {
    let machines = get(t, "remote_builders")
        .map(|v| remote_builders(w, v))
        .unwrap_or_default();
    let use_substitutes = get(t, "builders_use_substitutes")
        .and_then(|v| w.boolean("builders_use_substitutes", v))
        .is_some_and(|b| b.value);
    let max_jobs = get(t, "max_jobs").and_then(|v| w.integer("max_jobs", v, 0, 10_000));
    if let Some(m) = &max_jobs
        && m.value == 0
        && machines.is_empty()
        && get(t, "remote_builders").is_none()
    {
        w.error_help(
            "`max_jobs = 0` builds nothing on the builder, and there is no remote builder",
            m.span.clone(),
            "add `remote_builders = [...]`, or let the builder build (max_jobs >= 1, or leave it out)",
        );
    }
    RemoteBuilds {
        machines,
        use_substitutes,
        max_jobs: max_jobs.map(|m| m.value as u32),
    }
}

/// `[cache]`.
pub fn cache(w: &mut Walker, t: &DeTable<'_>) -> Option<Cache> {
    w.check_keys(t, CACHE_KEYS, "[cache]");
    let push_to = match get(t, "push_to") {
        Some(v) => w.string("push_to", v).and_then(|s| match store_uri_problem(&s.value) {
            None if !s.value.starts_with('-') => Some(s.value),
            why => {
                w.error_help(
                    format!(
                        "`push_to` {:?} {}",
                        s.value,
                        why.unwrap_or("starts with '-'")
                    ),
                    s.span,
                    "any store URI the builder's Nix accepts: \"file:///srv/nix-cache\", \"s3://bucket?region=...\", \"ssh://cache-host\"",
                );
                None
            }
        }),
        None => {
            w.error_help(
                "[cache] has no `push_to`",
                key_span(t, "signing_key").unwrap_or(0..0),
                "add `push_to = \"file:///srv/nix-cache\"` (any store URI the builder's Nix accepts)",
            );
            None
        }
    };
    let signing_key = get(t, "signing_key").and_then(|v| {
        w.string("signing_key", v)
            .filter(|s| validate::absolute(w, "signing_key", s))
    });
    Some(Cache {
        push_to: push_to?,
        signing_key: signing_key.map(|s| s.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_lines() {
        for ok in [
            "ssh://root@10.0.0.5 x86_64-linux /etc/nix/builder-key 8 1 big-parallel",
            "ssh-ng://b2 x86_64-linux,aarch64-linux - 4 1.5 kvm,nixos-test big-parallel c3NoLWVkMjU1MTkgQUFBQQ==",
            "root@b3",
            "b4 - - - - - - -",
            "  ssh://b5   x86_64-linux  ",
        ] {
            assert_eq!(machine_spec_problem(ok), None, "{ok}");
        }
        let bad = |s: &str| machine_spec_problem(s).expect(s);
        let p = bad("ssh://b x86_64-linux key 8");
        assert_eq!(p.range, 21..24);
        assert!(p.message.contains("SSH key"), "{}", p.message);
        assert!(
            bad("ssh://b x86_64-linux - eight")
                .message
                .contains("max jobs")
        );
        assert!(
            bad("ssh://b x86_64-linux - 8 0")
                .message
                .contains("speed factor")
        );
        assert!(bad("ssh://b x86_64 - 8").message.contains("systems"));
        assert!(
            bad("ssh://b - - 1 1 a,,b")
                .message
                .contains("supported features")
        );
        assert!(
            bad("ssh://b - - 1 1 - - not*b64")
                .message
                .contains("host key")
        );
        assert!(
            bad("ssh://a x86_64-linux; ssh://b")
                .message
                .contains("separates")
        );
        assert!(bad("ssh://a # b").message.contains("comment"));
        assert!(
            bad("@/etc/nix/machines")
                .message
                .contains("file of machines")
        );
        assert!(bad("http://a").message.contains("ssh://"));
        assert!(bad("ssh://").message.contains("no host"));
        assert!(bad("").message.contains("empty"));
        assert!(bad("a - - 1 1 - - - extra").message.contains("9 fields"));
    }

    #[test]
    fn store_uris_and_keys() {
        for ok in [
            "file:///srv/nix-cache",
            "http://127.0.0.1:8080",
            "s3://bucket?region=eu-west-1&compression=zstd",
            "ssh://cache-host",
        ] {
            assert_eq!(store_uri_problem(ok), None, "{ok}");
        }
        assert!(store_uri_problem("/srv/cache").is_some());
        assert!(store_uri_problem("http://a b").is_some());
        assert!(store_uri_problem("HTTP://a").is_some());
        assert!(store_uri_problem("http://").is_some());
        assert_eq!(
            public_key_problem("test1:qRA8yl7b2P0mI+N68IpB+u8rmYevb2ysTpQ+1xK34yI="),
            None
        );
        assert!(public_key_problem("qRA8yl7b2P0mI+N68IpB+u8rmYevb2ysTpQ+1xK34yI=").is_some());
        assert!(public_key_problem("k:qRA8yl7b2P0mI+N68IpB+u8rmYevb2ysTpQ+1xK34y=").is_some());
        assert!(public_key_problem(":qRA8yl7b2P0mI+N68IpB+u8rmYevb2ysTpQ+1xK34yI=").is_some());
    }
}
