//! The plan: before anything changes on any host, every selected host in its
//! wave is either [`Verdict::Ready`] with the candidate it will get (built,
//! explained by the diff gate, its host locked until the run lets it go) or
//! [`Verdict::Refused`] with a typed cause (its configuration did not build,
//! the diff gate found drift, it could not be reached, another run holds it,
//! there is nothing to roll back to). `plan` prints it; `push`, `push
//! --release` and `rollback` print it, ask, and hand the same value to the
//! runner, which counts a refused host against its wave's failure budget
//! exactly like a host that failed at activation. So a canary refused before
//! activation stops the later waves; nothing the plan refused can slip into a
//! wave unnoticed, and nothing is decided twice.
//!
//! The plan is made under the run's cancellation: Ctrl-C during the build
//! ends the builder's Nix process (see [`crate::nix::build`]), during the
//! diff gate stops it; the plan then says it was cancelled, and nothing runs.

pub mod cache_push;
pub mod candidates;
pub mod diffgate;
pub mod early_connect;
pub mod preflight;
pub mod rollback_target;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::activation::host_lock::{self, HostLock};
use crate::activation::known_good::GateRecord;
use crate::activation::{HostPaths, RunId};
use crate::fleet::Fleet;
use crate::gates::Goal;
use crate::inventory::select::Group;
use crate::inventory::{Inventory, Selection};
use crate::nix::StorePath;
use crate::nix::build::BuildFailure;
use crate::nix::closure::PathInfo;
use crate::report::{Event, EventSink};
use crate::runner::cancel::{self, CancelLevel, CancelWatch};

pub use candidates::Source;
pub use rollback_target::NoTarget;

/// What one host will be deployed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub closure: StorePath,
    /// Evidence of the controller-side gates (build, diff), for the
    /// known-good record.
    #[serde(skip)]
    pub earlier_gates: Vec<GateRecord>,
    /// A rollback's target: the known-good generation this closure is.
    /// Marking it known-good re-selects that generation instead of adding
    /// one, so history stays a line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// A rollback to the system the host ran before nixgate's first deploy:
    /// it never passed nixgate's gates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub never_validated: bool,
    /// A rollback's target: the commit its known-good record names, kept
    /// in the record when the generation is re-selected (`None`: the run's
    /// own commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl Candidate {
    /// A rollback's target: a known-good generation, or the baseline (the
    /// system the host ran before nixgate's first deploy).
    pub fn is_rollback_target(&self) -> bool {
        self.generation.is_some() || self.never_validated
    }
}

/// Why a host was refused before the run. Nothing on it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Refusal {
    /// Its configuration did not evaluate or build.
    Build { failure: BuildFailure },
    /// The builder could not be used at all (connect, ship the source, run Nix).
    Builder { error: String },
    /// The host could not be reached over SSH.
    Unreachable { error: String },
    /// The diff gate could not explain the change.
    DiffFailed { error: String },
    /// With `--expect`: these packages changed, and were not expected to.
    Drift { packages: Vec<String> },
    /// With `--expect`: the host runs no system nixgate can read (`link`
    /// is absent), so there is nothing to check the expectation against.
    NoCurrentSystem { link: String },
    /// The closures could not be pushed to `[cache] push_to` (every ready
    /// host is refused: hosts that pull would not find them).
    CachePush { store: String, error: String },
    /// Another nixgate run holds the host's lock.
    Locked { holder: String },
    /// The host's lock could not be taken.
    LockFailed { error: String },
    /// `rollback`: no known-good closure to go back to.
    NoRollbackTarget { why: NoTarget },
    /// The candidate is the closure a `nixgate rollback` took the host away
    /// from, and the host still stands where it went: a person decided
    /// against it, and the nightly push of an unchanged HEAD would put it
    /// back unasked. A new configuration, or `--allow-rolled-back`, pushes.
    RolledBack {
        away: crate::activation::known_good::RolledAway,
    },
    /// A key's content could not be read on the controller.
    KeySource { error: crate::keys::KeySourceError },
    /// A `pre_checks` command failed on the host.
    PreChecks {
        reports: Vec<crate::activation::health::HealthReport>,
    },
    /// sudo refused the run's password (or needs one the run does not have).
    Sudo {
        check: crate::activation::privilege::SudoCheck,
    },
}

impl Refusal {
    /// A host whose session could not be had: unreachable, or its sudo
    /// refused the run's password.
    pub fn no_session(e: &crate::fleet::SessionError) -> Refusal {
        match e.sudo_check() {
            Some(check) => Refusal::Sudo { check },
            None => Refusal::Unreachable {
                error: e.to_string(),
            },
        }
    }
}

/// A host's place in the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Ready {
        candidate: Candidate,
        /// What the host ran when the plan was made, when read.
        #[serde(skip_serializing_if = "Option::is_none")]
        running: Option<StorePath>,
    },
    Refused {
        refusal: Refusal,
    },
    /// Ctrl-C stopped planning before this host was decided: it is not
    /// started.
    Interrupted {
        stage: PlanStage,
    },
}

/// One host of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedHost {
    pub host: String,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl PlannedHost {
    pub fn is_ready(&self) -> bool {
        matches!(self.verdict, Verdict::Ready { .. })
    }
}

/// One wave (or the ad-hoc group of `--host`/`--tag`) of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedWave {
    #[serde(flatten)]
    pub group: Group,
    pub planned: Vec<PlannedHost>,
}

/// The stage of planning that Ctrl-C interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStage {
    Build,
    Diff,
    CachePush,
    Targets,
    Lock,
    /// Reading keys and running pre-checks.
    Preflight,
}

/// What the command asks for.
#[derive(Debug, Clone)]
pub enum Request {
    /// `build`: build only.
    Build { source: Source },
    /// `plan`: build and diff, change nothing.
    Diff { source: Source, judging: Judging },
    /// `push`: build, diff, lock; then the goal's gates.
    Push {
        source: Source,
        goal: Goal,
        judging: Judging,
    },
    /// `push --release`: exactly the closure a release tag recorded.
    Release {
        host: String,
        closure: StorePath,
        source: Source,
        goal: Goal,
    },
    /// `rollback`: a known-good closure of each host.
    Rollback { to: Option<u64> },
}

/// What the diff gate refuses a host for, beyond a diff it cannot make.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judging {
    /// `--expect`: the packages the change is meant to touch; any other
    /// change is drift.
    pub expect: Option<Vec<String>>,
    /// `--allow-rolled-back`: push a candidate a `nixgate rollback` took
    /// its host away from (refused by default: see
    /// [`Refusal::RolledBack`]).
    pub allow_rolled_back: bool,
}

impl Request {
    pub fn goal(&self) -> Goal {
        match self {
            Request::Build { .. } | Request::Diff { .. } => Goal::Copy,
            Request::Push { goal, .. } | Request::Release { goal, .. } => *goal,
            Request::Rollback { .. } => Goal::Gated,
        }
    }

    pub fn source(&self) -> Option<&Source> {
        match self {
            Request::Build { source }
            | Request::Diff { source, .. }
            | Request::Push { source, .. }
            | Request::Release { source, .. } => Some(source),
            Request::Rollback { .. } => None,
        }
    }

    /// Are the candidates pushed to `[cache]` (when there is one)? Every
    /// request that builds or names a closure to deploy; not `plan` (it
    /// changes nothing) nor `rollback` (the closures are on the hosts).
    fn pushes(&self) -> bool {
        matches!(
            self,
            Request::Build { .. } | Request::Push { .. } | Request::Release { .. }
        )
    }

    /// Does the run change hosts (so their locks are taken)?
    fn deploys(&self) -> bool {
        matches!(
            self,
            Request::Push { .. } | Request::Release { .. } | Request::Rollback { .. }
        )
    }
}

/// The plan of a run.
pub struct Plan {
    pub goal: Goal,
    pub source: Option<Source>,
    pub waves: Vec<PlannedWave>,
    /// Set when Ctrl-C arrived while planning: the runner starts nothing.
    pub cancelled: Option<PlanStage>,
    /// Closures the diff gate fetched from the builder, for the copy gate.
    pub closures: HashMap<StorePath, Arc<Vec<PathInfo>>>,
    /// The host locks, held until the runner lets each host go.
    pub locks: HashMap<String, HostLock>,
    /// The keys read for each ready host, written by its pipeline.
    pub keys: preflight::HostKeys,
}

impl Plan {
    /// Every planned host, in run order.
    pub fn hosts(&self) -> impl Iterator<Item = &PlannedHost> {
        self.waves.iter().flat_map(|w| w.planned.iter())
    }

    /// The hosts that are ready, with their candidates.
    pub fn ready(&self) -> impl Iterator<Item = (&str, &Candidate)> {
        self.hosts().filter_map(|h| match &h.verdict {
            Verdict::Ready { candidate, .. } => Some((h.host.as_str(), candidate)),
            _ => None,
        })
    }

    pub fn refused(&self) -> impl Iterator<Item = (&str, &Refusal)> {
        self.hosts().filter_map(|h| match &h.verdict {
            Verdict::Refused { refusal } => Some((h.host.as_str(), refusal)),
            _ => None,
        })
    }

    /// A plan over `selection` where every host gets the verdict `verdict`
    /// gives it (for tests and the assembly below).
    pub fn assemble(
        goal: Goal,
        source: Option<Source>,
        selection: &Selection,
        mut verdict: impl FnMut(&str) -> Verdict,
    ) -> Plan {
        let waves = selection
            .groups
            .iter()
            .map(|g| PlannedWave {
                group: g.clone(),
                planned: g
                    .hosts
                    .iter()
                    .map(|h| PlannedHost {
                        host: h.clone(),
                        verdict: verdict(h),
                    })
                    .collect(),
            })
            .collect();
        Plan {
            goal,
            source,
            waves,
            cancelled: None,
            closures: HashMap::new(),
            locks: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    /// The plan a second Ctrl-C ended before it was made: every host
    /// interrupted at the stage the request starts with.
    pub fn aborted(req: &Request, selection: &Selection) -> Plan {
        let stage = match req {
            Request::Rollback { .. } => PlanStage::Targets,
            Request::Release { .. } => PlanStage::Lock,
            _ => PlanStage::Build,
        };
        let mut plan = Plan::assemble(req.goal(), req.source().cloned(), selection, |_| {
            Verdict::Interrupted { stage }
        });
        plan.cancelled = Some(stage);
        plan
    }

    /// The event describing the plan, for reporters.
    pub fn event(&self) -> Event {
        Event::PlanReady {
            goal: self.goal,
            waves: self.waves.clone(),
            cancelled: self.cancelled,
        }
    }
}

/// Everything making a plan needs.
pub struct Planning<'a, F: Fleet> {
    pub fleet: &'a Arc<F>,
    pub inventory: &'a Inventory,
    pub selection: &'a Selection,
    pub run_id: &'a RunId,
    pub sink: &'a EventSink,
    /// Cancelled at the first Ctrl-C.
    pub stop: &'a CancellationToken,
}

/// [`make`] under the run's cancel: the first Ctrl-C (`p.stop`) lets
/// planning wind down (a build is given up to 30 s to end on the builder);
/// the second (`cancel` at Abort) ends it at once, every host interrupted.
pub async fn make_until_aborted<F: Fleet>(
    p: &Planning<'_, F>,
    req: &Request,
    cancel: &CancelWatch,
) -> Plan {
    let mut watch = cancel.clone();
    tokio::select! {
        plan = make(p, req) => plan,
        _ = cancel::reached(&mut watch, CancelLevel::Abort) => Plan::aborted(req, p.selection),
    }
}

/// Make the plan for `req`.
pub async fn make<F: Fleet>(p: &Planning<'_, F>, req: &Request) -> Plan {
    let hosts: Vec<String> = p.selection.hosts().map(str::to_owned).collect();
    let mut verdicts: HashMap<String, Verdict> = HashMap::new();
    let mut plan_cancelled = None;
    let mut closures = HashMap::new();
    let mut locks = HashMap::new();
    let mut stood = HashMap::new();
    match req {
        Request::Build { source } | Request::Diff { source, .. } | Request::Push { source, .. } => {
            let mut found = Found {
                verdicts: &mut verdicts,
                closures: &mut closures,
                locks: &mut locks,
            };
            plan_cancelled = build_and_diff(p, req, source, &hosts, &mut found).await;
        }
        Request::Release { host, closure, .. } => {
            // The CLI narrowed the selection to the tag's host.
            let candidate = Candidate {
                closure: closure.clone(),
                earlier_gates: Vec::new(),
                generation: None,
                never_validated: false,
                commit: None,
            };
            let running = None;
            verdicts.insert(host.clone(), Verdict::Ready { candidate, running });
        }
        Request::Rollback { to } => {
            let found = rollback_target::find_all(p, &hosts, *to).await;
            if found.cancelled {
                plan_cancelled = Some(PlanStage::Targets);
            }
            verdicts.extend(found.verdicts);
            stood = found.stood;
        }
    }
    if req.pushes()
        && plan_cancelled.is_none()
        && matches!(
            cache_push::run(p, &mut verdicts).await,
            cache_push::Pushed::Cancelled
        )
    {
        plan_cancelled = Some(PlanStage::CachePush);
    }
    if req.deploys() && plan_cancelled.is_none() && lock_ready(p, &mut verdicts, &mut locks).await {
        plan_cancelled = Some(PlanStage::Lock);
    }
    // The rollback targets were chosen before the locks: still so?
    if plan_cancelled.is_none() && rollback_target::recheck(p, &stood, &mut verdicts).await {
        plan_cancelled = Some(PlanStage::Lock);
    }
    // One it refused is let go now, not at the end of the run: another
    // run may roll it back meanwhile.
    locks.retain(|h, _| matches!(verdicts.get(h), Some(Verdict::Ready { .. })));
    let mut keys = HashMap::new();
    if req.deploys() && plan_cancelled.is_none() {
        match preflight::run(p, &mut verdicts, req.goal()).await {
            Some(k) => keys = k,
            None => plan_cancelled = Some(PlanStage::Preflight),
        }
    }
    let mut plan = Plan::assemble(req.goal(), req.source().cloned(), p.selection, |h| {
        match (verdicts.remove(h), plan_cancelled) {
            (Some(v), None) => v,
            // Not ready after all: nothing of the plan runs.
            (Some(Verdict::Ready { .. }) | None, Some(stage)) => Verdict::Interrupted { stage },
            (Some(v), Some(_)) => v,
            (None, None) => Verdict::Refused {
                refusal: Refusal::Builder {
                    error: "the builder reported nothing for this host".into(),
                },
            },
        }
    });
    plan.cancelled = plan_cancelled;
    plan.closures = closures;
    plan.locks = locks;
    plan.keys = keys;
    plan
}

/// What building and diffing found, filled in as they go.
struct Found<'f> {
    verdicts: &'f mut HashMap<String, Verdict>,
    closures: &'f mut HashMap<StorePath, Arc<Vec<PathInfo>>>,
    locks: &'f mut HashMap<String, HostLock>,
}

/// Build, and for `diff` and `push` connect and run the diff gate (a push
/// takes its locks meanwhile); the stage Ctrl-C stopped, if it did.
async fn build_and_diff<F: Fleet>(
    p: &Planning<'_, F>,
    req: &Request,
    source: &Source,
    hosts: &[String],
    f: &mut Found<'_>,
) -> Option<PlanStage> {
    let mut plan_cancelled = None;
    let judging = match req {
        Request::Diff { judging, .. } | Request::Push { judging, .. } => Some(judging),
        _ => None,
    };
    // The hosts' handshakes overlap the build when the diff gate will
    // need them.
    let connecting = judging.map(|_| early_connect::start(p.fleet, hosts));
    let mut built = candidates::build(p, source, hosts).await;
    if built.cancelled {
        plan_cancelled = Some(PlanStage::Build);
    }
    f.verdicts.extend(std::mem::take(&mut built.verdicts));
    if let Some(connecting) = connecting {
        // Nothing left for the diff gate (every host refused by its
        // build: a shared module that does not evaluate, a builder gone):
        // no handshake is waited for. It was, up to a connect timeout (10
        // s by default, doubled through a jump host) for a failure already
        // known.
        let none_ready = !f
            .verdicts
            .values()
            .any(|v| matches!(v, Verdict::Ready { .. }));
        if plan_cancelled.is_some() || none_ready {
            connecting.abandon();
        } else if connecting.settle(f.verdicts, p.stop).await {
            plan_cancelled = Some(PlanStage::Diff);
        }
    }
    if matches!(req, Request::Push { .. }) && plan_cancelled.is_none() {
        early_connect::relay_stream(p, f.verdicts).await;
    }
    if let (Some(judging), None) = (judging, plan_cancelled) {
        // A push takes its hosts' locks while the diff gate reads (the
        // lock's round trip was the plan's last), so the diff is also of a
        // host no other run changes meanwhile.
        let early = matches!(req, Request::Push { .. })
            .then(|| ready_unlocked(f.verdicts, f.locks))
            .unwrap_or_default();
        let diff = diffgate::run(p, f.verdicts, &built.drvs, judging, source);
        let (gate, taken) = tokio::join!(diff, take_locks(p, early));
        *f.closures = gate.closures;
        if gate.cancelled {
            plan_cancelled = Some(PlanStage::Diff);
        }
        match taken {
            Some(taken) => apply_locks(f.verdicts, f.locks, taken),
            None => plan_cancelled = plan_cancelled.or(Some(PlanStage::Lock)),
        }
    }
    if let Some(rooting) = built.rooting.take() {
        rooting.finish(p.sink, f.verdicts).await;
    }
    plan_cancelled
}

/// Take the lock of every ready host not locked yet; a host whose lock is
/// held or cannot be taken is refused. True when cancelled on the way.
async fn lock_ready<F: Fleet>(
    p: &Planning<'_, F>,
    verdicts: &mut HashMap<String, Verdict>,
    locks: &mut HashMap<String, HostLock>,
) -> bool {
    match take_locks(p, ready_unlocked(verdicts, locks)).await {
        Some(taken) => {
            apply_locks(verdicts, locks, taken);
            false
        }
        None => true,
    }
}

/// The ready hosts whose lock the run does not hold yet.
fn ready_unlocked(
    verdicts: &HashMap<String, Verdict>,
    locks: &HashMap<String, HostLock>,
) -> Vec<String> {
    verdicts
        .iter()
        .filter(|(h, v)| matches!(v, Verdict::Ready { .. }) && !locks.contains_key(*h))
        .map(|(h, _)| h.clone())
        .collect()
}

type Taken = Vec<(String, Result<HostLock, Refusal>)>;

/// Take the locks of `hosts`, all at once; `None` when cancelled.
async fn take_locks<F: Fleet>(p: &Planning<'_, F>, hosts: Vec<String>) -> Option<Taken> {
    if hosts.is_empty() {
        return Some(Vec::new());
    }
    let holder = host_lock::holder(p.run_id);
    let take = hosts.into_iter().map(|h| {
        let holder = holder.clone();
        async move {
            let Some(inv_host) = p.inventory.host(&h) else {
                let error = format!("{h} is not in the inventory");
                return (h, Err(Refusal::Unreachable { error }));
            };
            let remote = match p.fleet.host(&h).await {
                Ok(r) => r,
                Err(e) => return (h, Err(Refusal::no_session(&e))),
            };
            let path = host_lock::path(&HostPaths::for_os(inv_host.os));
            let r = host_lock::acquire(&remote, inv_host.os, &path, &holder, inv_host.sudo).await;
            let r = r.map_err(|e| match e {
                host_lock::HostLockError::Held { holder } => Refusal::Locked { holder },
                host_lock::HostLockError::Failed(e) => Refusal::LockFailed {
                    error: format!("{e:#}"),
                },
            });
            (h, r)
        }
    });
    let all = futures_util::future::join_all(take);
    tokio::select! {
        r = all => Some(r),
        _ = p.stop.cancelled() => None,
    }
}

/// Keep each lock taken of a host still ready (one refused meanwhile, by
/// the diff gate, is let go); refuse a ready host whose lock was not had.
fn apply_locks(
    verdicts: &mut HashMap<String, Verdict>,
    locks: &mut HashMap<String, HostLock>,
    taken: Taken,
) {
    for (h, r) in taken {
        let Some(v @ Verdict::Ready { .. }) = verdicts.get_mut(&h) else {
            continue;
        };
        match r {
            Ok(lock) => {
                locks.insert(h, lock);
            }
            Err(refusal) => *v = Verdict::Refused { refusal },
        }
    }
}
