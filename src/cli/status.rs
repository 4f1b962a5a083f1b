//! `nixgate status`: parse, look (see `inspect::host_status`), report. With
//! `--history`, each selected host's known-good generations instead.

use crate::fleet::{Fleet, Sessions};
use crate::inspect::history::{Generation, ReadError};
use crate::inspect::{self, HostStatus};
use crate::inventory::{Inventory, Selection};
use crate::report::{CommandName, Event};
use crate::state;

use super::{Global, Outcome, reporting};

pub fn run(g: &Global, inv: &Inventory, sel: &Selection, history: bool) -> anyhow::Result<Outcome> {
    let fleet = Sessions::new(inv, g.host_key_policy());
    let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
    let state_dir = state::resolve_dir(g.state_dir.as_deref())
        .map_err(|e| super::Fatal::usage(format!("{e:#}")))?;
    // The configuration's HEAD, to say which hosts run an older commit.
    let head = crate::plan::candidates::source_state(inv, true)
        .ok()
        .map(|s| s.commit);
    reporting(g, CommandName::Status, |sink| async move {
        if history {
            let read = hosts
                .iter()
                .map(|h| inspect::history::read(&*fleet, inv, h));
            let all = futures_util::future::join_all(read).await;
            fleet.close_all().await;
            let failed = all.iter().filter(|r| r.is_err()).count();
            for (host, r) in hosts.iter().zip(all) {
                sink.emit(history_event(host, r));
            }
            return Ok((hosts.len() - failed, failed));
        }
        let all = inspect::host_status::collect(&*fleet, inv, &hosts, Some(&state_dir)).await;
        fleet.close_all().await;
        // A host not wholly read is left unknown: exit 1, as unreachable.
        let failed = all
            .iter()
            .filter(|s| !s.reachable || s.error.is_some())
            .count();
        for mut s in all {
            if let (Some(head), Some(c)) = (&head, &s.known_good_commit)
                && !s.unvalidated
            {
                s.behind_head = Some(head != c);
            }
            sink.emit(Event::Status(s));
        }
        Ok((hosts.len() - failed, failed))
    })
}

/// A host's `--history` answer: its generations, or a status row saying
/// why not: UNREACHABLE when no session opened, UNREADABLE when the host
/// answered SSH but its history did not come (it was said unreachable).
fn history_event(host: &str, read: Result<Vec<Generation>, ReadError>) -> Event {
    let (reachable, e) = match read {
        Ok(generations) => {
            return Event::History {
                host: host.to_owned(),
                generations,
            };
        }
        Err(ReadError::Unreachable(e)) => (false, e),
        Err(ReadError::Unreadable(e)) => (true, e),
    };
    Event::Status(HostStatus {
        host: host.to_owned(),
        reachable,
        error: Some(format!("{e:#}")),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that answered SSH but whose history did not come is
    /// reachable (UNREADABLE), one with no session unreachable.
    #[test]
    fn a_host_reached_but_not_read_is_unreadable_not_unreachable() {
        let unreadable = Err(ReadError::Unreadable(anyhow::anyhow!("no answer")));
        let Event::Status(st) = history_event("web1", unreadable) else {
            panic!("a status row");
        };
        assert!(st.reachable, "{st:?}");
        assert_eq!(st.error.as_deref(), Some("no answer"));
        let labels = crate::report::human::labels::Labels::default();
        let table = crate::report::human::tables::status_table(&[st], &labels).to_string();
        assert!(
            table.contains("UNREADABLE") && !table.contains("UNREACHABLE"),
            "{table}"
        );
        let unreachable = Err(ReadError::Unreachable(anyhow::anyhow!("refused")));
        let Event::Status(st) = history_event("web1", unreachable) else {
            panic!("a status row");
        };
        assert!(!st.reachable, "{st:?}");
        assert!(matches!(
            history_event("web1", Ok(Vec::new())),
            Event::History { .. }
        ));
    }
}
