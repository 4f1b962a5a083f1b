//! `nixgate check`: the inventory is valid; with the network, every selected
//! host and the builder answer (the online part comes with the SSH layer).

use std::path::Path;

use crate::inventory::{Inventory, Selection};
use crate::report::json_line;

use super::{Fatal, Global, Outcome};

/// Things worth saying about an inventory that is valid but may not work.
fn warnings(inv: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    let src = &inv.builder.source;
    if !src.join(".git").exists() && !Path::new(src).join("HEAD").exists() {
        out.push(format!(
            "[builder] source {} is not a git repository: nixgate ships the configuration from its HEAD commit",
            src.display()
        ));
    }
    let mut files: Vec<(String, &Path)> = Vec::new();
    if let Some(id) = &inv.builder.connection.identity_file {
        files.push(("builder identity_file".into(), id));
    }
    for h in &inv.hosts {
        if let Some(id) = &h.connection.identity_file {
            files.push((format!("{} identity_file", h.name), id));
        }
    }
    files.sort_by(|a, b| a.1.cmp(b.1));
    files.dedup_by(|a, b| a.1 == b.1);
    for (what, path) in files {
        if !path.exists() {
            out.push(format!(
                "{what} {} does not exist (ssh-agent will be tried)",
                path.display()
            ));
        }
    }
    out
}

pub fn run(g: &Global, inv: &Inventory, sel: &Selection, offline: bool) -> anyhow::Result<Outcome> {
    let warns = warnings(inv);
    if g.json {
        json_line(&serde_json::json!({
            "event": "inventory_ok",
            "file": inv.path,
            "hosts": inv.hosts.len(),
            "selected": sel.len(),
            "waves": inv.waves.iter().map(|w| serde_json::json!({"name": w.name, "hosts": w.hosts.len()})).collect::<Vec<_>>(),
            "warnings": warns,
        }));
    } else if g.quiet == 0 {
        let waves: Vec<String> = inv
            .waves
            .iter()
            .map(|w| format!("{} {}", w.name, w.hosts.len()))
            .collect();
        println!(
            "{}: valid: {} hosts in {} waves ({}), builder {}",
            inv.path.display(),
            inv.hosts.len(),
            inv.waves.len(),
            waves.join(", "),
            inv.builder.connection.address
        );
        for w in &warns {
            println!("warning: {w}");
        }
    }
    if offline {
        return Ok(Outcome::Success);
    }
    Err(Fatal::usage(
        "online checks need the SSH transport, which this build does not have yet; run `nixgate check --offline`",
    ))
}
