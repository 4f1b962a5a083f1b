use super::*;
use crate::activation::known_good::{GateRecord, KnownGoodRecord};

#[test]
fn every_event_of_a_run_reads_back_as_it_was_written() {
    let run = fixture::run(2);
    for s in &run.events {
        let text = serde_json::to_string(&Stamp {
            at_ms: s.at_ms,
            event: &s.event,
        })
        .unwrap();
        crate::report::json::check_strict(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let back = parse_event(&text).unwrap_or_else(|e| panic!("{e:?}: {text}"));
        assert_eq!(&back, s, "{text}");
    }
    // The run report's head too (hosts with their typed ends).
    let text = serde_json::to_string(&run.report).unwrap();
    let back: crate::state::run_report::RunReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back.hosts, run.report.hosts);
}

#[test]
fn an_event_of_another_version_is_unreadable_not_fatal() {
    let e = parse_event(r#"{"at_ms": 5, "event": "from_the_future", "x": 1}"#).unwrap_err();
    assert_eq!(e.kind.as_deref(), Some("from_the_future"));
    let e = parse_event("{not json").unwrap_err();
    assert_eq!(e.kind, None);
    // Written before events were stamped: no time, still an event.
    let s = parse_event(r#"{"event": "builder_failed", "error": "x"}"#).unwrap();
    assert_eq!(s.at_ms, None);
}

#[test]
fn evidence_keeps_its_text_from_a_file_and_its_value_from_an_event() {
    #[derive(serde::Serialize)]
    struct Unsorted {
        zeta: u8,
        alpha: [bool; 1],
    }
    let rec = GateRecord::new(
        crate::gates::Gate::Copy,
        &Unsorted {
            zeta: 1,
            alpha: [true],
        },
    );
    let text = serde_json::to_string(&rec).unwrap();
    // Straight from JSON text: the exact text, keys in their order.
    let back: GateRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back.evidence.get(), r#"{"zeta":1,"alpha":[true]}"#);
    // From a parsed value (serde_json's own raw-value path) too.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let back: GateRecord = serde_json::from_value(v).unwrap();
    assert_eq!(back.value(), rec.value());
    // Inside a record inside a tagged enum (buffered by serde): same value.
    let mark = fixture::run(0).report.hosts[0].clone();
    let back: crate::report::HostSummary =
        serde_json::from_str(&serde_json::to_string(&mark).unwrap()).unwrap();
    let record = |s: &crate::report::HostSummary| -> KnownGoodRecord {
        match s.end.outcome() {
            Some(crate::activation::HostOutcome::KnownGood { mark }) => mark.record.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        record(&back).gates[0].value(),
        record(&mark).gates[0].value()
    );
}

#[test]
fn step_names_are_shared_once_read() {
    let a: crate::activation::FailureReason = serde_json::from_str(
        r#"{"kind": "remote", "detail": {"step": "read-current", "error": "x"}}"#,
    )
    .unwrap();
    let b: crate::activation::FailureReason = serde_json::from_str(
        r#"{"kind": "remote", "detail": {"step": "read-current", "error": "y"}}"#,
    )
    .unwrap();
    let step = |r: &crate::activation::FailureReason| match r {
        crate::activation::FailureReason::Remote { step, .. } => *step,
        _ => unreachable!(),
    };
    assert_eq!(step(&a), "read-current");
    assert!(std::ptr::eq(step(&a), step(&b)));
}
