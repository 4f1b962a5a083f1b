//! Disk full on the builder (issue 18, "Same for the builder's store
//! during a build"): the builder's `/nix` is a tmpfs of [`BUILDER_MIB`] MiB
//! (`fleet up --small-nix builder=MIB`), a [`BALLAST_MIB`] MiB store path
//! nothing roots takes most of it (an old build, as on a builder nobody
//! collects), and a host's candidate adds [`FILLER_MIB`] MiB of filler
//! derivations (`head -c ... /dev/urandom > $out/...`), so the build fills
//! the store part-way through a derivation.
//!
//! The push must fail at the build gate, exit 1 like any build failure,
//! saying the builder's store is full (Nix's words, which store on which
//! mount, how much is free) and what to do (`nix-collect-garbage` on the
//! builder), as data in the JSON; touch nothing on the host; leave no
//! partial path valid on the builder (the derivation cut short stays
//! invalid, every valid path whole) and no GC root of nixgate's changed or
//! dangling. Then `nix-collect-garbage` on the builder, the advice
//! followed, and the same push converges to known-good.
//!
//! Then the builder's disk filled to the last byte by a file beside the
//! store: Nix 2.8 cannot even open its database ("disk I/O error", its GC
//! neither), which nixgate tells from a failing disk by measuring the
//! store; refused the same way, and with the file gone the push converges.
//!
//! One small fleet (a builder and one light host: activation is not what
//! is tested), booted once.

mod support;

use std::process::Output;
use std::time::Instant;

use serde_json::{Value, json};
use support::cli::{nixgate, text};
use support::fleet::{Fleet, FleetSpec};

const HOST: &str = "light1";
/// The builder's `/nix`: about 9 MiB of it is Nix's own (8 MiB the
/// garbage collector's reserve, `gc-reserved-space`, and the database).
const BUILDER_MIB: u32 = 48;
/// Garbage in the builder's store: with it the candidate cannot fit,
/// without it it can (9 + 24 + 24 > 48 > 9 + 24).
const BALLAST_MIB: u32 = 24;
/// The candidate's filler, in derivations of 2 MiB.
const FILLER_MIB: u32 = 24;

/// The JSON events of a `--json` run.
fn events(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// The host's end in the run's summary.
fn host_end(events: &[Value]) -> Value {
    let summary = named(events, "summary")
        .pop()
        .unwrap_or_else(|| panic!("no summary in {events:?}"))
        .clone();
    summary["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["host"] == HOST))
        .unwrap_or_else(|| panic!("{HOST} not in {summary}"))
        .clone()
}

fn push_json(fleet: &Fleet) -> (Output, Vec<Value>) {
    let out = nixgate(fleet, &["--json", "push", "--yes"]);
    let ev = events(&out);
    (out, ev)
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The toplevel a run built for the host.
fn built(events: &[Value]) -> String {
    named(events, "host_built")
        .first()
        .and_then(|e| e["toplevel"].as_str())
        .unwrap_or_else(|| panic!("no host_built in {events:?}"))
        .to_owned()
}

/// What the host runs and will boot, its known-good, what its store
/// holds and what nixgate keeps there, read inside it.
fn host_truth(fleet: &Fleet) -> String {
    fleet.in_host_ok(
        HOST,
        "readlink -e /run/current-system; readlink /nix/var/nix/profiles/system; \
         readlink -e /nix/var/nix/profiles/system; \
         readlink -e /nix/var/nix/profiles/nixgate-known-good; ls /nix/var/nix/profiles; \
         echo \"store: $(ls /nix/store | sort | md5sum)\"; \
         find /var/lib/nixgate -type f -exec md5sum {} + | sort",
    )
}

/// Every link under the builder's gcroots, `link -> target`, sorted.
fn builder_roots(fleet: &Fleet) -> String {
    fleet.in_host_ok(
        "builder",
        "find /nix/var/nix/gcroots -type l -printf '%p -> %l\\n' | sort",
    )
}

/// The roots nixgate made on the builder that do not name a valid path.
fn dangling_roots(fleet: &Fleet) -> String {
    fleet.in_host_ok(
        "builder",
        "cd /nix/var/nix/gcroots/nixgate || exit 1
find . -type l | while read -r e; do
  t=$(readlink \"$e\")
  nix-store --check-validity \"$t\" 2>/dev/null || echo \"dangling: $e -> $t\"
done",
    )
}

/// `nix-store --verify --check-contents` on the builder: every valid path
/// whole. Its complaints.
fn builder_store_problems(fleet: &Fleet) -> Vec<String> {
    let out = fleet.in_host("builder", "nix-store --verify --check-contents 2>&1");
    let mut bad: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("reading the Nix store") && !l.starts_with("checking "))
        .map(str::to_owned)
        .collect();
    if !out.status.success() {
        bad.insert(0, format!("nix-store --verify: {}", out.status));
    }
    bad
}

/// Free KiB in the builder's store.
fn free_kib(fleet: &Fleet) -> u64 {
    let s = fleet.in_host_ok("builder", "df -Pk /nix/store | awk 'NR==2 {print $4}'");
    s.parse().unwrap_or_else(|e| panic!("df said {s:?}: {e}"))
}

/// On the builder: the outputs of the host's system derivations other
/// than `known` (the systems built before), each `valid PATH` or `invalid
/// PATH`; and the filler outputs present in the store, `valid`/`partial`.
fn builder_outputs(fleet: &Fleet, known: &[&str]) -> (Vec<String>, Vec<String>) {
    let systems = fleet.in_host_ok(
        "builder",
        &format!(
            "for d in /nix/store/*-nixos-system-{HOST}-*.drv; do nix-store -q --outputs \"$d\"; done |
sort -u | while read -r o; do
  if nix-store --check-validity \"$o\" 2>/dev/null; then echo \"valid $o\"; else echo \"invalid $o\"; fi
done"
        ),
    );
    let systems = systems
        .lines()
        .filter(|l| !known.iter().any(|k| l.ends_with(k)))
        .map(str::to_owned)
        .collect();
    let fillers = fleet.in_host_ok(
        "builder",
        "for p in /nix/store/*-filler-*-1.0; do
  [ -e \"$p\" ] || continue
  if nix-store --check-validity \"$p\" 2>/dev/null; then echo \"valid $p\"; else echo \"partial $p\"; fi
done",
    );
    (systems, fillers.lines().map(str::to_owned).collect())
}

/// Events of a run that went past the build for the host (each seen in
/// a push that converges).
const PAST_THE_BUILD: [&str; 4] = ["host_built", "diff", "gate_started", "activation"];

/// The full push's failure, as data: refused at the build, no space, the
/// store named and measured; Nix's words ENOSPC's, or, with
/// `database_may_fail`, its database's I/O error on a disk too full to
/// open it. Its problems.
fn refusal_problems(out: &Output, events: &[Value], database_may_fail: bool) -> Vec<String> {
    let mut p = Vec::new();
    if out.status.code() != Some(1) {
        p.push(format!(
            "exit {:?}, not 1 (a build failure)",
            out.status.code()
        ));
    }
    let end = host_end(events);
    let failure = &end["refusal"]["failure"];
    if end["outcome"] != "refused" || end["refusal"]["cause"] != "build" {
        p.push(format!("{HOST} ended {end}, not refused at the build"));
    }
    if failure["kind"] != "no_space" {
        p.push(format!("the failure is not no_space: {failure}"));
    }
    let said = failure["said"].as_str().unwrap_or_default();
    let database = database_may_fail
        && failure["database_unusable"] == true
        && said.contains("disk I/O error");
    if !said.contains("No space left on device") && !database {
        p.push(format!("Nix's words are not ENOSPC's: {said:?}"));
    }
    let store = &failure["store"];
    if store["dir"] != "/nix/store" || store["mounted_on"] != "/nix" {
        p.push(format!("the store is not named: {store}"));
    }
    if store["size_bytes"] != json!(u64::from(BUILDER_MIB) << 20) {
        p.push(format!(
            "the store's size is not {BUILDER_MIB} MiB: {store}"
        ));
    }
    if store["free_bytes"].as_u64().is_none_or(|f| f >= 8 << 20) {
        p.push(format!("the store is not measured nearly full: {store}"));
    }
    for e in PAST_THE_BUILD {
        if !named(events, e).is_empty() {
            p.push(format!("the run went past the build: {e} events"));
        }
    }
    p
}

/// The state before the push that fills the store.
struct Before {
    /// The host's generation 0 and its first known-good system.
    gen0: String,
    first: String,
    host: String,
    roots: String,
}

/// A known-good first, so "nothing changed" means something.
fn known_good_first(fleet: &Fleet) -> Before {
    let gen0 = fleet.in_host_ok(HOST, "readlink -e /run/current-system");
    fleet
        .commit_config(|v| v["defaults"]["generation"] = json!(1))
        .unwrap();
    let (out, ev) = push_json(fleet);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let first = built(&ev);
    let host = host_truth(fleet);
    assert!(
        host.contains("/var/lib/nixgate/"),
        "nixgate keeps nothing on {HOST} after a known-good push?\n{host}"
    );
    let roots = builder_roots(fleet);
    assert!(
        roots.contains(&format!("nixgate/{HOST}/system -> {first}")),
        "{roots}"
    );
    Before {
        gen0,
        first,
        host,
        roots,
    }
}

/// Garbage in the builder's store that leaves less room than the next
/// candidate needs, and that candidate committed. The garbage's path and
/// the KiB left free.
fn ballast_and_a_bigger_candidate(fleet: &Fleet) -> (String, u64) {
    let ballast = fleet.in_host_ok(
        "builder",
        &format!(
            "f={}/ballast && head -c {BALLAST_MIB}M /dev/urandom >\"$f\" && nix-store --add \"$f\" && rm \"$f\"",
            fleet.dir().display()
        ),
    );
    let free = free_kib(fleet);
    assert!(
        free < u64::from(FILLER_MIB) * 1024,
        "{free} KiB free: the candidate would fit"
    );
    fleet
        .commit_config(|v| {
            v["defaults"]["generation"] = json!(2);
            v["hosts"][HOST] = json!({
                "filler": { "count": FILLER_MIB / 2, "sizeKiB": 2048, "salt": "builder-disk" }
            });
        })
        .unwrap();
    (ballast, free)
}

/// The human push's words: which store, how full, what to do, what next.
fn words_problems(human: &Output) -> Vec<String> {
    let words = text(&human.stdout) + &text(&human.stderr);
    let mut p = Vec::new();
    for want in [
        "the builder's store is full (/nix/store on /nix, ",
        &format!(
            "free of {BUILDER_MIB}.0 MiB): free space with `nix-collect-garbage` on the builder"
        ),
        "(Nix said: ",
        "No space left on device)",
        // The summary table: the store and how full, the rest below it.
        &format!("free of {BUILDER_MIB}.0 MiB); see below"),
        &format!("once the builder has room, `nixgate push {HOST}`"),
    ] {
        if !words.contains(want) {
            p.push(format!("the words do not say {want:?}"));
        }
    }
    if human.status.code() != Some(1) {
        p.push(format!("the human run ended {}", human.status));
    }
    if let Some(line) = words.lines().find(|l| l.contains("store is full")) {
        eprintln!("nixgate said: {}", line.trim());
    }
    p
}

/// After the push that filled the store: the host as it was; nothing
/// partial valid on the builder (the candidate is not, the filler cut
/// short is there and invalid, every valid path whole); nixgate's roots
/// there as they were, none dangling. The problems, and how many fillers
/// were left valid and cut short.
fn after_the_full_push(fleet: &Fleet, before: &Before) -> (Vec<String>, usize, usize) {
    let mut p = Vec::new();
    let host = host_truth(fleet);
    if host != before.host {
        p.push(format!("{HOST} changed:\n{}\n->\n{host}", before.host));
    }
    let (systems, fillers) = builder_outputs(fleet, &[&before.gen0, &before.first]);
    if systems.is_empty() || systems.iter().any(|s| !s.starts_with("invalid ")) {
        p.push(format!("the candidate on the builder: {systems:?}"));
    }
    let partial = fillers.iter().filter(|f| f.starts_with("partial ")).count();
    if partial == 0 {
        p.push(format!(
            "no filler was cut short (did the store fill?): {fillers:?}"
        ));
    }
    p.extend(builder_store_problems(fleet));
    let roots = builder_roots(fleet);
    if roots != before.roots {
        p.push(format!(
            "the builder's roots changed:\n{}\n->\n{roots}",
            before.roots
        ));
    }
    let dangling = dangling_roots(fleet);
    if !dangling.is_empty() {
        p.push(dangling);
    }
    (p, fillers.len() - partial, partial)
}

/// The same push again converges to known-good: the host runs, boots and
/// marked its new candidate, the builder roots it, every valid path
/// whole. Its seconds.
fn converges(fleet: &Fleet, first: &str) -> f64 {
    let t = Instant::now();
    let (again, ev) = push_json(fleet);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    let end = host_end(&ev);
    assert_eq!(end["outcome"], "known-good", "{end}");
    for e in PAST_THE_BUILD {
        assert!(
            !named(&ev, e).is_empty(),
            "no {e} event in a push that converged"
        );
    }
    let candidate = built(&ev);
    assert_ne!(candidate, first);
    let now = host_truth(fleet);
    assert!(
        now.lines().filter(|l| *l == candidate).count() == 3,
        "{HOST} runs, boots and marked {candidate}:\n{now}"
    );
    let roots = builder_roots(fleet);
    assert!(
        roots.contains(&format!("nixgate/{HOST}/system -> {candidate}")),
        "{roots}"
    );
    assert_eq!(dangling_roots(fleet), "");
    assert_eq!(builder_store_problems(fleet), Vec::<String>::new());
    secs
}

#[test]
#[ignore = "needs root (sshd, namespaces): run scripts/test"]
fn a_build_that_fills_the_builders_store_names_the_space_and_converges_after_a_gc() {
    let t0 = Instant::now();
    let small = format!("builder={BUILDER_MIB}");
    let fleet = Fleet::start_up_args(
        FleetSpec {
            light: 1,
            systemd: 0,
            builder: true,
        },
        &["--small-nix", &small],
    )
    .unwrap();
    let booted = t0.elapsed().as_secs_f64();
    let before = known_good_first(&fleet);
    let (ballast, free_before) = ballast_and_a_bigger_candidate(&fleet);

    // The push that fills the store, then the same in words.
    let t = Instant::now();
    let (full, ev) = push_json(&fleet);
    let full_secs = t.elapsed().as_secs_f64();
    let mut problems = refusal_problems(&full, &ev, false);
    let human = nixgate(&fleet, &["push", "--yes"]);
    problems.extend(words_problems(&human));
    let (on_builder, valid, partial) = after_the_full_push(&fleet, &before);
    problems.extend(on_builder);
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n--- the JSON push\n{}\n--- the human push\n{}",
        problems.len(),
        problems.join("\n"),
        describe(&full),
        describe(&human)
    );

    // What nixgate said to do: collect garbage on the builder. Then the
    // same push converges.
    fleet.in_host_ok("builder", "nix-collect-garbage >/dev/null 2>&1");
    let free_gc = free_kib(&fleet);
    let again_secs = converges(&fleet, &before.first);
    eprintln!(
        "builder /nix {BUILDER_MIB} MiB, ballast {ballast} ({BALLAST_MIB} MiB), candidate +{FILLER_MIB} MiB: \
         {free_before} KiB free before the full push, {free_gc} KiB after the GC; \
         fillers left {valid} valid, {partial} cut short (invalid); \
         fleet up {booted:.1} s, full push {full_secs:.1} s, push after the GC {again_secs:.1} s"
    );
    full_to_the_last_byte(&fleet);
    eprintln!("all {:.1} s", t0.elapsed().as_secs_f64());
}

/// The builder's disk filled to the last byte by something else than Nix
/// (a file beside the store) before a push: Nix 2.8 cannot even open its
/// database then (or, with its database files already grown, fails at its
/// first write). Refused the same way, nothing touched; with the file
/// gone the same push converges.
fn full_to_the_last_byte(fleet: &Fleet) {
    let host_before = host_truth(fleet);
    let roots_before = builder_roots(fleet);
    fleet
        .commit_config(|v| v["defaults"]["generation"] = json!(3))
        .unwrap();
    fleet.in_host_ok(
        "builder",
        &format!("head -c {BUILDER_MIB}M /dev/zero >/nix/var/fill 2>/dev/null; true"),
    );
    assert_eq!(free_kib(fleet), 0, "the builder's /nix is not full");
    let t = Instant::now();
    let (full, ev) = push_json(fleet);
    let secs = t.elapsed().as_secs_f64();
    let mut problems = refusal_problems(&full, &ev, true);
    let failure = host_end(&ev)["refusal"]["failure"].clone();
    let human = nixgate(fleet, &["push", "--yes"]);
    let words = text(&human.stdout) + &text(&human.stderr);
    if !words.contains("the builder's store is full (/nix/store on /nix, 0 B free of ") {
        problems.push("the words do not name the full store".into());
    }
    if host_truth(fleet) != host_before {
        problems.push(format!("{HOST} changed"));
    }
    if builder_roots(fleet) != roots_before {
        problems.push("the builder's roots changed".into());
    }
    assert!(
        problems.is_empty(),
        "a builder full to the last byte: {} problem(s):\n{}\n--- the JSON push\n{}\n--- the human push\n{words}",
        problems.len(),
        problems.join("\n"),
        describe(&full)
    );
    fleet.in_host_ok("builder", "rm /nix/var/fill");
    let (again, ev) = push_json(fleet);
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    assert_eq!(host_end(&ev)["outcome"], "known-good");
    assert_eq!(dangling_roots(fleet), "");
    assert_eq!(builder_store_problems(fleet), Vec::<String>::new());
    eprintln!(
        "full to the last byte: refused in {secs:.1} s, Nix said {:?} (database unusable: {})",
        failure["said"],
        failure["database_unusable"].as_bool().unwrap_or(false)
    );
}
