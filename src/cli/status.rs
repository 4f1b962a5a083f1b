//! `nixgate status`: per host, what runs now, the boot default, the
//! known-good, whether a reboot is pending, and the last run's outcome.

use serde::Serialize;

use crate::activation::{HostPaths, known_good};
use crate::fleet::Sessions;
use crate::inventory::{Inventory, Selection};
use crate::remote::{Command, Remote};
use crate::report::{Table, json_line};
use crate::state;

use super::{Global, Outcome};

const LINKS: &str =
    r#"for l in "$@"; do printf '%s\t%s\n' "$l" "$(readlink -e "$l" 2>/dev/null)"; done"#;

#[derive(Debug, Clone, Serialize, Default)]
struct HostStatus {
    event: &'static str,
    host: String,
    reachable: bool,
    current: Option<String>,
    booted: Option<String>,
    profile: Option<String>,
    known_good: Option<String>,
    known_good_generation: Option<u64>,
    /// The boot default differs from what runs: a reboot would change the system.
    pending_reboot: bool,
    /// What runs is not the known-good closure.
    unvalidated: bool,
    last_run: Option<String>,
    last_outcome: Option<String>,
    error: Option<String>,
}

async fn probe(sessions: &Sessions, inv: &Inventory, host: &str) -> HostStatus {
    let mut st = HostStatus {
        event: "status",
        host: host.to_owned(),
        ..Default::default()
    };
    let Some(h) = inv.host(host) else { return st };
    let session = match sessions.get(host).await {
        Ok(s) => s,
        Err(e) => {
            st.error = Some(e.to_string());
            return st;
        }
    };
    st.reachable = true;
    let paths = HostPaths::for_os(h.os);
    let cmd = Command::script(LINKS).args([
        paths.current_system.as_str(),
        paths.booted_system.as_str(),
        h.profile.as_str(),
    ]);
    match session.exec(&cmd).await {
        Ok(out) if out.success() => {
            let text = out.stdout_str();
            let mut vals = text.lines().map(|l| {
                l.split_once('\t')
                    .map(|(_, v)| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
            });
            st.current = vals.next().flatten();
            st.booted = vals.next().flatten();
            st.profile = vals.next().flatten();
        }
        Ok(out) => st.error = Some(format!("reading links: {}", out.exit)),
        Err(e) => st.error = Some(format!("{e:#}")),
    }
    match known_good::history(&session, &paths).await {
        Ok(hist) => {
            if let Some(cur) = hist.iter().find(|g| g.current) {
                st.known_good = cur.closure.as_ref().map(ToString::to_string);
                st.known_good_generation = Some(cur.generation);
            }
        }
        Err(e) => st.error = Some(format!("{e:#}")),
    }
    st.pending_reboot = st.profile.is_some() && st.profile != st.current;
    st.unvalidated = st.current.is_some() && st.current != st.known_good;
    st
}

fn short(p: &Option<String>) -> String {
    p.as_deref()
        .map(|p| match crate::nix::StorePath::parse(p) {
            Ok(sp) => crate::report::human::short_closure(&sp),
            Err(_) => p.to_owned(),
        })
        .unwrap_or_else(|| "-".into())
}

pub fn run(g: &Global, inv: &Inventory, sel: &Selection) -> anyhow::Result<Outcome> {
    let policy = g.host_key_policy();
    let sessions = Sessions::new(inv, policy);
    let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
    let rt = tokio::runtime::Runtime::new()?;
    let mut statuses = rt.block_on(async {
        let all =
            futures_util::future::join_all(hosts.iter().map(|h| probe(&sessions, inv, h))).await;
        sessions.close_all().await;
        all
    });
    // The last run's outcome per host, from the controller's state.
    // Only the hosts' outcomes are read (a report can be large: streamed,
    // everything else skipped).
    #[derive(serde::Deserialize)]
    struct LastRun {
        run_id: String,
        hosts: Vec<LastHost>,
    }
    #[derive(serde::Deserialize)]
    struct LastHost {
        host: String,
        outcome: String,
    }
    if let Ok(dir) = state::resolve_dir(g.state_dir.as_deref())
        && let Ok(file) = std::fs::File::open(dir.join("latest.json"))
        && let Ok(report) = serde_json::from_reader::<_, LastRun>(std::io::BufReader::new(file))
    {
        for st in &mut statuses {
            if let Some(e) = report.hosts.iter().find(|h| h.host == st.host) {
                st.last_run = Some(report.run_id.clone());
                st.last_outcome = Some(e.outcome.clone());
            }
        }
    }
    let unreachable = statuses.iter().filter(|s| !s.reachable).count();
    if g.json {
        for s in &statuses {
            json_line(s);
        }
    } else {
        let mut t = Table::new(&[
            "HOST",
            "CURRENT",
            "BOOT DEFAULT",
            "KNOWN-GOOD",
            "STATE",
            "LAST RUN",
        ]);
        for s in &statuses {
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
                if v.is_empty() {
                    "ok".into()
                } else {
                    v.join(",")
                }
            };
            t.row(vec![
                s.host.clone(),
                short(&s.current),
                short(&s.profile),
                match (&s.known_good, s.known_good_generation) {
                    (Some(_), Some(n)) => format!("#{n} {}", short(&s.known_good)),
                    _ => "-".into(),
                },
                state,
                match (&s.last_run, &s.last_outcome) {
                    (Some(r), Some(o)) => format!("{o} ({r})"),
                    _ => "-".into(),
                },
            ]);
        }
        print!("{t}");
        for s in statuses.iter().filter(|s| s.error.is_some()) {
            eprintln!("{}: {}", s.host, s.error.as_deref().unwrap_or_default());
        }
    }
    Ok(if unreachable > 0 {
        Outcome::HostsFailed
    } else {
        Outcome::Success
    })
}
