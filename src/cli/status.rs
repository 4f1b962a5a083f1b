//! `nixgate status`: parse, look (see `inspect::status`), report.

use crate::fleet::{Fleet, Sessions};
use crate::inspect;
use crate::inventory::{Inventory, Selection};
use crate::report::{CommandName, Event};
use crate::state;

use super::{Global, Outcome, reporting};

pub fn run(g: &Global, inv: &Inventory, sel: &Selection) -> anyhow::Result<Outcome> {
    let fleet = Sessions::new(inv, g.host_key_policy());
    let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
    let state_dir = state::resolve_dir(g.state_dir.as_deref())
        .map_err(|e| super::Fatal::usage(format!("{e:#}")))?;
    reporting(g, CommandName::Status, |sink| async move {
        let all = inspect::status::collect(&*fleet, inv, &hosts, Some(&state_dir)).await;
        fleet.close_all().await;
        let failed = all.iter().filter(|s| !s.reachable).count();
        for s in all {
            sink.emit(Event::Status(s));
        }
        Ok((hosts.len() - failed, failed))
    })
}
