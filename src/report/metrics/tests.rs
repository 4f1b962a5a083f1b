use std::collections::HashMap;

use super::*;
use crate::report::stored::fixture::{self, HOSTILE};
use crate::report::timeline;

/// One sample line: name, labels, value. Every test's file goes through
/// here: a series (name and labels) twice is invalid exposition, refused.
fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut families: HashMap<String, (bool, bool)> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            families
                .entry(rest.split(' ').next().unwrap().into())
                .or_default()
                .0 = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(kind, "gauge");
            families.entry(name.into()).or_default().1 = true;
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        assert!(name.starts_with("nixgate_"), "{line}");
        assert!(
            name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{line}"
        );
        assert_eq!(
            families.get(name),
            Some(&(true, true)),
            "HELP and TYPE first: {line}"
        );
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, v) = rest.split_once("=\"").unwrap();
            // The value ends at the first unescaped quote.
            let mut end = 0;
            let b = v.as_bytes();
            while b[end] != b'"' {
                end += if b[end] == b'\\' { 2 } else { 1 };
            }
            map.insert(k.to_owned(), v[..end].to_owned());
            rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
        }
        assert!(
            seen.insert((name.to_owned(), map.clone())),
            "the same series twice: {line}\n{text}"
        );
        out.push((name.to_owned(), map, value));
    }
    out
}

fn metrics_of(dir: &std::path::Path, run: &fixture::Run) -> String {
    let t = timeline::of_run(&run.report, run.events.clone());
    let (r, hosts) = carried::collect(dir, &run.report, &t);
    render(&r, &hosts)
}

#[test]
fn one_series_per_host_per_metric_in_base_units() {
    let dir = tempfile::tempdir().unwrap();
    let run = fixture::run(0);
    let text = metrics_of(dir.path(), &run);
    let samples = parse(&text);
    let hosts: Vec<&str> = run.report.hosts.iter().map(|h| h.host.as_str()).collect();
    for name in [
        "nixgate_host_last_outcome",
        "nixgate_host_last_run_failed",
        "nixgate_host_runs_known_good",
        "nixgate_host_pending_reboot",
        "nixgate_host_known_good_generation",
        "nixgate_host_known_good_timestamp_seconds",
        "nixgate_host_last_run_timestamp_seconds",
        "nixgate_host_last_run_duration_seconds",
    ] {
        let mut seen: Vec<&str> = samples
            .iter()
            .filter(|(n, ..)| n == name)
            .map(|(_, l, _)| l["host"].as_str())
            .collect();
        seen.sort_unstable();
        let mut want = hosts.clone();
        want.sort_unstable();
        // The hostile name is in the file, escaped only as the format asks.
        assert_eq!(seen, want, "{name}");
    }
    let get = |name: &str, host: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l.get("host").map(String::as_str) == Some(host))
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("{name} {host}"))
    };
    assert_eq!(get("nixgate_host_runs_known_good", "web1"), 1.0);
    assert_eq!(get("nixgate_host_known_good_generation", "web1"), 7.0);
    assert_eq!(
        get("nixgate_host_known_good_timestamp_seconds", "web1"),
        1_795_379_411.0
    );
    assert_eq!(get("nixgate_host_pending_reboot", "web3"), 1.0);
    assert!(
        get("nixgate_host_runs_known_good", "web3").is_nan(),
        "unknown"
    );
    assert_eq!(get("nixgate_host_last_run_failed", "web2"), 1.0);
    assert_eq!(
        get("nixgate_host_runs_known_good", "web2"),
        1.0,
        "rolled back"
    );
    let gate = |host: &str, gate: &str| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == "nixgate_gate_duration_seconds" && l["host"] == host && l["gate"] == gate
            })
            .map(|s| s.2)
    };
    assert_eq!(gate("web1", "copy"), Some(1.0));
    assert_eq!(gate("web1", "mark-known-good"), Some(0.5));
    assert_eq!(gate("web1", "build"), Some(0.9));
    let web2_gates: Vec<&str> = samples
        .iter()
        .filter(|(n, l, _)| n == "nixgate_gate_duration_seconds" && l["host"] == "web2")
        .map(|(_, l, _)| l["gate"].as_str())
        .collect();
    assert!(web2_gates.contains(&"health-checks") && web2_gates.contains(&"rollback"));
    let outcome = samples
        .iter()
        .find(|(n, l, _)| n == "nixgate_host_last_outcome" && l["host"] == "web3")
        .unwrap();
    assert_eq!(outcome.1["outcome"], "pending-reboot");
    assert!(text.contains("nixgate_run_exit_code 1\n"));
    assert!(text.contains("nixgate_run_duration_seconds 25.1\n"));
    assert!(text.contains(&format!("host=\"{HOSTILE}\"")));
}

/// A gate that ran twice in a host's run (a soak's failed re-check after
/// its health checks; a copy done again) is one sample, the spans summed:
/// two samples of one series made the file invalid.
#[test]
fn a_gate_run_twice_is_one_sample_of_its_time_summed() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = fixture::run(0);
    let mut again = Vec::new();
    for s in &mut run.events {
        match &mut s.event {
            crate::report::Event::Runner(crate::runner::RunnerEvent::SoakChecked {
                host,
                healthy,
                ..
            }) if host == "web1" => *healthy = false,
            crate::report::Event::GatePassed { host, gate, .. }
                if host == "web1" && *gate == crate::gates::Gate::Copy =>
            {
                again.push(s.clone());
            }
            _ => {}
        }
    }
    // The copy again, 0.25 s, before web1's end.
    let end = (run.events.iter())
        .position(|s| matches!(&s.event, crate::report::Event::HostFinished(h) if h.host == "web1"))
        .unwrap();
    let passed = again.pop().unwrap();
    let at = passed.at_ms.unwrap() + 4_000;
    let started = crate::report::Event::GateStarted {
        host: "web1".into(),
        gate: crate::gates::Gate::Copy,
    };
    run.events.splice(
        end..end,
        [
            crate::report::stored::Stamped {
                at_ms: Some(at),
                event: started,
            },
            crate::report::stored::Stamped {
                at_ms: Some(at + 250),
                ..passed
            },
        ],
    );
    let samples = parse(&metrics_of(dir.path(), &run));
    let gate = |gate: &str| -> Vec<f64> {
        (samples.iter())
            .filter(|(n, l, _)| {
                n == "nixgate_gate_duration_seconds" && l["host"] == "web1" && l["gate"] == gate
            })
            .map(|s| s.2)
            .collect()
    };
    assert_eq!(gate("copy"), [1.25]);
    // The re-check takes no time of its own: the first check's second.
    assert_eq!(gate("health-checks"), [1.0]);
}

/// `$NIXGATE_PROMTOOL` (scripts/test sets it: then it must be there), else
/// one on the system.
fn promtool() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("NIXGATE_PROMTOOL") {
        let p = std::path::PathBuf::from(p);
        assert!(
            p.exists(),
            "NIXGATE_PROMTOOL={} does not exist",
            p.display()
        );
        return Some(p);
    }
    ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

#[test]
fn promtool_accepts_the_file() {
    let Some(promtool) = promtool() else {
        eprintln!("skipped: no promtool (scripts/test unpacks Debian's prometheus package)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = metrics_of(dir.path(), &fixture::run(2));
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hosts_of_earlier_runs_keep_their_series_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let first = fixture::run(0);
    crate::state::runs::tests::write_run(dir.path(), &first);
    // A later run of web2 alone, which now goes through.
    let mut second = fixture::run(0);
    second.report.run_id = "20261123T080000Z-0001".into();
    second.report.finished = Some("2026-11-23T08:00:30Z".into());
    second.report.exit_code = Some(0);
    let web1 = second.report.hosts[0].clone();
    second.report.hosts = vec![crate::report::HostSummary {
        host: "web2".into(),
        ..web1
    }];
    second.report.selected = vec!["web2".into()];
    second
        .events
        .retain(|s| s.event.host().is_none_or(|h| h == "web2"));
    crate::state::runs::tests::write_run(dir.path(), &second);
    let samples = parse(&metrics_of(dir.path(), &second));
    let get = |name: &str, host: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l.get("host").map(String::as_str) == Some(host))
            .map(|s| (s.1.clone(), s.2))
            .unwrap_or_else(|| panic!("{name} {host}"))
    };
    let (l, _) = get("nixgate_host_last_outcome", "web2");
    assert_eq!(l["outcome"], "known-good");
    assert_eq!(get("nixgate_host_runs_known_good", "web2").1, 1.0);
    assert_eq!(
        get("nixgate_host_last_run_timestamp_seconds", "web2").1,
        1_795_420_830.0
    );
    // web3 was not in the second run: its series stay, from the first.
    assert_eq!(get("nixgate_host_pending_reboot", "web3").1, 1.0);
    assert_eq!(
        get("nixgate_host_last_outcome", "web3").0["outcome"],
        "pending-reboot"
    );
    // And its gate durations come from the first run's events.
    let gates = |host: &str| -> Vec<String> {
        samples
            .iter()
            .filter(|(n, l, _)| n == "nixgate_gate_duration_seconds" && l["host"] == host)
            .map(|(_, l, _)| l["gate"].clone())
            .collect()
    };
    assert_eq!(
        gates("web3"),
        [
            "build",
            "diff",
            "copy",
            "dry-activate",
            "live-activate",
            "persist"
        ]
    );
    assert_eq!(
        gates("web4"),
        ["build", "diff"],
        "not started: planned only"
    );
}

#[test]
fn the_file_is_replaced_whole_and_readable_by_all() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nixgate.prom");
    let small = "nixgate_run_exit_code 0\n".to_owned();
    let big = "# HELP nixgate_x x\n".repeat(20_000);
    write(&path, &small).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop, small, big) = (path.clone(), stop.clone(), small.clone(), big.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text == small || text == big,
                    "a torn read of {} bytes",
                    text.len()
                );
                reads += 1;
            }
            reads
        })
    };
    for i in 0..200 {
        write(&path, if i % 2 == 0 { &big } else { &small }).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    // Only the file itself is left (no temporary files for the collector).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let e = write(&dir.path().join("no/such/dir/x.prom"), "x").unwrap_err();
    assert!(
        format!("{e:#}").contains("writing the metrics file"),
        "{e:#}"
    );
}

/// Every outcome has its `nixgate_run_hosts` series, zero or not: the list
/// of outcomes once held 11 of 13, and a host reverted by its own dead-man
/// timer (or unreachable) was never counted.
#[test]
fn every_outcome_is_counted_a_host_reverted_by_itself_too() {
    let run = Run {
        run_id: "r1".into(),
        command: "push".into(),
        goal: "gated".into(),
        started: Some(1_700_000_000),
        finished: Some(1_700_000_060),
        seconds: 60.0,
        exit_code: Some(1),
        outcomes: [(OutcomeKind::RevertedByHost, 1)].into(),
    };
    let host = Host {
        host: "web1".into(),
        wave: "canary".into(),
        outcome: LastOutcome::Ended(OutcomeKind::RevertedByHost),
        last_run_failed: true,
        last_run_at: Some(1_700_000_060),
        seconds: 42.0,
        runs_known_good: Some(true),
        pending_reboot: Some(false),
        known_good: None,
        gates: vec![],
    };
    let samples = parse(&render(&run, &[host]));
    let count = |kind: &str| {
        let found: Vec<f64> = samples
            .iter()
            .filter(|(n, l, _)| n == "nixgate_run_hosts" && l["outcome"] == kind)
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{kind}: {found:?}");
        found[0]
    };
    assert_eq!(count("reverted-by-host"), 1.0);
    assert_eq!(count("unreachable"), 0.0);
    assert_eq!(count("known-good"), 0.0);
    let runs = samples
        .iter()
        .filter(|(n, _, _)| n == "nixgate_run_hosts")
        .count();
    assert_eq!(runs, OutcomeKind::all().count());
    assert!(
        samples
            .iter()
            .any(|(n, l, v)| n == "nixgate_host_last_outcome"
                && l["outcome"] == "reverted-by-host"
                && *v == 1.0)
    );
}

/// web1's `runs_known_good` and `pending_reboot` after a later run of it
/// that ended `end` (the first run left it known-good, no reboot pending):
/// with that run the current one, and read back from its report by a run
/// after it.
fn web1_after(end: crate::report::HostEnd) -> [(f64, f64); 2] {
    let dir = tempfile::tempdir().unwrap();
    let first = fixture::run(0);
    crate::state::runs::tests::write_run(dir.path(), &first);
    let mut second = fixture::run(0);
    second.report.run_id = "20261123T080000Z-0001".into();
    second.report.finished = Some("2026-11-23T08:00:30Z".into());
    let web1 = first.report.hosts[0].clone();
    assert_eq!(web1.host, "web1");
    second.report.hosts = vec![crate::report::HostSummary { end, ..web1 }];
    second.report.selected = vec!["web1".into()];
    second.events.clear();
    let mut third = fixture::run(0);
    third.report.run_id = "20261123T090000Z-0002".into();
    third.report.finished = Some("2026-11-23T09:00:30Z".into());
    (third.report.hosts, third.report.selected) = (vec![], vec![]);
    third.events.clear();
    let values = |run: &fixture::Run| {
        let samples = parse(&metrics_of(dir.path(), run));
        let get = |name: &str| {
            (samples.iter())
                .find(|(n, l, _)| n == name && l["host"] == "web1")
                .map(|s| s.2)
                .unwrap_or_else(|| panic!("{name}"))
        };
        (
            get("nixgate_host_runs_known_good"),
            get("nixgate_host_pending_reboot"),
        )
    };
    let now = values(&second);
    crate::state::runs::tests::write_run(dir.path(), &second);
    [now, values(&third)]
}

/// An end that leaves what the host runs unknown makes it unknown (NaN),
/// not the known-good an earlier run saw: lost after its live switch, its
/// task panicked, aborted; a failed rollback leaves the boot default
/// unknown. An end that changed nothing keeps it.
#[test]
fn an_end_that_leaves_the_host_unknown_forgets_what_it_ran() {
    use crate::activation::{CutOff, FailureReason, HostOutcome};
    use crate::report::HostEnd;
    use crate::runner::Interrupted;
    let unknown = |(known_good, pending): (f64, f64)| known_good.is_nan() && pending.is_nan();
    let unreachable = HostEnd::activation(HostOutcome::Unreachable {
        cause: CutOff::NoNewConnection {
            error: "timed out".into(),
            controllers_own: false,
        },
        last_seen: fixture::sp('b', "nixos-system-web"),
        revert_due: true,
    });
    let panicked = HostEnd::Interrupted {
        why: Interrupted::Panicked,
    };
    let aborted = HostEnd::Interrupted {
        why: Interrupted::Aborted,
    };
    for end in [unreachable, panicked, aborted] {
        let what = format!("{end:?}");
        for (i, v) in web1_after(end).into_iter().enumerate() {
            assert!(unknown(v), "{what} (read back: {}): {v:?}", i == 1);
        }
    }
    let rollback_failed = HostEnd::activation(HostOutcome::RollbackFailed {
        gate: crate::gates::Gate::HealthChecks,
        reason: FailureReason::HealthChecks { reports: vec![] },
        to: fixture::sp('a', "nixos-system-web"),
        rollback_error: crate::activation::reactivate::RollbackError::NoTarget,
    });
    for (known_good, pending) in web1_after(rollback_failed) {
        assert_eq!(known_good, 0.0);
        assert!(pending.is_nan(), "{pending}");
    }
    // Nothing changed on it: what an earlier run saw still holds.
    let stage_lost = HostEnd::Interrupted {
        why: Interrupted::StageLost,
    };
    let refused = HostEnd::Refused {
        refusal: crate::plan::Refusal::Drift { packages: vec![] },
    };
    for end in [stage_lost, refused] {
        assert_eq!(web1_after(end), [(1.0, 0.0); 2]);
    }
}

/// A run killed after it started (its report never finished, no run holds
/// the lock) is the last run of each host it selected: `interrupted`,
/// failed, what it runs unknown, never finished; a later run that does not
/// select them (`--wave canary`) carries that on. Before, the killed run
/// was skipped: web2 kept the run before's known-good and exit 0, and no
/// alert fired for a half-done rollout. A run still going (the lock held
/// for it) is not read yet.
#[test]
fn a_killed_run_leaves_its_hosts_interrupted_and_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let first = fixture::run(0);
    crate::state::runs::tests::write_run(dir.path(), &first);
    // Killed mid-way: the stub written as it started, nothing more.
    let killed_id = "20261123T070000Z-kill";
    let mut killed = fixture::run(0).report;
    killed.run_id = killed_id.into();
    killed.started = "2026-11-23T07:00:00Z".into();
    (killed.finished, killed.exit_code, killed.ending) = (None, None, None);
    killed.selected = vec!["web1".into(), "web2".into()];
    killed.hosts.clear();
    crate::state::run_report::write(dir.path(), &killed, None).unwrap();
    // Then a finished run of web3 alone.
    let mut third = fixture::run(0);
    third.report.run_id = "20261123T080000Z-0001".into();
    third.report.started = "2026-11-23T08:00:00Z".into();
    third.report.finished = Some("2026-11-23T08:00:30Z".into());
    third.report.hosts.retain(|h| h.host == "web3");
    third.report.selected = vec!["web3".into()];
    third
        .events
        .retain(|s| s.event.host().is_none_or(|h| h == "web3"));
    crate::state::runs::tests::write_run(dir.path(), &third);
    let samples = parse(&metrics_of(dir.path(), &third));
    let get = |name: &str, host: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l.get("host").map(String::as_str) == Some(host))
            .map(|s| (s.1.clone(), s.2))
            .unwrap_or_else(|| panic!("{name} {host}"))
    };
    for host in ["web1", "web2"] {
        let (l, _) = get("nixgate_host_last_outcome", host);
        assert_eq!(l["outcome"], "interrupted", "{host}");
        let wave = first.report.hosts.iter().find(|h| h.host == host).unwrap();
        assert_eq!(
            l["wave"], wave.wave,
            "{host}: its wave as its run before said"
        );
        assert_eq!(get("nixgate_host_last_run_failed", host).1, 1.0, "{host}");
        for unknown in [
            "nixgate_host_runs_known_good",
            "nixgate_host_pending_reboot",
            "nixgate_host_last_run_timestamp_seconds",
            "nixgate_host_last_run_duration_seconds",
        ] {
            assert!(get(unknown, host).1.is_nan(), "{unknown} {host}");
        }
    }
    // web1's known-good generation stays as the first run marked it.
    let (_, generation) = get("nixgate_host_known_good_generation", "web1");
    assert!(generation.is_finite(), "{generation}");
    // web3 ran since; db1 was in neither later run.
    assert_eq!(
        get("nixgate_host_last_outcome", "web3").0["outcome"],
        "pending-reboot"
    );
    assert_eq!(
        get("nixgate_host_last_outcome", "db1").0["outcome"],
        "refused"
    );
    // The same unfinished run holding the controller lock is still going:
    // web1's series are the first run's, not interrupted.
    let _lock = crate::state::lock::ControllerLock::acquire(dir.path(), "push", killed_id).unwrap();
    let samples = parse(&metrics_of(dir.path(), &third));
    let web1 = |name: &str| {
        (samples.iter())
            .find(|(n, l, _)| n == name && l["host"] == "web1")
            .map(|s| (s.1.clone(), s.2))
            .unwrap()
    };
    assert_eq!(web1("nixgate_host_last_outcome").0["outcome"], "known-good");
    assert_eq!(web1("nixgate_host_runs_known_good").1, 1.0);
}

/// `nixgate report <killed run> --metrics-file`: the file is written for
/// the killed run itself, whose hosts read `interrupted` and failed as
/// when a later run carries them (before: it read as a run ended with no
/// host, and web1 kept the run before's known-good series).
#[test]
fn the_metrics_of_a_killed_run_itself_leave_its_hosts_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let first = fixture::run(0);
    crate::state::runs::tests::write_run(dir.path(), &first);
    let mut killed = fixture::run(0);
    killed.report.run_id = "20261123T070000Z-kill".into();
    killed.report.started = "2026-11-23T07:00:00Z".into();
    let r = &mut killed.report;
    (r.finished, r.exit_code, r.ending) = (None, None, None);
    r.selected = vec!["web1".into(), "web2".into()];
    r.hosts.clear();
    crate::state::run_report::write(dir.path(), &killed.report, None).unwrap();
    killed.events.clear();
    let samples = parse(&metrics_of(dir.path(), &killed));
    for host in ["web1", "web2"] {
        let find = |name: &str| {
            (samples.iter())
                .find(|(n, l, _)| n == name && l.get("host").map(String::as_str) == Some(host))
                .map(|s| (s.1.clone(), s.2))
                .unwrap_or_else(|| panic!("{name} {host}: {samples:?}"))
        };
        assert_eq!(
            find("nixgate_host_last_outcome").0["outcome"],
            "interrupted"
        );
        assert_eq!(find("nixgate_host_last_run_failed").1, 1.0, "{host}");
        assert!(find("nixgate_host_runs_known_good").1.is_nan(), "{host}");
    }
}

/// A killed run whose goal never changes a host (`--goal copy`,
/// `dry-activate`) leaves what its hosts run and boot as the run before
/// said (before: NaN, as for a killed switch); its hosts' last run is
/// still `interrupted` and failed (it did not do what it was asked). A
/// killed `--goal boot` leaves only what they boot unknown.
#[test]
fn a_killed_run_that_changes_no_host_leaves_what_they_run_known() {
    use crate::gates::Goal;
    for (goal, runs_known, boots_known) in [
        (Goal::Copy, true, true),
        (Goal::DryActivate, true, true),
        (Goal::Boot, true, false),
        (Goal::Gated, false, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let first = fixture::run(0);
        crate::state::runs::tests::write_run(dir.path(), &first);
        let before = parse(&metrics_of(dir.path(), &first));
        let mut killed = fixture::run(0).report;
        killed.run_id = "20261123T070000Z-kill".into();
        killed.started = "2026-11-23T07:00:00Z".into();
        (killed.finished, killed.exit_code, killed.ending) = (None, None, None);
        killed.goal = goal;
        killed.selected = vec!["web1".into()];
        killed.hosts.clear();
        crate::state::run_report::write(dir.path(), &killed, None).unwrap();
        let mut third = fixture::run(0);
        third.report.run_id = "20261123T080000Z-0001".into();
        third.report.started = "2026-11-23T08:00:00Z".into();
        third.report.finished = Some("2026-11-23T08:00:30Z".into());
        third.report.hosts.retain(|h| h.host == "web3");
        third.report.selected = vec!["web3".into()];
        (third.events).retain(|s| s.event.host().is_none_or(|h| h == "web3"));
        crate::state::runs::tests::write_run(dir.path(), &third);
        let after = parse(&metrics_of(dir.path(), &third));
        let web1 = |samples: &[(String, BTreeMap<String, String>, f64)], name: &str| {
            (samples.iter())
                .find(|(n, l, _)| n == name && l.get("host").map(String::as_str) == Some("web1"))
                .map(|s| (s.1.clone(), s.2))
                .unwrap_or_else(|| panic!("{name}"))
        };
        let outcome = web1(&after, "nixgate_host_last_outcome").0;
        assert_eq!(outcome["outcome"], "interrupted", "{goal:?}");
        assert_eq!(web1(&after, "nixgate_host_last_run_failed").1, 1.0);
        for (metric, known) in [
            ("nixgate_host_runs_known_good", runs_known),
            ("nixgate_host_pending_reboot", boots_known),
        ] {
            let (was, now) = (web1(&before, metric).1, web1(&after, metric).1);
            assert!(was.is_finite(), "{metric}: {was}");
            match known {
                true => assert_eq!(now, was, "{goal:?} {metric}"),
                false => assert!(now.is_nan(), "{goal:?} {metric}: {now}"),
            }
        }
    }
}
