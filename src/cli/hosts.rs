//! `nixgate hosts`: the resolved selection, one host a line.

use crate::inventory::{Inventory, Selection};
use crate::report::{CommandName, Event};

use super::{Global, Outcome, reporting};

pub fn print(g: &Global, inv: &Inventory, sel: &Selection) -> anyhow::Result<Outcome> {
    reporting(g, CommandName::Hosts, |sink| async move {
        let mut n = 0;
        for group in &sel.groups {
            for name in &group.hosts {
                let Some(h) = inv.host(name) else { continue };
                // --host/--tag ignore waves for running, but show where a host belongs.
                let wave = inv
                    .wave_of(name)
                    .map_or(group.name.as_str(), |w| w.name.as_str());
                sink.emit(Event::Host {
                    wave: wave.to_owned(),
                    host: h.name.clone(),
                    address: h.connection.address.clone(),
                    port: h.connection.port(),
                    user: h.connection.user().to_owned(),
                    tags: h.tags.clone(),
                });
                n += 1;
            }
        }
        Ok((n, 0))
    })
}
