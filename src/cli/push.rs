//! `nixgate push`, `plan` and `build`: parse, plan, confirm, run, report.
//! The deploy flow itself is in `plan` and `deploy`.

use std::sync::Arc;

use crate::deploy::copy_stage::CopyStager;
use crate::deploy::releases::{Releasing, release_known_good};
use crate::fleet::Sessions;
use crate::gates::Goal;
use crate::inventory::{Inventory, Selection, Selector};
use crate::plan::{self, Planning, Request, Source};
use crate::report::{self, CommandName, Ending, Event};
use crate::runner::cancel;

use super::prompt::{self, Answer};
use super::run_session::{RunFlags, RunSession};
use super::{Fatal, Global, Outcome};

/// Options of `push`.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub goal: Goal,
    pub allow_dirty: bool,
    pub flags: RunFlags,
    pub release: Option<String>,
    pub force_release: bool,
    /// Packages the change is meant to touch; any other change is drift.
    pub expect: Option<Vec<String>>,
    /// A selector was given (`--host`, `--tag`, `--wave`, names).
    pub selected: bool,
    /// The HTML report, metrics file and pruning at the end.
    pub outputs: super::RunOutputs,
}

fn source(inv: &Inventory, allow_dirty: bool) -> anyhow::Result<Source> {
    plan::candidates::source_state(inv, allow_dirty).map_err(|e| Fatal::usage(format!("{e:#}")))
}

/// What `push` asks for; `push --release` narrows the selection to the
/// tag's host. Usage errors come out here, before anything starts.
fn push_request(
    inv: &Inventory,
    sel: &mut Selection,
    opts: &PushOptions,
) -> anyhow::Result<Request> {
    let Some(spec) = &opts.release else {
        return Ok(Request::Push {
            source: source(inv, opts.allow_dirty)?,
            goal: opts.goal,
            expect: opts.expect.clone(),
        });
    };
    if opts.expect.is_some() {
        return Err(Fatal::usage(format!(
            "`--expect` cannot be used with `--release {spec}`: a release redeploys the closure it \
             recorded, and nothing would check it against the expected packages; drop `--expect`"
        )));
    }
    let info = crate::release::resolve(&inv.builder.source, spec)
        .map_err(|e| Fatal::usage(format!("{e:#}")))?
        .info;
    let picked: Vec<&str> = sel.hosts().collect();
    if opts.selected && picked != [info.target.as_str()] {
        return Err(Fatal::usage(format!(
            "`--release {spec}` deploys {target}, the host the release was made for, but the \
             selection picks {}: drop the selector (or name {target} alone)",
            crate::inventory::listed(&picked),
            target = info.target,
        )));
    }
    let selector = Selector {
        hosts: vec![info.target.clone()],
        ..Default::default()
    };
    *sel = inv.select(&selector)?;
    Ok(Request::Release {
        host: info.target,
        closure: info.closure,
        source: Source {
            commit: info.commit,
            dirty: false,
        },
        goal: opts.goal,
    })
}

pub async fn push(
    g: &Global,
    inv: Inventory,
    mut sel: Selection,
    opts: PushOptions,
) -> anyhow::Result<Outcome> {
    let inv = Arc::new(inv);
    let req = push_request(&inv, &mut sel, &opts)?;
    prompt::can_ask(g)?;
    let run = RunSession::start(g, &inv, CommandName::Push, &sel, &req)?
        .with_outputs(opts.outputs.clone());
    let plan = run.plan(&inv, &sel, &req).await;
    if run.confirm(g, &plan).await? == Answer::No {
        return run.declined(plan).await;
    }
    let ctx = run.context(&inv, opts.flags);
    let stager = CopyStager::for_plan(inv.clone(), run.fleet.clone(), run.sink.clone(), &plan);
    let source = plan.source.clone();
    let hosts = crate::deploy::run(&ctx, plan, stager).await;
    if let (true, Some(source)) = (req.goal().marks_known_good(), source) {
        let r = Releasing {
            inventory: &inv,
            source: &source,
            run_id: run.run_id.as_str(),
            force: opts.force_release,
            sink: &run.sink,
            stopped: &|| run.stopped(),
        };
        release_known_good(&r, &hosts);
    }
    // Told to exit at once: not the rollback targets' reads either.
    if !run.stopped() {
        run.report_rollback_targets(&inv, &hosts).await;
    }
    run.finish(hosts).await
}

/// `plan` and `build`: make the plan (build, and for `plan` the diff),
/// change nothing on any host; no controller lock, no run report.
pub async fn plan_only(
    g: &Global,
    inv: Inventory,
    sel: Selection,
    command: CommandName,
    req: Request,
) -> anyhow::Result<Outcome> {
    let fleet = Sessions::new(&inv, g.host_key_policy());
    let (sink, reporter) = report::spawn(report::choose(g, command), None);
    let (canceller, watch) = cancel::channel();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(canceller.on_signals());
    let bridge = {
        let (mut watch, stop) = (watch.clone(), stop.clone());
        tokio::spawn(async move {
            cancel::reached(&mut watch, cancel::CancelLevel::StopStarting).await;
            stop.cancel();
        })
    };
    let run_id = crate::activation::RunId::parse(&crate::state::clock::new_run_id())?;
    let p = Planning {
        fleet: &fleet,
        inventory: &inv,
        selection: &sel,
        run_id: &run_id,
        sink: &sink,
        stop: &stop,
    };
    let plan = plan::make(&p, &req).await;
    bridge.abort();
    use crate::fleet::Fleet;
    fleet.close_all().await;
    sink.emit(plan.event());
    let failed = plan.hosts().filter(|h| !h.is_ready()).count();
    let outcome = if failed == 0 {
        Outcome::Success
    } else {
        Outcome::HostsFailed
    };
    let ending = if plan.cancelled.is_some() {
        Ending::CancelledBeforeRun
    } else {
        Ending::Completed
    };
    sink.emit(Event::Summary {
        command,
        run_id: None,
        ending,
        exit_code: outcome as u8,
        ok: plan.hosts().count() - failed,
        failed,
        hosts: Vec::new(),
    });
    drop(sink);
    let _ = reporter.await;
    Ok(outcome)
}

/// `nixgate build`.
pub async fn build(
    g: &Global,
    inv: Inventory,
    sel: Selection,
    allow_dirty: bool,
) -> anyhow::Result<Outcome> {
    let req = Request::Build {
        source: source(&inv, allow_dirty)?,
    };
    plan_only(g, inv, sel, CommandName::Build, req).await
}

/// `nixgate plan`.
pub async fn plan(
    g: &Global,
    inv: Inventory,
    sel: Selection,
    allow_dirty: bool,
    expect: Option<Vec<String>>,
) -> anyhow::Result<Outcome> {
    let req = Request::Diff {
        source: source(&inv, allow_dirty)?,
        expect,
    };
    plan_only(g, inv, sel, CommandName::Plan, req).await
}
