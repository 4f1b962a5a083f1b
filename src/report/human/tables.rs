//! What commands print whole: the plan (hosts with identical diffs
//! grouped, refusals said once), the summary table and line, and the tables
//! of `status`, `check`, `hosts` and `release list`.

use std::fmt::Write as _;

use super::labels::{self, Labels};
use super::words;
use crate::deploy::{HostSummary, OutcomeKind};
use crate::inspect::history::Generation;
use crate::inspect::{HostStatus, Probe};
use crate::nix::StorePath;
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
    /// `status --history` and hosts rolled back: their known-good generations.
    histories: Vec<(String, Vec<Generation>)>,
    /// `rollback`: each host's preview, in arrival order.
    previews: Vec<Preview>,
    pub labels: Labels,
}

/// A rollback's preview of one host.
struct Preview {
    host: String,
    from: Option<StorePath>,
    to: StorePath,
    packages: Vec<String>,
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
        self.labels.take(ev);
        match ev {
            Event::History { host, generations } => {
                self.histories.push((host.clone(), generations.clone()))
            }
            Event::RollbackPreview {
                host,
                from,
                to,
                packages,
                ..
            } => self.previews.push(Preview {
                host: host.clone(),
                from: from.clone(),
                to: to.clone(),
                packages: match (packages, from) {
                    (Some(p), _) if p.is_empty() => vec!["no package changes".into()],
                    (Some(p), _) => crate::diff::render::render_packages(p),
                    (None, Some(_)) => vec!["the package changes could not be read".into()],
                    (None, None) => vec!["the host runs no known system".into()],
                },
            }),
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
                let address = address_and_port(address, *port);
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
                    self.labels.cell(&i.closure),
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
        out.push_str(&self.previews(&order));
        out.push_str(&refusals(waves));
        if let Some(stage) = cancelled {
            let _ = writeln!(
                out,
                "plan cancelled (Ctrl-C while {}): nothing changed",
                words::plan_stage(&stage)
            );
        }
        out
    }

    /// Rollback previews: per host `generation 3 (...) -> generation 2
    /// (...)`, hosts with the same package changes together.
    fn previews(&mut self, order: &[&str]) -> String {
        let mut previews = std::mem::take(&mut self.previews);
        previews.sort_by_key(|p| order.iter().position(|o| *o == p.host));
        let mut groups: Vec<(Vec<&Preview>, &[String])> = Vec::new();
        for p in &previews {
            match groups.iter_mut().find(|(_, l)| *l == p.packages.as_slice()) {
                Some((members, _)) => members.push(p),
                None => groups.push((vec![p], &p.packages)),
            }
        }
        let width = width_of(&std::io::stderr());
        let mut out = String::new();
        for (members, lines) in groups {
            // One host: its name once, on its from -> to line.
            let one = members.len() == 1;
            if !one {
                let names: Vec<&str> = members.iter().map(|p| p.host.as_str()).collect();
                let _ = writeln!(out, "{}:", names.join(", "));
            }
            for p in &members {
                let from = p
                    .from
                    .as_ref()
                    .map_or_else(|| "no known system".into(), |f| self.labels.words(f));
                let to = self.labels.words(&p.to);
                let indent = if one { 0 } else { 2 };
                let head = format!("{:indent$}{}: {from}", "", p.host);
                let line = format!("{head} -> {to}");
                if width.is_none_or(|w| line.chars().count() <= w) {
                    let _ = writeln!(out, "{line}");
                } else {
                    let _ = writeln!(out, "{head}\n{:w$}-> {to}", "", w = indent + 2);
                }
            }
            for l in lines {
                let _ = writeln!(out, "  {l}");
            }
        }
        out
    }

    /// The command's table, printed on stdout at the end.
    pub fn table(&self, command: Option<CommandName>) -> Option<String> {
        match command? {
            CommandName::Status if !self.histories.is_empty() => {
                let width = width_of(&std::io::stdout());
                let mut s = String::new();
                for (host, generations) in &self.histories {
                    let t = history_table(host, generations).fit(width);
                    s.push_str(&t.to_string());
                }
                Some(s)
            }
            CommandName::Status => {
                let width = width_of(&std::io::stdout());
                Some(
                    status_table(&self.statuses, &self.labels)
                        .fit(width)
                        .to_string(),
                )
            }
            CommandName::Check => {
                let mut s = self.inventory.clone().unwrap_or_default();
                if !self.probes.is_empty() {
                    let width = width_of(&std::io::stdout());
                    s.push_str(&check_table(&self.probes).fit(width).to_string());
                }
                Some(s)
            }
            CommandName::Hosts => Some(self.hosts.to_string()),
            CommandName::Release => {
                let width = width_of(&std::io::stdout());
                let t = self.releases.clone().shrinkable(&[4]);
                Some(t.fit(width).to_string())
            }
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
                    let why = match (&p.error, &p.sudo) {
                        (Some(e), _) => e.clone(),
                        (None, Some(sudo)) => words::sudo_check(sudo),
                        (None, None) => "failed".into(),
                    };
                    let _ = writeln!(out, "\n{}: {why}", p.host);
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
                    let why = words::about(&h.host, &words::refusal(refusal));
                    let _ = writeln!(out, "{}: refused: {why}", h.host);
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

/// The last lines Nix printed for each host whose configuration did not
/// evaluate or build (`nixgate build`: what the refusal's one line leaves
/// out), indented under the host.
pub fn build_logs(waves: &[PlannedWave]) -> String {
    use crate::nix::build::BuildFailure;
    let mut out = String::new();
    for h in waves.iter().flat_map(|w| &w.planned) {
        let Verdict::Refused {
            refusal:
                crate::plan::Refusal::Build {
                    failure:
                        BuildFailure::Eval { log_tail }
                        | BuildFailure::Build { log_tail }
                        | BuildFailure::LockIncomplete { log_tail },
                },
        } = &h.verdict
        else {
            continue;
        };
        let _ = writeln!(out, "{}: Nix's last lines:", h.host);
        for line in log_tail {
            let _ = writeln!(out, "    {}", super::strip_controls(line));
        }
    }
    out
}

fn short(p: &Option<crate::nix::StorePath>) -> String {
    p.as_ref().map_or_else(|| "-".into(), words::short_closure)
}

/// A column's width: the terminal's, when `stream` is one.
pub fn width_of(stream: &impl std::os::fd::AsFd) -> Option<usize> {
    terminal_size::terminal_size_of(stream).map(|(w, _)| w.0 as usize)
}

/// `=` where a closure equals the one it is compared with, else its cell.
fn same_or(p: &Option<StorePath>, as_: &Option<StorePath>, labels: &Labels) -> String {
    match p {
        Some(x) if as_.as_ref() == Some(x) => "=".into(),
        Some(x) => labels.cell(x),
        None => "-".into(),
    }
}

/// What `status` says of a host's state, in a few words.
fn state_words(s: &HostStatus) -> String {
    if !s.reachable {
        return "UNREACHABLE".to_owned();
    }
    let mut v = Vec::new();
    if s.error.is_some() {
        v.push("UNREADABLE");
    }
    if s.pending_reboot {
        v.push("pending-reboot");
    }
    if s.unvalidated {
        v.push("unvalidated");
    }
    if s.known_good_unrecorded {
        v.push("known-good-unrecorded");
    }
    if s.known_good_soak_pending {
        v.push("known-good-soak-pending");
    }
    if s.reverted.is_some() {
        v.push("reverted-by-host");
    }
    let unit = |p: &str| s.activity.units.iter().any(|u| u.starts_with(p));
    if unit("nixgate-confirm-") {
        v.push("revert-armed");
    }
    if unit("nixgate-switch-") {
        v.push("switching");
    }
    if s.activity.lock_holder.is_some() {
        v.push("locked");
    }
    if s.behind_head == Some(true) {
        v.push("behind-head");
    }
    if v.is_empty() {
        "ok".into()
    } else {
        v.join(",")
    }
}

/// `status`: one row per host; CURRENT is `=` when it is the known-good,
/// BOOT DEFAULT when it is what runs.
pub fn status_table(statuses: &[HostStatus], labels: &Labels) -> Table {
    let mut t = Table::new(&[
        "HOST",
        "KNOWN-GOOD",
        "CURRENT",
        "BOOT DEFAULT",
        "STATE",
        "LAST RUN",
    ])
    .shrinkable(&[1, 2, 3]);
    for s in statuses {
        let last = match &s.last_run {
            Some(l) if l.running => format!("{} running ({})", l.command, l.run_id),
            Some(l) if l.interrupted => format!("{} interrupted ({})", l.command, l.run_id),
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
            s.known_good
                .as_ref()
                .map_or_else(|| "-".into(), |k| labels.cell(k)),
            same_or(&s.current, &s.known_good, labels),
            same_or(&s.boot_default, &s.current, labels),
            state_words(s),
            last,
        ]);
    }
    t
}

/// `status --history`: a host's known-good generations, newest first.
pub fn history_table(host: &str, generations: &[Generation]) -> Table {
    let mut t =
        Table::new(&["HOST", "GENERATION", "COMMIT", "MARKED", "CLOSURE", "RUN"]).shrinkable(&[4]);
    for g in generations.iter().rev() {
        let mut gen_ = g.generation.to_string();
        if g.current {
            gen_.push_str(" (current)");
        }
        if !g.present {
            gen_.push_str(" (gone)");
        }
        t.row(vec![
            host.to_owned(),
            gen_,
            g.commit
                .as_deref()
                .map_or_else(|| "-".into(), |c| labels::short_commit(c).to_owned()),
            g.marked_at.clone().unwrap_or_else(|| "-".into()),
            short(&g.closure),
            g.run_id.clone().unwrap_or_else(|| "-".into()),
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
                crate::ssh::HostKeyStatus::ProvenThisRun => "proven this run".into(),
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
    t.shrinkable(&[7])
}

/// The final table: host, outcome, closure (generation, commit, hash),
/// duration, notes.
pub fn summary_table(hosts: &[HostSummary], labels: &Labels) -> Table {
    let mut t =
        Table::new(&["HOST", "WAVE", "OUTCOME", "CLOSURE", "TIME", "NOTES"]).shrinkable(&[3]);
    for h in hosts {
        t.row(vec![
            h.host.clone(),
            h.wave.clone(),
            h.outcome().as_str().to_owned(),
            h.closure
                .as_ref()
                .map_or_else(|| "-".into(), |c| labels.cell(c)),
            format!("{:.1}s", h.seconds),
            match h.outcome() {
                // The closure's cell says which generation it became; one
                // failing the run (its soak left unfinished) says why.
                OutcomeKind::KnownGood if !h.fails_run() => String::new(),
                // Its story follows the table: said once, there.
                _ => super::explain::brief(h, labels)
                    .or_else(|| words::end(&h.end, labels).map(|w| words::about(&h.host, &w)))
                    .unwrap_or_default(),
            },
        ]);
    }
    t
}

/// A wave's line when it ends: how its hosts ended (the same counts as the
/// summary), and whether it stops the run.
pub fn wave_line(
    wave: &str,
    counts: &std::collections::BTreeMap<OutcomeKind, usize>,
    failures: usize,
    allowed: usize,
    stops_run: bool,
) -> String {
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let mut line = format!("wave {wave}: {}", parts.join(", "));
    if failures > 0 {
        line.push_str(&format!("; {failures} failure(s), {allowed} allowed"));
    }
    if stops_run {
        line.push_str("; the run stops here");
    }
    line
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
    let mut why: std::collections::BTreeMap<String, usize> = Default::default();
    for h in hosts {
        *counts.entry(h.outcome().as_str()).or_default() += 1;
        if let Some(w) = words::not_started_briefly(&h.end) {
            *why.entry(w).or_default() += 1;
        }
    }
    if hosts.is_empty() {
        counts.insert("ready", ok);
        counts.insert("refused", failed);
        counts.retain(|_, n| *n > 0);
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, n)| {
            if *k != OutcomeKind::NotStarted.as_str() || why.is_empty() {
                return format!("{n} {k}");
            }
            let reasons: Vec<String> = if why.len() == 1 {
                why.keys().cloned().collect()
            } else {
                why.iter().map(|(w, n)| format!("{n} {w}")).collect()
            };
            format!("{n} {k} ({})", reasons.join(", "))
        })
        .collect();
    let what = match ending {
        Ending::Declined => "declined: nothing changed".to_owned(),
        Ending::Invalid => "nothing changed".to_owned(),
        Ending::CancelledBeforeRun => {
            format!("cancelled before anything changed: {}", parts.join(", "))
        }
        Ending::Unknown if parts.is_empty() => "how it ended was not recorded".to_owned(),
        _ if parts.is_empty() => "nothing to do".to_owned(),
        _ => parts.join(", "),
    };
    format!("done: {what}, exit {exit_code}")
}

/// An address as the hosts table shows it: with its port unless 22, an
/// IPv6 address in brackets then (`[fe80::1]:2222`, as ssh and URLs write
/// it: `fe80::1:2222` reads as another address).
fn address_and_port(address: &str, port: u16) -> String {
    match port {
        22 => address.to_owned(),
        _ if address.contains(':') => format!("[{address}]:{port}"),
        _ => format!("{address}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_table_brackets_an_ipv6_address_before_its_port() {
        let mut c = Collected::default();
        for (host, address, port) in [
            ("v6", "fe80::1", 2222),
            ("v6zone", "fe80::1%eth0", 2222),
            ("v6default", "2001:db8::1", 22),
            ("v4", "10.0.0.1", 2222),
            ("name", "web1.example", 22),
        ] {
            c.take(&Event::Host {
                wave: "main".into(),
                host: host.into(),
                address: address.into(),
                port,
                user: "root".into(),
                tags: vec![],
            });
        }
        let table = c.table(Some(CommandName::Hosts)).expect("a table");
        let column: Vec<&str> = (table.lines().skip(1))
            .map(|l| l.split_whitespace().nth(2).unwrap_or_default())
            .collect();
        assert_eq!(
            column,
            [
                "[fe80::1]:2222",
                "[fe80::1%eth0]:2222",
                "2001:db8::1",
                "10.0.0.1:2222",
                "web1.example"
            ],
            "{table}"
        );
    }
}
