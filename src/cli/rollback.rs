//! `nixgate rollback`: parse, plan (each host's known-good target, see
//! `plan::rollback_target`), show per host where it goes (`generation 3
//! (commit, hash) -> generation 2 (commit, hash)`) and the package diff,
//! confirm, run through every gate, report.
//!
//! `--to N` names a generation of the hosts' own known-good histories,
//! which live on the hosts (the controller keeps no authoritative copy: a
//! host may have been deployed by another controller, or its history
//! collected): it cannot be checked before connecting. The plan reads each
//! host's history; when no selected host has generation N, that is a usage
//! error (exit 2, each host's generations listed, no host recorded as
//! failed), not a failed run.

use std::sync::Arc;

use crate::deploy::AlreadyThere;
use crate::inventory::{Inventory, Selection};
use crate::plan::{NoTarget, Plan, Refusal, Request, Verdict};
use crate::report::{CommandName, Event};

use super::prompt::{self, Answer};
use super::run_session::{RunFlags, RunSession};
use super::{Global, Outcome};

pub async fn run(
    g: &Global,
    inv: Inventory,
    sel: Selection,
    to: Option<u64>,
    flags: RunFlags,
    outputs: super::RunOutputs,
) -> anyhow::Result<Outcome> {
    let inv = Arc::new(inv);
    let req = Request::Rollback { to };
    prompt::can_ask(g)?;
    let run = RunSession::start(g, &inv, CommandName::Rollback, &sel, &req)?.with_outputs(outputs);
    let plan = run.make_plan(&inv, &sel, &req).await;
    if to.is_some() && names_no_generation(&plan) {
        return run.invalid(plan).await;
    }
    preview(&run, &inv, &plan).await;
    run.show_plan(&plan).await;
    if run.confirm(g, &plan).await? == Answer::No {
        return run.declined(plan).await;
    }
    let ctx = run.context(&inv, flags);
    let hosts = crate::deploy::run(&ctx, plan, AlreadyThere).await;
    run.report_rollback_targets(&inv, &hosts).await;
    run.finish(hosts).await
}

/// `--to N` that no selected host has: every host refused for it.
fn names_no_generation(plan: &Plan) -> bool {
    plan.cancelled.is_none()
        && plan.hosts().all(|h| {
            matches!(
                &h.verdict,
                Verdict::Refused {
                    refusal: Refusal::NoRollbackTarget {
                        why: NoTarget::NoSuchGeneration { .. }
                    }
                }
            )
        })
}

/// For every ready host: its history (to name both ends) and the package
/// diff from what it runs to its target, read from the host, before the
/// plan is shown.
async fn preview(run: &RunSession, inv: &Inventory, plan: &Plan) {
    let ready = plan.hosts().filter_map(|h| match &h.verdict {
        Verdict::Ready { candidate, running } => Some((h.host.as_str(), candidate, running)),
        _ => None,
    });
    let views = ready.map(|(host, cand, running)| async move {
        let view = crate::inspect::history::rollback_view(
            &*run.fleet,
            inv,
            host,
            running.as_ref(),
            &cand.closure,
        )
        .await;
        (host, cand, running, view)
    });
    let all = tokio::select! {
        all = futures_util::future::join_all(views) => all,
        _ = run.stop.cancelled() => return,
    };
    for (host, cand, running, view) in all {
        let (from, packages) = match view {
            Ok(v) => {
                run.sink.emit(Event::History {
                    host: host.to_owned(),
                    generations: v.history,
                });
                (v.running, v.packages)
            }
            Err(e) => {
                tracing::warn!("{host}: the rollback's package diff could not be read: {e:#}");
                (running.clone(), None)
            }
        };
        run.sink.emit(Event::RollbackPreview {
            host: host.to_owned(),
            from,
            to: cand.closure.clone(),
            generation: cand.generation,
            packages,
        });
    }
}
