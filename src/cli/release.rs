//! `nixgate release list|show`: the releases recorded as annotated tags in the
//! configuration repository.

use crate::inventory::{Inventory, Selection};
use crate::release;
use crate::report::{Table, json_line};

use super::{Fatal, Global, Outcome};

pub fn list(
    g: &Global,
    inv: &Inventory,
    sel: &Selection,
    selected: bool,
) -> anyhow::Result<Outcome> {
    let targets: Vec<String> = sel.hosts().map(str::to_owned).collect();
    let infos = release::list(&inv.builder.source, selected.then_some(targets.as_slice()))?;
    if g.json {
        for i in &infos {
            json_line(&serde_json::json!({"event": "release", "release": i}));
        }
        return Ok(Outcome::Success);
    }
    let mut t = Table::new(&["TAG", "HOST", "TIME", "COMMIT", "CLOSURE", "RUN"]);
    for i in &infos {
        t.row(vec![
            i.tag.clone(),
            i.target.clone(),
            i.time.clone(),
            i.commit.get(..12).unwrap_or(&i.commit).to_owned(),
            i.closure.name().to_owned(),
            i.run_id.clone(),
        ]);
    }
    print!("{t}");
    Ok(Outcome::Success)
}

pub fn show(g: &Global, inv: &Inventory, tag: &str) -> anyhow::Result<Outcome> {
    let detail =
        release::resolve(&inv.builder.source, tag).map_err(|e| Fatal::usage(format!("{e:#}")))?;
    if g.json {
        json_line(&serde_json::json!({"event": "release", "release": detail}));
    } else {
        println!("{}", detail.message.trim_end());
    }
    Ok(Outcome::Success)
}
