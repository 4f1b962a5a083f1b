//! What commands print whole: the plan (hosts with identical diffs
//! grouped, refusals said once), the summary table and line, and the tables
//! of `status`, `check`, `hosts` and `release list`.

use std::fmt::Write as _;

use super::words;
use crate::deploy::HostSummary;
use crate::inspect::{HostStatus, Probe};
use crate::plan::{PlanStage, PlannedWave, Verdict};
use crate::report::Table;
use crate::report::event::{CommandName, Ending, Event};

/// What a command collects from its events to print at the end.
#[derive(Default)]
pub struct Collected {
    /// Each host's rendered diff, in arrival order.
    diffs: Vec<(String, Vec<String>)>,
    statuses: Vec<HostStatus>,
    probes: Vec<Probe>,
    inventory: Option<String>,
    hosts: Table,
    releases: Table,
}

impl CommandName {
    /// Does the command run (build, plan, deploy), rather than look?
    pub fn runs(self) -> bool {
        matches!(
            self,
            CommandName::Build | CommandName::Plan | CommandName::Push | CommandName::Rollback
        )
    }
}

impl Collected {
    /// Keep what is printed later; true when the event is only that.
    pub fn take(&mut self, ev: &Event) -> bool {
        match ev {
            Event::Diff { host, diff } => self.diffs.push((host.clone(), diff.render())),
            Event::Status(s) => self.statuses.push(s.clone()),
            Event::Checked(p) => self.probes.push(p.clone()),
            Event::InventoryOk {
                file,
                hosts,
                waves,
                builder,
                warnings,
                ..
            } => {
                let waves: Vec<String> = waves
                    .iter()
                    .map(|w| format!("{} {}", w.name, w.hosts))
                    .collect();
                let mut s = format!(
                    "{}: valid: {hosts} hosts in {} waves ({}), builder {builder}\n",
                    file.display(),
                    waves.len(),
                    waves.join(", ")
                );
                for w in warnings {
                    let _ = writeln!(s, "warning: {w}");
                }
                self.inventory = Some(s);
            }
            Event::Host {
                wave,
                host,
                address,
                port,
                tags,
                ..
            } => {
                if self.hosts.is_empty() {
                    self.hosts = Table::new(&["WAVE", "HOST", "ADDRESS", "TAGS"]);
                }
                let address = if *port == 22 {
                    address.clone()
                } else {
                    format!("{address}:{port}")
                };
                self.hosts
                    .row(vec![wave.clone(), host.clone(), address, tags.join(",")]);
            }
            Event::Release { release: i } => {
                if self.releases.is_empty() {
                    self.releases =
                        Table::new(&["TAG", "HOST", "TIME", "COMMIT", "CLOSURE", "RUN"]);
                }
                self.releases.row(vec![
                    i.tag.clone(),
                    i.target.clone(),
                    i.time.clone(),
                    i.commit.get(..12).unwrap_or(&i.commit).to_owned(),
                    words::short_closure(&i.closure),
                    i.run_id.clone(),
                ]);
            }
            _ => return false,
        }
        true
    }

    /// The plan: hosts with identical diffs together (in plan order), then
    /// the refused.
    pub fn plan(&mut self, waves: &[PlannedWave], cancelled: Option<PlanStage>) -> String {
        let order: Vec<&str> = waves
            .iter()
            .flat_map(|w| w.planned.iter().map(|h| h.host.as_str()))
            .collect();
        self.diffs
            .sort_by_key(|(h, _)| order.iter().position(|o| o == h));
        let mut groups: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        for (host, lines) in self.diffs.drain(..) {
            match groups.iter_mut().find(|(_, l)| *l == lines) {
                Some((names, _)) => names.push(host),
                None => groups.push((vec![host], lines)),
            }
        }
        let mut out = String::new();
        for (names, lines) in &groups {
            let _ = writeln!(out, "{}:", names.join(", "));
            for l in lines {
                let _ = writeln!(out, "  {l}");
            }
        }
        out.push_str(&refusals(waves));
        if let Some(stage) = cancelled {
            let _ = writeln!(
                out,
                "plan cancelled (Ctrl-C during {stage:?}): nothing changed"
            );
        }
        out
    }

    /// The command's table, printed on stdout at the end.
    pub fn table(&self, command: Option<CommandName>) -> Option<String> {
        match command? {
            CommandName::Status => Some(status_table(&self.statuses).to_string()),
            CommandName::Check => {
                let mut s = self.inventory.clone().unwrap_or_default();
                if !self.probes.is_empty() {
                    s.push_str(&check_table(&self.probes).to_string());
                }
                Some(s)
            }
            CommandName::Hosts => Some(self.hosts.to_string()),
            CommandName::Release => Some(self.releases.to_string()),
            _ => None,
        }
    }

    /// The machines that could not be read, and why (stderr).
    pub fn failures(&self, command: Option<CommandName>) -> Option<String> {
        let mut out = String::new();
        match command? {
            CommandName::Status => {
                for s in &self.statuses {
                    if let Some(e) = &s.error {
                        let _ = writeln!(out, "{}: {e}", s.host);
                    }
                    if let Some(r) = &s.reverted {
                        let _ = writeln!(
                            out,
                            "{}: took itself back at {} (run {}: the switch was not confirmed over a new connection in time; result {})",
                            s.host, r.reverted_at, r.run_id, r.result
                        );
                    }
                    if let Some(h) = &s.activity.lock_holder {
                        let _ = writeln!(out, "{}: locked by {h}", s.host);
                    }
                    for u in &s.activity.units {
                        let _ = writeln!(out, "{}: {u}", s.host);
                    }
                }
            }
            CommandName::Check => {
                for p in self.probes.iter().filter(|p| !p.ok) {
                    let _ = writeln!(
                        out,
                        "\n{}: {}",
                        p.host,
                        p.error.as_deref().unwrap_or("failed")
                    );
                }
            }
            _ => return None,
        }
        (!out.is_empty()).then_some(out)
    }
}

/// The plan's refused hosts, one line each, and the targets to say
/// something about (a rollback to a system never validated).
pub fn refusals(waves: &[PlannedWave]) -> String {
    let mut out = String::new();
    for w in waves {
        for h in &w.planned {
            match &h.verdict {
                Verdict::Refused { refusal } => {
                    let _ = writeln!(out, "{}: refused: {}", h.host, words::refusal(refusal));
                }
                Verdict::Ready { candidate, .. } if candidate.never_validated => {
                    let _ = writeln!(
                        out,
                        "{}: goes back to {}, the system it ran before nixgate's first deploy: it was never validated (it is taken through every gate now)",
                        h.host,
                        words::short_closure(&candidate.closure)
                    );
                }
                _ => {}
            }
        }
    }
    out
}

fn short(p: &Option<crate::nix::StorePath>) -> String {
    p.as_ref().map_or_else(|| "-".into(), words::short_closure)
}

/// `status`: one row per host.
pub fn status_table(statuses: &[HostStatus]) -> Table {
    let mut t = Table::new(&[
        "HOST",
        "CURRENT",
        "BOOT DEFAULT",
        "KNOWN-GOOD",
        "STATE",
        "LAST RUN",
    ]);
    for s in statuses {
        let state = if !s.reachable {
            "UNREACHABLE".to_owned()
        } else {
            let mut v = Vec::new();
            if s.pending_reboot {
                v.push("pending-reboot");
            }
            if s.unvalidated {
                v.push("unvalidated");
            }
            if s.reverted.is_some() {
                v.push("reverted-by-host");
            }
            if s.activity
                .units
                .iter()
                .any(|u| u.starts_with("nixgate-confirm-"))
            {
                v.push("revert-armed");
            }
            if s.activity
                .units
                .iter()
                .any(|u| u.starts_with("nixgate-switch-"))
            {
                v.push("switching");
            }
            if s.activity.lock_holder.is_some() {
                v.push("locked");
            }
            if v.is_empty() {
                "ok".into()
            } else {
                v.join(",")
            }
        };
        let last = match &s.last_run {
            Some(l) if l.interrupted => format!("interrupted {} ({})", l.command, l.run_id),
            Some(l) => format!(
                "{} {} ({})",
                l.command,
                l.outcome.map_or("-", |o| o.as_str()),
                l.run_id
            ),
            None => "-".into(),
        };
        t.row(vec![
            s.host.clone(),
            short(&s.current),
            short(&s.boot_default),
            match (&s.known_good, s.known_good_generation) {
                (Some(_), Some(n)) => format!("#{n} {}", short(&s.known_good)),
                _ => "-".into(),
            },
            state,
            last,
        ]);
    }
    t
}

fn human_free(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".into(),
        |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
    )
}

/// `check`: one row per machine.
pub fn check_table(probes: &[Probe]) -> Table {
    let mut t = Table::new(&[
        "HOST",
        "ADDRESS",
        "OK",
        "AUTH",
        "HOST KEY",
        "NIX",
        "FREE /nix",
        "CURRENT SYSTEM",
    ]);
    for p in probes {
        let host_key = p.host_key.as_ref().map_or_else(
            || "-".into(),
            |k| match k {
                crate::ssh::HostKeyStatus::Known { .. } => "known".to_owned(),
                crate::ssh::HostKeyStatus::CertAuthority { .. } => "cert-authority".into(),
                crate::ssh::HostKeyStatus::LearnedNew { file } => {
                    format!("learned into {}", file.display())
                }
            },
        );
        t.row(vec![
            p.host.clone(),
            p.address.clone(),
            if p.ok { "yes".into() } else { "NO".into() },
            p.auth.clone().unwrap_or_else(|| "-".into()),
            host_key,
            p.nix_version.clone().unwrap_or_else(|| "-".into()),
            human_free(p.free_nix_bytes),
            short(&p.current_system),
        ]);
    }
    t
}

/// The final table: host, outcome, closure, duration, notes.
pub fn summary_table(hosts: &[HostSummary]) -> Table {
    let mut t = Table::new(&["HOST", "WAVE", "OUTCOME", "CLOSURE", "TIME", "NOTES"]);
    for h in hosts {
        t.row(vec![
            h.host.clone(),
            h.wave.clone(),
            h.outcome().as_str().to_owned(),
            short(&h.closure),
            format!("{:.1}s", h.seconds),
            words::end(&h.end).unwrap_or_default(),
        ]);
    }
    t
}

/// The last line: how many hosts ended how, and the exit code. Commands
/// that change no host (build, plan) count ready and refused hosts.
pub fn summary_line(
    hosts: &[HostSummary],
    (ok, failed): (usize, usize),
    ending: Ending,
    exit_code: u8,
) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for h in hosts {
        *counts.entry(h.outcome().as_str()).or_default() += 1;
    }
    if hosts.is_empty() {
        counts.insert("ready", ok);
        counts.insert("refused", failed);
        counts.retain(|_, n| *n > 0);
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let what = match ending {
        Ending::Declined => "declined: nothing changed".to_owned(),
        Ending::CancelledBeforeRun => {
            format!("cancelled before anything changed: {}", parts.join(", "))
        }
        _ if parts.is_empty() => "nothing to do".to_owned(),
        _ => parts.join(", "),
    };
    format!("done: {what}, exit {exit_code}")
}
