//! Signed closures on a real fleet, relay copy: the builder signs what it
//! builds (`[builder] signing_key`, a real ed25519 key pair from
//! `nix-store --generate-binary-cache-key`), the relay carries each path's
//! signatures to the hosts, and a host with `require_signatures` (and
//! `require-sigs = true` with the builder's public key trusted in its
//! nix.conf) takes the closure; an unsigned closure, or one signed by a key
//! the host does not trust, is refused before anything on the host changes.
//!
//! Light hosts are root single-user stores without a daemon, and `nix-store
//! --serve --write` adds paths without checking signatures whatever
//! `require-sigs` says (Nix 2.8 and 2.26 alike): the refusal comes from
//! nixgate's realise step (`nix store verify --sigs-needed 1`), which this
//! test shows by finding the refused closure valid, but not running, on the
//! host.

mod support;

use std::collections::HashSet;
use std::process::Output;

use nixgate::fleet::{Machine, Sessions};
use nixgate::inventory::Inventory;
use nixgate::nix::StorePath;
use nixgate::nix::closure::{self, PathInfo, PathRecord};
use nixgate::nix::copy::{CopyProgress, lacking};
use nixgate::nix::fanout::{self, Target};
use nixgate::nix::sign::{self, Restored};
use nixgate::ssh::HostKeyPolicy;
use serde_json::{Value, json};
use support::cli::{nixgate, text};
use support::fleet::{Fleet, FleetSpec};

fn summary(out: &Output) -> Value {
    let last = text(&out.stdout)
        .lines()
        .last()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .expect("some output");
    assert_eq!(last["event"], "summary", "the last line is the summary");
    last
}

fn host<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == name)
        .unwrap_or_else(|| panic!("{name} not in {summary}"))
}

/// What a host runs and would boot: none of it may change on a refusal.
fn state(fleet: &Fleet, h: &str) -> String {
    fleet.in_host_ok(
        h,
        "readlink -e /run/current-system; readlink /nix/var/nix/profiles/system; \
         readlink /boot/nixgate-test/default",
    )
}

/// Sets `[builder] signing_key` (or removes it) and light1's
/// `require_signatures`, keeping the rest of the fleet's inventory.
fn set_inventory(fleet: &Fleet, signing_key: Option<&str>) {
    let path = fleet.inventory_path();
    let mut inv: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let builder = inv["builder"].as_table_mut().unwrap();
    match signing_key {
        Some(k) => builder.insert("signing_key".into(), k.into()),
        None => builder.remove("signing_key"),
    };
    inv["hosts"]["light1"]
        .as_table_mut()
        .unwrap()
        .insert("require_signatures".into(), true.into());
    std::fs::write(&path, toml::to_string(&inv).unwrap()).unwrap();
}

/// A new closure for every host: new paths (a package, `etc`, the
/// toplevel) on top of generation 0's.
fn new_closure(fleet: &Fleet, generation: u32, package: &str) {
    fleet
        .commit_config(|v| {
            v["defaults"]["generation"] = json!(generation);
            v["defaults"]["extraPackages"] = json!([package]);
        })
        .unwrap();
}

/// The signatures of `paths` on `h`, from `nix path-info --sigs` (`path
/// [ultimate] [ca:...] sig...` lines: `ultimate` marks a path built there;
/// Nix 2.26 also prints a content-addressed path's `ca:`, 2.8 does not).
fn sigs(fleet: &Fleet, h: &str, paths: &str) -> Vec<(String, Vec<String>)> {
    fleet
        .in_host_ok(h, &format!("nix path-info --sigs {paths}"))
        .lines()
        .map(|l| {
            let mut words = l.split_whitespace();
            let path = words.next().unwrap_or_default().to_owned();
            (
                path,
                words
                    .filter(|w| *w != "ultimate" && !w.starts_with("ca:"))
                    .map(str::to_owned)
                    .collect(),
            )
        })
        .collect()
}

/// Push light1 alone, expecting a signature refusal that changed nothing;
/// returns the refused closure and the paths named untrusted.
fn refused(fleet: &Fleet, why: &str) -> (String, Vec<String>) {
    let before = state(fleet, "light1");
    let out = nixgate(fleet, &["--json", "push", "--yes", "light1"]);
    assert_eq!(out.status.code(), Some(1), "{why}: {}", text(&out.stderr));
    let s = summary(&out);
    let h = host(&s, "light1");
    assert_eq!(h["outcome"], "failed", "{why}: {h}");
    assert_eq!(h["activation"]["kind"], "signature_mismatch", "{why}: {h}");
    let closure = h["closure"].as_str().unwrap().to_owned();
    let untrusted: Vec<String> = h["activation"]["untrusted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert!(untrusted.contains(&closure), "{why}: {h}");
    assert_eq!(state(fleet, "light1"), before, "{why}: light1 changed");
    // Copied despite require-sigs (the serve protocol does not check), so
    // the refusal above is nixgate's own.
    assert_eq!(
        fleet.in_host_ok(
            "light1",
            &format!("nix-store --check-validity {closure} && echo valid")
        ),
        "valid",
        "{why}"
    );
    (closure, untrusted)
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn relay_carries_signatures_and_unsigned_or_foreign_closures_are_refused() {
    let fleet = Fleet::start(FleetSpec {
        light: 2,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let started = std::time::Instant::now();
    let public = fleet.in_host_ok(
        "builder",
        "nix-store --generate-binary-cache-key builder-1 /root/builder.sec /root/builder.pub \
         && nix-store --generate-binary-cache-key rogue-1 /root/rogue.sec /root/rogue.pub \
         && cat /root/builder.pub",
    );
    assert!(public.starts_with("builder-1:"), "{public}");
    // light1's running system counts as signed by whoever installed it (a
    // key it trusts, thrown away): the relay carries signatures of what it
    // sends, and leaves the paths a host already has as they are.
    let install = fleet.in_host_ok(
        "light1",
        "nix-store --generate-binary-cache-key install-1 /root/install.sec /root/install.pub \
         && nix store sign --key-file /root/install.sec -r $(readlink -e /run/current-system) \
         && rm /root/install.sec && cat /root/install.pub",
    );
    let conf = fleet.dir().join("hosts/light1/etc-nix/nix.conf");
    let mut text_conf = std::fs::read_to_string(&conf).unwrap();
    text_conf.push_str(&format!(
        "trusted-public-keys = {public} {install}\nrequire-sigs = true\n"
    ));
    std::fs::write(&conf, text_conf).unwrap();
    assert_eq!(
        fleet.in_host_ok("light1", "nix show-config | grep -c '^require-sigs = true'"),
        "1"
    );
    let gen0 = fleet.in_host_ok("light1", "nix-store -qR $(readlink -e /run/current-system)");

    // 1. The builder signs nothing: refused, and `check` says why first.
    set_inventory(&fleet, None);
    let out = nixgate(&fleet, &["--json", "check", "--offline"]);
    let warned = text(&out.stdout);
    assert!(
        warned.contains("host light1 requires signatures, but [builder] has no signing_key"),
        "{warned}"
    );
    new_closure(&fleet, 1, "sig-unsigned");
    let (closure, _) = refused(&fleet, "unsigned");
    assert_eq!(sigs(&fleet, "light1", &closure)[0].1, Vec::<String>::new());

    // 2. Signed with a key light1 does not trust: the signature arrives,
    // and is refused.
    set_inventory(&fleet, Some("/root/rogue.sec"));
    new_closure(&fleet, 2, "sig-rogue");
    let (closure, untrusted) = refused(&fleet, "foreign key");
    let got = sigs(&fleet, "light1", &closure);
    assert!(
        got[0].1.len() == 1 && got[0].1[0].starts_with("rogue-1:"),
        "{got:?}"
    );
    assert!(
        untrusted.iter().all(|p| !gen0.lines().any(|g| g == p)),
        "only new paths are untrusted: {untrusted:?}"
    );

    // 3. Signed with the trusted key: light1 and light2 (which requires
    // nothing) take it from one builder read; light1's store holds the
    // builder's own signatures for every path it was sent.
    set_inventory(&fleet, Some("/root/builder.sec"));
    new_closure(&fleet, 3, "sig-trusted");
    let out = nixgate(&fleet, &["--json", "push", "--yes", "light1", "light2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = summary(&out);
    for h in ["light1", "light2"] {
        assert_eq!(host(&s, h)["outcome"], "known-good", "{s}");
    }
    let closure = host(&s, "light1")["closure"].as_str().unwrap().to_owned();
    assert_eq!(
        fleet.in_host_ok("light1", "readlink -e /run/current-system"),
        closure
    );
    let sent: Vec<String> = fleet
        .in_host_ok("light1", &format!("nix-store -qR {closure}"))
        .lines()
        .filter(|p| !gen0.lines().any(|g| g == *p))
        .map(str::to_owned)
        .collect();
    assert!(sent.len() >= 4, "package, sw, etc, toplevel: {sent:?}");
    let on_host = sigs(&fleet, "light1", &sent.join(" "));
    let on_builder = sigs(&fleet, "builder", &sent.join(" "));
    assert_eq!(
        on_host, on_builder,
        "the host stores the builder's signatures"
    );
    for (path, s) in &on_host {
        assert!(
            s.iter().any(|s| s.starts_with("builder-1:")),
            "{path}: {s:?}"
        );
    }
    // light2 got the same registrations in the same stream.
    let closure2 = host(&s, "light2")["closure"].as_str().unwrap();
    let top2 = sigs(&fleet, "light2", closure2);
    assert!(
        top2[0].1.iter().any(|s| s.starts_with("builder-1:")),
        "{top2:?}"
    );
    // And Nix itself on light1 finds the whole closure trusted.
    fleet.in_host_ok(
        "light1",
        &format!("nix store verify --recursive --no-contents --sigs-needed 1 {closure}"),
    );

    // 4. light2 starts requiring signatures too. Its generation 0 was never
    // signed on it (unlike light1's): the paths it already had get the
    // builder's signatures at the copy gate, or the push would be refused.
    let conf = fleet.dir().join("hosts/light2/etc-nix/nix.conf");
    let mut text_conf = std::fs::read_to_string(&conf).unwrap();
    text_conf.push_str(&format!(
        "trusted-public-keys = {public}\nrequire-sigs = true\n"
    ));
    std::fs::write(&conf, text_conf).unwrap();
    let path = fleet.inventory_path();
    let mut inv: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    inv["hosts"]["light2"]
        .as_table_mut()
        .unwrap()
        .insert("require_signatures".into(), true.into());
    std::fs::write(&path, toml::to_string(&inv).unwrap()).unwrap();
    let gen0_2 = fleet.in_host_ok("light2", "readlink -e /nix/var/nix/profiles/system-1-link");
    assert!(
        !untrusted_on(&fleet, "light2", &gen0_2).is_empty(),
        "light2's first system is unsigned"
    );
    new_closure(&fleet, 4, "sig-restored");
    let out = nixgate(&fleet, &["--json", "push", "--yes", "light2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(host(&s, "light2")["outcome"], "known-good", "{s}");
    let closure2 = host(&s, "light2")["closure"].as_str().unwrap();
    assert_eq!(
        untrusted_on(&fleet, "light2", closure2),
        Vec::<String>::new()
    );
    eprintln!(
        "signatures_e2e: 4 pushes and checks in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `nix store verify --sigs-needed 1` of `closure` on `h`: the paths it
/// names untrusted (none: the closure is trusted), sorted (Nix checks
/// paths on a thread pool: the order of its lines varies).
fn untrusted_on(fleet: &Fleet, h: &str, closure: &str) -> Vec<String> {
    let out = fleet.in_host(
        h,
        &format!("nix store verify --recursive --no-contents --sigs-needed 1 {closure}"),
    );
    let err = text(&out.stderr);
    let mut named: Vec<String> = err
        .lines()
        .filter_map(|l| l.strip_prefix("path '")?.strip_suffix("' is untrusted"))
        .map(str::to_owned)
        .collect();
    assert_eq!(out.status.success(), named.is_empty(), "{err}");
    named.sort();
    named
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn restore_gives_a_host_the_builders_signatures_for_paths_it_had() {
    let fleet = Fleet::start(FleetSpec {
        light: 1,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let public = fleet.in_host_ok(
        "builder",
        "nix-store --generate-binary-cache-key builder-1 /root/builder.sec /root/builder.pub \
         && cat /root/builder.pub",
    );
    let conf = fleet.dir().join("hosts/light1/etc-nix/nix.conf");
    let mut text_conf = std::fs::read_to_string(&conf).unwrap();
    text_conf.push_str(&format!(
        "trusted-public-keys = {public}\nrequire-sigs = true\n"
    ));
    std::fs::write(&conf, text_conf).unwrap();
    new_closure(&fleet, 1, "sig-restore");
    let top = fleet.build_on_builder("light1").unwrap();
    fleet.in_host_ok(
        "builder",
        &format!("nix store sign --key-file /root/builder.sec --recursive {top}"),
    );
    let inv = Inventory::load(&fleet.inventory_path()).unwrap();
    let sessions = Sessions::new(&inv, HostKeyPolicy::Strict);
    let builder = sessions.get(Machine::Builder).await.unwrap();
    let host = sessions.get(Machine::Host("light1")).await.unwrap();
    let top_path = StorePath::parse(&top).unwrap();
    let closure = closure::closure(&builder, &top_path).await.unwrap();
    let lacks: HashSet<StorePath> = lacking(&host, &closure).await.unwrap();
    let noop = |_: CopyProgress| {};
    let target = Target {
        remote: &host,
        lacking: &lacks,
        progress: &noop,
        session: None,
        stall: nixgate::inventory::load::DEFAULT_COPY_STALL_TIMEOUT,
    };
    fanout::relay_one(&builder, None, target, &closure)
        .await
        .unwrap();
    // What the relay sent is signed; generation 0's paths, copied unsigned
    // when the fleet started, are not: the closure is refused.
    let before = untrusted_on(&fleet, "light1", &top);
    assert!(!before.is_empty());
    assert!(
        before
            .iter()
            .all(|p| !lacks.iter().any(|l| l.as_str() == p)),
        "a relayed path is untrusted: {before:?}"
    );
    let present: Vec<&PathInfo> = closure
        .iter()
        .filter(|p| !lacks.contains(&p.path))
        .collect();

    // A record unlike the host's path (another NAR hash): copy-sigs takes
    // no signature from it.
    let forged: Vec<PathInfo> = present
        .iter()
        .map(|p| {
            PathInfo::from(PathRecord {
                nar_hash: Some([7u8; 32]),
                ..PathRecord::clone(p)
            })
        })
        .collect();
    let forged_refs: Vec<&PathInfo> = forged.iter().collect();
    let r = sign::restore(&builder, &host, &forged_refs).await.unwrap();
    assert_eq!(r.untrusted, before.len());
    assert_eq!(untrusted_on(&fleet, "light1", &top), before);

    // The builder's record: every untrusted path gets the builder's
    // signatures, and Nix on the host now trusts the whole closure.
    let r = sign::restore(&builder, &host, &present).await.unwrap();
    assert_eq!(
        r,
        Restored {
            untrusted: before.len(),
            offered: before.len()
        }
    );
    assert_eq!(untrusted_on(&fleet, "light1", &top), Vec::<String>::new());
    let paths = before.join(" ");
    assert_eq!(
        sigs(&fleet, "light1", &paths),
        sigs(&fleet, "builder", &paths),
        "the host holds the builder's signatures"
    );
    // Nothing left to do: one command, nothing sent.
    assert_eq!(
        sign::restore(&builder, &host, &present).await.unwrap(),
        Restored::default()
    );
}
