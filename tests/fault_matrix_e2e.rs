//! The fault matrix on real-systemd hosts (nspawn containers, Debian's sshd
//! and systemd): for each remote step of a gated push (copy, realise,
//! dry-activate, fire, poll, health checks, persist, mark known-good,
//! release) and each fault (the host's SSH connection dropped, the
//! controller killed with SIGKILL, the host rebooted, the builder
//! unreachable), the fault is injected while that step runs; and a host
//! whose `/nix` fills during the copy (see `fault_matrix/disk.rs`).
//! Afterwards:
//!
//! - `nixgate status` names the host's state truthfully: its running
//!   system, boot default, known-good (generation), a revert by the host,
//!   nixgate's units there (a switch still running, an armed revert), the
//!   lock holder, and the last run (a killed one as interrupted), each
//!   held against the host read from inside (no SSH);
//! - what the faulted push said it did is what the host shows;
//! - every valid path in the host's store is whole (`nix-store --verify
//!   --check-contents`);
//! - the same push run again converges: known-good, exit 0, the candidate
//!   running, in the profile, the boot entry and known-good, no nixgate
//!   unit left, the host lock free; no generation of the system or
//!   known-good profile lost, re-pointed or repeated, each known-good
//!   generation added with its record; no GC root left outside the
//!   profiles on the host, none dangling on the builder.
//!
//! Cells run in lanes, one host each, side by side on one fleet (booted
//! once); the builder's fault runs alone at the end. The table goes to
//! `target/fault-matrix.md` (a copy is kept in docs/fault-matrix.md,
//! linked from the README).

mod fault_matrix;
mod support;

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn every_fault_at_every_step_leaves_a_named_state_and_a_rerun_converges() {
    let (results, seconds) = fault_matrix::run();
    let table = fault_matrix::table(&results, seconds);
    let path = fault_matrix::table_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &table).unwrap();
    eprintln!("{table}\nwritten to {}", path.display());
    let failed: Vec<String> = results
        .iter()
        .filter(|r| fault_matrix::failed(r))
        .map(|r| {
            format!(
                "{} x {}: {}",
                r.step.name(),
                r.fault.name(),
                r.problems.join("; ")
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} cell(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
