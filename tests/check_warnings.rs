//! `check`'s warnings about signing and copying combinations that cannot
//! work: hosts that require signatures from a builder that signs nothing,
//! non-root logins whose nix-daemon refuses unsigned paths, and signing as a
//! non-root builder user. Inventory text only: no fleet, no root.

use std::path::Path;

use nixgate::inspect::probe::warnings;
use nixgate::inventory::Inventory;

/// The warnings for an inventory of `hosts` (TOML host tables) and
/// `builder` (extra `[builder]` lines), with a source that is a git
/// repository so only the warnings under test appear.
fn warned(builder: &str, hosts: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    let text = format!(
        "[builder]\naddress = \"10.0.0.1\"\nsource = \"{}\"\n{builder}\n{hosts}",
        dir.path().display()
    );
    let inv = Inventory::parse(Path::new("inventory.toml"), &text)
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    warnings(&inv)
}

fn host(name: &str, extra: &str) -> String {
    format!("[hosts.{name}]\naddress = \"{name}.example.org\"\n{extra}\n")
}

#[test]
fn requiring_signatures_from_a_builder_that_signs_nothing_is_warned() {
    let hosts = [
        host("relay", "require_signatures = true"),
        host("copier", "require_signatures = true\ncopy = \"builder\""),
        // Substituted closures carry the substituter's signatures.
        host("subst", "require_signatures = true\ncopy = \"substitute\""),
        host("lax", ""),
    ]
    .concat();
    let w = warned("", &hosts);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("hosts relay, copier require signatures")
            && w[0].contains("signing_key")
            && w[0].contains("secret-key-files"),
        "{w:?}"
    );
    // With a signing key, the relay carries the signatures: nothing to say.
    assert_eq!(
        warned("signing_key = \"/etc/nix/builder.sec\"", &hosts),
        Vec::<String>::new()
    );
}

#[test]
fn many_hosts_are_counted_not_listed() {
    let hosts: String = (1..=8)
        .map(|i| host(&format!("web{i}"), "require_signatures = true"))
        .collect();
    let w = warned("", &hosts);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("hosts web1, web2, web3, web4, web5 and 3 more require"),
        "{w:?}"
    );
}

#[test]
fn non_root_logins_need_signatures_or_trust() {
    let hosts = [
        host("deployer", "user = \"deploy\"\nsudo = true"),
        host("rooted", "user = \"root\""),
        host("fetcher", "user = \"deploy\"\ncopy = \"substitute\""),
    ]
    .concat();
    let w = warned("", &hosts);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("host deployer logs in as a user other than root")
            && w[0].contains("trusted-users"),
        "{w:?}"
    );
    assert_eq!(
        warned("signing_key = \"/etc/nix/builder.sec\"", &hosts),
        Vec::<String>::new()
    );
}

#[test]
fn signing_as_a_non_root_builder_user_needs_trust() {
    let w = warned(
        "user = \"build\"\nsigning_key = \"/home/build/builder.sec\"",
        &host("web1", "require_signatures = true"),
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("signing as build") && w[0].contains("not privileged to add signatures"),
        "{w:?}"
    );
    assert_eq!(
        warned(
            "user = \"root\"\nsigning_key = \"/root/builder.sec\"",
            &host("web1", "require_signatures = true"),
        ),
        Vec::<String>::new()
    );
}

/// A wave before others with a failure budget as large as the wave never
/// stops the run: warned (a count), not when a percentage says so.
#[test]
fn a_wave_whose_budget_covers_all_its_hosts_is_warned() {
    let hosts = [host("web1", ""), host("web2", ""), host("web3", "")].concat();
    let waves = |canary: &str, last: &str| {
        format!(
            "{hosts}[[waves]]\nname = \"canary\"\nhosts = [\"web1\"]\nmax_failures = {canary}\n\
             [[waves]]\nname = \"main\"\nhosts = [\"web2\", \"web3\"]\nmax_failures = {last}\n"
        )
    };
    let w = warned("", &waves("1", "5"));
    assert_eq!(w.len(), 1, "the last wave stops nothing after it: {w:?}");
    assert!(
        w[0].starts_with("wave `canary` tolerates 1 failed host(s) of its 1"),
        "{w:?}"
    );
    assert_eq!(warned("", &waves("0", "5")), Vec::<String>::new());
    assert_eq!(warned("", &waves("\"100%\"", "0")), Vec::<String>::new());
}
