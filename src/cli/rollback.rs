//! `nixgate rollback`: parse, plan (each host's known-good target, see
//! `plan::rollback_target`), confirm, run through every gate, report.

use std::sync::Arc;

use crate::deploy::AlreadyThere;
use crate::inventory::{Inventory, Selection};
use crate::plan::Request;
use crate::report::CommandName;

use super::confirm::{self, Answer};
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
    confirm::can_ask(g)?;
    let run = RunSession::start(g, &inv, CommandName::Rollback, &sel, &req)?.with_outputs(outputs);
    let plan = run.plan(&inv, &sel, &req).await;
    if run.confirm(g, &plan).await? == Answer::No {
        return run.declined(plan).await;
    }
    let ctx = run.context(&inv, flags);
    let hosts = crate::deploy::run(&ctx, plan, AlreadyThere).await;
    run.finish(hosts).await
}
