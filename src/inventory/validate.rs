//! Checks on inventory values and across sections: names safe for store
//! paths, unit names and git refs; addresses; waves that name real hosts and
//! tags, with each host in one wave at most.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use toml::de::DeValue;

use super::model::{CopyMode, Host, MaxFailures, Taken, Wave};
use super::walk::{At, Val, Walker};

/// The name of the implicit wave of hosts no wave names.
pub const REST_WAVE: &str = "rest";

/// Why `name` is not a valid host, tag or wave name, if it is not.
///
/// Names go into store paths, systemd unit names and git refs, so they are
/// restricted to `[A-Za-z0-9][A-Za-z0-9._-]*`, and refused (never quoted
/// around) when they break a git ref rule (`..`, a trailing `.` or `.lock`).
pub fn name_problem(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Some("is empty");
    }
    if !b[0].is_ascii_alphanumeric() {
        return Some("must start with a letter or digit");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Some("may contain only letters, digits, '.', '_' and '-'");
    }
    if name.contains("..") || name.ends_with('.') || name.ends_with(".lock") {
        return Some(
            "may not contain '..' or end in '.' or '.lock' (it becomes part of a git ref)",
        );
    }
    if name.len() > 63 {
        return Some("is longer than 63 characters");
    }
    None
}

pub fn name(w: &mut Walker, what: &str, name: &At<String>) -> bool {
    match name_problem(&name.value) {
        None => true,
        Some(why) => {
            w.error_help(
                format!("invalid {what} name {:?}: it {why}", name.value),
                name.span.clone(),
                "names match [A-Za-z0-9][A-Za-z0-9._-]*: they go into store paths, unit names and git refs",
            );
            false
        }
    }
}

pub fn nonempty(w: &mut Walker, key: &str, v: &At<String>) -> bool {
    if v.value.trim().is_empty() {
        w.error(format!("`{key}` may not be empty"), v.span.clone());
        return false;
    }
    true
}

/// A path on a remote machine (`profile` on a host, `signing_key` on the
/// builder), passed as one argument (`nix-env -p PATH`, `--key-file PATH`):
/// absolute, so never an option, and no whitespace or control characters
/// (a NUL or an escape sequence would reach the remote shell and the log).
pub fn absolute(w: &mut Walker, key: &str, p: &At<String>) -> bool {
    if !p.value.starts_with('/')
        || p.value
            .contains(|c: char| c.is_whitespace() || c.is_control())
    {
        w.error(
            format!(
                "`{key}` must be an absolute path without spaces or control characters, not {:?}",
                p.value
            ),
            p.span.clone(),
        );
        return false;
    }
    true
}

/// Why `address` is not usable, and what to write instead, if it is not.
///
/// The address reaches three readers: the SSH layer (`TcpStream::connect`
/// with the port apart, so a literal IP, a name, or an IPv6 address with a
/// `%zone` that getaddrinfo resolves), `~/.ssh/config` lookups (an alias),
/// and, with `copy = "builder"`, `nix-copy-closure --to USER@ADDRESS` on the
/// builder, which Nix parses as an `ssh://` URL (bare IPv6 is accepted there
/// by Nix 2.3 to 2.30 and again since 2.31.1). So: a host name or alias of
/// `[A-Za-z0-9._-]`, or an IPv6 address; never a port, brackets or a user.
pub fn address_problem(v: &str) -> Option<(&'static str, &'static str)> {
    const PORT_HELP: &str = "put the port in `port = N` and write the address bare: `address = \"10.0.0.1\"` or `address = \"fe80::1\"`";
    if v.is_empty() {
        return Some(("is empty", "write a host name, an IPv4 or an IPv6 address"));
    }
    if v.starts_with('-') {
        return Some((
            "starts with '-' (ssh and nix-copy-closure would read it as an option)",
            "write a host name, an IPv4 or an IPv6 address",
        ));
    }
    if v.contains(['[', ']']) {
        return Some(("has brackets", PORT_HELP));
    }
    if v.contains('@') {
        return Some(("has a user in it", "put the user in `user = \"...\"`"));
    }
    if v.contains([':', '%']) {
        return match ipv6_problem(v) {
            None => None,
            Some(_)
                if v.split_once(':').is_some_and(|(_, p)| {
                    !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit())
                }) =>
            {
                Some(("has a port in it", PORT_HELP))
            }
            Some(why) => Some((why, "write a host name, an IPv4 or an IPv6 address")),
        };
    }
    if v.len() > 253 {
        return Some((
            "is longer than 253 characters",
            "a DNS name has at most 253",
        ));
    }
    if !v
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
    {
        return Some((
            "may contain only letters, digits, '.', '_' and '-' (or be an IPv6 address)",
            "write a host name, an IPv4 or an IPv6 address; put the user in `user` and the port in `port`",
        ));
    }
    if looks_numeric(v) && v.parse::<std::net::Ipv4Addr>().is_err() {
        return Some((
            "is a number the system resolver reads in its own way (a leading 0 is octal, 0x hex, missing parts are filled in: \"10.0.0.011\" is 10.0.0.9, \"10.1\" is 10.0.0.1)",
            "write an IPv4 address as four decimal numbers without leading zeros, e.g. \"10.0.0.9\"",
        ));
    }
    None
}

/// Whether `v` is digits and dots, or has 0x-hex parts: what glibc's
/// `inet_aton` takes for an IPv4 address in any of its forms, so it never
/// reaches DNS as a name. Only the strict dotted-decimal form says what it
/// means (`Ipv4Addr`'s parser); the others connect to another machine.
fn looks_numeric(v: &str) -> bool {
    v.split('.').all(|part| {
        part.bytes().all(|c| c.is_ascii_digit())
            || (part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")))
                .is_some_and(|hex| hex.bytes().all(|c| c.is_ascii_hexdigit()))
    })
}

/// The address as compared for duplicates: an IP as `IpAddr` prints it
/// (`2001:DB8:0::1` is `2001:db8::1`), a name lowercased without one
/// trailing dot (`host.` is `host`), so two hosts cannot hide one machine
/// behind two spellings.
fn address_key(v: &str) -> String {
    let (ip, zone) = match v.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (v, None),
    };
    match (ip.parse::<std::net::IpAddr>(), zone) {
        (Ok(ip), None) => ip.to_string(),
        (Ok(ip), Some(zone)) => format!("{ip}%{zone}"),
        (Err(_), _) => {
            let name = v.to_ascii_lowercase();
            name.strip_suffix('.').map(str::to_owned).unwrap_or(name)
        }
    }
}

/// Why `v` is not an IPv6 address with an optional `%zone`, if it is not.
fn ipv6_problem(v: &str) -> Option<&'static str> {
    let (ip, zone) = match v.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (v, None),
    };
    if ip.parse::<std::net::Ipv6Addr>().is_err() {
        return Some("is not a host name or an IPv6 address");
    }
    match zone {
        Some(z)
            if z.is_empty()
                || z.len() > 15
                || !z
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_')) =>
        {
            Some("has an IPv6 zone that is not an interface name or number")
        }
        _ => None,
    }
}

pub fn address(w: &mut Walker, a: &At<String>) -> bool {
    match address_problem(&a.value) {
        None => true,
        Some((why, help)) => {
            w.error_help(
                format!("invalid address {:?}: it {why}", a.value),
                a.span.clone(),
                help,
            );
            false
        }
    }
}

/// An IPv6 `%zone` names an interface of the machine that connects: with
/// `copy = "builder"` that is the builder, not the controller whose
/// interface the inventory names (and Nix 2.34 refuses a zone in the
/// `ssh://` URL it makes of `--to USER@ADDRESS`).
pub fn zone_reaches(w: &mut Walker, a: &At<String>, copy: Option<CopyMode>) -> bool {
    if copy != Some(CopyMode::Builder) || !a.value.contains('%') {
        return true;
    }
    w.error_help(
        format!(
            "address {:?} has an IPv6 zone, which the builder cannot use (copy = \"builder\")",
            a.value
        ),
        a.span.clone(),
        "give this host a global IPv6 address or a name, or use copy = \"relay\"",
    );
    false
}

/// Why `user` is not a usable login name, if it is not.
///
/// The user is written into `USER@HOST`: the builder runs
/// `nix-copy-closure --to USER@HOST`, which Nix turns into an `ssh://` URL
/// and then into `ssh USER@HOST ...`. A leading `-` makes it an ssh option
/// (`-oProxyCommand=...` runs a command on the builder); `?`, `#`, `/` or `@`
/// change how Nix parses the URL (`?remote-program=...`). So the portable
/// login-name set: letters, digits, `.`, `_`, `-`, not starting with `-`.
pub fn user_problem(u: &str) -> Option<&'static str> {
    let b = u.as_bytes();
    if b.is_empty() {
        return Some("is empty");
    }
    if b[0] == b'-' {
        return Some("starts with '-' (ssh and nix-copy-closure would read it as an option)");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Some("may contain only letters, digits, '.', '_' and '-'");
    }
    if b.len() > 255 {
        return Some("is longer than 255 characters");
    }
    None
}

pub fn user(w: &mut Walker, key: &str, u: &At<String>) -> bool {
    match user_problem(&u.value) {
        None => true,
        Some(why) => {
            w.error_help(
                format!("invalid `{key}` {:?}: it {why}", u.value),
                u.span.clone(),
                "a login name: letters, digits, '.', '_' and '-', not starting with '-' (it is written into USER@HOST for ssh and nix-copy-closure)",
            );
            false
        }
    }
}

/// A git remote name or URL for `git push`: not empty, not an option
/// (`--receive-pack=...` would run a program), no control characters.
pub fn git_remote(w: &mut Walker, r: &At<String>) -> bool {
    let v = &r.value;
    let why = if v.trim().is_empty() {
        Some("is empty")
    } else if v.starts_with('-') {
        Some("starts with '-' (git push would read it as an option)")
    } else if v.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    if let Some(why) = why {
        w.error_help(
            format!("invalid `remote` {v:?}: it {why}"),
            r.span.clone(),
            "name a git remote of the configuration repository (e.g. \"origin\") or a URL",
        );
        return false;
    }
    true
}

pub fn attribute(w: &mut Walker, a: &At<String>) -> bool {
    if !a.value.contains("{host}") {
        w.error_help(
            format!("`attribute` {:?} does not contain {{host}}: every host would build the same system", a.value),
            a.span.clone(),
            "write e.g. \"nixosConfigurations.{host}.config.system.build.toplevel\", or set `attribute` per host",
        );
        return false;
    }
    nonempty(w, "attribute", a)
}

pub fn max_failures(w: &mut Walker, v: &Val<'_>) -> Option<MaxFailures> {
    match v.get_ref() {
        DeValue::Integer(_) => w
            .integer("max_failures", v, 0, 1_000_000)
            .map(|n| MaxFailures::Count(n.value as usize)),
        DeValue::String(s) => {
            let pct = s
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<u8>().ok())
                .filter(|p| *p <= 100);
            if pct.is_none() {
                w.error_help(
                    format!(
                        "`max_failures` must be a count or a percentage like \"10%\", not {s:?}"
                    ),
                    v.span(),
                    "write e.g. max_failures = 1 or max_failures = \"10%\"",
                );
            }
            pct.map(MaxFailures::Percent)
        }
        _ => {
            w.error(
                "`max_failures` must be a count or a percentage like \"10%\"",
                v.span(),
            );
            None
        }
    }
}

/// A `[[waves]]` entry as written, before hosts and tags are resolved.
pub struct WaveSpec {
    pub name: At<String>,
    pub span: Range<usize>,
    pub hosts: Vec<At<String>>,
    pub tags: Vec<At<String>>,
    pub max_parallel: usize,
    pub max_failures: MaxFailures,
    pub soak: Duration,
}

/// Cross-section checks: duplicate addresses, waves naming real hosts/tags,
/// a host in one wave at most. Returns the resolved waves, the implicit
/// `rest` last.
pub fn fleet(
    w: &mut Walker,
    hosts: &[(At<String>, Host)],
    specs: Vec<WaveSpec>,
    max_parallel: usize,
) -> Vec<Wave> {
    let mut seen_addr: HashMap<(String, u16), &str> = HashMap::new();
    for (addr, h) in hosts {
        let key = (address_key(&addr.value), h.connection.port());
        if let Some(first) = seen_addr.get(&key) {
            w.error(
                format!(
                    "duplicate address {}:{}: host `{}` has it too",
                    addr.value,
                    h.connection.port(),
                    first
                ),
                addr.span.clone(),
            );
        } else {
            seen_addr.insert(key, &h.name);
        }
    }
    let host_names: Vec<&str> = hosts.iter().map(|(_, h)| h.name.as_str()).collect();
    // Each host's place in the file: membership and ordering by lookup, not
    // by a scan per wave member (10,000 hosts in one wave made that 10^8).
    let place: HashMap<&str, usize> = host_names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, i))
        .collect();
    let mut all_tags: Vec<&str> = hosts
        .iter()
        .flat_map(|(_, h)| h.tags.iter().map(String::as_str))
        .collect();
    all_tags.sort_unstable();
    all_tags.dedup();

    // A host named in a wave belongs to it; naming it in two waves is an
    // error. A tag pulls in the hosts that no earlier wave (and no wave by
    // name) has claimed, so `canary = [web1]` then `tags = ["web"]` works.
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut tag_claims: Vec<(String, String)> = Vec::new();
    let mut wave_names: HashMap<String, Range<usize>> = HashMap::new();
    let mut waves = Vec::new();
    for spec in specs {
        if spec.name.value == REST_WAVE {
            w.error_help(
                format!("`{REST_WAVE}` is the name of the implicit wave of hosts in no wave"),
                spec.name.span.clone(),
                "give this wave another name",
            );
        }
        if wave_names
            .insert(spec.name.value.clone(), spec.name.span.clone())
            .is_some()
        {
            w.error(
                format!("wave `{}` is defined twice", spec.name.value),
                spec.name.span.clone(),
            );
        }
        if spec.hosts.is_empty() && spec.tags.is_empty() {
            w.error_help(
                format!("wave `{}` selects no hosts", spec.name.value),
                spec.span.clone(),
                "add `hosts = [...]` and/or `tags = [...]`",
            );
        }
        let mut members: Vec<String> = Vec::new();
        for h in &spec.hosts {
            if !place.contains_key(h.value.as_str()) {
                let msg = format!(
                    "wave `{}` names unknown host `{}`",
                    spec.name.value, h.value
                );
                match w.suggest(&h.value, &host_names) {
                    Some(s) => w.error_help(msg, h.span.clone(), format!("did you mean `{s}`?")),
                    None => w.error(msg, h.span.clone()),
                }
                continue;
            }
            match owner.get(&h.value) {
                Some(other) if *other != spec.name.value => w.error_help(
                    format!(
                        "host `{}` is in two waves: `{other}` and `{}`",
                        h.value, spec.name.value
                    ),
                    h.span.clone(),
                    "a host may be in one wave only",
                ),
                Some(_) => {}
                None => {
                    owner.insert(h.value.clone(), spec.name.value.clone());
                    members.push(h.value.clone());
                }
            }
        }
        for t in &spec.tags {
            if all_tags.binary_search(&t.value.as_str()).is_err() {
                let msg = format!(
                    "wave `{}` names tag `{}`, which no host has",
                    spec.name.value, t.value
                );
                match w.suggest(&t.value, &all_tags) {
                    Some(s) => w.error_help(msg, t.span.clone(), format!("did you mean `{s}`?")),
                    None => w.error(msg, t.span.clone()),
                }
                continue;
            }
            tag_claims.push((spec.name.value.clone(), t.value.clone()));
        }
        waves.push(Wave {
            name: spec.name.value,
            hosts: members,
            max_parallel: spec.max_parallel,
            max_failures: spec.max_failures,
            soak: spec.soak,
            implicit: false,
            taken: Vec::new(),
        });
    }
    for (wave, tag) in &tag_claims {
        for (_, h) in hosts.iter().filter(|(_, h)| h.tags.contains(tag)) {
            if !owner.contains_key(&h.name) {
                owner.insert(h.name.clone(), wave.clone());
                if let Some(wv) = waves.iter_mut().find(|wv| wv.name == *wave) {
                    wv.hosts.push(h.name.clone());
                }
            }
        }
    }
    note_taken(&mut waves, hosts, &tag_claims, &owner);
    skipped_waves(w, &waves, &wave_names, &tag_claims);
    // Members in inventory order, whatever order the wave listed them in.
    for wv in &mut waves {
        wv.hosts.sort_by_key(|m| place.get(m.as_str()).copied());
    }
    let rest: Vec<String> = host_names
        .iter()
        .filter(|h| !owner.contains_key(**h))
        .map(|h| h.to_string())
        .collect();
    if !rest.is_empty() {
        waves.push(Wave {
            name: REST_WAVE.to_owned(),
            hosts: rest,
            max_parallel,
            max_failures: MaxFailures::Count(0),
            soak: Duration::ZERO,
            implicit: true,
            taken: Vec::new(),
        });
    }
    waves
}

/// A wave of tags whose every tagged host another wave claimed first is
/// left with no hosts: note which hosts and where they are, for the
/// errors and warnings that name it.
fn note_taken(
    waves: &mut [Wave],
    hosts: &[(At<String>, Host)],
    tag_claims: &[(String, String)],
    owner: &HashMap<String, String>,
) {
    for wv in waves.iter_mut().filter(|wv| wv.hosts.is_empty()) {
        let tags: Vec<&str> = tag_claims
            .iter()
            .filter(|(wave, _)| *wave == wv.name)
            .map(|(_, tag)| tag.as_str())
            .collect();
        wv.taken = hosts
            .iter()
            .filter(|(_, h)| h.tags.iter().any(|t| tags.contains(&t.as_str())))
            .filter_map(|(_, h)| {
                let wave = owner.get(&h.name)?;
                Some(Taken {
                    host: h.name.clone(),
                    wave: wave.clone(),
                })
            })
            .collect();
    }
}

/// A wave of tags left with no hosts because a LATER wave names them: a
/// `canary` wave of `tags = ["canary"]` before a `main` wave whose `hosts`
/// list web1 (a name beats a tag) had no hosts, and a whole-fleet push sent
/// the canary with `main`, ungated, exit 0; only `check` warned. That is an
/// error. Hosts an EARLIER wave took still go before this wave would have
/// run, so that case stays valid (README: `check` warns, `--wave` names it).
fn skipped_waves(
    w: &mut Walker,
    waves: &[Wave],
    wave_names: &HashMap<String, Range<usize>>,
    tag_claims: &[(String, String)],
) {
    for (i, wv) in waves.iter().enumerate() {
        let later: Vec<&Taken> = (wv.taken.iter())
            .filter(|t| waves[i + 1..].iter().any(|l| l.name == t.wave))
            .collect();
        if !wv.hosts.is_empty() || later.is_empty() {
            continue;
        }
        let span = wave_names.get(&wv.name).cloned().unwrap_or(0..0);
        let hosts: Vec<&str> = later.iter().map(|t| t.host.as_str()).collect();
        let mut others: Vec<String> = later.iter().map(|t| format!("`{}`", t.wave)).collect();
        others.sort();
        others.dedup();
        let tags: Vec<String> = (tag_claims.iter())
            .filter(|(wave, _)| *wave == wv.name)
            .map(|(_, tag)| format!("`{tag}`"))
            .collect();
        w.error_help(
            format!(
                "{}: a run of the whole fleet would deploy them there, after wave `{}` was skipped",
                wv.why_empty(),
                wv.name
            ),
            span,
            format!(
                "remove {} from the `hosts` of wave {}, or drop the tag {} from wave `{}`",
                super::model::listed(&hosts),
                others.join(", "),
                tags.join(", "),
                wv.name
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_the_resolver_reads_otherwise_are_refused() {
        for bad in [
            "10.0.0.011",
            "10.1",
            "0x0a000001",
            "0X0A.0.0.1",
            "010.0.0.1",
            "10.0.0.256",
            "1..2",
        ] {
            assert!(
                address_problem(bad).is_some_and(|(why, _)| why.contains("resolver")),
                "{bad}"
            );
        }
        for ok in [
            "10.0.0.1",
            "0.0.0.0",
            "web1",
            "0xcafe.example",
            "1e100.net",
            "fe80::1%eth0",
        ] {
            assert_eq!(address_problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn address_keys_are_one_per_machine() {
        assert_eq!(address_key("2001:DB8:0::1"), address_key("2001:db8::1"));
        assert_eq!(address_key("Host.Example."), address_key("host.example"));
        assert_eq!(address_key("fe80::0001%eth0"), address_key("fe80::1%eth0"));
        assert_ne!(address_key("fe80::1%eth0"), address_key("fe80::1%eth1"));
        assert_ne!(address_key("host.."), address_key("host"));
    }

    #[test]
    fn names() {
        for ok in ["web1", "db-2.eu", "A_b", "1"] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in [
            "", "-x", ".x", "a b", "a/b", "a..b", "x.", "x.lock", "héllo", "a;b", "$(x)",
        ] {
            assert!(name_problem(bad).is_some(), "{bad}");
        }
    }
}
