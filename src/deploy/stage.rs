//! Staging by copy mode: the closure reaches each host before its gates run,
//! from the builder (relay through the controller, or straight from the
//! builder) or from the host's own substituters.

use std::collections::{HashMap, HashSet};
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
                let paths = match self.closures.get(&closure) {
                    Some(known) => known.clone(),
                    None => Arc::new(nix::closure::closure(&builder, &closure).await?),
                };
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
                let shared = match &self.hub {
                    Some(hub) => {
                        let all: Vec<StorePath> = paths.iter().map(|p| p.path.clone()).collect();
                        let lacking: HashSet<StorePath> = nix::closure::missing(&target, &all)
                            .await?
                            .into_iter()
                            .collect();
                        Some(
                            hub.share(target.clone(), paths.clone(), lacking, progress.clone())
                                .await?,
                        )
                    }
                    None => None,
                };
                let rest =
                    nix::copy::copy_relay(&builder, &target, &paths, progress.as_ref()).await?;
                combine(rest, shared.filter(|s| s.paths > 0))
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

/// A relay's outcome counting what came through a shared stream.
fn combine(
    rest: nix::copy::CopyOutcome,
    shared: Option<nix::fanout::Shared>,
) -> nix::copy::CopyOutcome {
    use nix::copy::CopyOutcome;
    let Some(sh) = shared else { return rest };
    let (paths, bytes) = match rest {
        CopyOutcome::Copied { paths, bytes, .. } => (paths, bytes),
        _ => (0, 0),
    };
    CopyOutcome::Copied {
        paths: paths + sh.paths,
        bytes: bytes + sh.bytes,
        fanout: Some(sh),
    }
}
