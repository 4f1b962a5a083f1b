//! `nixgate hosts`: the resolved selection, one host a line.

use crate::inventory::{Inventory, Selection};
use crate::report::{Table, json_line};

use super::Global;

pub fn print(g: &Global, inv: &Inventory, sel: &Selection) {
    let mut table = Table::new(&["WAVE", "HOST", "ADDRESS", "TAGS"]);
    for group in &sel.groups {
        for name in &group.hosts {
            let Some(h) = inv.host(name) else { continue };
            // --host/--tag ignore waves for running, but show where a host belongs.
            let wave = inv
                .wave_of(name)
                .map_or(group.name.as_str(), |w| w.name.as_str());
            let address = if h.connection.port == 22 {
                h.connection.address.clone()
            } else {
                format!("{}:{}", h.connection.address, h.connection.port)
            };
            if g.json {
                json_line(&serde_json::json!({
                    "event": "host",
                    "wave": wave,
                    "host": h.name,
                    "address": h.connection.address,
                    "port": h.connection.port,
                    "user": h.connection.user,
                    "tags": h.tags,
                }));
            } else {
                table.row(vec![
                    wave.to_owned(),
                    h.name.clone(),
                    address,
                    h.tags.join(","),
                ]);
            }
        }
    }
    if !g.json {
        print!("{table}");
    }
}
