use super::*;
use crate::report::stored::fixture::{self, HOSTILE, T0};

fn timeline() -> Timeline {
    let run = fixture::run(0);
    of_run(&run.report, run.events)
}

fn row<'a>(t: &'a Timeline, host: &str) -> &'a Row {
    t.rows.iter().find(|r| r.host == host).unwrap()
}

fn span(r: &Row, kind: SpanKind) -> &Span {
    r.spans
        .iter()
        .find(|s| s.kind == kind)
        .unwrap_or_else(|| panic!("{kind:?} not in {:?}", r.spans))
}

#[test]
fn rows_follow_the_plan_and_gates_span_their_events() {
    let t = timeline();
    let hosts: Vec<&str> = t.rows.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts, ["web1", "web2", "web3", HOSTILE, "db1", "web4"]);
    assert_eq!((t.start_ms, t.end_ms), (T0, T0 + 25_100));
    let web1 = row(&t, "web1");
    let gates: Vec<&str> = web1.spans.iter().map(|s| s.kind.label()).collect();
    assert_eq!(
        gates,
        [
            "build",
            "diff",
            "copy",
            "dry-activate",
            "live-activate",
            "health-checks",
            "persist",
            "mark-known-good"
        ]
    );
    assert!(web1.spans.iter().all(|s| s.result == SpanResult::Passed));
    let copy = span(web1, SpanKind::Gate(Gate::Copy));
    assert_eq!((copy.start_ms, copy.end_ms), (T0 + 3000, T0 + 4000));
    assert!(!copy.start_inferred);
    assert!(
        copy.detail.lines[0].contains("sent 12 path(s)"),
        "{:?}",
        copy.detail
    );
    // The diff gate's start is the build's end: said so.
    assert!(span(web1, SpanKind::Gate(Gate::Diff)).start_inferred);
    let mark = span(web1, SpanKind::Gate(Gate::MarkKnownGood));
    let raw = mark.detail.raw.as_deref().unwrap();
    assert!(
        raw.contains("\"generation\":7") && !raw.contains("attempts"),
        "{raw}"
    );
}

#[test]
fn every_end_gets_its_colour() {
    let t = timeline();
    let web2 = row(&t, "web2");
    let hc = span(web2, SpanKind::Gate(Gate::HealthChecks));
    assert_eq!(hc.result, SpanResult::Failed);
    assert_eq!((hc.start_ms, hc.end_ms), (T0 + 17_600, T0 + 20_000));
    assert!(
        hc.detail.lines.iter().any(|l| l.contains(HOSTILE)),
        "{:?}",
        hc.detail
    );
    assert_eq!(
        span(web2, SpanKind::Rollback).result,
        SpanResult::RolledBack
    );
    let web3 = row(&t, "web3");
    assert_eq!(
        span(web3, SpanKind::Gate(Gate::Persist)).result,
        SpanResult::Deferred
    );
    // The live activation that found the change needs a reboot ends there.
    let live = span(web3, SpanKind::Gate(Gate::LiveActivate));
    assert_eq!(
        (live.result, live.end_ms),
        (SpanResult::Deferred, T0 + 16_800)
    );
    assert!(
        live.detail.lines[0].contains("systemd changes"),
        "{:?}",
        live.detail
    );
    assert!(
        web3.spans
            .iter()
            .all(|s| s.result != SpanResult::Unfinished)
    );
    let db1 = row(&t, "db1");
    let refused = span(db1, SpanKind::Refused);
    assert_eq!(refused.result, SpanResult::Failed);
    assert!(
        refused.detail.lines[0].contains("drift"),
        "{:?}",
        refused.detail
    );
    let web4 = row(&t, "web4");
    let ns = span(web4, SpanKind::NotStarted);
    assert_eq!((ns.result, ns.end_ms), (SpanResult::NotStarted, t.end_ms));
    assert_eq!(web4.wave, "last");
    assert!(web4.end.is_some());
}

#[test]
fn waves_carry_their_times_and_soak() {
    let t = timeline();
    let names: Vec<&str> = t.waves.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["canary", "main", "last"]);
    assert_eq!(t.waves[0].started_ms, Some(T0 + 3000));
    assert_eq!(t.waves[0].soak, Some((T0 + 9000, T0 + 14_000)));
    assert!(t.waves[1].stopped_run && t.waves[2].started_ms.is_none());
    assert_eq!(t.rows_of("main").count(), 4);
}

/// A Ctrl-C cuts a soak's wait short: its band ends with its wave (it ran
/// to the planned end).
#[test]
fn a_soak_cut_short_ends_with_its_wave() {
    let mut run = fixture::run(0);
    for s in &mut run.events {
        if let Event::Runner(RunnerEvent::SoakStarted { seconds, .. }) = &mut s.event {
            *seconds = 60;
        }
    }
    let t = of_run(&run.report, run.events);
    assert_eq!(t.waves[0].soak, Some((T0 + 9000, T0 + 14_000)));
    assert_eq!(t.waves[0].finished_ms, Some(T0 + 14_000));
}

#[test]
fn a_killed_run_leaves_its_gates_unfinished() {
    let run = fixture::run(0);
    // Cut the events mid-way through the canary's live activation.
    let cut: Vec<_> = run
        .events
        .into_iter()
        .take_while(|s| s.at_ms.unwrap() < T0 + 5500)
        .collect();
    let mut report = run.report;
    report.hosts.clear();
    report.finished = None;
    let t = of_run(&report, cut);
    let web1 = row(&t, "web1");
    let live = span(web1, SpanKind::Gate(Gate::LiveActivate));
    assert_eq!(live.result, SpanResult::Unfinished);
    assert_eq!(live.end_ms, t.end_ms);
    // Hosts planned but never reached have no spans past the plan.
    assert!(row(&t, "web4").end.is_none());
}
