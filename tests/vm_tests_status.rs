//! The NixOS VM tests (vm-tests/) read `nixgate --json status`, and cannot
//! run here (KVM, nixpkgs): a field renamed in nixgate broke every one of
//! them unseen (`last_outcome`, `profile`). vm-tests/lib.nix lists the
//! fields its scripts read (`STATUS_FIELDS`, and its `status()` gives them
//! nothing else); this holds nixgate's status event to that list, and the
//! outcomes the scripts name to nixgate's spelling of them.

use std::path::Path;

use nixgate::inspect::{HostStatus, LastRun};
use nixgate::report::{Event, OutcomeKind};

fn vm_test(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vm-tests")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The double-quoted strings of `s`.
fn quoted(s: &str) -> Vec<&str> {
    s.split('"').skip(1).step_by(2).collect()
}

/// lib.nix's `STATUS_FIELDS = ( ... )`.
fn status_fields() -> Vec<String> {
    let lib = vm_test("lib.nix");
    let start = lib
        .find("STATUS_FIELDS = (")
        .expect("lib.nix has STATUS_FIELDS");
    let list = &lib[start..];
    let list = &list[..list.find(')').expect("STATUS_FIELDS closes")];
    quoted(list).into_iter().map(str::to_owned).collect()
}

/// A status event with every field there is: nested ones too.
fn status_event() -> serde_json::Value {
    let status = HostStatus {
        host: "target1".into(),
        last_run: Some(LastRun {
            run_id: "20261122T203000Z-3f9a".into(),
            command: "push".into(),
            outcome: Some(OutcomeKind::KnownGood),
            interrupted: false,
            running: false,
        }),
        ..Default::default()
    };
    serde_json::to_value(Event::Status(status)).unwrap()
}

#[test]
fn the_status_fields_the_vm_tests_read_are_in_nixgates_json() {
    let event = status_event();
    assert_eq!(event["event"], "status", "lib.nix's status() keeps these");
    let fields = status_fields();
    assert!(
        fields.contains(&"last_run.outcome".to_owned()),
        "{fields:?}"
    );
    for field in &fields {
        let mut at = &event;
        for key in field.split('.') {
            at = at.get(key).unwrap_or_else(|| {
                panic!("vm-tests/lib.nix reads `{field}`, which `nixgate --json status` does not have: {event:#}")
            });
        }
    }
}

/// Every `outcome_is(st, "a", "b")` names outcomes nixgate writes.
#[test]
fn the_outcomes_the_vm_tests_expect_are_spelled_as_nixgate_spells_them() {
    let known: Vec<&str> = OutcomeKind::all().map(OutcomeKind::as_str).collect();
    let mut named = 0;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("vm-tests")).unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "nix") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (at, _) in text.match_indices("outcome_is(") {
            let call = &text[at..];
            let call = &call[..call.find('\n').unwrap_or(call.len())];
            // The arguments after the status, up to the call's end.
            let Some(args) = call.split_once(',') else {
                continue; // the definition
            };
            let args = &args.1[..args.1.find(')').unwrap_or(args.1.len())];
            for name in quoted(args) {
                let name = name.replace('_', "-");
                assert!(
                    known.contains(&name.as_str()),
                    "{}: outcome_is(.., {name:?}): nixgate has no such outcome ({known:?})",
                    path.display()
                );
                named += 1;
            }
        }
    }
    assert!(named >= 5, "found only {named} outcomes named in vm-tests/");
}
