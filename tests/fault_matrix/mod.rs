//! The fault matrix (issue 18): every fault at every remote step of a gated
//! push, on real-systemd hosts; after each, `status` must name the host's
//! state truthfully and the same push must converge. See
//! `tests/fault_matrix_e2e.rs` for what is asserted, `plan` for the axes,
//! `cell` for one cell, `lane` for how lanes share one fleet.

pub mod cell;
pub mod disk;
pub mod knobs;
pub mod lane;
pub mod plan;
pub mod truth;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use cell::{CellResult, LaneState, run_cell};
use lane::Lane;
use plan::{Fault, Step};

use crate::support::fleet::{Fleet, FleetSpec};

/// Hosts worked on side by side (one lane each). Every lane's cells use
/// only its own host; the builder is shared.
pub const LANES: usize = 4;

/// Cells known to fail for a reason owned elsewhere: (step, fault, why).
/// A cell listed here that passes is reported, so the list stays true.
/// Every entry is an open product bug (issue 18), not a test to be fixed.
/// Empty now: `persist x host rebooted` was listed (2026-12-02: once in 3
/// runs it ended rolled-back with the known-good profile on the candidate
/// and no record). Cause: a reboot slower than the 4 s the persist step was
/// held let the persist finish and the mark start; the host went down
/// between the mark's `nix-env --set` and its record, longer than the
/// mark's patience, and the undo could not reach it either. The mark is now
/// one host command that finishes without its session and leaves what an
/// undo needs (`known_good::MARK`, `UNDO_MARK`), and `status` flags a
/// known-good generation without a record.
pub const EXPECTED_TO_FAIL: &[(Step, Fault, &str)] = &[];

/// `NIXGATE_MATRIX_CELLS=poll/kill,copy/ssh` runs only those cells (by
/// hand, while working on one); the table then has only them.
///
/// The "host rebooted" column was off in CI for a while: the test fleet's
/// `restart` left a host "not running" in 2 of 4 full runs. Found: the
/// fleet recorded a short-lived child of systemd-nspawn as the container's
/// init (scripts/fleet, `container_init`), 3 of 50 restarts under load; it
/// now records the child that is PID 1 of its own namespace.
fn selected(step: Step, fault: Fault) -> bool {
    match std::env::var("NIXGATE_MATRIX_CELLS") {
        Ok(only) if !only.is_empty() => only
            .split(',')
            .any(|c| c.trim() == format!("{}/{}", step.key(), fault.key())),
        _ => true,
    }
}

/// The cells that apply, each lane's share in order. Builder faults come
/// last, alone (stopping the builder would fault every lane at once).
/// Cells, in the order they run.
type Cells = Vec<(Step, Fault)>;

fn schedule() -> (Vec<Cells>, Cells) {
    let mut lanes = vec![Vec::new(); LANES];
    let mut alone = Vec::new();
    let mut i = 0;
    for fault in Fault::ALL {
        for step in Step::ALL {
            if fault.applies(step).is_err() || !selected(step, fault) {
                continue;
            }
            if fault == Fault::DiskFull {
                continue; // its own lane: see `run`
            }
            if fault == Fault::BuilderDown {
                alone.push((step, fault));
            } else {
                lanes[i % LANES].push((step, fault));
                i += 1;
            }
        }
    }
    (lanes, alone)
}

fn expected_failure(step: Step, fault: Fault) -> Option<&'static str> {
    EXPECTED_TO_FAIL
        .iter()
        .find(|(s, f, _)| *s == step && *f == fault)
        .map(|(_, _, why)| *why)
}

/// Run the whole matrix; returns every cell's result and the wall time.
pub fn run() -> (Vec<CellResult>, f64) {
    let t0 = Instant::now();
    // One more host, with a small /nix, for the disk-full cell.
    let up = disk::up_args();
    let fleet = Fleet::start_up_args(
        FleetSpec {
            light: 0,
            systemd: LANES + 1,
            builder: true,
        },
        &[&up[0], &up[1]],
    )
    .unwrap();
    let disk_cell = selected(Step::Copy, Fault::DiskFull);
    let (shares, alone) = schedule();
    let mut results = Vec::new();
    let hosts: Vec<String> = (1..=LANES).map(|i| format!("sys{i}")).collect();
    let mut disk_result = None;
    let done: Vec<(Lane, LaneState, Vec<CellResult>)> = std::thread::scope(|s| {
        let fleet = &fleet;
        let disk = disk_cell.then(|| {
            s.spawn(move || {
                let r = disk::run_disk_cell(&mut Lane::new(fleet, disk::HOST));
                eprintln!("{}", one_line(&r));
                r
            })
        });
        let handles: Vec<_> = hosts
            .iter()
            .zip(shares)
            .map(|(host, cells)| {
                s.spawn(move || {
                    let mut lane = Lane::new(fleet, host);
                    let mut st = LaneState {
                        needs_install: true,
                    };
                    let results = cells
                        .into_iter()
                        .map(|(step, fault)| {
                            let r = run_cell(&mut lane, step, fault, &mut st);
                            eprintln!("{}", one_line(&r));
                            r
                        })
                        .collect();
                    (lane, st, results)
                })
            })
            .collect();
        let lanes = handles
            .into_iter()
            .map(|h| h.join().expect("a lane panicked"))
            .collect();
        disk_result = disk.map(|h| h.join().expect("the disk-full lane panicked"));
        lanes
    });
    results.extend(disk_result);
    let mut lanes = Vec::new();
    for (lane, st, r) in done {
        results.extend(r);
        lanes.push((lane, st));
    }
    // The builder's faults, with the other lanes idle.
    let (lane, st) = &mut lanes[0];
    for (step, fault) in alone {
        let r = run_cell(lane, step, fault, st);
        eprintln!("{}", one_line(&r));
        results.push(r);
    }
    results.sort_by_key(|r| (r.step, r.fault));
    (results, t0.elapsed().as_secs_f64())
}

fn one_line(r: &CellResult) -> String {
    format!(
        "cell {} x {}: {} -> {} -> {} ({:.1} s){}",
        r.step.name(),
        r.fault.name(),
        r.ended,
        r.after,
        r.rerun,
        r.seconds,
        if r.problems.is_empty() {
            String::new()
        } else {
            format!("\n  PROBLEMS: {}", r.problems.join("\n  "))
        }
    )
}

/// Does the cell count as failed (a problem not expected)?
pub fn failed(r: &CellResult) -> bool {
    !r.problems.is_empty() && expected_failure(r.step, r.fault).is_none()
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The table, as Markdown.
pub fn table(results: &[CellResult], seconds: f64) -> String {
    let mut md = String::new();
    let hosts = match std::env::var("NIXGATE_TEST_SYSTEMD_BASE").as_deref() {
        Ok("trixie") => {
            "`NIXGATE_TEST_SYSTEMD_BASE=trixie NIXGATE_TEST_LIGHT_BASE=trixie \
                         cargo test --test fault_matrix_e2e -- --ignored`, as root: the hosts on \
                         Debian 13, Nix 2.26"
        }
        _ => {
            "`cargo test --test fault_matrix_e2e -- --ignored`, as root: the hosts on Debian 12, \
              Nix 2.8"
        }
    };
    let _ = writeln!(
        md,
        "# Fault matrix\n\nWritten by `tests/fault_matrix_e2e.rs` ({hosts}): every fault at every remote step of a gated push, on real-systemd hosts \
         (nspawn, Debian's systemd). Each cell deploys a new candidate to a host that runs `old` \
         (its known-good), holds the step with a knob so the fault lands in it, injects the fault, \
         reads `nixgate status` (held against the host itself: running system, system profile, \
         known-good, revert records, nixgate units, host lock), then runs the same push again. \
         `new` is the candidate. Whole matrix: {seconds:.0} s.\n"
    );
    let _ = writeln!(
        md,
        "| step | fault | the fault landed at | the push ended | state after (`status`) | re-run -> state after | verdict |\n|---|---|---|---|---|---|---|"
    );
    for step in Step::ALL {
        for fault in Fault::ALL {
            if let Err(why) = fault.applies(step) {
                let _ = writeln!(
                    md,
                    "| {} | {} | n/a | | {} | | n/a |",
                    step.name(),
                    fault.name(),
                    cell(why)
                );
                continue;
            }
            let Some(r) = results.iter().find(|r| r.step == step && r.fault == fault) else {
                continue;
            };
            let verdict = match (r.problems.is_empty(), expected_failure(step, fault)) {
                (true, None) => "ok".to_owned(),
                (true, Some(_)) => "ok (listed as expected to fail: update the list)".to_owned(),
                (false, Some(why)) => format!("expected to fail: {why}; {}", r.problems.join("; ")),
                (false, None) => format!("FAILED: {}", r.problems.join("; ")),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                step.name(),
                fault.name(),
                cell(&r.landed),
                cell(&r.ended),
                cell(&r.after),
                cell(&r.rerun),
                cell(&verdict)
            );
        }
    }
    md
}

/// Where the table goes: `target/fault-matrix.md` (or under
/// `CARGO_TARGET_DIR`); `fault-matrix-trixie.md` when the hosts run
/// Debian 13's Nix 2.26 (`NIXGATE_TEST_SYSTEMD_BASE=trixie`), so the two
/// runs of `scripts/test` keep both tables.
pub fn table_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    match std::env::var("NIXGATE_TEST_SYSTEMD_BASE").as_deref() {
        Ok("trixie") => target.join("fault-matrix-trixie.md"),
        _ => target.join("fault-matrix.md"),
    }
}
