//! One cell: a new candidate, a push held at one step, the fault, then what
//! `status` names (held against the host itself), and the same push again.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::lane::{Finished, Lane, Running};
use super::plan::{Fault, Step};
use super::truth::{self, Truth};
use crate::support::fleet::fleet_script;

/// How long a held step sleeps: long enough to inject any fault in it.
const HOLD_SECS: u64 = 4;
/// The longest a push may take here (a rollback after a reboot included).
pub(super) const PUSH_LIMIT: Duration = Duration::from_secs(300);

/// What a cell found.
#[derive(Debug, Clone)]
pub struct CellResult {
    pub step: Step,
    pub fault: Fault,
    /// Where the controller was when the fault hit.
    pub landed: String,
    /// How the faulted push ended.
    pub ended: String,
    /// What `status` named afterwards.
    pub after: String,
    /// How the re-run ended, and the state after it.
    pub rerun: String,
    pub problems: Vec<String>,
    pub seconds: f64,
}

/// The lane's state that outlives a cell.
pub struct LaneState {
    /// The host rebooted: the knobs' wrapper is gone with its root.
    pub needs_install: bool,
}

fn fleet_cmd(lane: &Lane, verb: &str, host: &str) -> Result<(), String> {
    let out = std::process::Command::new(fleet_script())
        .arg(verb)
        .arg("--dir")
        .arg(lane.fleet.dir())
        .arg(host)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "fleet {verb} {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The last gate started and the last step or event of the host so far.
fn position(events: &[Value], host: &str) -> (String, String) {
    let mut gate = String::new();
    let mut last = String::new();
    for e in events.iter().filter(|e| e["host"] == host) {
        match e["event"].as_str().unwrap_or_default() {
            "gate_started" => {
                gate = e["gate"].as_str().unwrap_or_default().to_owned();
                last = "gate_started".into();
            }
            "activation" => {
                let a = &e["activation"];
                last = match a["event"].as_str().unwrap_or_default() {
                    "step" => a["step"]["kind"].as_str().unwrap_or_default().to_owned(),
                    other => other.to_owned(),
                };
            }
            "copy_progress" | "host_finished" => {
                last = e["event"].as_str().unwrap_or_default().to_owned()
            }
            _ => {}
        }
    }
    (gate, last)
}

/// Wait (briefly) for the controller's events to show the step, so the
/// fault lands where the cell says. Returns where it is.
fn arrive(run: &mut Running, host: &str, step: Step) -> (bool, String) {
    let (gate, lasts) = step.markers();
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        run.drain();
        let (g, l) = position(&run.events, host);
        let there = g == gate && lasts.contains(&l.as_str());
        if there || Instant::now() >= until {
            return (there, format!("{g} / {l}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Inject the fault. Err: it could not be.
fn inject(lane: &Lane, run: &mut Running, fault: Fault, st: &mut LaneState) -> Result<(), String> {
    match fault {
        Fault::SshDrop => {
            let out = lane.fleet.in_host_ok(
                &lane.host,
                "p='^sshd(-session)?: [a-z]+@notty'; n=$(pgrep -cf \"$p\"); pkill -KILL -f \"$p\"; echo $n",
            );
            if out == "0" {
                return Err("no SSH session of nixgate's to drop".into());
            }
            Ok(())
        }
        Fault::Kill => {
            run.kill();
            Ok(())
        }
        Fault::Reboot => {
            st.needs_install = true;
            fleet_cmd(lane, "restart", &lane.host)
        }
        Fault::BuilderDown => fleet_cmd(lane, "stop", "builder"),
        Fault::DiskFull => Err("a full disk is not injected: see disk.rs".into()),
    }
}

/// `status`, with the host read before and after it.
pub(super) fn observe(lane: &Lane) -> (Value, Truth, Truth) {
    let a = Truth::read(lane.fleet, &lane.host);
    let st = lane.status();
    let b = Truth::read(lane.fleet, &lane.host);
    (st, a, b)
}

/// Names for store paths: what ran before the cell, and the candidate.
pub(super) struct Names {
    pub(super) old: String,
    pub(super) new: String,
}

impl Names {
    pub(super) fn of(&self, p: &Value) -> String {
        match p.as_str() {
            None | Some("") => "none".into(),
            Some(p) if p == self.old => "old".into(),
            Some(p) if p == self.new => "new".into(),
            Some(p) => p.rsplit('/').next().unwrap_or(p).chars().take(8).collect(),
        }
    }

    /// What `status` names, in a few words.
    pub(super) fn describe(&self, st: &Value) -> String {
        let mut s = format!(
            "runs {}, boots {}, known-good {}",
            self.of(&st["current"]),
            self.of(&st["boot_default"]),
            self.of(&st["known_good"])
        );
        for (flag, word) in [
            ("unvalidated", "unvalidated"),
            ("pending_reboot", "pending reboot"),
        ] {
            if st[flag] == true {
                s.push_str(&format!(", {word}"));
            }
        }
        if !st["reverted"].is_null() {
            s.push_str(&format!(
                ", reverted by host ({})",
                st["reverted"]["result"]
            ));
        }
        let units: Vec<String> = st["activity"]["units"]
            .as_array()
            .map(|u| {
                u.iter()
                    .filter_map(|x| x.as_str())
                    .map(|x| {
                        let kind = if x.starts_with("nixgate-confirm-") {
                            "revert armed"
                        } else if x.starts_with("nixgate-switch-") {
                            "switch"
                        } else {
                            "unit"
                        };
                        let state = x.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
                        format!("{kind} {state}")
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !units.is_empty() {
            s.push_str(&format!(", {}", units.join(", ")));
        }
        if !st["activity"]["lock_holder"].is_null() {
            s.push_str(", lock held");
        }
        match &st["last_run"] {
            l if l["interrupted"] == true => s.push_str("; last run interrupted"),
            l if l.is_object() => s.push_str(&format!(
                "; last run {}",
                l["outcome"].as_str().unwrap_or("?")
            )),
            _ => {}
        }
        s
    }
}

/// The faulted run's outcome against what the host is now.
fn outcome_problems(outcome: Option<&str>, before: &Truth, now: &Truth, new: &str) -> Vec<String> {
    let old = &before.current;
    let mut p = Vec::new();
    let mut want = |what: &str, is: &str, should: &str| {
        if is != should {
            p.push(format!(
                "ended {outcome:?}, yet {what} is {is}, not {should}"
            ));
        }
    };
    match outcome {
        Some("known-good" | "already-current") => {
            want("the running system", &now.current, new);
            want("the boot default", &now.profile, new);
            want("the known-good", &now.kg, new);
        }
        Some("failed" | "rolled-back" | "reverted-by-host") => {
            want("the running system", &now.current, old);
            want("the boot default", &now.profile, &before.profile);
            want("the known-good", &now.kg, &before.kg);
        }
        Some("not-persisted") => {
            want("the running system", &now.current, new);
            want("the boot default", &now.profile, &before.profile);
            want("the known-good", &now.kg, &before.kg);
        }
        None => {}
        Some(other) => p.push(format!("ended {other}: the host needs a person")),
    }
    p
}

/// Where the host must be after a re-run that converged.
pub(super) fn converged_problems(t: &Truth, new: &str) -> Vec<String> {
    let mut p = Vec::new();
    for (what, is) in [
        ("running system", &t.current),
        ("system profile", &t.profile),
        ("boot entry", &t.entry),
        ("known-good", &t.kg),
    ] {
        if is != new {
            p.push(format!(
                "after the re-run the {what} is {is}, not the candidate"
            ));
        }
    }
    if !t.units.is_empty() {
        p.push(format!(
            "after the re-run nixgate units are left: {:?}",
            t.units
        ));
    }
    if let Some(l) = &t.lock {
        p.push(format!("after the re-run the host lock is held: {l}"));
    }
    p
}

pub(super) fn ended(f: &Finished, killed: bool) -> String {
    if killed {
        return "killed".into();
    }
    if f.hung {
        return format!("hung (killed after {PUSH_LIMIT:?})");
    }
    format!(
        "{} (exit {})",
        f.outcome().unwrap_or_else(|| "no summary".into()),
        f.status.code().map_or("signal".into(), |c| c.to_string())
    )
}

/// Run one cell on the lane.
pub fn run_cell(lane: &mut Lane, step: Step, fault: Fault, st: &mut LaneState) -> CellResult {
    let t0 = Instant::now();
    if st.needs_install {
        super::knobs::install(lane.fleet, &lane.host);
        st.needs_install = false;
    }
    lane.next_candidate(|h| {
        if fault == Fault::BuilderDown {
            // More than the relay holds in flight (1 MiB a host) and the
            // SSH windows: the copy still reads the builder when it goes.
            h["filler"] = serde_json::json!({ "count": 4, "sizeKiB": 2048, "salt": "matrix" });
        }
    });
    let before = Truth::read(lane.fleet, &lane.host);
    let mut problems = Vec::new();
    let knob = step.knob(lane);
    knob.set(HOLD_SECS);
    let mut run = lane.push();
    let hit = knob.wait_hit(Instant::now() + PUSH_LIMIT, || !run.drain());
    let (there, landed) = arrive(&mut run, &lane.host, step);
    let mut injected = false;
    if !hit {
        problems.push(format!(
            "the push never reached {} (last: {landed})",
            step.name()
        ));
    } else {
        if !there {
            problems.push(format!(
                "the fault landed at {landed}, not in {}",
                step.name()
            ));
        }
        if fault == Fault::Reboot {
            knob.clear();
        }
        match inject(lane, &mut run, fault, st) {
            Ok(()) => injected = true,
            Err(e) => problems.push(e),
        }
    }
    knob.clear();
    let killed = injected && fault == Fault::Kill;
    let done = run.finish(PUSH_LIMIT);
    if fault == Fault::BuilderDown
        && let Err(e) = fleet_cmd(lane, "start", "builder")
    {
        problems.push(e);
    }
    let new = done
        .events
        .iter()
        .find(|e| e["event"] == "host_built")
        .and_then(|e| e["toplevel"].as_str())
        .unwrap_or_default()
        .to_owned();
    let names = Names {
        old: before.current.clone(),
        new: new.clone(),
    };
    let outcome = if killed { None } else { done.outcome() };
    if !killed && outcome.is_none() {
        problems.push(format!(
            "the faulted push wrote no summary: {}",
            tail(&done.stderr)
        ));
    }

    // The state after the fault, as status names it.
    let (status, a, b) = observe(lane);
    problems.extend(truth::status_lies(&status, &a, &b));
    problems.extend(outcome_problems(outcome.as_deref(), &before, &b, &new));
    if killed && status["last_run"]["interrupted"] != true {
        problems.push(format!(
            "status does not name the killed run: {}",
            status["last_run"]
        ));
    }
    if !killed && status["last_run"]["outcome"].as_str() != outcome.as_deref() {
        problems.push(format!("status names the last run {}", status["last_run"]));
    }
    problems.extend(truth::store_problems(lane.fleet, &lane.host));
    let after = names.describe(&status);

    // The same push again.
    let again = lane.push().finish(PUSH_LIMIT);
    let re_outcome = again.outcome();
    if again.status.code() != Some(0)
        || !matches!(
            re_outcome.as_deref(),
            Some("known-good" | "already-current")
        )
    {
        problems.push(format!(
            "the re-run did not converge: {}: {}",
            ended(&again, false),
            failure_of(&again)
        ));
    }
    save_log(step, fault, "faulted", &done);
    save_log(step, fault, "rerun", &again);
    let (status2, a2, b2) = observe(lane);
    problems.extend(truth::status_lies(&status2, &a2, &b2));
    problems.extend(converged_problems(&b2, &new));
    problems.extend(truth::history_problems(&before, &b2));
    problems.extend(truth::builder_roots(lane.fleet));
    problems.extend(truth::store_problems(lane.fleet, &lane.host));
    if new.is_empty() {
        problems.push("no candidate was built".into());
    }
    CellResult {
        step,
        fault,
        landed,
        ended: ended(&done, killed),
        after,
        rerun: format!("{}: {}", ended(&again, false), names.describe(&status2)),
        problems,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// Both runs' events and stderr, for reading after a failed cell.
pub(super) fn save_log(step: Step, fault: Fault, run: &str, f: &Finished) {
    let dir = super::table_path().with_file_name("fault-matrix-logs");
    let _ = std::fs::create_dir_all(&dir);
    let stem = dir.join(format!("{}-{}.{run}", step.key(), fault.key()));
    let events: String = f.events.iter().map(|e| format!("{e}\n")).collect();
    let _ = std::fs::write(stem.with_extension(format!("{run}.jsonl")), events);
    let _ = std::fs::write(stem.with_extension(format!("{run}.stderr")), &f.stderr);
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

/// Why a run failed, from its events.
pub(super) fn failure_of(f: &Finished) -> String {
    f.events
        .iter()
        .filter(|e| e["event"] == "gate_failed" || e["event"] == "host_finished")
        .map(|e| e.to_string().chars().take(400).collect::<String>())
        .collect::<Vec<_>>()
        .join(" | ")
        + &tail(&f.stderr)
}
