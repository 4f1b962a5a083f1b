//! The plan, the waves and the per-host pipeline together, on fake hosts
//! (no root, no network): what the runner does with a plan's refusals, a
//! failed soak, Ctrl-C during the build, a host already on its candidate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::activation::fake_host::{Behaviour, FakeHost, KNOWN_GOOD, SYSTEM};
use crate::activation::{ActivationEvent, HostOutcome, RollbackMode, RollbackOutcome};
use crate::fleet::fake::{Build, FakeBuilder, FakeFleet};
use crate::nix::StorePath;
use crate::nix::build::BuildFailure;
use crate::plan::{self, Candidate, Planning, Refusal, Request, Source};
use crate::runner::cancel;

const OLD: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web-24.05";
const NEW: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web-24.11";

fn sp(p: &str) -> StorePath {
    StorePath::parse(p).unwrap()
}

/// Waves canary = [web1] then main = [web2, web3].
fn inventory(main_failures: usize, canary_soak: &str) -> Arc<Inventory> {
    let src = format!(
        r#"
[defaults]
activation_timeout = "60s"
health_checks = [{{ command = "systemctl is-active nginx", timeout = "10s" }}]
[builder]
address = "b"
flake = false
[hosts.web1]
address = "10.0.0.1"
[hosts.web2]
address = "10.0.0.2"
[hosts.web3]
address = "10.0.0.3"
[[waves]]
name = "canary"
hosts = ["web1"]
max_failures = 0
soak = "{canary_soak}"
[[waves]]
name = "main"
hosts = ["web2", "web3"]
max_failures = {main_failures}
"#
    );
    Arc::new(Inventory::parse(Path::new("/inv/inventory.toml"), &src).unwrap())
}

struct Fixture {
    inv: Arc<Inventory>,
    hosts: HashMap<&'static str, FakeHost>,
    fleet: Arc<FakeFleet>,
    ctx: RunContext<FakeFleet>,
    events: crate::report::Captured,
    canceller: cancel::Canceller,
}

fn fixture(inv: Arc<Inventory>, on: [&str; 3], build: Build) -> Fixture {
    fixture_with(inv, on, FakeBuilder::new(build))
}

fn fixture_with(inv: Arc<Inventory>, on: [&str; 3], builder: FakeBuilder) -> Fixture {
    let hosts: HashMap<&'static str, FakeHost> = ["web1", "web2", "web3"]
        .into_iter()
        .zip(on)
        .map(|(h, c)| (h, FakeHost::new(&sp(c))))
        .collect();
    let list: Vec<(&str, &FakeHost)> = hosts.iter().map(|(n, h)| (*n, h)).collect();
    let fleet = FakeFleet::new(&list, builder);
    let (sink, events) = EventSink::capture();
    let (canceller, watch) = cancel::channel();
    let ctx = RunContext {
        inventory: inv.clone(),
        fleet: fleet.clone(),
        run_id: RunId::parse("r1").unwrap(),
        allow_reboot: false,
        allow_pending_reboot: false,
        magic_rollback: true,
        sink,
        stop: CancellationToken::new(),
        cancel: watch,
    };
    Fixture {
        inv,
        hosts,
        fleet,
        ctx,
        events,
        canceller,
    }
}

fn ready(closure: &str) -> Verdict {
    ready_on(closure, OLD)
}

/// Ready, the plan having read the host running `running`.
fn ready_on(closure: &str, running: &str) -> Verdict {
    Verdict::Ready {
        candidate: Candidate {
            closure: sp(closure),
            earlier_gates: Vec::new(),
            generation: None,
            never_validated: false,
            commit: None,
        },
        running: Some(sp(running)),
    }
}

fn plan_of(inv: &Inventory, verdict: impl FnMut(&str) -> Verdict) -> Plan {
    plan_for(crate::gates::Goal::Gated, inv, verdict)
}

fn plan_for(
    goal: crate::gates::Goal,
    inv: &Inventory,
    mut verdict: impl FnMut(&str) -> Verdict,
) -> Plan {
    let sel = inv.select(&Default::default()).unwrap();
    Plan::assemble(goal, None, &sel, &mut verdict)
}

/// Planning over the fixture's fleet, for `sel`.
fn planning<'a>(f: &'a Fixture, sel: &'a crate::inventory::Selection) -> Planning<'a, FakeFleet> {
    Planning {
        fleet: &f.fleet,
        inventory: &f.inv,
        selection: sel,
        run_id: &f.ctx.run_id,
        sink: &f.ctx.sink,
        stop: &f.ctx.stop,
    }
}

fn kinds(hosts: &[HostSummary]) -> Vec<(String, OutcomeKind)> {
    hosts
        .iter()
        .map(|h| (h.host.clone(), h.outcome()))
        .collect()
}

fn untouched(f: &Fixture, host: &str) {
    let st = f.hosts[host].state();
    assert_eq!(st.current, sp(OLD), "{host} was switched");
    assert!(st.jobs.is_empty(), "{host} ran a switch: {:?}", st.jobs);
}

#[tokio::test(start_paused = true)]
async fn a_canary_refused_before_activation_stops_later_waves() {
    let refusals = [
        Refusal::Build {
            failure: BuildFailure::Eval {
                log_tail: vec!["error: undefined variable 'x'".into()],
            },
        },
        Refusal::Drift {
            packages: vec!["openssl".into()],
        },
        Refusal::Unreachable {
            error: "connection refused".into(),
        },
        Refusal::Locked {
            holder: "run r0 pid 1 on elsewhere".into(),
        },
    ];
    for refusal in refusals {
        let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
        let plan = plan_of(&f.inv, |h| match h {
            "web1" => Verdict::Refused {
                refusal: refusal.clone(),
            },
            _ => ready(NEW),
        });
        let hosts = run(&f.ctx, plan, AlreadyThere).await;
        assert_eq!(
            kinds(&hosts),
            [
                ("web1".into(), OutcomeKind::Refused),
                ("web2".into(), OutcomeKind::NotStarted),
                ("web3".into(), OutcomeKind::NotStarted),
            ],
            "{refusal:?}"
        );
        assert_eq!(
            hosts[1].end,
            HostEnd::NotStarted {
                why: crate::runner::NotStarted::EarlierWaveFailed {
                    wave: "canary".into()
                }
            }
        );
        assert_eq!(exit_code(&hosts), 1);
        for h in ["web2", "web3"] {
            untouched(&f, h);
        }
    }
}

/// Every host never started is told the same way, whether the runner
/// did not start it (a failed canary) or the plan was cancelled:
/// `host_not_started`, then its `host_finished` (the runner's gave no
/// `host_finished`, a cancelled plan's no `host_not_started`).
#[tokio::test(start_paused = true)]
async fn a_host_never_started_is_told_not_started_then_finished() {
    let told =
        |f: &Fixture, host: &str| -> Vec<&'static str> {
            (f.events.take().into_iter())
                .filter_map(|e| match e {
                    Event::Runner(crate::runner::RunnerEvent::HostNotStarted {
                        host: h, ..
                    }) if h == host => Some("host_not_started"),
                    Event::HostFinished(s) if s.host == host => {
                        assert_eq!(s.outcome(), OutcomeKind::NotStarted);
                        Some("host_finished")
                    }
                    _ => None,
                })
                .collect()
        };
    let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
    f.fleet.unreachable.lock().unwrap().insert("web1".into());
    run(&f.ctx, plan_of(&f.inv, |_| ready(NEW)), AlreadyThere).await;
    assert_eq!(told(&f, "web2"), ["host_not_started", "host_finished"]);
    let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
    let mut plan = plan_of(&f.inv, |_| ready(NEW));
    plan.cancelled = Some(crate::plan::PlanStage::Build);
    run(&f.ctx, plan, AlreadyThere).await;
    assert_eq!(told(&f, "web2"), ["host_not_started", "host_finished"]);
}

#[tokio::test(start_paused = true)]
async fn a_canary_unreachable_at_activation_stops_later_waves() {
    let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
    f.fleet.unreachable.lock().unwrap().insert("web1".into());
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    assert_eq!(hosts[0].outcome(), OutcomeKind::Failed);
    assert!(matches!(
        hosts[0].end.outcome(),
        Some(HostOutcome::Failed {
            gate: crate::gates::Gate::Copy,
            ..
        })
    ));
    assert_eq!(hosts[1].outcome(), OutcomeKind::NotStarted);
    untouched(&f, "web2");
}

/// A copy to one host fails; the others succeed at once.
struct CopyFailsOn(&'static str);

impl Stager for CopyFailsOn {
    async fn stage(
        &self,
        host: Arc<str>,
        _: StorePath,
    ) -> anyhow::Result<crate::nix::copy::CopyOutcome> {
        if &*host == self.0 {
            anyhow::bail!("connection reset while copying");
        }
        Ok(crate::nix::copy::CopyOutcome::AlreadyPresent)
    }
}

/// A failed copy ends its host as soon as it is known: main (no failure
/// allowed, 10 at once) starts none of its other hosts (web3 was switched
/// alongside web2, whose failure was recorded only once it took a slot).
/// The copy gate's failure is told once.
#[tokio::test(start_paused = true)]
async fn a_failed_copy_fails_its_wave_before_another_host_switches() {
    let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, CopyFailsOn("web2")).await;
    assert_eq!(
        kinds(&hosts),
        [
            ("web1".into(), OutcomeKind::KnownGood),
            ("web2".into(), OutcomeKind::Failed),
            ("web3".into(), OutcomeKind::NotStarted),
        ]
    );
    untouched(&f, "web3");
    let copy_failed = f
        .events
        .take()
        .into_iter()
        .filter(|e| {
            matches!(e, Event::GateFailed { host, gate: crate::gates::Gate::Copy, reason }
                if host == "web2" && format!("{reason:?}").contains("connection reset"))
        })
        .count();
    assert_eq!(copy_failed, 1);
}

/// The roots of closures staged ahead on `host` (link -> closure).
fn staged_roots(f: &Fixture, host: &str) -> Vec<(String, String)> {
    let st = f.hosts[host].state();
    st.staged_roots.clone().into_iter().collect()
}

/// The main wave's closures, copied while the canary activates and soaks,
/// are rooted on their hosts (the hosts' `nix.gc.automatic` deleted them
/// during a long soak, and their realise failed the copy gate) until the
/// run lets each host go; the canary, copied as its wave starts, gets no
/// root: no command more on its way.
#[tokio::test(start_paused = true)]
async fn closures_copied_ahead_of_their_wave_are_rooted_until_let_go() {
    let f = fixture(inventory(0, "60s"), [OLD; 3], Build::Hangs);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let during_soak = async {
        tokio::time::sleep(Duration::from_secs(40)).await;
        ["web1", "web2", "web3"].map(|h| staged_roots(&f, h))
    };
    let (hosts, during) = tokio::join!(run(&f.ctx, plan, CopyFailsOn("none")), during_soak);
    let root = "/nix/var/nix/gcroots/nixgate-staged/r1".to_string();
    assert_eq!(during[0], []);
    for held in &during[1..] {
        assert_eq!(*held, [(root.clone(), NEW.to_string())]);
    }
    assert!(hosts.iter().all(|h| h.outcome() == OutcomeKind::KnownGood));
    for h in ["web1", "web2", "web3"] {
        assert_eq!(staged_roots(&f, h), [], "{h} keeps its root");
    }
    let ran = |h: &str| f.hosts[h].state().ran.clone();
    let rooting = |c: &String| c.starts_with("hold-staged ") || c.starts_with("rm ");
    assert!(!ran("web1").iter().any(rooting), "{:?}", ran("web1"));
    // web2: rooted, activated, then the root removed (once).
    let web2: Vec<String> = ran("web2").into_iter().filter(rooting).collect();
    assert_eq!(
        web2,
        [
            format!("hold-staged /nix/var/nix/gcroots/nixgate-staged r1 {NEW} "),
            format!("rm -f {root} (within 120s)"),
        ]
    );
}

/// A wave that never starts (its canary taken back after the soak): the
/// roots of its hosts' closures are removed as the run lets them go.
#[tokio::test(start_paused = true)]
async fn a_wave_that_never_starts_leaves_no_root() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    f.hosts["web1"].state().unhealthy_after = Some(1);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, CopyFailsOn("none")).await;
    assert_eq!(hosts[1].outcome(), OutcomeKind::NotStarted);
    for h in ["web2", "web3"] {
        untouched(&f, h);
        let ran = f.hosts[h].state().ran.clone();
        assert!(ran[0].starts_with("hold-staged "), "{ran:?}");
        assert_eq!(staged_roots(&f, h), [], "{h} keeps its root");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_host_in_main_counts_against_main_only() {
    // main allows one failure: a refused web3 uses it, web2 still deploys.
    let f = fixture(inventory(1, "0s"), [OLD; 3], Build::Hangs);
    let plan = plan_of(&f.inv, |h| match h {
        "web3" => Verdict::Refused {
            refusal: Refusal::Drift {
                packages: vec!["curl".into()],
            },
        },
        _ => ready(NEW),
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    assert_eq!(
        kinds(&hosts),
        [
            ("web1".into(), OutcomeKind::KnownGood),
            ("web2".into(), OutcomeKind::KnownGood),
            ("web3".into(), OutcomeKind::Refused),
        ]
    );
    assert_eq!(f.hosts["web2"].state().current, sp(NEW));
    untouched(&f, "web3");
    assert_eq!(exit_code(&hosts), 1, "a refused host fails the run");
    // Its end was reported as it happened.
    let finished: Vec<String> = f
        .events
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::HostFinished(s) => Some(s.host),
            _ => None,
        })
        .collect();
    assert!(finished.contains(&"web3".to_string()), "{finished:?}");
}

#[tokio::test(start_paused = true)]
async fn a_host_unhealthy_after_its_soak_is_taken_back_and_not_released() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    // web1 passes its health check at activation, fails the one after the soak.
    f.hosts["web1"].state().unhealthy_after = Some(1);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let HostEnd::SoakFailed {
        revoked, rollback, ..
    } = &hosts[0].end
    else {
        panic!("{:?}", hosts[0].end);
    };
    assert_eq!(*revoked, Some(2), "this run's known-good mark is revoked");
    assert!(
        matches!(rollback, Some(RollbackOutcome::RolledBack { to, .. }) if *to == sp(OLD)),
        "{rollback:?}"
    );
    assert_eq!(hosts[0].outcome(), OutcomeKind::RolledBack);
    {
        let st = f.hosts["web1"].state();
        assert_eq!(st.current, sp(OLD), "back on what it ran");
        assert_eq!(st.boot_default, sp(OLD), "and it boots it again");
        assert_eq!(st.profile(KNOWN_GOOD), Some(&sp(OLD)));
        assert!(st.records.contains_key("2.revoked"), "{:?}", st.records);
    }
    // The wave failed: main never started.
    assert_eq!(hosts[1].outcome(), OutcomeKind::NotStarted);
    untouched(&f, "web2");
    // Every host was let go; web1, taken back, keeps its connection for
    // the summary's read of its history (the fake panics on a closed one).
    let closed = f.fleet.closed.lock().unwrap().clone();
    assert_eq!(closed, ["web2".to_string(), "web3".to_string()].into());
    assert!(f.fleet.host("web1").await.is_ok());
    // No release for a host whose known-good was revoked: the release step
    // does not even look at it (a repository that does not exist would
    // otherwise be reported).
    let released = release_events(&f, &f.inv, &"0".repeat(40), &hosts).await;
    assert!(released.is_empty(), "{released:?}");
}

/// `push --reboot`: a systemd change, the canary rebooted into it and
/// verified, healthy at once, unhealthy after its soak: taken back by a
/// reboot too (its systemd came by one), booted and running what it ran.
/// Before, the old system was switched live on the candidate's systemd
/// and kernel.
#[tokio::test(start_paused = true)]
async fn a_host_rebooted_into_its_candidate_is_taken_back_by_a_reboot_after_its_soak() {
    let mut f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    f.ctx.allow_reboot = true;
    f.hosts["web1"].behave(&sp(NEW), Behaviour::systemd_change());
    f.hosts["web1"].state().unhealthy_after = Some(1);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let HostEnd::SoakFailed {
        rollback: Some(RollbackOutcome::RolledBack { to, mode, .. }),
        ..
    } = &hosts[0].end
    else {
        panic!("{:?}", hosts[0].end);
    };
    assert_eq!((to, *mode), (&sp(OLD), RollbackMode::Reboot));
    let st = f.hosts["web1"].state();
    assert_eq!((&st.booted, &st.current), (&sp(OLD), &sp(OLD)));
    assert_eq!(st.boot_default, sp(OLD));
    let reboots = crate::activation::fake_host::reboots(&st.ran);
    assert_eq!(reboots, 2, "{:#?}", st.ran);
}

/// A candidate that locks SSH out AFTER its live switch was confirmed
/// over a new connection (here: once its health check ran): the run's own
/// session goes on (sshd keeps it), and the health checks pass over it.
/// The soak's re-check tries a new connection first: none gets in, so the
/// host is taken back over the run's session and its mark revoked (before:
/// it stayed known-good, released, with no way in but the old session).
#[tokio::test(start_paused = true)]
async fn a_host_that_locks_ssh_out_after_its_confirmation_is_taken_back_after_its_soak() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    f.hosts["web1"].state().locks_out_after = Some(1);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let HostEnd::SoakFailed {
        checks,
        locked_out: Some(error),
        revoked: Some(2),
        rollback: Some(RollbackOutcome::RolledBack { to, .. }),
        kept: None,
    } = &hosts[0].end
    else {
        panic!("{:?}", hosts[0].end);
    };
    assert!(error.contains("no new connections"), "{error}");
    assert!(
        checks.is_empty(),
        "no checks run once locked out: {checks:?}"
    );
    assert_eq!(*to, sp(OLD));
    {
        let st = f.hosts["web1"].state();
        assert_eq!((&st.current, &st.boot_default), (&sp(OLD), &sp(OLD)));
        assert!(
            st.sshd_up,
            "back on what it ran, new connections get in again"
        );
        assert!(st.records.contains_key("2.revoked"), "{:?}", st.records);
    }
    assert_eq!(hosts[1].outcome(), OutcomeKind::NotStarted);
    let released = release_events(&f, &f.inv, &"0".repeat(40), &hosts).await;
    assert!(released.is_empty(), "{released:?}");
}

/// A push of NEW where web1 turns unhealthy after its activation and
/// loses its host lock well into the canary's 30 s soak (its activation
/// takes seconds), when `then` happens to it too.
async fn unhealthy_losing_its_lock(
    f: &Fixture,
    then: impl FnOnce(&FakeHost) + Send + 'static,
) -> Vec<HostSummary> {
    f.hosts["web1"].state().unhealthy_after = Some(1);
    let mut plan = plan_of(&f.inv, |_| ready(NEW));
    let (lock, lost) = crate::activation::host_lock::HostLock::standing();
    plan.locks.insert("web1".into(), lock);
    let web1 = f.hosts["web1"].clone();
    let other = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        lost.store(true, std::sync::atomic::Ordering::SeqCst);
        then(&web1);
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    other.await.unwrap();
    hosts
}

/// Two hosts of a wave lost their locks (their connections dropped past
/// the lease); web2's lock command never answers (its host is wedged).
/// web3 takes its lock again and activates meanwhile, and web2 fails with
/// the lock lost once its command had its time (before: the run's one
/// mutex over every host's lock was held while web2's was taken again, so
/// web3 waited on it, and the run with it, for ever).
#[tokio::test(start_paused = true)]
async fn a_lock_command_that_never_answers_holds_up_no_other_host() {
    let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
    let mut plan = plan_of(&f.inv, |_| ready(NEW));
    for h in ["web2", "web3"] {
        let (lock, lost) = crate::activation::host_lock::HostLock::standing();
        lost.store(true, std::sync::atomic::Ordering::SeqCst);
        plan.locks.insert(h.into(), lock);
    }
    f.fleet.wedged.lock().unwrap().insert("web2".into());
    let hosts = tokio::time::timeout(Duration::from_secs(600), run(&f.ctx, plan, AlreadyThere))
        .await
        .expect("a lock command that never answers held up the run");
    assert_eq!(hosts[2].outcome(), OutcomeKind::KnownGood);
    let Some(HostOutcome::Failed {
        reason:
            crate::activation::FailureReason::LockLost {
                holder: None,
                error: Some(error),
            },
        ..
    }) = hosts[1].end.outcome()
    else {
        panic!("{:?}", hosts[1].end);
    };
    assert!(error.contains("did not start within 120s"), "{error}");
    let finished: Vec<String> = (f.events.take().into_iter())
        .filter_map(|e| match e {
            Event::HostFinished(s) => Some(s.host),
            _ => None,
        })
        .collect();
    assert_eq!(finished, ["web1", "web3", "web2"], "web3 waited for web2");
}

/// A host whose lock was lost during its wave's soak (its connection
/// dropped past the lease) and taken by another run, then found
/// unhealthy: nothing is taken back or revoked under that run (before: its
/// mark was revoked, moving the known-good profile the other run had just
/// moved, and the host switched away from what that run deployed).
#[tokio::test(start_paused = true)]
async fn an_unhealthy_host_whose_lock_another_run_took_during_the_soak_is_left_to_it() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    let hosts = unhealthy_losing_its_lock(&f, |web1| {
        web1.state().lock_taken_by = Some("run r2 pid 7 on other".into());
    })
    .await;
    let HostEnd::SoakFailed {
        revoked: None,
        rollback: None,
        kept: Some(Kept::LockLost),
        ..
    } = &hosts[0].end
    else {
        panic!("{:?}", hosts[0].end);
    };
    let st = f.hosts["web1"].state();
    assert_eq!(st.current, sp(NEW), "left as the other run has it");
    assert!(
        !st.ran.iter().any(|c| c.contains("revoke")),
        "{:#?}",
        st.ran
    );
    assert_eq!(st.profile(KNOWN_GOOD), Some(&sp(NEW)));
}

/// The lock lost during the soak and free again (another run may have
/// come and gone): taken again, the host is taken back only if it is as
/// this run left it (running the candidate, its boot default and its
/// known-good on it); one another run moved in between, live or only its
/// boot default (`--goal boot`), is left (before: switched off what that
/// run deployed, its known-good profile moved by our revoke). This run's
/// own lock command, still holding on until its lease ends (the host never
/// saw the connection drop), is waited for, not taken for another run's.
#[tokio::test(start_paused = true)]
async fn a_lock_lost_and_taken_again_takes_back_only_a_host_as_this_run_left_it() {
    const ODD: &str = "/nix/store/1d1x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web-24.08";
    for case in ["as left", "own lock lingers", "moved", "boot moved"] {
        let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
        let hosts = unhealthy_losing_its_lock(&f, move |web1| match case {
            "moved" => web1.state().current = sp(ODD),
            "boot moved" => web1.state().set_profile(SYSTEM, &sp(ODD)),
            "own lock lingers" => {
                let own = crate::activation::host_lock::holder(&RunId::parse("r1").unwrap());
                web1.state().lock_taken_by = Some(own);
                let web1 = web1.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(40)).await;
                    web1.state().lock_taken_by = None;
                });
            }
            _ => {}
        })
        .await;
        let (kept, rollback) = match &hosts[0].end {
            HostEnd::SoakFailed { kept, rollback, .. } => (*kept, rollback.clone()),
            other => panic!("{case}: {other:?}"),
        };
        let st = f.hosts["web1"].state();
        if case.ends_with("moved") {
            assert_eq!(kept, Some(Kept::LockLost), "{case}");
            assert!(
                !st.ran.iter().any(|c| c.contains("revoke")),
                "{case}: {:#?}",
                st.ran
            );
        } else {
            assert_eq!(kept, None, "{case}: {:#?}", st.ran);
            assert!(
                matches!(rollback, Some(RollbackOutcome::RolledBack { .. })),
                "{case}: {rollback:?}"
            );
            assert_eq!(st.current, sp(OLD), "{case}");
        }
    }
}

/// A new connection after the soak fails for a reason of the controller's
/// own (no key to offer: an agent gone during a long soak): the host is
/// not judged locked out (every host of the wave would have been taken
/// back), a warning says so, and its health checks decide (here: healthy).
/// The lockout check never ran: its mark stays pending (not made final as
/// it is let go), and the run stops before the next wave, whose hosts
/// would fail the same way (before: the mark was made final, and web2 was
/// switched and reverted).
#[tokio::test(start_paused = true)]
async fn a_soak_whose_new_connection_fails_on_this_side_does_not_take_the_host_back() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    let fleet = f.fleet.clone();
    let agent_gone = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        (fleet.no_keys).store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    agent_gone.await.unwrap();
    assert_eq!(
        hosts[0].outcome(),
        OutcomeKind::KnownGood,
        "{:?}",
        hosts[0].end
    );
    assert!(
        f.events.take().iter().any(|e| matches!(
            e,
            Event::Activation {
                activation: crate::activation::ActivationEvent::Warning {
                    warning: crate::activation::Warning::NewConnectionUnproven { .. }
                },
                ..
            }
        )),
        "a warning says the lockout check was not made"
    );
    {
        let st = f.hosts["web1"].state();
        assert!(
            st.records["2"].contains("soak_pending"),
            "{}",
            st.records["2"]
        );
        let soaked = st.ran.iter().any(|c| c.contains("soak-passed"));
        assert!(!soaked, "{:?}", st.ran);
    }
    never_started_after_web1(&f, &hosts[1..]);
}

/// A live switch no new connection can confirm because this machine has no
/// key to offer (its agent gone) says nothing of the candidate, and every
/// host after it would fail the same way: switched, then reverted by its
/// own dead-man. The run starts no more hosts (web2 and web3 switched and
/// were reverted, one at a time, within the wave's budget of 2), and says
/// why: the first host's cause is this machine's own, the rest never start.
#[tokio::test(start_paused = true)]
async fn a_confirmation_failing_on_this_side_starts_no_more_hosts() {
    let f = fixture(one_wave_of_three(""), [OLD; 3], Build::Hangs);
    (f.fleet.no_keys).store(true, std::sync::atomic::Ordering::SeqCst);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let first = hosts[0].end.outcome().expect("web1 ran");
    assert!(first.controllers_own(), "{first:?}");
    assert!(hosts[0].outcome().is_failure(), "{:?}", hosts[0].end);
    never_started_after_web1(&f, &hosts[1..]);
}

/// One wave of web1, web2 and web3, one at a time, 2 failures allowed;
/// `web1` (TOML) added to web1's table.
fn one_wave_of_three(web1: &str) -> Arc<Inventory> {
    let src = format!(
        r#"
[defaults]
activation_timeout = "60s"
[builder]
address = "b"
flake = false
[hosts.web1]
address = "10.0.0.1"
{web1}
[hosts.web2]
address = "10.0.0.2"
[hosts.web3]
address = "10.0.0.3"
[[waves]]
name = "main"
hosts = ["web1", "web2", "web3"]
max_parallel = 1
max_failures = 2
"#
    );
    Arc::new(Inventory::parse(Path::new("/inv/inventory.toml"), &src).unwrap())
}

/// One host's `confirm_address` that does not resolve (a typo, a record
/// not yet published) reads as this machine's: a name it cannot resolve
/// could as well be its own DNS gone (a VPN dropped mid-run), and judged
/// the host's, every soaking host would be taken back for it. The run
/// stops (web1 reverted by its dead-man, back on what it ran; web2 and
/// web3 never started, `controller_failed`), the error naming the name.
#[tokio::test(start_paused = true)]
async fn a_confirm_address_that_does_not_resolve_stops_the_run() {
    let inv = one_wave_of_three(r#"confirm_address = "web1-new.example""#);
    let f = fixture(inv, [OLD; 3], Build::Hangs);
    (f.fleet.confirm_unresolved.lock().unwrap()).insert("web1".into());
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let first = hosts[0].end.outcome().expect("web1 ran");
    assert!(first.controllers_own(), "{first:?}");
    assert_eq!(f.hosts["web1"].state().current, sp(OLD));
    never_started_after_web1(&f, &hosts[1..]);
}

/// `rest` never started: web1's failure, this machine's own, stopped the
/// run before them, and nothing of theirs was touched.
fn never_started_after_web1(f: &Fixture, rest: &[HostSummary]) {
    for h in rest {
        let stopped = NotStarted::ControllerFailed {
            host: "web1".into(),
        };
        assert_eq!(h.end, HostEnd::NotStarted { why: stopped }, "{}", h.host);
        untouched(f, &h.host);
    }
}

/// What the release step says of `hosts` (the fixture's earlier events
/// dropped), releasing `commit` from `inv`'s repository.
async fn release_events(
    f: &Fixture,
    inv: &Inventory,
    commit: &str,
    hosts: &[HostSummary],
) -> Vec<Event> {
    release_events_stopped(f, inv, commit, hosts, false).await
}

async fn release_events_stopped(
    f: &Fixture,
    inv: &Inventory,
    commit: &str,
    hosts: &[HostSummary],
    stopped: bool,
) -> Vec<Event> {
    let source = Source {
        commit: commit.to_owned(),
        dirty: false,
    };
    let _ = f.events.take();
    let (canceller, cancel) = cancel::channel();
    if stopped {
        canceller.escalate();
        canceller.escalate();
    }
    let r = releases::Releasing {
        inventory: inv,
        source: &source,
        run_id: "r1",
        force: false,
        sink: &f.ctx.sink,
        cancel: &cancel,
    };
    // The run is over: the release step opens connections of its own.
    f.fleet.closed.lock().unwrap().clear();
    releases::release_known_good(&r, &*f.fleet, hosts).await;
    f.events.take()
}

/// The known-good generation this run's mark replaced is one whose own
/// mark never finished (cut off before its record: it may be the very
/// candidate an earlier run rolled back): the take-back does not go there
/// (`nixgate rollback`'s rule) but to what the host ran before the run.
#[tokio::test(start_paused = true)]
async fn a_take_back_never_lands_on_an_unfinished_mark() {
    let mid = "/nix/store/3mid3mid3mid3mid3mid3mid3mid3mid-nixos-system-web-24.08";
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    {
        let mut st = f.hosts["web1"].state();
        st.unhealthy_after = Some(1);
        st.set_profile(KNOWN_GOOD, &sp(mid));
    }
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    match &hosts[0].end {
        HostEnd::SoakFailed {
            revoked: Some(3),
            rollback: Some(RollbackOutcome::RolledBack { to, .. }),
            ..
        } => assert_eq!(to, &sp(OLD)),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.hosts["web1"].state().current, sp(OLD));
}

/// web1's known-good (OLD, generation 1) differs in systemd from what it
/// runs (MID: a systemd update deferred to boot, never marked, then
/// booted): the soak's take-back after NEW fails goes to MID, not live
/// onto OLD's older systemd (NixOS 25.11's inhibitors refuse that switch:
/// the take-back failed and left the failing candidate live).
#[tokio::test(start_paused = true)]
async fn a_take_back_does_not_switch_live_to_a_known_good_needing_a_reboot() {
    let mid = "/nix/store/3mid3mid3mid3mid3mid3mid3mid3mid-nixos-system-web-24.08";
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    f.hosts["web1"].behave(
        &sp(OLD),
        crate::activation::fake_host::Behaviour::systemd_change(),
    );
    {
        let mut st = f.hosts["web1"].state();
        st.unhealthy_after = Some(1);
        st.set_profile(SYSTEM, &sp(mid));
        (st.current, st.booted, st.boot_default) = (sp(mid), sp(mid), sp(mid));
    }
    let plan = plan_of(&f.inv, |h| {
        if h == "web1" {
            ready_on(NEW, mid)
        } else {
            ready(NEW)
        }
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    match &hosts[0].end {
        HostEnd::SoakFailed {
            revoked: Some(2),
            rollback: Some(RollbackOutcome::RolledBack { to, .. }),
            ..
        } => assert_eq!(to, &sp(mid)),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.hosts["web1"].state().current, sp(mid));
}

/// A host that already ran the candidate, found unhealthy after its soak:
/// this run did not change it, so nothing is taken back and no generation
/// is revoked (before: the re-mark's generation, proven by an earlier run,
/// was deleted and the host switched to the one before it). It fails its
/// wave all the same.
#[tokio::test(start_paused = true)]
async fn an_unhealthy_host_the_run_did_not_change_is_not_taken_back() {
    let f = fixture(inventory(0, "30s"), [NEW, OLD, OLD], Build::Hangs);
    f.hosts["web1"].state().unhealthy_after = Some(1);
    let plan = plan_of(&f.inv, |h| match h {
        "web1" => ready_on(NEW, NEW),
        _ => ready(NEW),
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let HostEnd::SoakFailed {
        revoked, rollback, ..
    } = &hosts[0].end
    else {
        panic!("{:?}", hosts[0].end);
    };
    assert_eq!((*revoked, rollback), (None, &None));
    assert!(matches!(
        &hosts[0].end,
        HostEnd::SoakFailed {
            kept: Some(crate::deploy::Kept::NotChanged),
            ..
        }
    ));
    assert_eq!(hosts[0].outcome(), OutcomeKind::Failed);
    assert!(!hosts[0].was_taken_back());
    {
        let st = f.hosts["web1"].state();
        assert_eq!(st.current, sp(NEW), "left as it was");
        assert_eq!(st.current_generation(KNOWN_GOOD), 1);
        assert!(st.records.contains_key("1"), "{:?}", st.records);
        assert!(!st.deleted.contains(&(KNOWN_GOOD.to_owned(), 1)));
    }
    assert_eq!(hosts[1].outcome(), OutcomeKind::NotStarted);
}

/// The same host, running the candidate without its proof (a `--goal
/// test` run before this one, its boot default left on OLD): this run's
/// mark added the known-good generation, and the soak disproved it, so it
/// is revoked (before: kept, a host certified known-good while unhealthy),
/// and the boot default this run moved goes back to OLD (before: a reboot
/// booted the system the soak found unhealthy); what it runs is left.
#[tokio::test(start_paused = true)]
async fn an_unchanged_host_loses_the_known_good_this_run_added() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    {
        let mut st = f.hosts["web1"].state();
        st.unhealthy_after = Some(1);
        st.current = sp(NEW);
    }
    let plan = plan_of(&f.inv, |_| ready_on(NEW, NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    match &hosts[0].end {
        HostEnd::SoakFailed {
            revoked: Some(2),
            rollback: Some(RollbackOutcome::RolledBack { to, mode, .. }),
            kept: Some(crate::deploy::Kept::NotChanged),
            ..
        } => assert_eq!((to, *mode), (&sp(OLD), RollbackMode::BootOnly)),
        other => panic!("{other:?}"),
    }
    assert_eq!(hosts[0].outcome(), OutcomeKind::Failed);
    let st = f.hosts["web1"].state();
    assert_eq!(st.boot_default, sp(OLD));
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)));
    assert_eq!(st.current, sp(NEW), "left as it runs");
    assert_eq!(st.current_generation(KNOWN_GOOD), 1);
    assert_eq!(st.profile(KNOWN_GOOD), Some(&sp(OLD)));
    assert!(st.records.contains_key("2.revoked"), "{:?}", st.records);
}

/// web1 runs NEW, and its known-good generation 2 of NEW is an earlier
/// run's (r0) mark whose soak never passed (its controller was killed
/// mid-soak: the record says `soak_pending`), its system profile and boot
/// default on NEW too.
fn on_an_unsoaked_mark(f: &Fixture) {
    let mut st = f.hosts["web1"].state();
    st.current = sp(NEW);
    st.boot_default = sp(NEW);
    st.set_profile(SYSTEM, &sp(NEW));
    st.set_profile(KNOWN_GOOD, &sp(NEW));
    let rec = format!(
        r#"{{"generation":2,"replaced":1,"created":true,"soak_pending":true,"version":1,"host":"web1","closure":"{NEW}","marked_at":"2026-01-01T00:00:00Z","commit":null,"run_id":"r0","gates":[]}}"#
    );
    st.records.insert("2".into(), rec);
}

/// The next run of the same commit finds web1 already current: its mark
/// re-uses generation 2 (`created: false`), still provisional, and the
/// soak finds the host unhealthy: generation 2 is revoked (before: kept,
/// as if an earlier run had proven it, so NEW stayed known-good though no
/// soak ever passed on it and this one failed), the known-good profile
/// back on OLD.
#[tokio::test(start_paused = true)]
async fn an_unsoaked_mark_a_soak_then_disproves_is_revoked() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    on_an_unsoaked_mark(&f);
    f.hosts["web1"].state().unhealthy_after = Some(1);
    let plan = plan_of(&f.inv, |h| match h {
        "web1" => ready_on(NEW, NEW),
        _ => ready(NEW),
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    match &hosts[0].end {
        HostEnd::SoakFailed {
            revoked: Some(2),
            kept: Some(crate::deploy::Kept::NotChanged),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let st = f.hosts["web1"].state();
    assert_eq!(st.profile(KNOWN_GOOD), Some(&sp(OLD)));
    assert!(st.records.contains_key("2.revoked"), "{:?}", st.records);
    assert_eq!(st.current, sp(NEW), "left as it runs");
}

/// The same host, healthy after the soak: the re-mark is provisional while
/// the canary soaks, and made final as the host is let go; the main wave,
/// which does not soak, marks final at once.
#[tokio::test(start_paused = true)]
async fn a_mark_is_provisional_until_its_soak_passes() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    on_an_unsoaked_mark(&f);
    let plan = plan_of(&f.inv, |h| match h {
        "web1" => ready_on(NEW, NEW),
        _ => ready(NEW),
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let pending = |h: &HostSummary| match h.end.outcome() {
        Some(
            HostOutcome::KnownGood { mark }
            | HostOutcome::AlreadyCurrent {
                mark: Some(mark), ..
            },
        ) => mark.record.soak_pending,
        other => panic!("{other:?}"),
    };
    assert!(pending(&hosts[0]), "marked while a soak was to follow");
    assert!(
        !pending(&hosts[1]) && !pending(&hosts[2]),
        "no soak follows"
    );
    let record = |h: &str, g: &str| f.hosts[h].state().records[g].clone();
    let web1 = record("web1", "2");
    assert!(
        web1.contains(r#""run_id":"r1""#) && !web1.contains("soak_pending"),
        "{web1}"
    );
    assert!(!record("web2", "2").contains("soak_pending"));
    assert!(
        f.hosts["web1"]
            .state()
            .ran
            .iter()
            .any(|c| c.starts_with("sudo soak-passed") || c.starts_with("soak-passed")),
        "{:?}",
        f.hosts["web1"].state().ran
    );
}

/// The same host, healthy, its canary's soak of an hour cut short by a
/// first Ctrl-C a minute into the wait: re-checked at once, it passes, but
/// an hour's soak never ran, so its mark stays pending (before, SOAKED was
/// sent as it was let go and made it final: a rollback target and a
/// validated closure on a minute's soak), and a warning says so.
#[tokio::test(start_paused = true)]
async fn a_soak_cut_short_leaves_the_mark_pending() {
    let f = fixture(inventory(0, "1h"), [OLD; 3], Build::Hangs);
    on_an_unsoaked_mark(&f);
    let plan = plan_of(&f.inv, |h| match h {
        "web1" => ready_on(NEW, NEW),
        _ => ready(NEW),
    });
    let (web1, canceller) = (f.hosts["web1"].clone(), f.canceller.clone());
    tokio::spawn(async move {
        let remarked = || web1.state().records["2"].contains(r#""run_id":"r1""#);
        while !remarked() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        canceller.escalate();
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    assert_eq!(hosts[0].outcome(), OutcomeKind::AlreadyCurrent);
    let cut = crate::runner::SoakCut::Cancelled;
    assert_eq!(hosts[0].soak_left, Some(SoakLeft::CutShort { cut }));
    assert!(hosts[0].fails_run());
    {
        let st = f.hosts["web1"].state();
        assert!(st.records["2"].contains(r#""run_id":"r1""#));
        assert!(
            st.records["2"].contains("soak_pending"),
            "{}",
            st.records["2"]
        );
        let soaked = st.ran.iter().any(|c| c.contains("soak-passed"));
        assert!(!soaked, "{:?}", st.ran);
    }
    let events = f.events.take();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Runner(crate::runner::RunnerEvent::SoakStarted { seconds: 3600, .. })
    )));
    let warned: Vec<_> = (events.iter())
        .filter_map(|e| match e {
            Event::Activation {
                host,
                activation: ActivationEvent::Warning { warning },
            } => Some((host.as_str(), warning)),
            _ => None,
        })
        .collect();
    assert_eq!(
        warned,
        [(
            "web1",
            &crate::activation::Warning::SoakCutShort {
                generation: 2,
                cut: crate::runner::SoakCut::Cancelled
            }
        )]
    );
}

/// A push from a dirty work tree (`--allow-dirty`) records no commit in
/// the host's known-good record: HEAD was not what was built (the next
/// plan's diff read HEAD's `flake.lock` as the running system's). A clean
/// one records its commit.
#[tokio::test(start_paused = true)]
async fn a_dirty_push_records_no_commit() {
    for dirty in [true, false] {
        let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
        let sel = f.inv.select(&Default::default()).unwrap();
        let source = Source {
            commit: "c".repeat(40),
            dirty,
        };
        let plan = Plan::assemble(
            crate::gates::Goal::Gated,
            Some(source),
            &sel,
            &mut |_: &str| ready(NEW),
        );
        let hosts = run(&f.ctx, plan, AlreadyThere).await;
        let Some(HostOutcome::KnownGood { mark }) = hosts[0].end.outcome() else {
            panic!("{:?}", hosts[0]);
        };
        let want = (!dirty).then(|| "c".repeat(40));
        assert_eq!(mark.record.commit, want, "dirty: {dirty}");
    }
}

/// `push --wave canary` alone, stopped mid-soak: its canary, re-checked at
/// once, passes, but the soak the wave asks never ran. The run exits 1
/// (its mark left pending, said in its summary): before, with no wave
/// after it to stop, it exited 0 and reported the canary known-good, and
/// `push --wave canary && push --wave main` rolled the fleet on it.
#[tokio::test(start_paused = true)]
async fn a_single_wave_cut_mid_soak_fails_the_run() {
    let f = fixture(inventory(0, "1h"), [OLD; 3], Build::Hangs);
    let selector = crate::inventory::Selector {
        waves: vec!["canary".into()],
        ..Default::default()
    };
    let sel = f.inv.select(&selector).unwrap();
    let plan = Plan::assemble(crate::gates::Goal::Gated, None, &sel, &mut |_: &str| {
        ready(NEW)
    });
    let (web1, canceller) = (f.hosts["web1"].clone(), f.canceller.clone());
    tokio::spawn(async move {
        let marked = || {
            let st = web1.state();
            st.records.values().any(|r| r.contains(r#""run_id":"r1""#))
        };
        while !marked() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        canceller.escalate();
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    assert_eq!(kinds(&hosts), [("web1".into(), OutcomeKind::KnownGood)]);
    let cut = crate::runner::SoakCut::Cancelled;
    assert_eq!(hosts[0].soak_left, Some(SoakLeft::CutShort { cut }));
    assert_eq!(exit_code(&hosts), 1);
    let json = serde_json::to_value(&hosts[0]).unwrap();
    assert_eq!(
        json["soak_left"],
        serde_json::json!({"why": "cut_short", "cut": "cancelled"})
    );
    let back: HostSummary = serde_json::from_value(json).unwrap();
    assert!(back.fails_run(), "read back from the run report");
    // JSON consumers take a host's last `host_finished`: it says so too
    // (before, the only one was the known-good end before the soak).
    let finished: Vec<HostSummary> = (f.events.take().into_iter())
        .filter_map(|e| match e {
            Event::HostFinished(s) if s.host == "web1" => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 2, "{finished:?}");
    assert_eq!(finished.last(), Some(&hosts[0]));
    let st = f.hosts["web1"].state();
    assert!(
        !st.ran.iter().any(|c| c.contains("soak-passed")),
        "{:?}",
        st.ran
    );
}

/// The same host, healthy after its soak, whose SOAKED fails (the host's
/// `/nix` gone under the session): its mark stays pending, and the run's
/// events say so, as a warning the JSON carries (before: a tracing line
/// only, and the report showed a known-good host the operator took for
/// proven), and the run fails for it (`soak_left` `not_recorded`; before,
/// it exited 0).
#[tokio::test(start_paused = true)]
async fn a_soak_pass_the_host_did_not_record_is_reported() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    on_an_unsoaked_mark(&f);
    let paths = crate::activation::HostPaths::for_os(f.inv.host("web1").unwrap().os);
    let (prof, dir) = (&paths.known_good_profile, &paths.known_good_records);
    let soaked = format!("soak-passed {prof} {} 2 r1", dir.trim_end_matches('/'));
    f.hosts["web1"].state().break_once = vec![soaked.clone(), format!("sudo {soaked}")];
    let plan = plan_of(&f.inv, |h| match h {
        "web1" => ready_on(NEW, NEW),
        _ => ready(NEW),
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let record = f.hosts["web1"].state().records["2"].clone();
    assert!(record.contains(r#""run_id":"r1""#) && record.contains("soak_pending"));
    // The run fails for it (it exited 0), and web1's last host_finished
    // says so.
    assert_eq!(hosts[0].soak_left, Some(SoakLeft::NotRecorded));
    assert!(hosts[0].fails_run());
    assert_eq!(crate::deploy::exit_code(&hosts), 1);
    let events = f.events.take();
    let last_end = (events.iter().rev()).find_map(|e| match e {
        Event::HostFinished(s) if s.host == "web1" => Some(s),
        _ => None,
    });
    assert_eq!(last_end, Some(&hosts[0]));
    let warned: Vec<Event> = (events.into_iter())
        .filter(|e| {
            matches!(
                e,
                Event::Activation {
                    activation: ActivationEvent::Warning { .. },
                    ..
                }
            )
        })
        .collect();
    match &warned[..] {
        [
            Event::Activation {
                host,
                activation:
                    ActivationEvent::Warning {
                        warning:
                            crate::activation::Warning::SoakPassNotRecorded {
                                generation: 2,
                                error,
                            },
                    },
            },
        ] => assert!(host == "web1" && !error.is_empty(), "{host} {error}"),
        other => panic!("{other:?}"),
    }
    let json = serde_json::to_string(&warned[0]).unwrap();
    let back: Event = serde_json::from_str(&json).unwrap();
    assert_eq!(back, warned[0], "{json}");
    assert!(
        json.contains(r#""kind":"soak_pass_not_recorded""#),
        "{json}"
    );
}

/// The same host under `--goal boot`: the run was asked to make the
/// candidate its boot default and switched nothing live, so the soak
/// re-checks and takes back nothing (it ends `AlreadyCurrent` like a host
/// the goal switched; before, it was re-checked, and with the boot default
/// put back, undid what the run was asked to do).
#[tokio::test(start_paused = true)]
async fn a_boot_goal_host_already_running_the_candidate_is_not_rechecked() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    {
        let mut st = f.hosts["web1"].state();
        st.unhealthy_after = Some(0);
        st.current = sp(NEW);
    }
    let plan = plan_for(crate::gates::Goal::Boot, &f.inv, |_| ready_on(NEW, NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    match hosts[0].end.outcome() {
        Some(HostOutcome::AlreadyCurrent { boot_before, .. }) => {
            assert_eq!(boot_before, &Some(sp(OLD)))
        }
        other => panic!("{other:?}: {:?}", hosts[0].end),
    }
    let st = f.hosts["web1"].state();
    assert_eq!(st.boot_default, sp(NEW), "the boot default the run set");
    assert_eq!(st.health_checks, 0, "{:?}", hosts[0].end);
}

/// A change deferred to the next boot (`--allow-pending-reboot`), the host
/// unhealthy after the soak: it still runs what it ran, so those checks say
/// nothing of the candidate, and it is not taken back (before, it was
/// switched to its known-good live and as the boot default, the pending
/// change dropped for checks of the old system).
#[tokio::test(start_paused = true)]
async fn a_host_pending_a_reboot_is_not_taken_back_for_what_it_still_runs() {
    let mut f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    f.ctx.allow_pending_reboot = true;
    f.hosts["web1"].inhibited(&sp(NEW));
    f.hosts["web1"].state().unhealthy_after = Some(0);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    assert!(
        matches!(
            hosts[0].end.outcome(),
            Some(HostOutcome::DeferredPendingReboot { .. })
        ),
        "{:?}",
        hosts[0].end
    );
    let st = f.hosts["web1"].state();
    assert_eq!(st.boot_default, sp(NEW), "the pending change stays");
    assert_eq!(st.current, sp(OLD));
}

/// A host the first Ctrl-C stopped before it changed, re-checked with its
/// soaking wave (the soak re-checks at once after that Ctrl-C) and found
/// unhealthy: left alone, not switched to what it ran.
#[tokio::test(start_paused = true)]
async fn a_host_cancelled_before_it_changed_is_not_taken_back() {
    use crate::runner::HostJob;
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    f.hosts["web1"].state().unhealthy_after = Some(0);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let job = Arc::new(job::DeployJob::new(
        &f.ctx,
        &plan,
        AlreadyThere,
        HashMap::new(),
    ));
    let cancelled = HostOutcome::Cancelled {
        before: crate::gates::Gate::Copy,
    };
    let done = job.summary("web1", HostEnd::activation(cancelled));
    let after = job.recheck(Arc::from("web1"), done.clone(), None).await;
    assert_eq!(after.end, done.end);
    let st = f.hosts["web1"].state();
    assert_eq!(st.health_checks, 0);
    assert!(st.jobs.is_empty(), "{:?}", st.jobs);
}

/// A host with a unit failing since before the run (its candidate's
/// switch leaves it alone), unhealthy after its soak: the take-back's
/// switch to the known-good exits 4 for that unit alone, which is back
/// where it was, as the pipeline's own rollback judges it (before: the
/// take-back had no baseline, and the host was ROLLBACK-FAILED on the
/// known-good).
#[tokio::test(start_paused = true)]
async fn a_take_back_judges_its_exit_4_against_the_units_failed_before() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    let host = &f.hosts["web1"];
    host.behave(
        &sp(NEW),
        crate::activation::fake_host::Behaviour {
            spares_failed_units: true,
            ..Default::default()
        },
    );
    {
        let mut st = host.state();
        st.unhealthy_after = Some(1);
        st.failed_units.insert("backup.service".into());
    }
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let HostEnd::SoakFailed { rollback, .. } = &hosts[0].end else {
        panic!("{:?}", hosts[0].end);
    };
    assert!(
        matches!(rollback, Some(RollbackOutcome::RolledBack { to, .. }) if *to == sp(OLD)),
        "{rollback:?}"
    );
    assert_eq!(hosts[0].outcome(), OutcomeKind::RolledBack);
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert!(st.failed_units.contains("backup.service"));
}

/// A rollback to known-good generation 1, unhealthy after its soak: not
/// taken back (that would be the system it rolled away from) and its
/// generation, proven by an earlier run, not revoked (before: REVOKE of a
/// re-selected generation deleted it). It fails its wave.
#[tokio::test(start_paused = true)]
async fn an_unhealthy_rollback_target_is_kept_and_not_revoked() {
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    {
        let mut st = f.hosts["web1"].state();
        st.unhealthy_after = Some(1);
        // It went on to NEW (known-good generation 2), then someone rolls
        // it back to generation 1.
        st.current = sp(NEW);
        st.set_profile(SYSTEM, &sp(NEW));
        st.boot_default = sp(NEW);
        st.set_profile(KNOWN_GOOD, &sp(NEW));
        let first = st.records["1"].clone();
        st.records.insert(
            "2".into(),
            first.replace("\"generation\":1", "\"generation\":2"),
        );
    }
    let plan = plan_of(&f.inv, web1_rolled_back_to_old(Some(1)));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    kept_as_rollback_target(&hosts[0].end);
    let st = f.hosts["web1"].state();
    assert_eq!(st.current, sp(OLD), "left on the rollback's target");
    assert_eq!(st.current_generation(KNOWN_GOOD), 1);
    assert!(!st.deleted.contains(&(KNOWN_GOOD.to_owned(), 1)));
}

/// The same for a rollback to the baseline (the system the host ran
/// before nixgate's first deploy: no generation): it is a rollback's
/// target too, not taken back to the system it rolled away from (before:
/// its mark revoked and the host switched back to NEW).
#[tokio::test(start_paused = true)]
async fn an_unhealthy_rollback_to_the_baseline_is_not_taken_back() {
    let f = fixture(inventory(0, "30s"), [NEW, OLD, OLD], Build::Hangs);
    f.hosts["web1"].state().unhealthy_after = Some(1);
    let plan = plan_of(&f.inv, web1_rolled_back_to_old(None));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    kept_as_rollback_target(&hosts[0].end);
    assert_eq!(f.hosts["web1"].state().current, sp(OLD));
}

/// web1 rolled back from NEW to OLD, known-good `generation` (`None`: the
/// baseline); the others pushed NEW.
fn web1_rolled_back_to_old(generation: Option<u64>) -> impl FnMut(&str) -> Verdict {
    move |h| match h {
        "web1" => Verdict::Ready {
            candidate: Candidate {
                closure: sp(OLD),
                earlier_gates: Vec::new(),
                generation,
                never_validated: generation.is_none(),
                commit: None,
            },
            running: Some(sp(NEW)),
        },
        _ => ready(NEW),
    }
}

/// Unhealthy after the soak, kept as a rollback's target: nothing revoked,
/// nothing switched.
fn kept_as_rollback_target(end: &HostEnd) {
    assert!(
        matches!(
            end,
            HostEnd::SoakFailed {
                revoked: None,
                rollback: None,
                kept: Some(crate::deploy::Kept::RollbackTarget),
                ..
            }
        ),
        "{end:?}"
    );
}

/// `--goal test`, unhealthy after the soak: taken back live only; the boot
/// default, which the run never wrote (here: one set for the next boot
/// before the run), is left alone (before: switched back persistently).
#[tokio::test(start_paused = true)]
async fn a_test_goal_take_back_leaves_the_boot_default_alone() {
    const PENDING: &str = "/nix/store/2bcdfghijklmnpqrsvwxyz0123456789-nixos-system-web-25.05";
    let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
    {
        let mut st = f.hosts["web1"].state();
        st.unhealthy_after = Some(1);
        st.set_profile(SYSTEM, &sp(PENDING));
        st.boot_default = sp(PENDING);
    }
    let plan = plan_for(crate::gates::Goal::Test, &f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let HostEnd::SoakFailed { rollback, .. } = &hosts[0].end else {
        panic!("{:?}", hosts[0].end);
    };
    assert!(
        matches!(
            rollback,
            Some(RollbackOutcome::RolledBack { to, mode: RollbackMode::Live, .. }) if *to == sp(OLD)
        ),
        "{rollback:?}"
    );
    let st = f.hosts["web1"].state();
    assert_eq!(st.current, sp(OLD));
    assert_eq!(st.boot_default, sp(PENDING));
    assert_eq!(st.profile(SYSTEM), Some(&sp(PENDING)));
}

/// A run that switches nothing (`--goal copy`, `dry-activate`) through a
/// wave with a soak: a host unhealthy after it was not changed by the run,
/// so nothing is taken back (that was a switch to what it runs, and a boot
/// entry written, on a host a copy had promised not to touch).
#[tokio::test(start_paused = true)]
async fn a_run_that_switches_nothing_takes_nothing_back_after_a_soak() {
    for goal in [crate::gates::Goal::Copy, crate::gates::Goal::DryActivate] {
        let f = fixture(inventory(0, "30s"), [OLD; 3], Build::Hangs);
        f.hosts["web1"].state().unhealthy_after = Some(0);
        let plan = plan_for(goal, &f.inv, |_| ready(NEW));
        let hosts = run(&f.ctx, plan, AlreadyThere).await;
        assert_eq!(
            hosts[0].outcome(),
            OutcomeKind::Reached,
            "{goal:?}: {:?}",
            hosts[0].end
        );
        untouched(&f, "web1");
    }
}

#[tokio::test(start_paused = true)]
async fn a_host_already_on_its_candidate_is_verified_and_marked_not_switched() {
    let f = fixture(inventory(0, "0s"), [NEW, OLD, OLD], Build::Hangs);
    let plan = plan_of(&f.inv, |h| match h {
        "web1" => ready_on(NEW, NEW),
        _ => ready(NEW),
    });
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    let Some(HostOutcome::AlreadyCurrent {
        mark: Some(mark), ..
    }) = hosts[0].end.outcome()
    else {
        panic!("{:?}", hosts[0].end);
    };
    assert_eq!(mark.record.closure, sp(NEW));
    {
        let st = f.hosts["web1"].state();
        assert!(
            st.jobs.keys().all(|u| u.ends_with("-persist")),
            "{:?}",
            st.jobs
        );
    }
    assert_eq!(hosts[1].outcome(), OutcomeKind::KnownGood);
    // Done with, every host's connection is closed as the run ends.
    let closed = f.fleet.closed.lock().unwrap().clone();
    assert_eq!(closed.len(), 3, "{closed:?}");
    // Marked known-good, it is released like the others (before, it was
    // passed over: a push after `--goal test`, or the retry a refused
    // release's message asks for, never released anything). The fixture's
    // repository does not exist: each host the release step tries says so.
    let tried: Vec<String> = release_events(&f, &f.inv, &"0".repeat(40), &hosts)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::NotReleased { host, .. } => Some(host),
            _ => None,
        })
        .collect();
    assert_eq!(tried, ["web1", "web2", "web3"]);
    // But not again when its release branch is on the commit already (a
    // scheduled push of an unchanged commit would tag it at every run);
    // hosts this run switched are released as ever.
    let (dir, repo, c) = repo_with_a_commit();
    for h in ["web1", "web2"] {
        let at = repo.find_commit(c).unwrap();
        repo.branch(&format!("release/{h}"), &at, false).unwrap();
    }
    let mut inv = (*f.inv).clone();
    inv.builder.source = dir.path().to_owned();
    let released: Vec<String> = release_events(&f, &inv, &c.to_string(), &hosts)
        .await
        .into_iter()
        .map(|e| match e {
            Event::Released { host, .. } => host,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(released, ["web2", "web3"]);
    // A run stopped at once (second Ctrl-C) releases nothing, and says so
    // for each host it would have released.
    let refs = || repo.references().unwrap().count();
    let before = refs();
    let stopped: Vec<String> = release_events_stopped(&f, &inv, &c.to_string(), &hosts, true)
        .await
        .into_iter()
        .map(|e| match e {
            Event::NotReleased {
                host,
                why: releases::NotReleased::Stopped,
            } => host,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(stopped, ["web2", "web3"]);
    assert_eq!(refs(), before, "no tag, no branch");
}

/// A repository with one commit to release (its directory, the
/// repository, the commit).
fn repo_with_a_commit() -> (tempfile::TempDir, git2::Repository, git2::Oid) {
    let dir = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init(dir.path()).unwrap();
    let sig = git2::Signature::now("t", "t@example.org").unwrap();
    let tree = repo.treebuilder(None).unwrap().write().unwrap();
    let tree = repo.find_tree(tree).unwrap();
    let c = repo
        .commit(Some("HEAD"), &sig, &sig, "c", &tree, &[])
        .unwrap();
    drop(tree);
    (dir, repo, c)
}

/// Between the run letting a host go and its releases (hours later, after
/// the later waves), `nixgate rollback web2` from another state directory
/// re-selected web2's earlier known-good; web3 no longer takes new
/// connections. Neither is released: web2's known-good is no longer this
/// run's mark (before: tagged, and release/web2 fast-forwarded to the
/// closure it had been rolled back from), web3's could not be confirmed.
/// web1 is released as ever.
#[tokio::test(start_paused = true)]
async fn a_host_whose_known_good_moved_after_the_run_let_it_go_is_not_released() {
    let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    assert!(
        hosts.iter().all(|h| h.outcome() == OutcomeKind::KnownGood),
        "{hosts:?}"
    );
    {
        let mut st = f.hosts["web2"].state();
        st.selected.insert(KNOWN_GOOD.to_owned(), 1);
        let r1 = st.records["1"].replace(r#""run_id":"r0""#, r#""run_id":"r9""#);
        st.records.insert("1".into(), r1);
    }
    f.hosts["web3"].state().sshd_up = false;
    let (dir, _repo, c) = repo_with_a_commit();
    let mut inv = (*f.inv).clone();
    inv.builder.source = dir.path().to_owned();
    let told = release_events(&f, &inv, &c.to_string(), &hosts).await;
    let mut released = Vec::new();
    for e in told {
        match e {
            Event::Released { host, .. } => released.push(host),
            Event::NotReleased {
                host,
                why: releases::NotReleased::MovedSince { marked, now },
            } => assert_eq!((host.as_str(), marked, now), ("web2", 2, Some(1))),
            Event::NotReleased {
                host,
                why: releases::NotReleased::Unconfirmed { .. },
            } => assert_eq!(host, "web3"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(released, ["web1"]);
    let branches: Vec<String> = git2::Repository::open(dir.path())
        .unwrap()
        .branches(None)
        .unwrap()
        .map(|b| b.unwrap().0.name().unwrap().unwrap().to_owned())
        .filter(|n| n.starts_with("release/"))
        .collect();
    assert_eq!(branches, ["release/web1"]);
}

/// web1's known-good is still this run's mark, but still soak pending on
/// the host when the run releases (its canary soak cut short by a first
/// Ctrl-C, or its pass not recorded): it is not released (before: tagged,
/// and release/web1 fast-forwarded to a closure no soak proved). web2 and
/// web3 are.
#[tokio::test(start_paused = true)]
async fn a_host_whose_mark_is_still_soak_pending_is_not_released() {
    let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
    let plan = plan_of(&f.inv, |_| ready(NEW));
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    {
        let mut st = f.hosts["web1"].state();
        let created = r#""created":true,"#;
        assert!(st.records["2"].contains(created), "{}", st.records["2"]);
        let pending = st.records["2"].replacen(
            created,
            &format!("{created}{}", crate::activation::fake_host::SOAK_PENDING),
            1,
        );
        st.records.insert("2".into(), pending);
    }
    let (dir, _repo, c) = repo_with_a_commit();
    let mut inv = (*f.inv).clone();
    inv.builder.source = dir.path().to_owned();
    let mut released = Vec::new();
    for e in release_events(&f, &inv, &c.to_string(), &hosts).await {
        match e {
            Event::Released { host, .. } => released.push(host),
            Event::NotReleased {
                host,
                why: releases::NotReleased::SoakPending { marked },
            } => assert_eq!((host.as_str(), marked), ("web1", 2)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(released, ["web2", "web3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_build_ends_it_and_activates_nothing() {
    let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
    let sel = f.inv.select(&Default::default()).unwrap();
    let req = gated_push();
    let stop = f.ctx.stop.clone();
    let canceller = f.canceller.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        canceller.escalate();
        stop.cancel();
    });
    let p = planning(&f, &sel);
    let plan = tokio::time::timeout(Duration::from_secs(20), plan::make(&p, &req))
        .await
        .expect("the cancelled build ends");
    assert_eq!(plan.cancelled, Some(crate::plan::PlanStage::Build));
    let log = f.fleet.builder.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|l| l == "stdin closed: build killed"),
        "the builder's Nix was told to stop: {log:?}"
    );
    let hosts = run(&f.ctx, plan, AlreadyThere).await;
    assert!(
        hosts.iter().all(|h| h.end
            == HostEnd::NotStarted {
                why: crate::runner::NotStarted::Cancelled
            }),
        "{:?}",
        kinds(&hosts)
    );
    for h in ["web1", "web2", "web3"] {
        untouched(&f, h);
    }
}

/// A build where each of `hosts` builds to [`NEW`] (the others fail to
/// evaluate).
fn builds(hosts: &[&str]) -> Build {
    let attr = |h: &str| format!("nixosConfigurations.{h}.config.system.build.toplevel");
    Build::Builds(hosts.iter().map(|h| (attr(h), NEW.to_owned())).collect())
}

/// The plan of `nixgate build` over the fixture's whole inventory.
async fn build_plan(f: &Fixture) -> Plan {
    let sel = f.inv.select(&Default::default()).unwrap();
    let req = Request::Build {
        source: Source {
            commit: "a".repeat(40),
            dirty: false,
        },
    };
    let p = planning(f, &sel);
    plan::make(&p, &req).await
}

#[tokio::test]
async fn a_host_whose_build_fails_is_refused_alone() {
    let f = fixture(inventory(0, "0s"), [OLD; 3], builds(&["web2", "web3"]));
    let plan = build_plan(&f).await;
    let verdicts: Vec<(String, bool)> = plan
        .hosts()
        .map(|h| (h.host.clone(), h.is_ready()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("web1".into(), false),
            ("web2".into(), true),
            ("web3".into(), true)
        ]
    );
    let refused: Vec<_> = plan.refused().collect();
    assert!(
        matches!(
            refused[0].1,
            Refusal::Build {
                failure: BuildFailure::Eval { log_tail }
            } if log_tail.iter().any(|l| l.contains("attribute"))
        ),
        "{refused:?}"
    );
}

/// The GC roots are added while the diff gate reads; the plan still waits
/// for them: a builder that cannot root what it built refuses every host
/// it built, as before.
#[tokio::test]
async fn hosts_whose_build_cannot_be_rooted_are_refused() {
    let builder = FakeBuilder::new(builds(&["web1", "web2", "web3"])).failing_roots();
    let f = fixture_with(inventory(0, "0s"), [OLD; 3], builder);
    let plan = build_plan(&f).await;
    assert_eq!(plan.ready().count(), 0);
    let refused: Vec<_> = plan.refused().collect();
    assert_eq!(refused.len(), 3);
    for (host, r) in refused {
        assert!(
            matches!(r, Refusal::Builder { error } if error.contains("GC roots") && error.contains("No space")),
            "{host}: {r:?}"
        );
    }
    assert!(
        f.events
            .take()
            .iter()
            .any(|e| matches!(e, Event::BuilderFailed { error } if error.contains("GC roots")))
    );
}

/// A change deferred to the next boot in the last wave (its failure budget
/// not spent): the run exits 1 unless it allowed pending reboots, as it did
/// when the same host was a canary and stopped the waves after it (a single
/// wave of pending reboots exited 0 before).
#[tokio::test(start_paused = true)]
async fn a_pending_reboot_fails_the_run_unless_allowed() {
    for allowed in [false, true] {
        let mut f = fixture(inventory(1, "0s"), [OLD; 3], Build::Hangs);
        f.ctx.allow_pending_reboot = allowed;
        f.hosts["web2"].behave(
            &sp(NEW),
            crate::activation::fake_host::Behaviour::systemd_change(),
        );
        let plan = plan_of(&f.inv, |_| ready(NEW));
        let hosts = run(&f.ctx, plan, AlreadyThere).await;
        assert_eq!(
            kinds(&hosts),
            [
                ("web1".into(), OutcomeKind::KnownGood),
                ("web2".into(), OutcomeKind::DeferredPendingReboot),
                ("web3".into(), OutcomeKind::KnownGood),
            ],
            "allowed: {allowed}"
        );
        assert_eq!(hosts[1].fails_run(), !allowed);
        assert_eq!(exit_code(&hosts), u8::from(!allowed), "allowed: {allowed}");
    }
}

/// A rollback's targets are chosen from histories read before the host
/// locks: a host whose known-good profile moved in between (another run
/// marked a generation) is refused, to be rolled back again; one whose
/// profile stands where it did stays ready.
#[tokio::test]
async fn a_rollback_target_read_before_the_lock_is_checked_after_it() {
    const ODD: &str = "/nix/store/1d1x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web-24.08";
    let f = fixture(inventory(0, "0s"), [NEW; 3], builds(&[]));
    for h in ["web1", "web2"] {
        let mut st = f.hosts[h].state();
        st.profiles
            .insert(KNOWN_GOOD.to_owned(), vec![sp(OLD), sp(NEW)]);
    }
    let sel = f.inv.select(&Default::default()).unwrap();
    let p = planning(&f, &sel);
    let hosts = ["web1".to_owned(), "web2".to_owned()];
    let found = plan::rollback_target::find_all(&p, &hosts, None).await;
    assert_eq!(found.stood.get("web1"), Some(&Some(2)));
    // Another run marks a generation on web1 before this one locks it.
    f.hosts["web1"]
        .state()
        .profiles
        .get_mut(KNOWN_GOOD)
        .unwrap()
        .push(sp(ODD));
    let mut verdicts = found.verdicts;
    let cancelled = plan::rollback_target::recheck(&p, &found.stood, &mut verdicts).await;
    assert!(!cancelled);
    assert!(
        matches!(verdicts["web2"], Verdict::Ready { .. }),
        "{:?}",
        verdicts["web2"]
    );
    assert_eq!(
        verdicts["web1"],
        Verdict::Refused {
            refusal: Refusal::NoRollbackTarget {
                why: plan::NoTarget::Moved {
                    was: Some(2),
                    now: Some(3)
                }
            }
        }
    );
}

/// A rollback across the fleet with one host wedged (a stuck nix-daemon, a
/// hung `/nix`) before its target is read, and another wedging after its
/// lock is taken: each is refused when the reads' bound passes, saying
/// what did not answer, and the other's lock is the only one the plan
/// holds. The plan waited for ever (only Ctrl-C ended it), holding every
/// ready host's lock.
#[tokio::test(start_paused = true)]
async fn a_rollback_refuses_a_wedged_host_and_plans_the_others() {
    let f = fixture(inventory(0, "0s"), [NEW; 3], builds(&[]));
    for h in ["web1", "web2", "web3"] {
        let mut st = f.hosts[h].state();
        st.profiles
            .insert(KNOWN_GOOD.to_owned(), vec![sp(OLD), sp(NEW)]);
    }
    f.fleet.wedged.lock().unwrap().insert("web3".into());
    // Reached for its target and its lock, then wedged.
    (f.fleet.wedges_after.lock().unwrap()).insert("web2".into(), 2);
    let sel = f.inv.select(&Default::default()).unwrap();
    let p = planning(&f, &sel);
    let req = Request::Rollback { to: None };
    let started = tokio::time::Instant::now();
    let plan = tokio::time::timeout(Duration::from_secs(3600), plan::make(&p, &req))
        .await
        .expect("still planning after an hour: the rollback's reads are not bounded");
    assert_eq!(started.elapsed(), crate::inspect::bound::READS_WITHIN * 2);
    let verdict = |h: &str| plan.hosts().find(|p| p.host == h).unwrap().verdict.clone();
    assert!(
        matches!(verdict("web1"), Verdict::Ready { .. }),
        "{:?}",
        verdict("web1")
    );
    for h in ["web2", "web3"] {
        let Verdict::Refused {
            refusal:
                Refusal::NoRollbackTarget {
                    why: plan::NoTarget::Unreadable { error },
                },
        } = verdict(h)
        else {
            panic!("{h}: {:?}", verdict(h));
        };
        assert!(
            error.contains("reading its known-good history: no answer within 30 s"),
            "{h}: {error}"
        );
    }
    let locked: Vec<&String> = plan.locks.keys().collect();
    assert_eq!(locked, ["web1"], "web2's lock let go when it was refused");
}

/// Every host refused by its build: the plan of a push does not wait for
/// the hosts' handshakes (slow here: 10 s each), which nothing needs.
#[tokio::test(start_paused = true)]
async fn a_push_whose_every_host_fails_to_build_waits_for_no_handshake() {
    let f = fixture(inventory(0, "0s"), [OLD; 3], builds(&[]));
    *f.fleet.connect_takes.lock().unwrap() = Duration::from_secs(10);
    let sel = f.inv.select(&Default::default()).unwrap();
    let req = gated_push();
    let p = planning(&f, &sel);
    let started = tokio::time::Instant::now();
    let plan = plan::make(&p, &req).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    let refused = plan
        .hosts()
        .filter(|h| matches!(h.verdict, Verdict::Refused { .. }))
        .count();
    assert_eq!(refused, 3);
}

/// A gated push of commit `aaaa...`.
fn gated_push() -> Request {
    Request::Push {
        source: Source {
            commit: "a".repeat(40),
            dirty: false,
        },
        goal: crate::gates::Goal::Gated,
        judging: Default::default(),
    }
}

/// web1's connection drops during its health check (the check's answer
/// lost), long enough that its lock's lease ran out (a controller
/// suspended, a partition): the run takes the lock again before the next
/// step that changes the host (the persist), with the real lock command.
/// Another run took the host over meanwhile (deployed another system and
/// holds the lock): nothing more is done to it, no persist, no mark, no
/// rollback (`moved-by-other`), and the wave stops there. Free again and
/// the host as left: the run goes on to known-good, with the lock taken
/// again and the host's links read once.
#[tokio::test(start_paused = true)]
async fn a_lock_lost_during_the_gates_is_taken_again_before_the_host_changes() {
    const ODD: &str = "/nix/store/1d1x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web-24.08";
    const CHECK: &str = "timeout --kill-after=5 10 sh -c 'systemctl is-active nginx'";
    const CRON: &str = "run r2 pid 7 on cron";
    // (another run took it, it stayed ours, it failed to come back a few
    // times first: the host rebooting, a network blip)
    for (taken, fails) in [(true, 0), (false, 0), (false, 6)] {
        let f = fixture(inventory(0, "0s"), [OLD; 3], Build::Hangs);
        let web1 = f.hosts["web1"].clone();
        web1.state().lose = vec![(CHECK.into(), true)];
        let mut plan = plan_of(&f.inv, |_| ready(NEW));
        let (lock, lost) = crate::activation::host_lock::HostLock::standing();
        plan.locks.insert("web1".into(), lock);
        let watched = web1.clone();
        let watcher = tokio::spawn(async move {
            while watched.state().health_checks == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut st = watched.state();
            lost.store(true, std::sync::atomic::Ordering::SeqCst);
            if taken {
                st.current = sp(ODD);
                st.boot_default = sp(ODD);
                st.set_profile(SYSTEM, &sp(ODD));
                st.lock_taken_by = Some(CRON.into());
            }
            st.lock_fails = fails;
            st.ran.len()
        });
        let hosts = run(&f.ctx, plan, AlreadyThere).await;
        let at = watcher.await.unwrap();
        let st = web1.state();
        let after = &st.ran[at..];
        if taken {
            let Some(HostOutcome::MovedByOther {
                cause: crate::activation::CutOff::LockLost { holder, .. },
                now,
                ..
            }) = hosts[0].end.outcome()
            else {
                panic!("{:?}", hosts[0].end);
            };
            assert_eq!((holder.as_deref(), now), (Some(CRON), &sp(ODD)));
            assert!(
                !after
                    .iter()
                    .any(|c| c.contains("fire") || c.contains("mark")),
                "{after:#?}"
            );
            assert_eq!((&st.current, &st.boot_default), (&sp(ODD), &sp(ODD)));
            assert_eq!(st.profiles[KNOWN_GOOD], [sp(OLD)], "not marked");
            assert_eq!(hosts[1].outcome(), OutcomeKind::NotStarted);
        } else {
            assert_eq!(hosts[0].outcome(), OutcomeKind::KnownGood, "{after:#?}");
            let locks = after.iter().filter(|c| c.contains("/host.lock ")).count();
            let reads = after.iter().filter(|c| c.starts_with("readlink-f")).count();
            assert_eq!((locks, reads), (1 + fails as usize, 1), "{after:#?}");
        }
    }
}
