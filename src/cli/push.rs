//! `nixgate push`, `plan` and `build`: parse, plan, confirm, run, report.
//! The deploy flow itself is in `plan` and `deploy`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::deploy::copy_stage::CopyStager;
use crate::deploy::releases::{Releasing, release_known_good};
use crate::fleet::{Fleet, Sessions};
use crate::gates::Goal;
use crate::inventory::{Inventory, Selection, Selector};
use crate::plan::{self, Planning, Request, Source};
use crate::report::{self, CommandName, Ending, Event, EventSink};
use crate::runner::cancel::CancelWatch;

use super::prompt::{self, Answer};
use super::run_session::{RunFlags, RunSession, on_signals};
use super::{Fatal, Global, Outcome};

/// Options of `push`.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub goal: Goal,
    pub allow_dirty: bool,
    pub flags: RunFlags,
    pub release: Option<String>,
    pub force_release: bool,
    /// What the diff gate refuses a host for (`--expect`,
    /// `--allow-rolled-back`).
    pub judging: plan::Judging,
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
            judging: opts.judging.clone(),
        });
    };
    if opts.judging.expect.is_some() {
        return Err(Fatal::usage(format!(
            "`--expect` cannot be used with `--release {spec}`: a release redeploys the closure it \
             recorded, and nothing would check it against the expected packages; drop `--expect`"
        )));
    }
    if opts.judging.allow_rolled_back {
        return Err(Fatal::usage(format!(
            "`--allow-rolled-back` cannot be used with `--release {spec}`: a release redeploys the \
             closure its tag names, which a rollback does not refuse; drop `--allow-rolled-back`"
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
    *sel = release_selection(inv, sel, spec, &info.target)?;
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

/// The selection a release deploys: its host alone, in the wave group it
/// was selected in (the whole fleet, or `--wave canary`), so it keeps that
/// wave's soak and budget; `--host` keeps the ad-hoc group. Before, `--wave
/// canary` was rebuilt as the ad-hoc group (no soak, marked final at once),
/// and a host renamed or removed since the tag exited 1 without naming it.
fn release_selection(
    inv: &Inventory,
    sel: &Selection,
    spec: &str,
    target: &str,
) -> anyhow::Result<Selection> {
    let wave = (sel.groups.iter())
        .find(|g| !g.adhoc && g.hosts.iter().any(|h| h == target))
        .map(|g| g.name.clone());
    let selector = Selector {
        hosts: vec![target.to_owned()],
        waves: wave.into_iter().collect(),
        ..Default::default()
    };
    inv.select(&selector).map_err(|e| {
        Fatal::usage(format!(
            "`--release {spec}` was made for host `{target}`: {e}; was it renamed or removed \
             since? add it back to the inventory under that name to redeploy this release"
        ))
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
            cancel: &run.cancel,
        };
        release_known_good(&r, &*run.fleet, &hosts).await;
    }
    // Told to exit at once: not the rollback targets' reads either.
    if !run.stopped() {
        run.report_rollback_targets(&inv, &hosts).await;
    }
    run.finish(hosts).await
}

/// `plan` and `build`: make the plan (build, and for `plan` the diff),
/// change nothing on any host; no controller lock, no run report. Ctrl-C
/// as in a deploying command: each is told (`cancel_requested`); the first
/// lets planning wind down, the second ends it at once.
pub async fn plan_only(
    g: &Global,
    inv: Inventory,
    sel: Selection,
    command: CommandName,
    req: Request,
) -> anyhow::Result<Outcome> {
    let fleet = Sessions::new(&inv, g.host_key_policy());
    let (sink, reporter) = report::spawn(report::choose(g, command), None);
    let stop = CancellationToken::new();
    let (cancel, signals) = on_signals(stop.clone(), sink.clone());
    let what = Planned {
        inventory: &inv,
        selection: &sel,
        command,
        req: &req,
    };
    let outcome = plan_and_tell(&fleet, &what, &sink, (&stop, &cancel)).await;
    signals.abort();
    drop(sink);
    let _ = reporter.await;
    outcome
}

/// What `plan` or `build` plans.
struct Planned<'a> {
    inventory: &'a Inventory,
    selection: &'a Selection,
    command: CommandName,
    req: &'a Request,
}

/// Make the plan under the run's cancel (`stop`: the first Ctrl-C;
/// `cancel`: its level), close the fleet, report the plan and the summary.
async fn plan_and_tell<F: Fleet>(
    fleet: &Arc<F>,
    what: &Planned<'_>,
    sink: &EventSink,
    (stop, cancel): (&CancellationToken, &CancelWatch),
) -> anyhow::Result<Outcome> {
    let run_id = crate::activation::RunId::parse(&crate::state::clock::new_run_id())?;
    let p = Planning {
        fleet,
        inventory: what.inventory,
        selection: what.selection,
        run_id: &run_id,
        sink,
        stop,
    };
    let plan = plan::make_until_aborted(&p, what.req, cancel).await;
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
        command: what.command,
        run_id: None,
        ending,
        exit_code: outcome as u8,
        ok: plan.hosts().count() - failed,
        failed,
        hosts: Vec::new(),
    });
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
    judging: plan::Judging,
) -> anyhow::Result<Outcome> {
    let req = Request::Diff {
        source: source(&inv, allow_dirty)?,
        judging,
    };
    plan_only(g, inv, sel, CommandName::Plan, req).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::activation::fake_host::FakeHost;

    const WAVES: &str = r#"
[builder]
address = "b"
[hosts.web1]
address = "10.0.0.1"
[hosts.web2]
address = "10.0.0.2"
[[waves]]
name = "canary"
hosts = ["web1"]
soak = "60s"
max_failures = 0
[[waves]]
name = "main"
hosts = ["web2"]
"#;

    fn waves_inventory() -> Inventory {
        Inventory::parse(std::path::Path::new("/inv/inventory.toml"), WAVES).unwrap()
    }

    /// `push --release release/web1 --wave canary` (or no selector): web1
    /// goes in its wave, with the wave's soak, not the ad-hoc group.
    #[test]
    fn a_release_keeps_its_hosts_wave() {
        let inv = waves_inventory();
        for selector in [
            Selector {
                waves: vec!["canary".into()],
                ..Default::default()
            },
            Selector::default(),
        ] {
            let sel = inv.select(&selector).unwrap();
            let got = release_selection(&inv, &sel, "release/web1", "web1").unwrap();
            assert_eq!(got.groups.len(), 1, "{got:?}");
            let g = &got.groups[0];
            assert_eq!((g.name.as_str(), g.adhoc), ("canary", false), "{got:?}");
            assert_eq!(g.hosts, ["web1"]);
            assert_eq!(g.soak, Duration::from_secs(60));
        }
        let by_host = Selector {
            hosts: vec!["web1".into()],
            ..Default::default()
        };
        let sel = inv.select(&by_host).unwrap();
        let got = release_selection(&inv, &sel, "release/web1", "web1").unwrap();
        assert!(got.groups[0].adhoc, "{got:?}");
    }

    /// A release whose host is no longer in the inventory: a usage error
    /// (exit 2) naming the tag and the host.
    #[test]
    fn a_release_for_a_host_gone_from_the_inventory_is_a_usage_error() {
        let inv = waves_inventory();
        let sel = inv.select(&Selector::default()).unwrap();
        let e = release_selection(&inv, &sel, "release/web9", "web9").unwrap_err();
        let fatal = e.downcast_ref::<Fatal>().expect("a Fatal");
        assert_eq!(fatal.outcome, Outcome::Usage);
        let msg = e.to_string();
        assert!(msg.contains("`--release release/web9`"), "{msg}");
        assert!(msg.contains("host `web9`"), "{msg}");
    }
    use crate::fleet::fake::{Build, FakeBuilder, FakeFleet};
    use crate::runner::cancel;

    /// `build` with a builder whose Nix ignores being told to stop: the
    /// second Ctrl-C ends planning at once, the plan cancelled (it did
    /// nothing: the first had started a wait of up to 30 s for the build).
    #[tokio::test(start_paused = true)]
    async fn the_second_ctrl_c_ends_a_plan_at_once() {
        let src = r#"
[builder]
address = "b"
flake = false
[hosts.web1]
address = "10.0.0.1"
"#;
        let inv = Inventory::parse(std::path::Path::new("/inv/inventory.toml"), src).unwrap();
        let sel = inv.select(&Default::default()).unwrap();
        let running = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web-24.05";
        let web1 = FakeHost::new(&crate::nix::StorePath::parse(running).unwrap());
        let fleet = FakeFleet::new(&[("web1", &web1)], FakeBuilder::new(Build::Deaf));
        let (sink, events) = EventSink::capture();
        let (canceller, cancel) = cancel::channel();
        let stop = CancellationToken::new();
        let ctrl_c = {
            let (canceller, stop) = (canceller.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                canceller.escalate();
                stop.cancel();
                tokio::time::sleep(Duration::from_secs(1)).await;
                canceller.escalate();
            })
        };
        let req = Request::Build {
            source: Source {
                commit: "a".repeat(40),
                dirty: false,
            },
        };
        let what = Planned {
            inventory: &inv,
            selection: &sel,
            command: CommandName::Build,
            req: &req,
        };
        let started = tokio::time::Instant::now();
        plan_and_tell(&fleet, &what, &sink, (&stop, &cancel))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "planning went on after the second Ctrl-C: {:?}",
            started.elapsed()
        );
        ctrl_c.await.unwrap();
        let events = events.take();
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::PlanReady {
                    cancelled: Some(_),
                    ..
                }
            )),
            "{events:?}"
        );
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Summary {
                ending: Ending::CancelledBeforeRun,
                ..
            }
        )));
    }
}
