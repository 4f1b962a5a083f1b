//! Disk full (issue 18): a host whose `/nix` is a tmpfs of [`DISK_MIB`]
//! MiB (`fleet up --small-nix`) is sent a candidate bigger than the space
//! left. The push must fail at the copy with an error that names the
//! space, switch nothing, and leave no partial path registered valid; the
//! next push (a candidate that fits in what is left) converges.

use std::time::Instant;

use super::cell::{CellResult, Names, converged_problems, ended, failure_of, observe, save_log};
use super::lane::Lane;
use super::plan::{Fault, Step};
use super::truth::{self, Truth};

/// The lane's host, beside the matrix's `sys1..=LANES`.
pub const HOST: &str = "sys5";
/// Its `/nix`: a seeded systemd host uses about 9 MiB of it (8 of them the
/// Nix database), so a 24 MiB filler cannot fit.
pub const DISK_MIB: u32 = 24;

/// `fleet up` arguments for the lane's host.
pub fn up_args() -> [String; 2] {
    ["--small-nix".into(), format!("{HOST}={DISK_MIB}")]
}

fn used_kib(lane: &Lane) -> u64 {
    lane.fleet
        .in_host_ok(&lane.host, "df -Pk /nix | awk 'NR==2 {print $3}'")
        .parse()
        .unwrap_or(0)
}

/// A push of `filler_mib` more MiB than the current system; its run.
fn push_with_filler(lane: &mut Lane, filler_mib: u32) -> super::lane::Finished {
    lane.next_candidate(|h| {
        if filler_mib == 0 {
            h.as_object_mut().map(|o| o.remove("filler"));
        } else {
            h["filler"] = serde_json::json!({
                "count": filler_mib / 2, "sizeKiB": 2048, "salt": "disk-full"
            });
        }
    });
    lane.push().finish(super::cell::PUSH_LIMIT)
}

/// Problems with the failed push: its outcome, its error, the host.
fn full_problems(done: &super::lane::Finished, before: &Truth, after: &Truth) -> Vec<String> {
    let mut p = Vec::new();
    if done.outcome().as_deref() != Some("failed") || done.status.code() != Some(1) {
        p.push(format!(
            "the push to a full disk ended {}, not failed (exit 1)",
            ended(done, false)
        ));
    }
    let said = failure_of(done);
    if !said.contains("No space left on device") || !said.contains("(/nix) on sys5 is full") {
        p.push(format!("its error does not name the space: {said}"));
    }
    for (what, was, is) in [
        ("running system", &before.current, &after.current),
        ("system profile", &before.profile, &after.profile),
        ("known-good", &before.kg, &after.kg),
    ] {
        if was != is {
            p.push(format!("the {what} changed: {was} -> {is}"));
        }
    }
    p
}

/// Run the disk-full cell on its own lane (host [`HOST`]).
pub fn run_disk_cell(lane: &mut Lane) -> CellResult {
    let t0 = Instant::now();
    let (step, fault) = (Step::Copy, Fault::DiskFull);
    let mut problems = Vec::new();
    super::knobs::install(lane.fleet, &lane.host);
    // A known-good first, so "nothing changed" means something.
    let first = push_with_filler(lane, 0);
    if first.outcome().as_deref() != Some("known-good") {
        problems.push(format!("the first push: {}", failure_of(&first)));
    }
    let before = Truth::read(lane.fleet, &lane.host);
    let used_before = used_kib(lane);
    let done = push_with_filler(lane, DISK_MIB);
    let candidate = done
        .events
        .iter()
        .find(|e| e["event"] == "host_built")
        .and_then(|e| e["toplevel"].as_str())
        .unwrap_or_default()
        .to_owned();
    let (status, a, b) = observe(lane);
    problems.extend(truth::status_lies(&status, &a, &b));
    problems.extend(full_problems(&done, &before, &b));
    problems.extend(truth::store_problems(lane.fleet, &lane.host));
    let valid = lane.fleet.in_host(
        &lane.host,
        &format!("nix-store --check-validity {candidate} 2>/dev/null"),
    );
    if candidate.is_empty() || valid.status.success() {
        problems.push(format!("the candidate {candidate:?} is valid on the host"));
    }
    // Paths the copy finished before the disk filled stay, whole and valid
    // (Nix adds each path on its own; a later copy reuses them, a GC frees
    // them): the table shows how much.
    let used_after = used_kib(lane);
    let names = Names {
        old: before.current.clone(),
        new: candidate,
    };
    let after = format!(
        "{}; /nix used {used_before} -> {used_after} KiB",
        names.describe(&status)
    );
    // The next push, of a candidate that fits, converges.
    let again = push_with_filler(lane, 0);
    if again.status.code() != Some(0) || again.outcome().as_deref() != Some("known-good") {
        problems.push(format!(
            "the next push did not converge: {}: {}",
            ended(&again, false),
            failure_of(&again)
        ));
    }
    let fits = again
        .events
        .iter()
        .find(|e| e["event"] == "host_built")
        .and_then(|e| e["toplevel"].as_str())
        .unwrap_or_default()
        .to_owned();
    let fitting = Names {
        old: before.current.clone(),
        new: fits.clone(),
    };
    let (status2, a2, b2) = observe(lane);
    problems.extend(truth::status_lies(&status2, &a2, &b2));
    problems.extend(converged_problems(&b2, &fits));
    problems.extend(truth::history_problems(&before, &b2));
    problems.extend(truth::store_problems(lane.fleet, &lane.host));
    save_log(step, fault, "faulted", &done);
    save_log(step, fault, "rerun", &again);
    let landed = done
        .events
        .iter()
        .filter(|e| e["event"] == "gate_failed")
        .map(|e| e["gate"].as_str().unwrap_or("?").to_owned())
        .next()
        .unwrap_or_else(|| "no gate failed".into());
    CellResult {
        step,
        fault,
        landed: format!("{landed} (a {DISK_MIB} MiB /nix, a {DISK_MIB} MiB bigger candidate)"),
        ended: ended(&done, false),
        after,
        rerun: format!(
            "a candidate that fits (`fits`): {}: {}",
            ended(&again, false),
            fitting.describe(&status2).replace("new", "fits")
        ),
        problems,
        seconds: t0.elapsed().as_secs_f64(),
    }
}
