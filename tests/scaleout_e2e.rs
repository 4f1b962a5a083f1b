//! Past one builder, on a real fleet (one fleet for every case): `builder2`
//! as the builder's remote builder (Nix's distributed builds: the
//! derivations are built on builder2, the results come back), a remote
//! builder that is down (Nix's error, per host), and a real HTTP binary
//! cache (`python3 -m http.server` over `DIR/cache`, which the builder
//! fills with `nix copy --to file://...`) the hosts pull their closures
//! from with `copy = "substitute"`, signatures required; a host given a
//! wrong trusted key, and a cache that lacks the closure, are refused
//! before anything on the host changes; a push to the cache that fails
//! refuses every host before any is touched.

mod support;

use std::process::Output;

use serde_json::{Value, json};
use support::cli::{nixgate_cmd_with, text};
use support::fleet::{Bases, Fleet, FleetSpec};

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn events<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == name).collect()
}

fn host_end<'a>(lines: &'a [Value], host: &str) -> &'a Value {
    let s = events(lines, "summary").pop().expect("a summary");
    s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("{host} in {s}"))
}

fn current(fleet: &Fleet, host: &str) -> String {
    fleet.in_host_ok(host, "readlink -e /run/current-system")
}

fn fleet_env(fleet: &Fleet, key: &str) -> String {
    let env = std::fs::read_to_string(fleet.dir().join("fleet.env")).unwrap();
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in fleet.env"))
        .to_owned()
}

/// What the inventory adds to the fleet's own.
struct Extra<'a> {
    remote_builder: &'a str,
    cache: bool,
    /// (host, trusted key) per substituting host.
    pull: &'a [(&'a str, &'a str)],
}

/// The fleet's inventory with `extra` spliced in, written as `name`.
fn inventory(fleet: &Fleet, name: &str, extra: &Extra<'_>) -> String {
    let dir = fleet.dir();
    let base = std::fs::read_to_string(fleet.inventory_path()).unwrap();
    let mut inv = String::new();
    for line in base.lines() {
        inv.push_str(line);
        inv.push('\n');
        if line == "[builder]" {
            inv.push_str(&format!(
                "remote_builders = [{:?}]\nmax_jobs = 0\n",
                extra.remote_builder
            ));
        }
        if let Some(host) = line
            .strip_prefix("[hosts.")
            .and_then(|h| h.strip_suffix(']'))
            && let Some((_, key)) = extra.pull.iter().find(|(h, _)| *h == host)
        {
            inv.push_str(&format!(
                "copy = \"substitute\"\nrequire_signatures = true\nsubstituters = [{:?}]\ntrusted_public_keys = [{key:?}]\n",
                fleet_env(fleet, "CACHE_URL")
            ));
        }
    }
    if extra.cache {
        inv.push_str(&format!(
            "\n[cache]\npush_to = \"file://{}/cache?compression=none\"\nsigning_key = \"{}/cache-key.sec\"\n",
            dir.display(),
            dir.display()
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, inv).unwrap();
    path.display().to_string()
}

fn nixgate(fleet: &Fleet, inv: &str, args: &[&str]) -> Output {
    nixgate_cmd_with(fleet, std::path::Path::new(inv), args)
        .output()
        .expect("nixgate runs")
}

fn run(fleet: &Fleet, inv: &str, args: &[&str]) -> (Output, Vec<Value>) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = nixgate(fleet, inv, &all);
    let lines = json_lines(&out);
    (out, lines)
}

#[test]
#[ignore = "needs root (sshd, namespaces, a Nix store): run scripts/test"]
fn remote_builder_builds_and_hosts_pull_from_an_http_cache() {
    let t0 = std::time::Instant::now();
    let fleet = Fleet::start_extra(
        FleetSpec {
            light: 3,
            systemd: 0,
            builder: true,
        },
        Bases::from_env().unwrap(),
        &["--remote-builder", "--cache"],
    )
    .unwrap();
    let dir = fleet.dir().to_path_buf();
    let machine = std::fs::read_to_string(dir.join("builder2.machine")).unwrap();
    let machine = machine.trim();
    let builder2 = fleet.host("builder2").address;
    let key = std::fs::read_to_string(dir.join("cache-key.pub")).unwrap();
    let key = key.trim();
    // A valid key nobody signed with.
    let wrong = "wrong-1:qRA8yl7b2P0mI+N68IpB+u8rmYevb2ysTpQ+1xK34yI=";

    // 1. Every derivation is built on builder2 (the builder builds nothing
    // itself: max_jobs = 0); the results come back to the builder.
    fleet
        .commit_config(|v| v["defaults"]["packages"]["hello"]["version"] = json!("2.12.7"))
        .unwrap();
    let pull = [("light1", key), ("light2", key), ("light3", wrong)];
    let all = Extra {
        remote_builder: machine,
        cache: true,
        pull: &pull,
    };
    let inv = inventory(&fleet, "scaleout.toml", &all);
    let (out, lines) = run(&fleet, &inv, &["build"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let steps = events(&lines, "build_step");
    assert!(steps.len() >= 3, "{steps:?}");
    for s in &steps {
        assert_eq!(
            s["machine"],
            format!("ssh://root@{builder2}"),
            "every derivation on builder2: {s}"
        );
    }
    let built: Vec<String> = events(&lines, "host_built")
        .iter()
        .map(|h| h["toplevel"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(built.len(), 3);
    for top in &built {
        fleet.in_host_ok("builder2", &format!("nix-store --check-validity {top}"));
        fleet.in_host_ok("builder", &format!("nix-store --check-validity {top}"));
    }
    // The build command also pushed them to the cache, signed.
    let pushed = events(&lines, "cache_push_finished");
    assert_eq!(pushed.len(), 1, "{}", text(&out.stdout));
    assert!(pushed[0]["paths"].as_u64().unwrap() > 0, "{}", pushed[0]);
    assert!(pushed[0]["bytes"].as_u64().unwrap() > 0, "{}", pushed[0]);
    let hash = &built[0]["/nix/store/".len().."/nix/store/".len() + 32];
    let narinfo = std::fs::read_to_string(dir.join("cache").join(format!("{hash}.narinfo")))
        .expect("the toplevel's narinfo in the cache");
    let key_name = key.split(':').next().unwrap();
    assert!(
        narinfo.contains(&format!("Sig: {key_name}:")),
        "signed with the cache key:\n{narinfo}"
    );
    eprintln!("remote build and push: {:.1} s", t0.elapsed().as_secs_f64());

    // 2. Hosts pull from the HTTP cache; the one given a wrong key is
    // refused before anything on it changes. With require_signatures the
    // whole closure must be signed, the paths the hosts already had too
    // (generation 0, seeded unsigned): sign those in place, as if they had
    // come from the cache; the check trusts the inventory's key for the
    // call, the hosts' nix.conf trusts none.
    for h in ["light1", "light2"] {
        fleet.in_host_ok(
            h,
            &format!(
                "nix --extra-experimental-features nix-command store sign --key-file {}/cache-key.sec --recursive /run/current-system",
                dir.display()
            ),
        );
    }
    let before3 = current(&fleet, "light3");
    let log = dir.join("cache-server/access.log");
    let served_before = std::fs::read_to_string(&log).unwrap_or_default();
    let (out, lines) = run(
        &fleet,
        &inv,
        &["push", "--yes", "light1", "light2", "light3"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    for h in ["light1", "light2"] {
        let end = host_end(&lines, h);
        assert_eq!(end["outcome"], "known-good", "{end}");
        let top = built
            .iter()
            .find(|t| t.contains(&format!("-{h}-")))
            .unwrap();
        assert_eq!(&current(&fleet, h), top);
    }
    let copies: Vec<&Value> = events(&lines, "gate_passed")
        .into_iter()
        .filter(|g| g["gate"] == "copy")
        .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    for c in &copies {
        assert_eq!(c["evidence"]["detail"]["kind"], "substituted", "{c}");
    }
    assert!(
        events(&lines, "copy_progress").is_empty(),
        "the controller carried no closure bytes"
    );
    let served = std::fs::read_to_string(&log).unwrap();
    let nars = served[served_before.len()..]
        .lines()
        .filter(|l| l.contains("GET /nar/") && l.contains(" 200 "))
        .count();
    assert!(nars >= 2, "the cache served the NARs:\n{served}");
    let end3 = host_end(&lines, "light3");
    assert_eq!(end3["outcome"], "failed", "{end3}");
    assert_eq!(end3["activation"]["kind"], "signature_mismatch", "{end3}");
    assert_eq!(current(&fleet, "light3"), before3, "light3 did not change");
    eprintln!("substitute push: {:.1} s", t0.elapsed().as_secs_f64());

    // 3. A cache that lacks the closure (no push this time): a clear
    // failure at the copy gate, nothing changed.
    fleet
        .commit_config(|v| v["defaults"]["packages"]["hello"]["version"] = json!("2.12.8"))
        .unwrap();
    let no_push = Extra {
        remote_builder: machine,
        cache: false,
        pull: &pull[1..2],
    };
    let inv2 = inventory(&fleet, "nopush.toml", &no_push);
    let before2 = current(&fleet, "light2");
    let (out, lines) = run(&fleet, &inv2, &["push", "--yes", "light2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let end2 = host_end(&lines, "light2");
    let why = end2.to_string();
    assert!(why.contains("lack the closure"), "{why}");
    assert_eq!(current(&fleet, "light2"), before2);

    // 4. The remote builder is down: Nix's error, per host.
    fleet
        .commit_config(|v| v["defaults"]["packages"]["hello"]["version"] = json!("2.12.9"))
        .unwrap();
    let down = machine.replacen(&builder2, "127.0.0.254", 1);
    let dead = Extra {
        remote_builder: &down,
        cache: false,
        pull: &[],
    };
    let inv3 = inventory(&fleet, "down.toml", &dead);
    let (out, lines) = run(&fleet, &inv3, &["build", "light1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let plan = events(&lines, "plan_ready").pop().expect("a plan");
    let refusal = &plan["waves"][0]["planned"][0]["refusal"];
    assert_eq!(refusal["cause"], "build", "{plan}");
    assert_eq!(refusal["failure"]["kind"], "no_machine", "{plan}");
    assert_eq!(
        refusal["failure"]["unreachable"][0]["machine"], "ssh://root@127.0.0.254",
        "{plan}"
    );
    let human = nixgate(&fleet, &inv3, &["build", "light1"]);
    let said = text(&human.stderr);
    assert!(
        said.contains("remote builder ssh://root@127.0.0.254 failed"),
        "{said}"
    );

    // 5. The push to the cache fails (its directory is a file): every
    // ready host is refused before anything on it changes.
    std::fs::write(dir.join("not-a-cache"), "a file, not a directory\n").unwrap();
    let bad = std::fs::read_to_string(&inv).unwrap().replace(
        &format!("file://{}/cache?", dir.display()),
        &format!("file://{}/not-a-cache?", dir.display()),
    );
    let inv4 = dir.join("badcache.toml");
    std::fs::write(&inv4, bad).unwrap();
    let inv4 = inv4.display().to_string();
    let before: Vec<String> = ["light1", "light2"]
        .iter()
        .map(|h| current(&fleet, h))
        .collect();
    let (out, lines) = run(&fleet, &inv4, &["push", "--yes", "light1", "light2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let failed = events(&lines, "cache_push_failed");
    assert_eq!(failed.len(), 1, "{}", text(&out.stdout));
    assert!(
        failed[0]["error"].as_str().unwrap().contains("nix copy"),
        "{}",
        failed[0]
    );
    assert!(
        events(&lines, "gate_started").is_empty(),
        "no host gate ran"
    );
    for (h, b) in ["light1", "light2"].iter().zip(&before) {
        let end = host_end(&lines, h);
        assert_eq!(end["outcome"], "refused", "{end}");
        assert_eq!(end["refusal"]["cause"], "cache_push", "{end}");
        assert_eq!(&current(&fleet, h), b, "{h} did not change");
    }
    eprintln!("all cases: {:.1} s", t0.elapsed().as_secs_f64());
}
