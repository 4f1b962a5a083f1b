//! Staging by copy mode: the closure reaches each host before its gates run,
//! from the builder (relay through the controller, or straight from the
//! builder) or from the host's own substituters.

use std::collections::HashMap;
use std::sync::Arc;

use super::fanout::RelayHub;

use crate::fleet::{BUILDER, Sessions};
use crate::inventory::{CopyMode, Inventory};
use crate::nix::{self, StorePath};
use crate::report::{Event, EventSink};

/// Copies closures according to each host's `copy` mode.
pub struct CopyStager {
    pub inventory: Arc<Inventory>,
    pub sessions: Arc<Sessions>,
    pub sink: EventSink,
    /// Closures already known (from the diff gate), by toplevel.
    pub closures: HashMap<StorePath, Arc<Vec<nix::closure::PathInfo>>>,
    /// Present when several hosts relay: shared paths leave the builder once.
    pub hub: Option<Arc<RelayHub>>,
}

impl super::Stager for CopyStager {
    async fn stage(&self, host: Arc<str>, closure: StorePath) -> anyhow::Result<serde_json::Value> {
        let h = self
            .inventory
            .host(&host)
            .ok_or_else(|| anyhow::anyhow!("{host} is not in the inventory"))?;
        let target = self.sessions.get(&host).await?;
        let outcome = match h.copy {
            CopyMode::Relay => {
                let paths = match self.closures.get(&closure) {
                    Some(known) => known.clone(),
                    None => {
                        let builder = self.sessions.get(BUILDER).await?;
                        Arc::new(nix::closure::closure(&builder, &closure).await?)
                    }
                };
                // One query answers both "anything to do?" and "what?".
                let lacking = nix::copy::lacking(&target, &paths).await?;
                if lacking.is_empty() {
                    return Ok(serde_json::to_value(
                        nix::copy::CopyOutcome::AlreadyPresent,
                    )?);
                }
                let sink = self.sink.clone();
                let name = host.to_string();
                let progress: Arc<dyn Fn(nix::copy::CopyProgress) + Send + Sync> =
                    Arc::new(move |p: nix::copy::CopyProgress| {
                        sink.emit(Event::CopyProgress {
                            host: name.clone(),
                            bytes: p.bytes,
                            paths: p.paths,
                            total_paths: p.total_paths,
                        })
                    });
                let received = match &self.hub {
                    Some(hub) => {
                        hub.share(target.clone(), paths.clone(), lacking, progress)
                            .await?
                    }
                    None => {
                        let builder = self.sessions.get(BUILDER).await?;
                        let one = nix::fanout::Target {
                            remote: &target,
                            lacking: &lacking,
                            progress: progress.as_ref(),
                        };
                        nix::fanout::relay_one(&builder, one, &paths).await?
                    }
                };
                // No second query: the host added and acknowledged every path
                // it lacked (checking each against the builder's hash; a path
                // is only added once its references are valid), and the
                // activation's first step realises the closure before anything
                // else (a failure there fails this copy gate).
                nix::copy::copied(received)
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
