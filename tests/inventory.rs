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
    assert_eq!(web1.connection.port, 22);
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
    assert_eq!(mac.connection.user, "admin");
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
    assert_eq!(
        (a.connection.user.as_str(), a.connection.port),
        ("deploy", 2222)
    );
    assert_eq!(
        (b.connection.user.as_str(), b.connection.port),
        ("deploy", 22)
    );
    assert_eq!(a.connection.connect_timeout, Duration::from_secs(3));
    // The builder shares [defaults] connection settings.
    assert_eq!(inv.builder.connection.port, 2222);
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
[[waves]]
name = "dbs"
tags = ["db"]
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
    assert!(e.to_string().contains("selection is empty"), "{e}");
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
