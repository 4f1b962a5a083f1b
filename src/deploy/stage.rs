//! Staging by copy mode: the closure reaches each host before its gates run,
//! from the builder (relay through the controller, or straight from the
//! builder) or from the host's own substituters.

use std::sync::Arc;

use crate::fleet::{BUILDER, Sessions};
use crate::inventory::{CopyMode, Inventory};
use crate::nix::{self, StorePath};
use crate::report::{Event, EventSink};

/// Copies closures according to each host's `copy` mode.
pub struct CopyStager {
    pub inventory: Arc<Inventory>,
    pub sessions: Arc<Sessions>,
    pub sink: EventSink,
}

impl super::Stager for CopyStager {
    async fn stage(&self, host: Arc<str>, closure: StorePath) -> anyhow::Result<serde_json::Value> {
        let h = self
            .inventory
            .host(&host)
            .ok_or_else(|| anyhow::anyhow!("{host} is not in the inventory"))?;
        let target = self.sessions.get(&host).await?;
        // A valid path's whole closure is valid (a Nix store invariant): a
        // host that has the toplevel needs nothing, whatever the builder has.
        if nix::closure::missing(&target, std::slice::from_ref(&closure))
            .await?
            .is_empty()
        {
            return Ok(serde_json::to_value(
                nix::copy::CopyOutcome::AlreadyPresent,
            )?);
        }
        let outcome = match h.copy {
            CopyMode::Relay => {
                let builder = self.sessions.get(BUILDER).await?;
                let paths = nix::closure::closure(&builder, &closure).await?;
                let sink = self.sink.clone();
                let name = host.to_string();
                let progress = move |p: nix::copy::CopyProgress| {
                    sink.emit(Event::CopyProgress {
                        host: name.clone(),
                        bytes: p.bytes,
                        paths: p.paths,
                        total_paths: p.total_paths,
                    })
                };
                nix::copy::copy_relay(&builder, &target, &paths, &progress).await?
            }
            CopyMode::Builder => {
                let builder = self.sessions.get(BUILDER).await?;
                let t = target.target();
                let dest = format!("{}@{}", t.user(), t.host);
                nix::copy::copy_from_builder(&builder, &target, &dest, t.port(), &closure).await?
            }
            CopyMode::Substitute => nix::copy::copy_substitute(&target, &closure).await?,
        };
        Ok(serde_json::to_value(&outcome)?)
    }
}
