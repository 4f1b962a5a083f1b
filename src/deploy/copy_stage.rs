//! Staging by copy mode: the closure reaches each host before its gates run,
//! from the builder (relay through the controller, or straight from the
//! builder) or from the host's substituters (the inventory's, for that call).

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use super::relay_hub::{Coming, RelayHub};

use crate::fleet::Fleet;
use crate::inventory::{CopyMode, Host, Inventory};
use crate::nix::copy::CopyOutcome;
use crate::nix::fanout::ask_lacking;
use crate::nix::{self, StorePath};
use crate::plan::Plan;
use crate::report::{Event, EventSink};

/// Copies closures according to each host's `copy` mode.
pub struct CopyStager<F: Fleet> {
    inventory: Arc<Inventory>,
    fleet: Arc<F>,
    sink: EventSink,
    /// Closures already known (from the diff gate), by toplevel.
    closures: HashMap<StorePath, Arc<Vec<nix::closure::PathInfo>>>,
    /// Present when several hosts relay: shared paths leave the builder once.
    hub: Option<Arc<RelayHub<F>>>,
}

impl<F: Fleet> CopyStager<F> {
    /// The stager for a run that relays to `relaying` hosts. Relay batches
    /// close after 80 ms of quiet, 3 s at most (hosts staged together share
    /// one read of the builder).
    pub fn new(
        inventory: Arc<Inventory>,
        fleet: Arc<F>,
        sink: EventSink,
        closures: HashMap<StorePath, Arc<Vec<nix::closure::PathInfo>>>,
        relaying: usize,
    ) -> Self {
        let hub = (relaying > 1).then(|| {
            RelayHub::new(
                fleet.clone(),
                Duration::from_millis(80),
                Duration::from_secs(3),
            )
        });
        CopyStager {
            inventory,
            fleet,
            sink,
            closures,
            hub,
        }
    }
}

impl<F: Fleet> CopyStager<F> {
    /// The stager for `plan`: the closures the diff gate already read, and a
    /// relay hub when more than one of its ready hosts relays.
    pub fn for_plan(
        inventory: Arc<Inventory>,
        fleet: Arc<F>,
        sink: EventSink,
        plan: &Plan,
    ) -> Self {
        let relaying = plan
            .ready()
            .filter(|(h, _)| inventory.host(h).is_some_and(|x| x.copy == CopyMode::Relay))
            .count();
        let closures = plan.closures.clone();
        CopyStager::new(inventory, fleet, sink, closures, relaying)
    }

    /// A host that requires signatures refuses paths it already had but
    /// holds unsigned (relayed before, or built locally): the copy skips
    /// them, so they get the builder's signatures here. One command when
    /// every present path is already trusted.
    async fn restore_signatures(
        &self,
        host: &str,
        target: &F::Remote,
        paths: &[nix::closure::PathInfo],
        lacking: &std::collections::HashSet<StorePath>,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        let present: Vec<&nix::closure::PathInfo> = paths
            .iter()
            .filter(|p| !lacking.contains(&p.path))
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        let builder = self.fleet.builder().await?;
        nix::sign::restore(&builder, target, &present)
            .await
            .with_context(|| format!("giving {host} the builder's signatures for paths it had"))?;
        Ok(())
    }
}

impl<F: Fleet> super::Stager for CopyStager<F> {
    async fn stage(&self, host: Arc<str>, closure: StorePath) -> anyhow::Result<CopyOutcome> {
        let h = self
            .inventory
            .host(&host)
            .ok_or_else(|| anyhow::anyhow!("{host} is not in the inventory"))?;
        // Batches forming meanwhile wait for this host.
        let coming = match (&self.hub, h.copy) {
            (Some(hub), CopyMode::Relay) => Some(hub.coming()),
            _ => None,
        };
        let target = self.fleet.host(&host).await?;
        match h.copy {
            CopyMode::Relay => self.relay(&host, h, &target, &closure, coming).await,
            CopyMode::Builder => self.builder_copies(&host, h, &target, &closure).await,
            CopyMode::Substitute => {
                let from = nix::copy::PullFrom {
                    substituters: &h.pull.substituters,
                    trusted_public_keys: &h.pull.trusted_public_keys,
                };
                nix::copy::copy_substitute(&target, &closure, from).await
            }
        }
    }
}

impl<F: Fleet> CopyStager<F> {
    /// The closure of `toplevel`: as the diff gate read it, else the builder's.
    async fn closure_of(
        &self,
        toplevel: &StorePath,
    ) -> anyhow::Result<Arc<Vec<nix::closure::PathInfo>>> {
        if let Some(known) = self.closures.get(toplevel) {
            return Ok(known.clone());
        }
        let builder = self.fleet.builder().await?;
        Ok(Arc::new(nix::closure::closure(&builder, toplevel).await?))
    }

    /// Relay what `host` lacks through the controller: in a batch of the hub
    /// when several hosts relay, else alone.
    async fn relay(
        &self,
        host: &str,
        h: &Host,
        target: &F::Remote,
        closure: &StorePath,
        coming: Option<Coming>,
    ) -> anyhow::Result<CopyOutcome> {
        let paths = self.closure_of(closure).await?;
        // One query answers both "anything to do?" and "what?", in the
        // session that then adds what is lacking. Copying alone, the
        // builder's side starts meanwhile (a batch of the hub starts its own).
        let started = async {
            match &self.hub {
                Some(_) => None,
                None => Some(match self.fleet.builder().await {
                    Ok(b) => nix::fanout::serve_builder(&b).await,
                    Err(e) => Err(anyhow::Error::from(e)),
                }),
            }
        };
        let (asked, started) =
            tokio::join!(ask_lacking(target, &paths, h.copy_stall_timeout), started);
        let (lacking, session) = asked?;
        if h.require_signatures {
            self.restore_signatures(host, target, &paths, &lacking)
                .await?;
        }
        if lacking.is_empty() {
            return Ok(CopyOutcome::AlreadyPresent);
        }
        let progress = self.progress_of(host);
        let received = match &self.hub {
            Some(hub) => {
                let asked = (lacking, session);
                let stall = h.copy_stall_timeout;
                hub.share(
                    coming,
                    target.clone(),
                    paths.clone(),
                    asked,
                    progress,
                    stall,
                )
                .await?
            }
            None => {
                let builder = self.fleet.builder().await?;
                let one = nix::fanout::Target {
                    remote: target,
                    lacking: &lacking,
                    progress: progress.as_ref(),
                    session: Some(session),
                    stall: h.copy_stall_timeout,
                };
                nix::fanout::relay_one(&builder, started, one, &paths).await?
            }
        };
        // No second query: the host added and acknowledged every path it
        // lacked (checking each against the builder's hash; a path is only
        // added once its references are valid), and the activation's first
        // step realises the closure before anything else (a failure there
        // fails this copy gate).
        Ok(nix::copy::copied(received))
    }

    /// The copy's progress, as `copy_progress` events of `host`.
    fn progress_of(&self, host: &str) -> Arc<dyn Fn(nix::copy::CopyProgress) + Send + Sync> {
        let sink = self.sink.clone();
        let name = host.to_owned();
        Arc::new(move |p: nix::copy::CopyProgress| {
            sink.emit(Event::CopyProgress {
                host: name.clone(),
                bytes: p.bytes,
                paths: p.paths,
                total_paths: p.total_paths,
                idle_secs: p.idle_secs,
            })
        })
    }

    /// The builder's `nix-copy-closure` copies straight to `host`.
    async fn builder_copies(
        &self,
        host: &str,
        h: &Host,
        target: &F::Remote,
        closure: &StorePath,
    ) -> anyhow::Result<CopyOutcome> {
        let builder = self.fleet.builder().await?;
        let d = self
            .fleet
            .destination(host)
            .ok_or_else(|| anyhow::anyhow!("no SSH destination for {host}"))?;
        // The user and host may come from ~/.ssh/config or $USER, not the
        // checked inventory: they reach the builder's argv.
        use crate::inventory::validate::{address_problem, user_problem};
        if let Some(why) = user_problem(&d.user) {
            anyhow::bail!(
                "user {:?} (from ~/.ssh/config or $USER) {why}: set `user` in the inventory",
                d.user
            );
        }
        if let Some((why, _)) = address_problem(&d.host) {
            anyhow::bail!("address {:?} (from ~/.ssh/config HostName) {why}", d.host);
        }
        // What the host lacks: whether there is anything to copy, and how
        // much (its progress and its gate's evidence).
        let paths = self.closure_of(closure).await?;
        let lacking = nix::copy::lacking(target, &paths).await?;
        if h.require_signatures {
            self.restore_signatures(host, target, &paths, &lacking)
                .await?;
        }
        let lacking: Vec<&nix::closure::PathInfo> =
            paths.iter().filter(|p| lacking.contains(&p.path)).collect();
        let dest = format!("{}@{}", d.user, d.host);
        let to = nix::builder_copy::Destination {
            dest: &dest,
            port: d.port,
            connect_timeout: h.connection.connect_timeout,
            stall: h.copy_stall_timeout,
        };
        let progress = self.progress_of(host);
        nix::builder_copy::copy_from_builder(
            &builder,
            target,
            to,
            closure,
            &lacking,
            progress.as_ref(),
        )
        .await
    }
}
