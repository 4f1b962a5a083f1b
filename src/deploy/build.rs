//! Gate 1 on the controller's side: ship the configuration's HEAD to the
//! builder, build every selected host there in one invocation, root and sign
//! what was built. Hosts whose build failed fail alone.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;

use crate::activation::known_good::GateRecord;
use crate::fleet::{BUILDER, Sessions};
use crate::gates::Gate;
use crate::inventory::Inventory;
use crate::nix::{self, StorePath};
use crate::report::{Event, EventSink, HostSummary};

use super::Candidate;

/// The source the run builds from.
#[derive(Debug, Clone)]
pub struct Source {
    pub commit: String,
    pub dirty: bool,
}

/// What building produced.
pub struct Built {
    pub candidates: HashMap<String, Candidate>,
    /// Derivations of the built toplevels, for the structural diff.
    pub drvs: HashMap<String, StorePath>,
    pub failed: Vec<HostSummary>,
}

/// Read the source repository's state; a dirty tree is refused unless allowed.
pub fn source_state(inv: &Inventory, allow_dirty: bool) -> anyhow::Result<Source> {
    let st = crate::release::worktree_state(&inv.builder.source).with_context(|| {
        format!(
            "reading the configuration repository {}",
            inv.builder.source.display()
        )
    })?;
    let commit = st.commit.with_context(|| {
        format!(
            "{} has no commit yet: commit the configuration first",
            inv.builder.source.display()
        )
    })?;
    if st.dirty && !allow_dirty {
        anyhow::bail!(
            "{} has uncommitted changes: commit them, or pass --allow-dirty (recorded in the report; never released)",
            inv.builder.source.display()
        );
    }
    Ok(Source {
        commit,
        dirty: st.dirty,
    })
}

/// Ship, build, root and sign for `hosts`.
pub async fn build(
    inv: &Inventory,
    sessions: &Arc<Sessions>,
    src: &Source,
    hosts: &[String],
    sink: &EventSink,
) -> anyhow::Result<Built> {
    let builder = sessions
        .get(BUILDER)
        .await
        .context("connecting to the builder")?;
    let shipped =
        nix::source::ship_source(&builder, &inv.builder.source, &src.commit, src.dirty).await?;
    sink.emit(Event::SourceShipped {
        commit: src.commit.clone(),
        reused: shipped.reused,
    });
    sink.emit(Event::BuildStarted {
        hosts: hosts.to_vec(),
    });
    let started = std::time::Instant::now();
    let req = nix::build::BuildRequest {
        dir: shipped.dir.clone(),
        flake: inv.builder.flake,
        hosts: hosts
            .iter()
            .filter_map(|h| inv.host(h).map(|x| (h.clone(), x.attribute.clone())))
            .collect(),
    };
    let progress_sink = sink.clone();
    let progress = move |p: nix::build::BuildProgress| {
        progress_sink.emit(Event::BuildProgress {
            built: p.built,
            to_build: p.to_build,
            running: p.running,
            failed: p.failed,
        });
    };
    let results = nix::build::build_hosts(&builder, &req, &progress).await?;
    let mut out = Built {
        candidates: HashMap::new(),
        drvs: HashMap::new(),
        failed: Vec::new(),
    };
    for (host, result) in results {
        match result {
            nix::build::HostBuild::Built { toplevel, drv } => {
                nix::gcroots::add_roots(&builder, &host, &toplevel, &drv)
                    .await
                    .with_context(|| format!("adding GC roots for {host} on the builder"))?;
                if let Some(key) = &inv.builder.signing_key {
                    nix::sign::sign(&builder, key, &toplevel)
                        .await
                        .with_context(|| format!("signing {host}'s closure"))?;
                }
                sink.emit(Event::HostBuilt {
                    host: host.clone(),
                    toplevel: toplevel.clone(),
                });
                let evidence = serde_json::json!({"toplevel": toplevel, "drv": drv, "commit": src.commit, "dirty": src.dirty});
                out.candidates.insert(
                    host.clone(),
                    Candidate {
                        closure: toplevel,
                        earlier_gates: vec![GateRecord::new(Gate::Build, &evidence)],
                    },
                );
                out.drvs.insert(host, drv);
            }
            nix::build::HostBuild::Failed { error } => {
                let reason = error.to_string();
                sink.emit(Event::GateFailed {
                    host: host.clone(),
                    gate: Gate::Build,
                    reason: reason.clone(),
                });
                let s = super::failed_before_run(
                    inv,
                    &host,
                    None,
                    format!("build: {}", reason.lines().last().unwrap_or("")),
                    serde_json::to_value(&error).unwrap_or_default(),
                );
                sink.emit(Event::HostFinished(s.clone()));
                out.failed.push(s);
            }
        }
    }
    sink.emit(Event::BuildFinished {
        built: out.candidates.len(),
        failed: out.failed.len(),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(out)
}
