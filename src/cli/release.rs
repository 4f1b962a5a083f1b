//! `nixgate release list|show`: the releases recorded as annotated tags in the
//! configuration repository.

use crate::inventory::{Inventory, Selection};
use crate::release;
use crate::report::{CommandName, Event};

use super::{Fatal, Global, Outcome, reporting};

pub fn list(
    g: &Global,
    inv: &Inventory,
    sel: &Selection,
    selected: bool,
) -> anyhow::Result<Outcome> {
    let targets: Vec<String> = sel.hosts().map(str::to_owned).collect();
    let infos = release::list(&inv.builder.source, selected.then_some(targets.as_slice()))?;
    reporting(g, CommandName::Release, |sink| async move {
        let n = infos.len();
        for release in infos {
            sink.emit(Event::Release { release });
        }
        Ok((n, 0))
    })
}

pub fn show(g: &Global, inv: &Inventory, tag: &str) -> anyhow::Result<Outcome> {
    let detail =
        release::resolve(&inv.builder.source, tag).map_err(|e| Fatal::usage(format!("{e:#}")))?;
    reporting(g, CommandName::Release, |sink| async move {
        sink.emit(Event::ReleaseDetail { release: detail });
        Ok((1, 0))
    })
}
