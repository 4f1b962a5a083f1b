//! `nixgate status`: parse, look (see `inspect::host_status`), report. With
//! `--history`, each selected host's known-good generations instead.

use crate::fleet::{Fleet, Sessions};
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
            let mut failed = 0;
            for (host, r) in hosts.iter().zip(all) {
                match r {
                    Ok(generations) => sink.emit(Event::History {
                        host: host.clone(),
                        generations,
                    }),
                    Err(e) => {
                        failed += 1;
                        sink.emit(Event::Status(HostStatus {
                            host: host.clone(),
                            error: Some(format!("{e:#}")),
                            ..Default::default()
                        }));
                    }
                }
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
