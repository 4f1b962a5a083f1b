//! Inventory parsing and validation: every error names its position and the
//! offending key or name; selectors resolve in wave order.

use std::path::Path;
use std::time::Duration;

use nixgate::inventory::{CopyMode, Inventory, MaxFailures, Os, Selector};

const BASE: &str = r#"
[builder]
address = "b.example"
"#;

fn parse(src: &str) -> Result<Inventory, nixgate::inventory::Diagnostics> {
    Inventory::parse(Path::new("inv.toml"), src)
}

/// The rendered errors, and their (line, col) positions.
fn errors(src: &str) -> (String, Vec<(usize, usize)>) {
    let d = parse(src).expect_err("inventory should be refused");
    let pos = d
        .positions()
        .into_iter()
        .map(|p| p.expect("every error has a position"))
        .collect();
    (d.to_string(), pos)
}

#[test]
fn example_inventory_loads() {
    let inv = Inventory::load(Path::new("inventory.example.toml")).expect("example is valid");
    assert_eq!(inv.hosts.len(), 5);
    let web1 = inv.host("web1").unwrap();
    assert_eq!(web1.connection.port(), 22);
    assert_eq!(web1.connection.connect_timeout, Duration::from_secs(10));
    assert_eq!(web1.activation_timeout, Duration::from_secs(300));
    assert_eq!(web1.copy, CopyMode::Relay);
    assert_eq!(web1.health_checks[0].retries, 3);
    assert_eq!(
        web1.attribute,
        "nixosConfigurations.web1.config.system.build.toplevel"
    );
    let mac = inv.host("mac1").unwrap();
    assert_eq!(mac.os, Os::Darwin);
    assert!(mac.sudo);
    assert_eq!(mac.connection.user(), "admin");
    assert_eq!(mac.attribute, "darwinConfigurations.mac1.system");
    assert_eq!(
        inv.host("db1").unwrap().activation_timeout,
        Duration::from_secs(600)
    );
    let names: Vec<_> = inv
        .waves
        .iter()
        .map(|w| (w.name.as_str(), w.hosts.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("canary", vec!["web1".to_string()]),
            ("web", vec!["web2".to_string(), "web3".to_string()]),
            ("rest", vec!["db1".to_string(), "mac1".to_string()]),
        ]
    );
    assert_eq!(
        inv.wave("web").unwrap().max_failures,
        MaxFailures::Percent(10)
    );
    assert!(inv.wave("rest").unwrap().implicit);
}

#[test]
fn defaults_apply_and_hosts_override() {
    let inv = parse(&format!(
        "{BASE}\n[defaults]\nuser = \"deploy\"\nport = 2222\nconnect_timeout = \"3s\"\n\n[hosts.a]\naddress = \"10.0.0.1\"\n\n[hosts.b]\naddress = \"10.0.0.2\"\nport = 22\n"
    ))
    .unwrap();
    let a = inv.host("a").unwrap();
    let b = inv.host("b").unwrap();
    assert_eq!((a.connection.user(), a.connection.port()), ("deploy", 2222));
    assert_eq!((b.connection.user(), b.connection.port()), ("deploy", 22));
    assert_eq!(a.connection.connect_timeout, Duration::from_secs(3));
    // The builder shares [defaults] connection settings.
    assert_eq!(inv.builder.connection.port(), 2222);
    assert!(inv.builder.flake);
}

#[test]
fn unknown_key_is_refused_with_position_and_suggestion() {
    let (text, pos) = errors(&format!("{BASE}\n[hosts.web1]\nadress = \"10.0.0.1\"\n"));
    assert!(
        text.contains("unknown key `adress` in [hosts.web1]"),
        "{text}"
    );
    assert!(text.contains("did you mean `address`?"), "{text}");
    assert!(text.contains("inv.toml:6:1"), "{text}");
    assert!(pos.contains(&(6, 1)));
    // the missing address is reported too, in the same run
    assert!(text.contains("[hosts.web1] has no `address`"), "{text}");
}

#[test]
fn all_errors_at_once() {
    let src = format!(
        "{BASE}\n[defaults]\nconnect_timeout = \"10x\"\ncopy = \"rsync\"\n\n[hosts.\"bad name\"]\naddress = \"10.0.0.1\"\n\n[hosts.ok]\naddress = \"10.0.0.1\"\nport = 70000\n"
    );
    let (text, pos) = errors(&src);
    assert!(
        text.contains("invalid duration for `connect_timeout`"),
        "{text}"
    );
    assert!(
        text.contains("`copy` must be one of relay | builder | substitute, not \"rsync\""),
        "{text}"
    );
    assert!(text.contains("invalid host name \"bad name\""), "{text}");
    assert!(
        text.contains("`port` must be between 1 and 65535, not 70000"),
        "{text}"
    );
    assert!(
        text.contains("duplicate address 10.0.0.1:22: host `bad name` has it too")
            || text.contains("duplicate address"),
        "{text}"
    );
    assert!(pos.len() >= 5, "{pos:?}");
    assert!(pos.contains(&(6, 19)), "duration position {pos:?}");
    assert!(pos.contains(&(7, 8)), "copy position {pos:?}");
    assert!(text.ends_with("errors in inv.toml"), "{text}");
}

#[test]
fn wave_errors() {
    let src = format!(
        r#"{BASE}
[hosts.web1]
address = "10.0.0.1"
tags = ["web"]

[hosts.web2]
address = "10.0.0.2"
tags = ["web"]

[[waves]]
name = "canary"
hosts = ["web1", "wbe2", "db9"]

[[waves]]
name = "main"
hosts = ["web1"]
tags = ["web", "dbs"]
max_failures = "110%"

[[waves]]
name = "canary"
hosts = []
soak = "1 minute"
"#
    );
    let (text, pos) = errors(&src);
    assert!(
        text.contains("wave `canary` names unknown host `wbe2`"),
        "{text}"
    );
    assert!(text.contains("did you mean `web2`?"), "{text}");
    assert!(
        text.contains("wave `canary` names unknown host `db9`"),
        "{text}"
    );
    assert!(
        text.contains("host `web1` is in two waves: `canary` and `main`"),
        "{text}"
    );
    assert!(
        text.contains("wave `main` names tag `dbs`, which no host has"),
        "{text}"
    );
    assert!(
        text.contains("`max_failures` must be a count or a percentage"),
        "{text}"
    );
    assert!(text.contains("wave `canary` is defined twice"), "{text}");
    assert!(text.contains("wave `canary` selects no hosts"), "{text}");
    assert!(text.contains("invalid duration for `soak`"), "{text}");
    assert!(pos.contains(&(15, 18)), "{pos:?}");
}

#[test]
fn names_are_refused_not_quoted() {
    for (name, why) in [
        ("-x", "must start with a letter or digit"),
        ("a$b", "may contain only letters"),
        ("a..b", "may not contain '..'"),
        ("web.lock", "'.lock'"),
    ] {
        let (text, _) = errors(&format!(
            "{BASE}\n[hosts.\"{name}\"]\naddress = \"10.0.0.1\"\n"
        ));
        assert!(
            text.contains(&format!("invalid host name {name:?}")),
            "{text}"
        );
        assert!(text.contains(why), "{text}");
    }
    let (text, _) = errors(&format!(
        "{BASE}\n[hosts.a]\naddress = \"10.0.0.1\"\ntags = [\"eu west\"]\n"
    ));
    assert!(text.contains("invalid tag name \"eu west\""), "{text}");
}

#[test]
fn syntax_errors_have_positions() {
    let (text, pos) = errors("[builder]\naddress = \n");
    assert!(text.contains("TOML syntax"), "{text}");
    assert_eq!(pos[0].0, 2, "{text}");
}

#[test]
fn missing_builder_and_wrong_types() {
    let (text, _) = errors("[hosts.a]\naddress = 1\ntags = \"web\"\n");
    assert!(text.contains("missing [builder] table"), "{text}");
    assert!(
        text.contains("`address` must be a string, not an integer"),
        "{text}"
    );
    assert!(
        text.contains("`tags` must be an array, not a string"),
        "{text}"
    );
}

#[test]
fn attribute_must_mention_host() {
    let (text, _) =
        errors("[builder]\naddress = \"b\"\nattribute = \"packages.x86_64-linux.default\"\n");
    assert!(text.contains("does not contain {host}"), "{text}");
}

fn fleet() -> Inventory {
    parse(&format!(
        r#"{BASE}
[hosts.web1]
address = "10.0.0.1"
tags = ["web"]
[hosts.web2]
address = "10.0.0.2"
tags = ["web", "eu"]
[hosts.db1]
address = "10.0.0.3"
tags = ["db", "eu"]
[hosts.db2]
address = "10.0.0.4"
tags = ["db"]
[[waves]]
name = "canary"
hosts = ["web1"]
max_parallel = 1
soak = "60s"
[[waves]]
name = "dbs"
tags = ["db"]
soak = "60s"
"#
    ))
    .unwrap()
}

fn names(sel: &nixgate::inventory::Selection) -> Vec<(String, Vec<String>)> {
    sel.groups
        .iter()
        .map(|g| (g.name.clone(), g.hosts.clone()))
        .collect()
}

#[test]
fn selectors() {
    let inv = fleet();
    let all = inv.select(&Selector::default()).unwrap();
    assert_eq!(
        names(&all),
        vec![
            ("canary".into(), vec!["web1".into()]),
            ("dbs".into(), vec!["db1".into(), "db2".into()]),
            ("rest".into(), vec!["web2".into()]),
        ]
    );
    let canary = inv
        .select(&Selector {
            waves: vec!["canary".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(names(&canary), vec![("canary".into(), vec!["web1".into()])]);
    assert_eq!(canary.groups[0].max_parallel, 1);
    // A wave soaks before the inventory's next wave, run now or by a later
    // run (`--wave canary` alone soaks); the inventory's last one does not.
    let soaks = |sel: &nixgate::inventory::Selection| -> Vec<u64> {
        sel.groups.iter().map(|g| g.soak.as_secs()).collect()
    };
    assert_eq!(soaks(&all), [60, 60, 0]);
    assert_eq!(soaks(&canary), [60]);
    let two = parse(&format!(
        "{BASE}\n[hosts.a]\naddress = \"10.0.0.1\"\n[hosts.b]\naddress = \"10.0.0.2\"\n\
         [[waves]]\nname = \"first\"\nhosts = [\"a\"]\nsoak = \"60s\"\n\
         [[waves]]\nname = \"last\"\nhosts = [\"b\"]\nsoak = \"60s\"\n"
    ))
    .unwrap();
    let only = |w: &str| Selector {
        waves: vec![w.into()],
        ..Default::default()
    };
    assert_eq!(soaks(&two.select(&Selector::default()).unwrap()), [60, 0]);
    assert_eq!(soaks(&two.select(&only("first")).unwrap()), [60]);
    assert_eq!(soaks(&two.select(&only("last")).unwrap()), [0]);
    // A last wave left with no hosts (a tag wave whose hosts an earlier
    // wave claimed) is not "the next wave": the one before it is last.
    let claimed = parse(&format!(
        "{BASE}\n[hosts.a]\naddress = \"10.0.0.1\"\ntags = [\"x\"]\n\
         [[waves]]\nname = \"first\"\nhosts = [\"a\"]\nsoak = \"60s\"\n\
         [[waves]]\nname = \"tagged\"\ntags = [\"x\"]\n"
    ))
    .unwrap();
    assert_eq!(soaks(&claimed.select(&Selector::default()).unwrap()), [0]);
    let eu = inv
        .select(&Selector {
            tags: vec!["eu".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        names(&eu),
        vec![("selected".into(), vec!["web2".into(), "db1".into()])]
    );
    assert!(eu.groups[0].adhoc);
    let mixed = inv
        .select(&Selector {
            hosts: vec!["db2".into()],
            tags: vec!["web".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        names(&mixed),
        vec![(
            "selected".into(),
            vec!["web1".into(), "web2".into(), "db2".into()]
        )]
    );
    let wave_and_tag = inv
        .select(&Selector {
            waves: vec!["dbs".into()],
            tags: vec!["eu".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        names(&wave_and_tag),
        vec![("dbs".into(), vec!["db1".into()])]
    );
}

#[test]
fn selector_errors_suggest() {
    let inv = fleet();
    let e = inv
        .select(&Selector {
            hosts: vec!["web3".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("no host named `web3`"), "{e}");
    let e = inv
        .select(&Selector {
            waves: vec!["canry".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("did you mean `canary`?"), "{e}");
    let e = inv
        .select(&Selector {
            tags: vec!["eu-west".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("no host has the tag `eu-west`"),
        "{e}"
    );
    let e = inv
        .select(&Selector {
            waves: vec!["canary".into()],
            tags: vec!["db".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("the tag `db` is in none of the wave(s) canary"),
        "{e}"
    );
    // A host named with a wave it is not in: refused, not dropped while
    // the others deploy (it listed web1 alone, exit 0).
    let e = inv
        .select(&Selector {
            waves: vec!["canary".into()],
            hosts: vec!["web1".into(), "db1".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("host `db1` is in none of the wave(s) canary"),
        "{e}"
    );
    let both = inv
        .select(&Selector {
            waves: vec!["canary".into(), "dbs".into()],
            hosts: vec!["web1".into(), "db1".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(both.groups.len(), 2);
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Arbitrary text never panics the loader.
        #[test]
        fn arbitrary_text(src in "\\PC{0,300}") {
            let _ = parse(&src);
        }

        /// Arbitrary TOML-shaped input (real keys, random values) never panics
        /// the loader, and every error it reports has a position in the file.
        #[test]
        fn arbitrary_toml(
            key in prop::sample::select(vec!["address", "port", "tags", "copy", "soak", "hosts", "max_failures", "health_checks", "user", "zzz"]),
            val in prop::sample::select(vec!["1", "\"x\"", "[]", "[1, \"a\"]", "{}", "true", "\"10%\"", "-5", "1.5", "[{command=\"x\"}]", "\"\"", "99999999999999999999"]),
            section in prop::sample::select(vec!["[defaults]", "[builder]", "[hosts.h]", "[[waves]]", "[release]", ""]),
        ) {
            let src = format!("[builder]\naddress = \"b\"\n{section}\n{key} = {val}\n");
            if let Err(d) = parse(&src) {
                for p in d.positions() {
                    prop_assert!(p.is_some());
                }
            }
        }
    }
}

/// The one error an inventory gets, rendered, and its position.
fn one_error(src: &str) -> (String, (usize, usize)) {
    let (text, pos) = errors(src);
    assert_eq!(pos.len(), 1, "want one error:\n{text}");
    (text, pos[0])
}

#[test]
fn durations_over_their_maximum_are_refused_with_position() {
    // (section and key, too long, the longest accepted)
    let cases = [
        (
            "[defaults]\nconnect_timeout",
            "10000000000000000000s",
            "10m",
        ),
        ("[defaults]\nconnect_timeout", "601s", "10m"),
        ("[builder]\naddress = \"b\"\nconnect_timeout", "1d", "10m"),
        ("[defaults]\nactivation_timeout", "24h1s", "1d"),
        ("[defaults]\ncopy_stall_timeout", "61m", "1h"),
        (
            "[defaults]\nhealth_checks = [{ command = \"true\", timeout",
            "3601s",
            "1h",
        ),
        ("[[waves]]\nname = \"w\"\ntags = [\"t\"]\nsoak", "8d", "7d"),
    ];
    for (head, long, max) in cases {
        let close = if head.contains('{') { " }]" } else { "" };
        let builder = if head.starts_with("[builder]") {
            ""
        } else {
            BASE
        };
        let host = "\n[hosts.h]\naddress = \"10.0.0.1\"\ntags = [\"t\"]\n";
        let src = format!("{builder}{host}{head} = \"{long}\"{close}\n");
        let (text, (line, col)) = one_error(&src);
        let key = head.rsplit(['\n', ' ']).next().unwrap();
        assert!(
            text.contains(&format!(
                "`{key}` = \"{long}\" is longer than its maximum, {max}"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("write at most \"{max}\"")), "{text}");
        let want_line = src[..src.find(long).unwrap()].matches('\n').count() + 1;
        assert_eq!(line, want_line, "{text}");
        assert!(col > key.len(), "{text}");
        let ok = src.replace(long, max);
        parse(&ok).unwrap_or_else(|d| panic!("{max} for {key} is accepted:\n{d}"));
    }
}

/// A relay copy that moves nothing fails after 5 minutes unless the inventory
/// says otherwise, per host; zero can never be met and is refused.
#[test]
fn copy_stall_timeout_defaults_to_five_minutes_and_is_set_per_host() {
    let src = format!(
        "{BASE}\n[defaults]\ncopy_stall_timeout = \"5m\"\n\
         [hosts.a]\naddress = \"10.0.0.1\"\n\
         [hosts.b]\naddress = \"10.0.0.2\"\ncopy_stall_timeout = \"3s\"\n"
    );
    let inv = parse(&src).unwrap();
    let stall = |h: &str| inv.host(h).unwrap().copy_stall_timeout;
    assert_eq!(stall("a"), Duration::from_secs(300));
    assert_eq!(stall("b"), Duration::from_secs(3));
    let plain = parse(&format!("{BASE}\n[hosts.a]\naddress = \"10.0.0.1\"\n")).unwrap();
    assert_eq!(
        plain.host("a").unwrap().copy_stall_timeout,
        Duration::from_secs(300)
    );
    let (text, _) = one_error(&format!(
        "{BASE}\n[hosts.a]\naddress = \"10.0.0.1\"\ncopy_stall_timeout = \"0s\"\n"
    ));
    assert!(text.contains("copy_stall_timeout"), "{text}");
}

#[test]
fn durations_too_large_to_count_are_errors_not_panics() {
    for d in [
        "99999999999999999999999s",
        "18446744073709551615d",
        "18446744073709551615s18446744073709551615s",
    ] {
        let (text, _) = one_error(&format!(
            "{BASE}\n[defaults]\nactivation_timeout = \"{d}\"\n"
        ));
        assert!(text.contains("too large to count"), "{d}: {text}");
    }
}

#[test]
fn users_that_could_become_options_are_refused() {
    for (section, user) in [
        ("[defaults]", "-oProxyCommand=touch /tmp/pwned"),
        ("[hosts.h]\naddress = \"10.0.0.1\"", "-x"),
        (
            "[hosts.h]\naddress = \"10.0.0.1\"",
            "a?remote-program=/bin/sh",
        ),
        ("[hosts.h]\naddress = \"10.0.0.1\"", "me@example.org"),
        ("[hosts.h]\naddress = \"10.0.0.1\"", "a b"),
        ("[hosts.h]\naddress = \"10.0.0.1\"", ""),
    ] {
        let (text, _) = one_error(&format!("{BASE}\n{section}\nuser = {user:?}\n"));
        assert!(
            text.contains(&format!("invalid `user` {user:?}")),
            "{user}: {text}"
        );
        assert!(text.contains("USER@HOST"), "{text}");
    }
    let (text, pos) = one_error("[builder]\naddress = \"b\"\nuser = \"-oProxyCommand=x\"\n");
    assert!(text.contains("starts with '-'"), "{text}");
    assert_eq!(pos, (3, 8));
    for ok in ["deploy", "john.doe", "svc_1", "_nix-deploy", "1user"] {
        let inv = parse(&format!(
            "{BASE}\n[hosts.h]\naddress = \"10.0.0.1\"\nuser = \"{ok}\"\n"
        ))
        .unwrap_or_else(|d| panic!("{ok} is a user:\n{d}"));
        assert_eq!(inv.host("h").unwrap().connection.user(), ok);
    }
}

#[test]
fn release_remote_that_is_an_option_is_refused_at_load() {
    for remote in ["-x", "--receive-pack=touch /tmp/pwned", "", "orig\nin"] {
        let (text, _) = one_error(&format!("{BASE}\n[release]\nremote = {remote:?}\n"));
        assert!(text.contains("invalid `remote`"), "{remote:?}: {text}");
    }
    for ok in [
        "origin",
        "git@example.org:fleet/config.git",
        "/srv/git/config",
    ] {
        let inv = parse(&format!("{BASE}\n[release]\nremote = \"{ok}\"\n")).unwrap();
        assert_eq!(inv.release.remote.as_deref(), Some(ok));
    }
}

#[test]
fn addresses_with_a_port_brackets_or_a_user_are_refused() {
    for (addr, why, help) in [
        ("[127.0.0.2]:22", "has brackets", "`port = N`"),
        ("[::1]", "has brackets", "`port = N`"),
        ("127.0.0.2:22", "has a port in it", "`port = N`"),
        ("web1.example.org:2222", "has a port in it", "`port = N`"),
        ("root@10.0.0.1", "has a user in it", "`user ="),
        ("-oProxyCommand=x", "starts with '-'", "host name"),
        ("fe80::1%", "has an IPv6 zone", "host name"),
        ("fe80::1%a/b", "has an IPv6 zone", "host name"),
        (
            "1:2:3",
            "is not a host name or an IPv6 address",
            "host name",
        ),
        ("a b", "may contain only", "host name"),
    ] {
        let (text, pos) = one_error(&format!("{BASE}\n[hosts.h]\naddress = {addr:?}\n"));
        assert!(
            text.contains(&format!("invalid address {addr:?}: it {why}")),
            "{addr}: {text}"
        );
        assert!(text.contains(help), "{addr}: {text}");
        assert_eq!(pos, (6, 11), "{addr}: {text}");
    }
    // What the SSH layer connects to as written (the port apart).
    for ok in [
        "::1",
        "2001:db8::7",
        "fe80::1%eth0",
        "fe80::1%2",
        "10.0.0.1",
        "web_1.lan",
    ] {
        let inv = parse(&format!(
            "{BASE}\n[hosts.h]\naddress = \"{ok}\"\nport = 2222\n"
        ))
        .unwrap_or_else(|d| panic!("{ok} is an address:\n{d}"));
        let c = &inv.host("h").unwrap().connection;
        assert_eq!((c.address.as_str(), c.port()), (ok, 2222));
    }
}

#[test]
fn a_zone_is_refused_where_the_builder_copies() {
    let (text, _) = one_error(&format!(
        "{BASE}\n[hosts.h]\naddress = \"fe80::1%eth0\"\ncopy = \"builder\"\n"
    ));
    assert!(
        text.contains("has an IPv6 zone, which the builder cannot use"),
        "{text}"
    );
    parse(&format!(
        "{BASE}\n[hosts.h]\naddress = \"2001:db8::1\"\ncopy = \"builder\"\n"
    ))
    .unwrap();
}

#[test]
fn max_parallel_on_a_host_is_refused_with_where_it_belongs() {
    let (text, pos) = one_error(&format!(
        "{BASE}\n[hosts.h]\naddress = \"10.0.0.1\"\nmax_parallel = 2\n"
    ));
    assert!(
        text.contains("`max_parallel` is not a per-host setting (in [hosts.h])"),
        "{text}"
    );
    assert!(
        text.contains("[defaults]") && text.contains("[[waves]]"),
        "{text}"
    );
    assert_eq!(pos, (7, 1));
    // An unknown key on a host no longer lists it as allowed there.
    let (text, _) = one_error(&format!(
        "{BASE}\n[hosts.h]\naddress = \"10.0.0.1\"\nzzz = 1\n"
    ));
    assert!(!text.contains("max_parallel"), "{text}");
    let inv = parse(&format!(
        "{BASE}\n[defaults]\nmax_parallel = 3\n[hosts.h]\naddress = \"10.0.0.1\"\n"
    ))
    .unwrap();
    assert_eq!(inv.max_parallel, 3);
}

#[test]
fn many_errors_print_the_first_hundred_then_a_count() {
    let mut src = BASE.to_string();
    for i in 0..250 {
        src.push_str(&format!(
            "[hosts.h{i}]\naddress = \"10.0.{}.{}\"\nzz = 1\n",
            i / 250,
            i % 250
        ));
    }
    let d = parse(&src).unwrap_err();
    let positions = d.positions();
    assert_eq!(positions.len(), 250);
    // Every position is right, not only the shown ones.
    for (i, p) in positions.iter().enumerate() {
        assert_eq!(*p, Some((4 + 3 * i + 2, 1)), "error {i}");
    }
    let text = d.to_string();
    assert_eq!(
        text.matches("error: unknown key `zz`").count(),
        100,
        "{text}"
    );
    assert!(
        text.contains(&format!("inv.toml:{}:1", 4 + 3 * 99 + 2)),
        "{text}"
    );
    assert!(
        !text.contains(&format!("inv.toml:{}:1", 4 + 3 * 100 + 2)),
        "{text}"
    );
    assert!(
        text.contains("... and 150 more errors (only the first 100 are shown"),
        "{text}"
    );
    assert!(text.ends_with("250 errors in inv.toml"), "{text}");
}

#[test]
fn a_huge_line_is_shown_as_a_window_around_the_error() {
    let filler = "é".repeat(200_000);
    let src = format!(
        "{BASE}\n[defaults]\nhealth_checks = [{{ command = \"{filler}\", timeout = \"1 minute\" }}]\n"
    );
    let (text, (line, col)) = one_error(&src);
    assert_eq!(line, 6);
    let before = "health_checks = [{ command = \"\", timeout = ".len();
    assert_eq!(col, before + 200_000 + 1, "columns count characters");
    let shown = text.lines().find(|l| l.starts_with("6 | ")).unwrap();
    assert!(shown.chars().count() < 200, "{shown}");
    assert!(
        shown.starts_with("6 | …é") && shown.ends_with("timeout = \"1 minute\" }]"),
        "{shown}"
    );
    let caret = text.lines().find(|l| l.contains('^')).unwrap();
    let at = shown.find("\"1 minute").unwrap();
    assert_eq!(
        caret.find('^').map(|b| caret[..b].chars().count()),
        Some(shown[..at].chars().count()),
        "{shown}\n{caret}"
    );
    assert_eq!(caret.matches('^').count(), "\"1 minute\"".len(), "{caret}");
}

#[test]
fn did_you_mean_stops_at_its_budget_and_every_error_is_still_reported() {
    // 1,000 hosts and 1,500 misspelt names: 1,000 x 1,000 comparisons
    // spend the budget; the last 500 errors come without a suggestion.
    let mut src = BASE.to_string();
    for i in 0..1000 {
        src.push_str(&format!(
            "[hosts.h{i}]\naddress = \"10.0.{}.{}\"\n",
            i / 250,
            i % 250
        ));
    }
    let names: Vec<String> = (0..1500).map(|i| format!("\"h{}x\"", i % 1000)).collect();
    src.push_str(&format!(
        "[[waves]]\nname = \"w\"\nhosts = [{}]\n",
        names.join(", ")
    ));
    let d = parse(&src).unwrap_err();
    assert_eq!(d.items.len(), 1500);
    let helped: Vec<bool> = d.items.iter().map(|i| i.help.is_some()).collect();
    assert!(
        helped[..1000].iter().all(|h| *h),
        "the first 1,000 have a suggestion"
    );
    assert!(helped[1000..].iter().all(|h| !*h), "the rest have none");
    assert_eq!(d.items[0].help.as_deref(), Some("did you mean `h0`?"));
}

#[test]
fn remote_paths_are_absolute_without_spaces_or_control_characters() {
    // TOML string literals, escapes as TOML writes them.
    for bad in [
        r#""system""#,
        r#""-p""#,
        r#""/nix/var/nix/profiles/sys tem""#,
        r#""/nix/var/nix/profiles/sys\u001b[2Jtem""#,
        r#""/nix/var/nix/profiles/sys\u0000tem""#,
    ] {
        let (text, _) = one_error(&format!(
            "{BASE}\n[hosts.h]\naddress = \"10.0.0.1\"\nprofile = {bad}\n"
        ));
        assert!(
            text.contains("must be an absolute path without spaces or control characters"),
            "{bad}: {text}"
        );
    }
    let (text, _) = one_error("[builder]\naddress = \"b\"\nsigning_key = \"--key-file=/x\"\n");
    assert!(
        text.contains("`signing_key` must be an absolute path"),
        "{text}"
    );
}

#[test]
fn remote_builders_cache_and_pull_settings_load() {
    let src = r#"
[defaults]
substituters = ["http://cache.site:8080"]
trusted_public_keys = ["site-1:qRA8yl7b2P0mI+N68IpB+u8rmYevb2ysTpQ+1xK34yI="]

[builder]
address = "b.example"
remote_builders = ["ssh://root@10.0.0.5 x86_64-linux /etc/nix/builder-key 8 1 big-parallel", "b3"]
builders_use_substitutes = true
max_jobs = 0

[cache]
push_to = "file:///srv/nix-cache?compression=zstd"
signing_key = "/etc/nix/cache.sec"

[hosts.a]
address = "10.0.0.1"
copy = "substitute"

[hosts.b]
address = "10.0.0.2"
substituters = []
"#;
    let inv = parse(src).unwrap_or_else(|d| panic!("{d}"));
    let r = &inv.builder.remote;
    assert_eq!(r.machines.len(), 2);
    assert_eq!(r.machines[1], "b3");
    assert!(r.use_substitutes);
    assert_eq!(r.max_jobs, Some(0));
    let cache = inv.cache.as_ref().unwrap();
    assert_eq!(cache.push_to, "file:///srv/nix-cache?compression=zstd");
    assert_eq!(cache.signing_key.as_deref(), Some("/etc/nix/cache.sec"));
    let a = inv.host("a").unwrap();
    assert_eq!(a.copy, CopyMode::Substitute);
    assert_eq!(a.pull.substituters, ["http://cache.site:8080"]);
    assert_eq!(a.pull.trusted_public_keys.len(), 1);
    let b = inv.host("b").unwrap();
    assert!(
        b.pull.substituters.is_empty(),
        "a host's list replaces [defaults]'s"
    );
    assert_eq!(b.pull.trusted_public_keys.len(), 1);
}

#[test]
fn a_bad_machine_line_points_at_its_field() {
    let src = format!(
        "{BASE}remote_builders = [\"ssh://b2 x86_64-linux - eight\"]\n\n[hosts.h]\naddress = \"10.0.0.1\"\n"
    );
    let (text, (line, col)) = one_error(&src);
    assert!(
        text.contains("remote builder 1: max jobs \"eight\""),
        "{text}"
    );
    assert_eq!(line, 4, "{text}");
    let at = src.lines().nth(3).unwrap().find("eight").unwrap() + 1;
    assert_eq!(col, at, "{text}");
    let (text, _) = one_error(&format!("{BASE}remote_builders = [\"ssh://a; ssh://b\"]\n"));
    assert!(text.contains("one machine per entry"), "{text}");
}

#[test]
fn cache_and_pull_values_are_checked_where_they_are() {
    let (text, (line, _)) = one_error(&format!("{BASE}\n[cache]\npush_to = \"/srv/cache\"\n"));
    assert!(text.contains("is not a store URI"), "{text}");
    assert_eq!(line, 6);
    let (text, _) = one_error(&format!("{BASE}\n[cache]\nsigning_key = \"/k\"\n"));
    assert!(text.contains("[cache] has no `push_to`"), "{text}");
    let (text, _) = one_error(&format!(
        "{BASE}\n[defaults]\nsubstituters = [\"http://a b\"]\n"
    ));
    assert!(text.contains("blanks"), "{text}");
    let (text, _) = one_error(&format!(
        "{BASE}\n[hosts.h]\naddress = \"10.0.0.1\"\ntrusted_public_keys = [\"nokey\"]\n"
    ));
    assert!(text.contains("name:base64"), "{text}");
    let (text, _) = one_error(&format!("{BASE}max_jobs = 0\n"));
    assert!(text.contains("no remote builder"), "{text}");
}

#[test]
fn globs_and_colmena_lists_select_hosts() {
    let inv = fleet();
    let globbed = inv
        .select(&Selector {
            hosts: vec!["db[12]".into(), "web*".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        names(&globbed),
        vec![(
            "selected".into(),
            vec!["web1".into(), "web2".into(), "db1".into(), "db2".into()]
        )]
    );
    let args = nixgate::cli::SelectorArgs {
        on: vec!["web2, @eu".into()],
        ..Default::default()
    };
    let on = inv.select(&args.selector()).unwrap();
    assert_eq!(
        names(&on),
        vec![("selected".into(), vec!["web2".into(), "db1".into()])]
    );
    let e = inv
        .select(&Selector {
            hosts: vec!["wbe*".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no host matches `wbe*` (closest: web1, web2, db1;"),
        "{e}"
    );
    let e = inv.select(&args_on("web1,@e")).unwrap_err();
    assert!(
        e.to_string()
            .contains("no host has the tag `e` (closest: eu"),
        "{e}"
    );
}

fn args_on(list: &str) -> Selector {
    nixgate::cli::SelectorArgs {
        on: vec![list.into()],
        ..Default::default()
    }
    .selector()
}

#[test]
fn notify_takes_an_argv_and_a_timeout() {
    let host = "\n[hosts.web1]\naddress = \"10.0.0.1\"\n";
    let inv = parse(&format!(
        "{BASE}{host}\n[notify]\ncommand = [\"post-to-chat\", \"#ops\"]\ntimeout = \"10s\"\n"
    ))
    .unwrap();
    let n = inv.notify.unwrap();
    assert_eq!(n.command, ["post-to-chat", "#ops"]);
    assert_eq!(n.timeout, Duration::from_secs(10));
    assert!(parse(&format!("{BASE}{host}")).unwrap().notify.is_none());
    let (text, _) = errors(&format!("{BASE}{host}\n[notify]\ncommand = []\n"));
    assert!(text.contains("`command` must name a program"), "{text}");
    let (text, _) = errors(&format!("{BASE}{host}\n[notify]\ncomand = [\"x\"]\n"));
    assert!(text.contains("unknown key `comand` in [notify]"), "{text}");
    assert!(text.contains("[notify] has no `command`"), "{text}");
}

#[test]
fn keys_pre_checks_and_sudo_password_command() {
    use nixgate::keys::{KeySource, UploadAt};
    let inv = parse(&format!(
        r#"{BASE}
[defaults]
pre_checks = ["test -d /nix"]
sudo_password_command = ["pass", "show", "fleet/sudo"]
keys = [
  {{ name = "ca.pem", file = "secrets/ca.pem" }},
  {{ name = "shared", text = "default" }},
]

[hosts.web1]
address = "10.0.0.1"
pre_checks = ["true", {{ command = "pg_isready", timeout = "5s", retries = 2 }}]

[[hosts.web1.keys]]
name = "shared"
command = ["pass", "show", "web1/shared"]
user = "nginx"
group = "www"
permissions = "0440"
dest_dir = "/var/keys"
upload_at = "post-activation"

[hosts.web2]
address = "10.0.0.2"
"#
    ))
    .unwrap();
    let web1 = inv.host("web1").unwrap();
    assert_eq!(
        web1.pre_checks.len(),
        2,
        "a host's list replaces the default"
    );
    assert_eq!(web1.pre_checks[1].timeout, Duration::from_secs(5));
    assert_eq!(web1.pre_checks[1].retries, 2);
    assert_eq!(
        web1.sudo_password_command.as_deref(),
        Some(&["pass".to_string(), "show".into(), "fleet/sudo".into()][..])
    );
    let names: Vec<&str> = web1.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        ["ca.pem", "shared"],
        "the host's key replaces the default's"
    );
    let shared = &web1.keys[1];
    assert!(
        matches!(&shared.source, KeySource::Command { argv, dir } if argv[0] == "pass" && dir == Path::new("."))
    );
    assert_eq!(shared.owner(), "nginx:www");
    assert_eq!(shared.dest(), "/var/keys/shared");
    assert_eq!(shared.upload_at, UploadAt::PostActivation);
    let ca = &web1.keys[0];
    assert_eq!(ca.dest(), "/run/keys/ca.pem");
    assert_eq!(
        (ca.permissions.as_str(), ca.owner().as_str()),
        ("0600", "root")
    );
    assert!(
        matches!(&ca.source, KeySource::File { path } if path == Path::new("./secrets/ca.pem")),
        "relative to the inventory"
    );
    let web2 = inv.host("web2").unwrap();
    assert_eq!(web2.keys.len(), 2);
    assert_eq!(web2.pre_checks[0].command, "test -d /nix");
    // The inventory serialized (as `hosts --json` and reports may) never
    // shows a key's text.
    let json = serde_json::to_string(&inv).unwrap();
    assert!(!json.contains("\"default\""), "{json}");
}

#[test]
fn bad_keys_are_refused_with_positions() {
    let (msg, pos) = errors(&format!(
        r#"{BASE}
[hosts.web1]
address = "10.0.0.1"
keys = [
  {{ name = "a", text = "x", file = "y" }},
  {{ name = "b" }},
  {{ name = "../etc/shadow", text = "x" }},
  {{ name = "c", text = "x", permissions = "0900" }},
  {{ name = "d", text = "x", upload_at = "later" }},
  {{ name = "e", text = "x", user = "-r" }},
  {{ name = "f", text = "x", dest_dir = "relative" }},
  {{ name = "f2", text = "x", dest_dir = "//" }},
  {{ name = "g", command = [] }},
  {{ name = "h", text = "x" }},
  {{ name = "h", text = "y" }},
]
sudo_password_command = []
"#
    ));
    for want in [
        "key has 2 sources (text, file)",
        "key has no source",
        "invalid key name",
        "`permissions` \"0900\" is not an octal mode",
        "upload_at",
        "`command` needs a program",
        "key \"h\" is listed twice",
        "a key's `dest_dir` cannot be `/`",
        "`sudo_password_command` needs a program",
    ] {
        assert!(msg.contains(want), "{want:?} in:\n{msg}");
    }
    assert!(pos.len() >= 11, "{pos:?}\n{msg}");
}

/// An error on a line holding a key's inline secret shows the line with the
/// secret masked (one `*` per character, so the caret still points right):
/// the text of a key with a misspelt field, of a key with two sources, a
/// misspelt `text` (an unknown field's value), a key that is not a table,
/// and a line the TOML parser refused.
#[test]
fn error_excerpts_never_show_a_keys_inline_text() {
    let (msg, _) = errors(&format!(
        r#"{BASE}
[hosts.web1]
address = "10.0.0.1"
keys = [
  {{ name = "a", text = "hunter2-a", permision = "0600" }},
  {{ name = "b", text = "hunter2-b", file = "y" }},
  {{ name = "c", txt = "hunter2-c" }},
  "hunter2-d",
]
"#
    ));
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("text = ***********, permision"), "{msg}");
    assert!(msg.contains("unknown key `permision`"), "{msg}");
    let d = parse(&format!(
        "{BASE}[hosts.web1]\naddress = \"10.0.0.1\"\nkeys = [{{ name = \"a\", text = \"hunter2\\q\" }}]\n"
    ))
    .expect_err("a bad escape");
    let msg = d.to_string();
    assert!(msg.contains("TOML syntax"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    // A multi-line text whose body does not parse.
    let d = parse(&format!(
        "{BASE}[hosts.web1]\naddress = \"10.0.0.1\"\n[[hosts.web1.keys]]\nname = \"a\"\ntext = \"\"\"\nhunter2\\q\n\"\"\"\n"
    ))
    .expect_err("a bad escape");
    let msg = d.to_string();
    assert!(msg.contains("TOML syntax"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    // One key's table without its list's brackets, a misspelt list, a
    // list where it does not belong.
    let (msg, _) = errors(&format!(
        r#"{BASE}
[hosts.web1]
address = "10.0.0.1"
keys = {{ name = "a", text = "hunter2-e" }}
[hosts.web2]
address = "10.0.0.2"
kyes = [{{ name = "a", text = "hunter2-f" }}]
[hosts.web3]
address = "10.0.0.3"
text = "hunter2-g"
"#
    ));
    assert!(msg.contains("must be an array"), "{msg}");
    assert!(msg.contains("unknown key `kyes`"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

/// A wave of tags only, every tagged host already in an earlier wave: the
/// inventory is valid and the whole fleet runs, but `--wave` naming it is
/// an error saying which hosts are where, and `check` warns about it.
#[test]
fn a_wave_whose_tagged_hosts_are_all_in_earlier_waves_selects_nothing_and_says_why() {
    let inv = parse(&format!(
        r#"{BASE}
[hosts.web1]
address = "10.0.0.1"
tags = ["web"]
[hosts.web2]
address = "10.0.0.2"
tags = ["web"]
[hosts.db1]
address = "10.0.0.3"
[[waves]]
name = "canary"
hosts = ["web1", "web2"]
[[waves]]
name = "web"
tags = ["web"]
"#
    ))
    .unwrap();
    let all = inv.select(&Selector::default()).unwrap();
    assert_eq!(all.len(), 3);
    for sel in [
        Selector {
            waves: vec!["web".into()],
            ..Default::default()
        },
        Selector {
            waves: vec!["canary".into(), "web".into()],
            ..Default::default()
        },
    ] {
        let e = inv.select(&sel).unwrap_err().to_string();
        assert!(e.contains("wave `web` has no hosts"), "{e}");
        assert!(e.contains("web1 and web2 are in wave `canary`"), "{e}");
    }
    let warnings = nixgate::inspect::probe::warnings(&inv);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("wave `web` has no hosts")
                && w.contains("web1 and web2 are in wave `canary`")),
        "{warnings:?}"
    );
}

/// A canary wave of tags whose only tagged host a LATER wave names (a name
/// beats a tag) had no hosts, and a whole-fleet push deployed web1 with
/// `main`, ungated. That is an inventory error naming the host, the wave
/// that took it and what to do; the same tag wave AFTER the wave that names
/// the host stays valid (documented: `check` warns about it).
#[test]
fn a_tag_wave_emptied_by_a_later_wave_naming_its_hosts_is_an_error() {
    let hosts = "[hosts.web1]\naddress = \"10.0.0.1\"\ntags = [\"canary\"]\n\
                 [hosts.web2]\naddress = \"10.0.0.2\"\n";
    let (text, pos) = errors(&format!(
        "{BASE}\n{hosts}\
         [[waves]]\nname = \"canary\"\ntags = [\"canary\"]\n\
         [[waves]]\nname = \"main\"\nhosts = [\"web1\", \"web2\"]\n"
    ));
    assert_eq!(pos.len(), 1, "{text}");
    assert!(text.contains("wave `canary` has no hosts"), "{text}");
    assert!(text.contains("web1 is in wave `main`"), "{text}");
    assert!(
        text.contains("remove web1 from the `hosts` of wave `main`, or drop the tag `canary`"),
        "{text}"
    );
    let inv = parse(&format!(
        "{BASE}\n{hosts}\
         [[waves]]\nname = \"main\"\nhosts = [\"web1\", \"web2\"]\n\
         [[waves]]\nname = \"canary\"\ntags = [\"canary\"]\n"
    ))
    .expect("a tag wave whose hosts went earlier is valid");
    assert_eq!(inv.select(&Selector::default()).unwrap().len(), 2);
}

/// Two spellings of one machine are one address: `2001:DB8:0::1` and
/// `2001:db8::1`, `web.example.` and `web.example` (compared as strings,
/// both hosts loaded and both deployed at once to one machine).
#[test]
fn duplicate_addresses_are_found_whatever_their_spelling() {
    for (a, b) in [
        ("2001:db8::1", "2001:DB8:0::1"),
        ("web.example.", "Web.Example"),
    ] {
        let (text, pos) = errors(&format!(
            "{BASE}\n[hosts.a]\naddress = \"{a}\"\n[hosts.b]\naddress = \"{b}\"\n"
        ));
        assert_eq!(pos.len(), 1, "{text}");
        assert!(
            text.contains(&format!("duplicate address {b}:22: host `a` has it too")),
            "{text}"
        );
    }
}
