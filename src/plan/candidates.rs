//! Gate 1 for the plan: ship the configuration's HEAD to the builder, build
//! every selected host there in one invocation, root and sign what was
//! built. A host whose build failed is refused alone; a builder that cannot
//! be used refuses every host. Ctrl-C ends the builder's Nix process.
//!
//! The GC roots and signatures are added while the diff gate reads
//! ([`Rooting`]), not before it: they are builder commands the diff does
//! not need (one round trip each, two with a signing key, that every
//! host's first read waited for), and the plan waits for them before it
//! is ready, so nothing is copied unrooted or unsigned.

use std::collections::HashMap;

use anyhow::Context;

use crate::activation::known_good::GateRecord;
use crate::fleet::Fleet;
use crate::gates::Gate;
use crate::inventory::Inventory;
use crate::nix::{self, StorePath};
use crate::report::Event;

use super::{Candidate, Planning, Refusal, Verdict};

/// The source the run builds from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    pub commit: String,
    pub dirty: bool,
}

/// What the build stage decided.
pub struct Built {
    pub verdicts: HashMap<String, Verdict>,
    /// Derivations of the built toplevels, for the structural diff.
    pub drvs: HashMap<String, StorePath>,
    /// Ctrl-C ended the build.
    pub cancelled: bool,
    /// The built systems' GC roots and signatures, being added.
    pub rooting: Option<Rooting>,
}

/// The GC roots and signatures of the built systems, being added on the
/// builder by a task of their own.
pub struct Rooting(tokio::task::JoinHandle<anyhow::Result<()>>);

impl Rooting {
    fn start<R: crate::remote::Remote + Clone + 'static>(
        builder: R,
        built: Vec<(String, StorePath, StorePath)>,
        signing_key: Option<String>,
    ) -> Rooting {
        Rooting(tokio::spawn(async move {
            let roots: Vec<nix::gcroots::Roots> = built
                .iter()
                .map(|(host, toplevel, drv)| nix::gcroots::Roots {
                    host,
                    toplevel,
                    drv,
                })
                .collect();
            nix::gcroots::add_roots(&builder, &roots)
                .await
                .context("adding the built systems' GC roots on the builder")?;
            if let Some(key) = &signing_key {
                let tops: Vec<StorePath> = built.iter().map(|(_, t, _)| t.clone()).collect();
                nix::sign::sign(&builder, key, &tops)
                    .await
                    .context("signing the built systems' closures")?;
            }
            Ok(())
        }))
    }

    /// Wait until the roots and signatures are in place; a failure is the
    /// builder's, reported and refusing every host still ready.
    pub async fn finish(
        self,
        sink: &crate::report::EventSink,
        verdicts: &mut HashMap<String, Verdict>,
    ) {
        let error = match self.0.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("adding the built systems' GC roots: {e}"),
        };
        sink.emit(Event::BuilderFailed {
            error: error.clone(),
        });
        for v in verdicts.values_mut() {
            if matches!(v, Verdict::Ready { .. }) {
                *v = Verdict::Refused {
                    refusal: Refusal::Builder {
                        error: error.clone(),
                    },
                };
            }
        }
    }
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

/// Build every host of `hosts`; each gets a verdict.
pub async fn build<F: Fleet>(p: &Planning<'_, F>, src: &Source, hosts: &[String]) -> Built {
    match build_all(p, src, hosts).await {
        Ok(b) => b,
        Err(e) if nix::build::was_cancelled(&e) => Built {
            verdicts: HashMap::new(),
            drvs: HashMap::new(),
            cancelled: true,
            rooting: None,
        },
        Err(e) => {
            let error = format!("{e:#}");
            p.sink.emit(Event::BuilderFailed {
                error: error.clone(),
            });
            let verdicts = hosts
                .iter()
                .map(|h| {
                    let refusal = Refusal::Builder {
                        error: error.clone(),
                    };
                    (h.clone(), Verdict::Refused { refusal })
                })
                .collect();
            Built {
                verdicts,
                drvs: HashMap::new(),
                cancelled: false,
                rooting: None,
            }
        }
    }
}

async fn build_all<F: Fleet>(
    p: &Planning<'_, F>,
    src: &Source,
    hosts: &[String],
) -> anyhow::Result<Built> {
    let (inv, sink) = (p.inventory, p.sink);
    let builder = p
        .fleet
        .builder()
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
        options: nix::build::BuildOptions {
            builders: inv.builder.remote.machines.clone(),
            use_substitutes: inv.builder.remote.use_substitutes,
            max_jobs: inv.builder.remote.max_jobs,
        },
    };
    let progress_sink = sink.clone();
    let progress = move |u: nix::build::BuildUpdate| {
        progress_sink.emit(match u {
            nix::build::BuildUpdate::Progress(b) => Event::BuildProgress {
                built: b.built,
                to_build: b.to_build,
                running: b.running,
                failed: b.failed,
            },
            nix::build::BuildUpdate::Building { drv, machine } => Event::BuildStep { drv, machine },
        });
    };
    let results = nix::build::build_hosts(&builder, &req, &progress, p.stop).await?;
    let rooted: Vec<(String, StorePath, StorePath)> = results
        .iter()
        .filter_map(|(host, r)| match r {
            nix::build::HostBuild::Built { toplevel, drv } => {
                Some((host.clone(), toplevel.clone(), drv.clone()))
            }
            nix::build::HostBuild::Failed { .. } => None,
        })
        .collect();
    let key = inv.builder.signing_key.clone();
    let mut out = Built {
        verdicts: HashMap::new(),
        drvs: HashMap::new(),
        cancelled: false,
        rooting: Some(Rooting::start(builder, rooted, key)),
    };
    let mut failed = 0;
    for (host, result) in results {
        let verdict = match result {
            nix::build::HostBuild::Built { toplevel, drv } => {
                let candidate = built(p, &host, toplevel, &drv, src);
                out.drvs.insert(host.clone(), drv);
                Verdict::Ready {
                    candidate,
                    running: None,
                }
            }
            nix::build::HostBuild::Failed { error } => {
                failed += 1;
                Verdict::Refused {
                    refusal: Refusal::Build { failure: error },
                }
            }
        };
        out.verdicts.insert(host, verdict);
    }
    sink.emit(Event::BuildFinished {
        built: out.drvs.len(),
        failed,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(out)
}

/// A built host's candidate, announced (rooted and signed before the plan
/// is ready: [`Rooting`]).
fn built<F: Fleet>(
    p: &Planning<'_, F>,
    host: &str,
    toplevel: StorePath,
    drv: &StorePath,
    src: &Source,
) -> Candidate {
    p.sink.emit(Event::HostBuilt {
        host: host.to_owned(),
        toplevel: toplevel.clone(),
        drv: drv.clone(),
    });
    let evidence = BuildEvidence {
        toplevel: &toplevel,
        drv,
        commit: &src.commit,
        dirty: src.dirty,
    };
    Candidate {
        earlier_gates: vec![GateRecord::new(Gate::Build, &evidence)],
        closure: toplevel,
        generation: None,
        never_validated: false,
        commit: None,
    }
}

/// The build gate's evidence in the known-good record.
#[derive(serde::Serialize)]
struct BuildEvidence<'a> {
    toplevel: &'a StorePath,
    drv: &'a StorePath,
    commit: &'a str,
    dirty: bool,
}
