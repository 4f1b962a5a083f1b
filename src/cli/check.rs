//! `nixgate check`: the inventory is valid (it was loaded); then, unless
//! `--offline`, every machine answers (see `inspect::probe`).

use crate::fleet::{Fleet, Sessions};
use crate::inspect::probe as check;
use crate::inventory::{Inventory, Selection};
use crate::report::{CommandName, Event};

use super::{Global, Outcome, reporting};

pub fn run(g: &Global, inv: &Inventory, sel: &Selection, offline: bool) -> anyhow::Result<Outcome> {
    reporting(g, CommandName::Check, |sink| async move {
        sink.emit(Event::InventoryOk {
            file: inv.path.clone(),
            hosts: inv.hosts.len(),
            selected: sel.len(),
            builder: inv.builder.connection.address.clone(),
            waves: check::wave_counts(inv),
            warnings: check::warnings(inv),
        });
        if offline {
            return Ok((0, 0));
        }
        let fleet = Sessions::new(inv, g.host_key_policy());
        let probes = check::probe_all(&fleet, inv, sel).await;
        fleet.close_all().await;
        let failed = probes.iter().filter(|p| !p.ok).count();
        let ok = probes.len() - failed;
        for p in probes {
            sink.emit(Event::Checked(p));
        }
        Ok((ok, failed))
    })
}
