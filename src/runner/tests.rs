//! Scheduling tests with a job whose hosts sleep and succeed or fail on cue:
//! what is tested is the runner's ordering, parallelism, budgets, soak and
//! cancellation, in paused tokio time.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::inventory::MaxFailures;
use crate::inventory::select::Group;

#[derive(Default)]
struct Job {
    fail: HashSet<String>,
    /// Hosts the plan refused: ended before the run.
    refused: HashSet<String>,
    unhealthy_after_soak: HashSet<String>,
    log: Mutex<Vec<String>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// Hosts end as soon as a cancel comes (as `exec` hangs up).
    hang_up: Option<CancelWatch>,
    /// Letting a host go never ends (a host that does not answer).
    let_go_hangs: bool,
    /// A soak's re-check never ends (a take-back waiting on a host).
    recheck_hangs: bool,
    /// No host's end is one a soak re-checks (`--goal boot`).
    nothing_to_check: bool,
    /// A soak's re-check takes this long, in ms (health checks over SSH).
    recheck_ms: Option<u64>,
    /// Re-checks under way, and the most at once.
    rechecking: AtomicUsize,
    max_rechecking: AtomicUsize,
    /// Hosts whose re-check panics (a bug in the job).
    recheck_panics: HashSet<String>,
    /// Hosts whose take-back has begun when their re-check is cut off.
    taking_back: HashSet<String>,
    /// A host's staging in ms, when not 1000.
    stage_ms: std::collections::HashMap<String, u64>,
    /// Every host's run in ms, when not 10 000.
    run_ms: Option<u64>,
    /// Hosts whose copy fails (at the end of their staging).
    copy_fails: HashSet<String>,
    /// Hosts that fail for a reason of the controller's own.
    controllers: HashSet<String>,
}

impl Job {
    fn log(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
    fn entries(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl HostJob for Job {
    type Staged = Result<(), String>;
    type Done = Result<(), String>;

    async fn stage(self: Arc<Self>, host: Arc<str>) -> Result<(), String> {
        self.log(format!("stage {host}"));
        let ms = self.stage_ms.get(&*host).copied().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if self.copy_fails.contains(&*host) {
            return Err("copy failed".into());
        }
        Ok(())
    }

    async fn staged_ahead(self: Arc<Self>, host: Arc<str>) {
        self.log(format!("kept {host}"));
    }

    async fn run(
        self: Arc<Self>,
        host: Arc<str>,
        staged: Result<(), String>,
    ) -> Result<(), String> {
        // A failed copy fails its host at once (as the deploy job does).
        staged?;
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.log(format!("run {host}"));
        let run = Duration::from_millis(self.run_ms.unwrap_or(10_000));
        match self.hang_up.clone() {
            Some(mut watch) => tokio::select! {
                _ = tokio::time::sleep(run) => {}
                _ = cancel::reached(&mut watch, CancelLevel::StopStarting) => {}
            },
            None => tokio::time::sleep(run).await,
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.log(format!("done {host}"));
        if self.controllers.contains(&*host) {
            return Err("controller".into());
        }
        if self.fail.contains(&*host) {
            Err("failed".into())
        } else {
            Ok(())
        }
    }

    fn interrupted(&self, _: &str, why: Interrupted) -> Result<(), String> {
        Err(format!("{why:?}"))
    }

    fn is_failure(&self, d: &Result<(), String>) -> bool {
        d.is_err()
    }

    fn controllers_own(&self, d: &Result<(), String>) -> bool {
        d.as_ref().is_err_and(|e| e == "controller")
    }

    fn to_recheck(&self, d: &Result<(), String>) -> bool {
        d.is_ok() && !self.nothing_to_check
    }

    fn planned_end(&self, host: &str) -> Option<Result<(), String>> {
        self.refused
            .contains(host)
            .then(|| Err("refused".to_string()))
    }

    fn staged_end(&self, _: &str, staged: &Result<(), String>) -> Option<Result<(), String>> {
        staged.clone().err().map(Err)
    }

    fn recheck_cut(&self, host: &str, done: Result<(), String>) -> Result<(), String> {
        if self.taking_back.contains(host) {
            return Err("Aborted".into());
        }
        done
    }

    async fn recheck(
        self: Arc<Self>,
        host: Arc<str>,
        done: Result<(), String>,
        cut: Option<SoakCut>,
    ) -> Result<(), String> {
        self.log(format!("rechecked {host}"));
        if let Some(cut) = cut {
            self.log(format!("soak cut {host} {cut:?}"));
        }
        if self.recheck_hangs {
            std::future::pending::<()>().await;
        }
        if self.recheck_panics.contains(&*host) {
            panic!("re-check of {host}");
        }
        if let Some(ms) = self.recheck_ms {
            let now = self.rechecking.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_rechecking.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            self.rechecking.fetch_sub(1, Ordering::SeqCst);
        }
        if self.unhealthy_after_soak.contains(&*host) {
            self.log(format!("taken back {host}"));
            Err("unhealthy after soak".into())
        } else {
            done
        }
    }

    fn ended(&self, host: &str, done: &Result<(), String>) {
        self.log(format!("ended {host} {done:?}"));
    }

    async fn let_go(self: Arc<Self>, host: Arc<str>) {
        let entry = format!("let go {host}");
        assert!(!self.entries().contains(&entry), "{host} let go twice");
        self.log(entry);
        if self.let_go_hangs {
            std::future::pending::<()>().await;
        }
    }
}

fn group(name: &str, hosts: &[&str], max_parallel: usize, max_failures: usize, soak: u64) -> Group {
    Group {
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        max_parallel,
        max_failures: MaxFailures::Count(max_failures),
        soak: Duration::from_secs(soak),
        adhoc: false,
    }
}

fn selection() -> Selection {
    Selection {
        groups: vec![
            group("canary", &["c1"], 1, 0, 60),
            group("main", &["m1", "m2", "m3", "m4", "m5"], 2, 1, 0),
        ],
    }
}

/// `job` run on `sel` in a task of its own, cancelled through `rx`.
fn spawn_run(
    job: &Arc<Job>,
    sel: Selection,
    rx: cancel::CancelWatch,
) -> tokio::task::JoinHandle<Vec<HostResult<Result<(), String>>>> {
    let j = job.clone();
    tokio::spawn(async move { run(j, &sel, rx, |_| {}).await })
}

fn ends(results: &[HostResult<Result<(), String>>]) -> Vec<(String, String)> {
    results
        .iter()
        .map(|r| {
            let e = match &r.end {
                RunnerEnd::Done(Ok(())) => "ok".to_string(),
                RunnerEnd::Done(Err(e)) => format!("err:{e}"),
                RunnerEnd::NotStarted(n) => format!("{n:?}"),
            };
            (r.host.clone(), e)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn waves_in_order_with_parallelism_and_prestaging() {
    let job = Arc::new(Job::default());
    let (_c, rx) = cancel::channel();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let results = run(job.clone(), &selection(), rx, move |e| {
        ev.lock().unwrap().push(e)
    })
    .await;
    assert!(
        ends(&results).iter().all(|(_, e)| e == "ok"),
        "{:?}",
        ends(&results)
    );
    assert_eq!(results.len(), 6);
    assert_eq!(job.max_running.load(Ordering::SeqCst), 2);
    let log = job.entries();
    let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
    // main's closures are staged while the canary activates.
    assert!(pos("stage m1") < pos("done c1"), "{log:?}");
    assert!(pos("done c1") < pos("run m1"), "{log:?}");
    let events = events.lock().unwrap();
    assert!(
        events.iter().any(
            |e| matches!(e, RunnerEvent::SoakStarted { wave, seconds: 60 } if wave == "canary")
        )
    );
    assert!(events.iter().any(
        |e| matches!(e, RunnerEvent::SoakChecked { host, healthy: true, .. } if host == "c1")
    ));
    assert!(!log.iter().any(|l| l.starts_with("soak cut")), "{log:?}");
}

/// A host whose copy ended while an earlier wave ran or soaked is handed
/// back to keep what it staged (the deploy roots it against the host's
/// GC); one copied as its own wave runs is not (no command more on its
/// way): the canary, and m5, whose copy outlasts the canary's soak.
#[tokio::test(start_paused = true)]
async fn only_hosts_staged_before_their_wave_starts_are_kept() {
    let job = Arc::new(Job {
        stage_ms: [("m5".to_string(), 100_000)].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let results = run(job.clone(), &selection(), rx, |_| {}).await;
    assert!(ends(&results).iter().all(|(_, e)| e == "ok"));
    let log = job.entries();
    let kept: Vec<&str> = (log.iter())
        .filter_map(|e| e.strip_prefix("kept "))
        .collect();
    assert_eq!(kept, ["m1", "m2", "m3", "m4"], "{log:?}");
    let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
    assert!(pos("kept m4") < pos("run m1"), "{log:?}");
}

/// A host whose copy ends while its own wave runs with every slot taken
/// waits for one (a large wave, few at a time: tens of minutes): it is
/// kept as one staged ahead is. One that starts as its copy ends is not.
#[tokio::test(start_paused = true)]
async fn a_host_staged_in_its_wave_that_waits_for_a_slot_is_kept() {
    let job = Arc::new(Job::default());
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![group("main", &["m1", "m2", "m3"], 1, 0, 0)],
    };
    let results = run(job.clone(), &sel, rx, |_| {}).await;
    assert!(ends(&results).iter().all(|(_, e)| e == "ok"));
    let log = job.entries();
    let mut kept: Vec<&str> = (log.iter())
        .filter_map(|e| e.strip_prefix("kept "))
        .collect();
    kept.sort();
    assert_eq!(kept, ["m2", "m3"], "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_staged_host_never_waits_behind_one_still_staging() {
    // m1's copy takes 5 s, m2's and m3's 1 s; two slots. m3, staged at
    // 2 s, starts then: the free slot is not held for m1 (which starts
    // when a slot frees, at 11 s).
    let job = Arc::new(Job {
        stage_ms: [("m1".to_string(), 5000)].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![group("main", &["m1", "m2", "m3"], 2, 0, 0)],
    };
    let results = run(job.clone(), &sel, rx, |_| {}).await;
    assert!(ends(&results).iter().all(|(_, e)| e == "ok"));
    let runs: Vec<String> = job
        .entries()
        .into_iter()
        .filter(|e| e.starts_with("run "))
        .collect();
    assert_eq!(runs, ["run m2", "run m3", "run m1"]);
    assert_eq!(job.max_running.load(Ordering::SeqCst), 2);
}

/// Staging tasks run on several threads; they still take their slots in
/// the waves' order (spawned tasks racing for the semaphore once staged
/// light18 before light10 in a 20-host push).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_staged_in_the_order_the_waves_start_them() {
    let names: Vec<String> = (1..=40).map(|i| format!("h{i}")).collect();
    let job = Arc::new(Job {
        stage_ms: names.iter().map(|h| (h.clone(), 1)).collect(),
        run_ms: Some(1),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    let sel = Selection {
        groups: vec![
            group("canary", &hosts[..1], 1, 0, 0),
            group("main", &hosts[1..], 3, 0, 0),
        ],
    };
    run(job.clone(), &sel, rx, |_| {}).await;
    let staged: Vec<String> = job
        .entries()
        .into_iter()
        .filter_map(|e| e.strip_prefix("stage ").map(str::to_owned))
        .collect();
    assert_eq!(staged, names);
}

#[tokio::test(start_paused = true)]
async fn hosts_are_let_go_once_the_run_is_done_with_them() {
    // c1's wave soaks: c1 is let go after its re-check. main does not: each
    // host is let go as it ends, while others still run.
    let job = Arc::new(Job::default());
    let (_c, rx) = cancel::channel();
    run(job.clone(), &selection(), rx, |_| {}).await;
    let log = job.entries();
    let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
    for h in ["c1", "m1", "m2", "m3", "m4", "m5"] {
        let n = log.iter().filter(|l| **l == format!("let go {h}")).count();
        assert_eq!(n, 1, "{h}: {log:?}");
    }
    assert!(pos("rechecked c1") < pos("let go c1"), "{log:?}");
    assert!(pos("let go m1") < pos("done m5"), "{log:?}");
    assert!(pos("ended m1 Ok(())") < pos("let go m1"), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn the_run_waits_for_hosts_to_be_let_go_until_the_second_cancel() {
    let job = Arc::new(Job {
        let_go_hangs: true,
        ..Job::default()
    });
    let (c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![group("main", &["m1"], 1, 0, 0)],
    };
    let mut handle = spawn_run(&job, sel, rx);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(job.entries().contains(&"let go m1".to_string()));
    assert!(!handle.is_finished(), "the run did not wait");
    c.escalate();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!handle.is_finished(), "the first Ctrl-C stopped the wait");
    c.escalate();
    let results = tokio::time::timeout(Duration::from_secs(1), &mut handle)
        .await
        .expect("the second Ctrl-C ends the wait")
        .unwrap();
    assert_eq!(ends(&results), vec![("m1".to_string(), "ok".to_string())]);
}

/// The second Ctrl-C ends a soak's re-checks too (they waited for every
/// re-check and take-back to finish); a host whose re-check it cut off
/// keeps its end, unless its take-back had begun (it kept its good end,
/// and was released, while its take-back had revoked the mark): the job
/// says so. No later wave starts.
#[tokio::test(start_paused = true)]
async fn the_second_cancel_ends_a_soaks_rechecks() {
    for (taking_back, c1) in [(false, "ok"), (true, "err:Aborted")] {
        let taking_back = if taking_back {
            ["c1".to_string()].into()
        } else {
            HashSet::new()
        };
        second_cancel_during_a_recheck(taking_back, c1).await;
    }
}

async fn second_cancel_during_a_recheck(taking_back: HashSet<String>, c1: &str) {
    let job = Arc::new(Job {
        recheck_hangs: true,
        taking_back,
        ..Job::default()
    });
    let (c, rx) = cancel::channel();
    let mut handle = spawn_run(&job, selection(), rx);
    // c1 runs 10 s and soaks 60 s: its re-check hangs from then on.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(job.entries().contains(&"rechecked c1".to_string()));
    c.escalate();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        !handle.is_finished(),
        "the first Ctrl-C lets the re-check finish"
    );
    c.escalate();
    let results = tokio::time::timeout(Duration::from_secs(1), &mut handle)
        .await
        .expect("the second Ctrl-C ends the re-checks")
        .unwrap();
    let e = ends(&results);
    assert_eq!(e[0], ("c1".to_string(), c1.to_string()));
    assert!(
        e[1..].iter().all(|(_, end)| end.contains("Cancelled")),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_canary_stops_the_run() {
    let job = Arc::new(Job {
        fail: ["c1".to_string()].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let results = run(job.clone(), &selection(), rx, |_| {}).await;
    let e = ends(&results);
    assert_eq!(e[0], ("c1".into(), "err:failed".into()));
    assert!(
        e[1..].iter().all(|(_, s)| s.contains("EarlierWaveFailed")),
        "{e:?}"
    );
    assert!(!job.entries().iter().any(|l| l.starts_with("run m")));
}

#[tokio::test(start_paused = true)]
async fn wave_over_budget_starts_nothing_more() {
    // m2's copy takes a second longer: it fails a second after m1.
    let job = Arc::new(Job {
        fail: ["m1".to_string(), "m2".to_string()].into(),
        stage_ms: [("m2".to_string(), 2000)].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("main", &["m1", "m2", "m3", "m4"], 2, 1, 0),
            group("later", &["l1"], 1, 0, 0),
        ],
    };
    let results = run(job, &sel, rx, |_| {}).await;
    let e = ends(&results);
    assert_eq!(e[0].1, "err:failed");
    assert_eq!(e[1].1, "err:failed");
    // m3 took the slot of the first failure, before the budget was exceeded;
    // after the second failure nothing more starts.
    assert_eq!(e[2].1, "ok", "{e:?}");
    assert!(
        e[3].1.contains("WaveFailed") && !e[3].1.contains("Earlier"),
        "{e:?}"
    );
    assert!(e[4].1.contains("EarlierWaveFailed"), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn unhealthy_after_soak_stops_the_run() {
    let job = Arc::new(Job {
        unhealthy_after_soak: ["c1".to_string()].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let results = run(job.clone(), &selection(), rx, |_| {}).await;
    assert_eq!(ends(&results)[0].1, "err:unhealthy after soak");
    assert!(ends(&results)[1].1.contains("EarlierWaveFailed"));
    let log = job.entries();
    assert!(log.contains(&"taken back c1".to_string()), "{log:?}");
    assert!(
        log.contains(&"ended c1 Err(\"unhealthy after soak\")".to_string()),
        "{log:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_canary_refused_by_the_plan_stops_the_run() {
    let job = Arc::new(Job {
        refused: ["c1".to_string()].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let results = run(job.clone(), &selection(), rx, move |e| {
        ev.lock().unwrap().push(e)
    })
    .await;
    let e = ends(&results);
    assert_eq!(e[0], ("c1".into(), "err:refused".into()));
    assert!(
        e[1..].iter().all(|(_, s)| s.contains("EarlierWaveFailed")),
        "{e:?}"
    );
    let log = job.entries();
    // Nothing was staged, run or soaked; every host was let go.
    let (gone, rest): (Vec<_>, Vec<_>) = log.iter().partition(|l| l.starts_with("let go "));
    assert!(rest.iter().all(|l| l.starts_with("ended c1")), "{log:?}");
    assert_eq!(gone.len(), 6, "{log:?}");
    let events = events.lock().unwrap();
    assert!(events.iter().any(|e| matches!(e,
        RunnerEvent::WaveFinished { wave, failures: 1, stops_run: true, .. } if wave == "canary")));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RunnerEvent::SoakStarted { .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_host_counts_against_its_own_wave_only() {
    // main allows 1 failure: one refused host uses it, the others run.
    let job = Arc::new(Job {
        refused: ["m3".to_string()].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let results = run(job.clone(), &selection(), rx, |_| {}).await;
    let e = ends(&results);
    assert_eq!(e[3], ("m3".into(), "err:refused".into()));
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(e[i].1, "ok", "{e:?}");
    }
    // A second failure in main would now exceed its budget.
    let job = Arc::new(Job {
        refused: ["m3".to_string()].into(),
        fail: ["m1".to_string()].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("main", &["m1", "m2", "m3"], 1, 1, 0),
            group("later", &["l1"], 1, 0, 0),
        ],
    };
    let e = ends(&run(job, &sel, rx, |_| {}).await);
    assert_eq!(e[0].1, "err:failed");
    assert!(e[1].1.contains("WaveFailed"), "{e:?}");
    assert_eq!(e[2].1, "err:refused");
    assert!(e[3].1.contains("EarlierWaveFailed"), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn first_cancel_finishes_in_flight_and_starts_nothing_new() {
    let job = Arc::new(Job::default());
    let (c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("main", &["m1", "m2", "m3", "m4"], 2, 0, 0),
            group("later", &["l1"], 1, 0, 0),
        ],
    };
    let handle = spawn_run(&job, sel, rx);
    tokio::time::sleep(Duration::from_secs(5)).await; // m1, m2 in flight
    c.escalate();
    let results = handle.await.unwrap();
    let e = ends(&results);
    assert_eq!(
        e[0],
        ("m1".into(), "ok".into()),
        "in-flight host finished: {e:?}"
    );
    assert_eq!(e[1], ("m2".into(), "ok".into()));
    assert!(
        e[2].1.contains("Cancelled")
            && e[3].1.contains("Cancelled")
            && e[4].1.contains("Cancelled"),
        "{e:?}"
    );
}

/// A host that ends because of the cancel (exec hangs up) frees its slot at
/// the moment the cancel arrives: the runner must see the cancel before it
/// fills the slot. (Both were ready at once, and which one the runner took
/// first was chance: `exec_e2e` saw a third host start after Ctrl-C.) Many
/// runs, since the order of ready branches is random.
#[tokio::test(start_paused = true)]
async fn hosts_ending_on_the_cancel_start_no_others() {
    for _ in 0..64 {
        let (c, rx) = cancel::channel();
        let job = Arc::new(Job {
            hang_up: Some(c.watch()),
            ..Job::default()
        });
        let sel = Selection {
            groups: vec![group("main", &["m1", "m2", "m3", "m4"], 2, 4, 0)],
        };
        let handle = spawn_run(&job, sel, rx);
        tokio::time::sleep(Duration::from_secs(5)).await; // m1, m2 in flight
        c.escalate();
        let results = handle.await.unwrap();
        let started: Vec<String> = job
            .entries()
            .into_iter()
            .filter(|e| e.starts_with("run "))
            .collect();
        assert_eq!(started, ["run m1", "run m2"], "{:?}", ends(&results));
    }
}

#[tokio::test(start_paused = true)]
async fn second_cancel_aborts_in_flight() {
    let job = Arc::new(Job::default());
    let (c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![group("main", &["m1", "m2"], 2, 0, 0)],
    };
    let handle = spawn_run(&job, sel, rx);
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.escalate();
    c.escalate();
    let results = handle.await.unwrap();
    assert_eq!(
        ends(&results),
        vec![
            ("m1".into(), "err:Aborted".into()),
            ("m2".into(), "err:Aborted".into())
        ]
    );
}

/// Every event the runner reports, and the callback that records them.
fn recorder() -> (
    Arc<Mutex<Vec<RunnerEvent>>>,
    impl Fn(RunnerEvent) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    (events, move |e| ev.lock().unwrap().push(e))
}

/// A soak's re-checks (health checks, a take-back) are work on hosts like
/// any other: a wave re-checks at most `max_parallel` of its hosts at once
/// (every finished host was re-checked at once: a 200-host wave with
/// `max_parallel = 10` could roll back 200 hosts at once).
#[tokio::test(start_paused = true)]
async fn a_soak_rechecks_at_most_max_parallel_hosts_at_once() {
    let job = Arc::new(Job {
        recheck_ms: Some(5000),
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("canary", &["c1", "c2", "c3", "c4", "c5"], 2, 0, 60),
            group("main", &["m1"], 1, 0, 0),
        ],
    };
    let results = run(job.clone(), &sel, rx, |_| {}).await;
    assert!(ends(&results).iter().all(|(_, e)| e == "ok"));
    let rechecked = job
        .entries()
        .iter()
        .filter(|e| e.starts_with("rechecked "))
        .count();
    assert_eq!(rechecked, 5);
    assert_eq!(job.max_rechecking.load(Ordering::SeqCst), 2);
}

/// The second Ctrl-C aborts the hosts in flight: they count against their
/// wave, but the run stopped because of the cancel, not because the wave
/// failed (later waves' hosts said "wave canary failed").
#[tokio::test(start_paused = true)]
async fn a_second_cancel_stops_later_waves_as_cancelled() {
    let job = Arc::new(Job::default());
    let (c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("canary", &["c1"], 1, 0, 60),
            group("main", &["m1"], 1, 0, 0),
        ],
    };
    let (events, emit) = recorder();
    let j = job.clone();
    let handle = tokio::spawn(async move { run(j, &sel, rx, emit).await });
    tokio::time::sleep(Duration::from_secs(5)).await; // c1 in flight
    c.escalate();
    c.escalate();
    let e = ends(&handle.await.unwrap());
    assert_eq!(e[0], ("c1".into(), "err:Aborted".into()));
    assert_eq!(e[1], ("m1".into(), "Cancelled".into()), "{e:?}");
    let events = events.lock().unwrap();
    assert!(
        events.iter().any(|e| matches!(e,
            RunnerEvent::WaveFinished { wave, failures: 1, stops_run: false, .. } if wave == "canary")),
        "{events:?}"
    );
}

/// A canary the plan refused fails its wave before anything starts: no
/// copy starts for the next wave's hosts (each got one, aborted at once),
/// nor for the canary's other host, which ends not started (for a while it
/// was dropped from the results). Staging tasks run on other threads here;
/// the wave's end waits a while for one to show up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_refused_by_the_plan_stages_nothing() {
    let job = Arc::new(Job {
        refused: ["c1".to_string()].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let j = job.clone();
    let emit = move |e: RunnerEvent| {
        if matches!(e, RunnerEvent::WaveFinished { .. }) {
            let staged = || j.entries().iter().any(|l| l.starts_with("stage "));
            for _ in 0..100 {
                if staged() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let mut sel = selection();
    sel.groups[0].hosts.push("c2".into());
    let results = run(job.clone(), &sel, rx, emit).await;
    let e = ends(&results);
    assert_eq!(e.len(), 7, "every host has its end: {e:?}");
    assert_eq!(e[0], ("c1".into(), "err:refused".into()));
    assert!(e[1].0 == "c2" && e[1].1.contains("WaveFailed"), "{e:?}");
    assert!(
        e[2..].iter().all(|(_, s)| s.contains("EarlierWaveFailed")),
        "{e:?}"
    );
    let log = job.entries();
    assert!(!log.iter().any(|l| l.starts_with("stage ")), "{log:?}");
}

/// A re-check that panics (a bug in nixgate) says nothing of the host's
/// health: the host fails, with its wave, like a host whose activation
/// panicked (it was skipped, and the host kept its clean end).
#[tokio::test(start_paused = true)]
async fn a_panicked_soak_recheck_fails_the_host() {
    let job = Arc::new(Job {
        recheck_panics: ["c1".to_string()].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let results = run(job.clone(), &selection(), rx, |_| {}).await;
    let e = ends(&results);
    assert_eq!(e[0], ("c1".into(), "err:Panicked".into()));
    assert!(
        e[1..].iter().all(|(_, s)| s.contains("EarlierWaveFailed")),
        "{e:?}"
    );
    let log = job.entries();
    assert!(
        log.contains(&"ended c1 Err(\"Panicked\")".to_string()),
        "{log:?}"
    );
}

/// A wave's end is reported once, after its soak, with what the soak
/// found: it said `stops_run: false` before the soak, and nothing
/// corrected it when the soak failed a host.
#[tokio::test(start_paused = true)]
async fn a_wave_finishes_after_its_soak() {
    let job = Arc::new(Job {
        unhealthy_after_soak: ["c1".to_string()].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let (events, emit) = recorder();
    run(job.clone(), &selection(), rx, emit).await;
    let events = events.lock().unwrap();
    let finished: Vec<&RunnerEvent> = events
        .iter()
        .filter(|e| matches!(e, RunnerEvent::WaveFinished { .. }))
        .collect();
    assert_eq!(
        finished,
        [&RunnerEvent::WaveFinished {
            wave: "canary".into(),
            failures: 1,
            allowed: 0,
            stops_run: true,
        }]
    );
    let pos = |p: fn(&RunnerEvent) -> bool| events.iter().position(p).unwrap();
    assert!(
        pos(|e| matches!(e, RunnerEvent::SoakChecked { .. }))
            < pos(|e| matches!(e, RunnerEvent::WaveFinished { .. })),
        "{events:?}"
    );
}

/// A soaking wave whose every host failed within its budget: nothing to
/// re-check, so no wait (it was the whole soak before the next wave).
#[tokio::test(start_paused = true)]
async fn a_soak_with_nothing_to_recheck_does_not_wait() {
    let job = Arc::new(Job {
        fail: ["c1".to_string()].into(),
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("canary", &["c1"], 1, 1, 3600),
            group("main", &["m1"], 1, 0, 0),
        ],
    };
    let started = tokio::time::Instant::now();
    let results = run(job.clone(), &sel, rx, |_| {}).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let e = ends(&results);
    assert!(e[0].1.starts_with("err:"), "{e:?}");
    assert_eq!(e[1], ("m1".to_string(), "ok".to_string()));
}

/// A soaking wave whose hosts ended well but changed nothing the checks
/// look at (`--goal boot`, `copy`, a reboot deferred): no wait, no soak
/// events (it waited the whole soak, then said every host was healthy
/// without checking any).
#[tokio::test(start_paused = true)]
async fn a_soak_of_hosts_that_changed_nothing_checked_does_not_wait() {
    let job = Arc::new(Job {
        nothing_to_check: true,
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("canary", &["c1"], 1, 0, 3600),
            group("main", &["m1"], 1, 0, 0),
        ],
    };
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let started = tokio::time::Instant::now();
    let results = run(job.clone(), &sel, rx, move |e| {
        seen.lock().unwrap().push(format!("{e:?}"))
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ends(&results)[1], ("m1".to_string(), "ok".to_string()));
    assert!(!job.entries().iter().any(|e| e.starts_with("rechecked")));
    let events = events.lock().unwrap();
    assert!(!events.iter().any(|e| e.contains("Soak")), "{events:?}");
}

/// The first Ctrl-C while the soaking wave still activates: its hosts
/// finish, and are re-checked at once before the run stops (before, the
/// soak was skipped: they kept the known-good end, and the release, with
/// no re-check).
#[tokio::test(start_paused = true)]
async fn a_first_cancel_during_a_soaking_waves_activation_rechecks_its_hosts() {
    let job = Arc::new(Job::default());
    let (c, rx) = cancel::channel();
    let handle = spawn_run(&job, selection(), rx);
    // c1 runs 10 s after a 1 s copy: still activating at 5 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.escalate();
    let results = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("no soak waited out")
        .unwrap();
    assert!(job.entries().contains(&"rechecked c1".to_string()));
    assert!(job.entries().contains(&"soak cut c1 Cancelled".to_string()));
    let e = ends(&results);
    assert_eq!(e[0], ("c1".to_string(), "ok".to_string()));
    assert!(e[1..].iter().all(|(_, s)| s == "Cancelled"), "{e:?}");
}

/// The first Ctrl-C during a soak's wait finishes and verifies what is in
/// flight: the wait is cut short and the hosts re-checked at once (they
/// were not re-checked, and kept their known-good); then the run stops. A
/// second Ctrl-C still ends the re-checks.
#[tokio::test(start_paused = true)]
async fn a_first_cancel_during_a_soak_rechecks_at_once() {
    let job = Arc::new(Job::default());
    let (c, rx) = cancel::channel();
    let handle = spawn_run(&job, selection(), rx);
    // c1 runs 10 s (after a 1 s copy), then soaks 60 s.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!job.entries().contains(&"rechecked c1".to_string()));
    c.escalate();
    let results = tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .expect("the soak's wait was cut short")
        .unwrap();
    assert!(job.entries().contains(&"rechecked c1".to_string()));
    // Re-checked after 19 s of its 60: the job is told.
    assert!(job.entries().contains(&"soak cut c1 Cancelled".to_string()));
    let e = ends(&results);
    assert_eq!(e[0], ("c1".to_string(), "ok".to_string()));
    assert!(e[1..].iter().all(|(_, s)| s == "Cancelled"), "{e:?}");

    let job = Arc::new(Job {
        recheck_hangs: true,
        ..Job::default()
    });
    let (c, rx) = cancel::channel();
    let mut handle = spawn_run(&job, selection(), rx);
    tokio::time::sleep(Duration::from_secs(30)).await;
    c.escalate();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(job.entries().contains(&"rechecked c1".to_string()));
    assert!(
        !handle.is_finished(),
        "the first Ctrl-C lets the re-check finish"
    );
    c.escalate();
    let results = tokio::time::timeout(Duration::from_secs(1), &mut handle)
        .await
        .expect("the second Ctrl-C ends the re-checks")
        .unwrap();
    let e = ends(&results);
    assert_eq!(e[0], ("c1".to_string(), "ok".to_string()));
    assert!(e[1..].iter().all(|(_, s)| s == "Cancelled"), "{e:?}");
}

/// A copy that failed while an earlier wave ran (here during the canary's
/// soak) is counted as its wave starts, like a plan's refusal: a wave it
/// puts over budget starts none of its hosts, and the next wave is not
/// copied. (It came back as an ordinary staging and failed only when its
/// host took an activation slot: every host of `main` started first.)
#[tokio::test(start_paused = true)]
async fn a_copy_failed_before_its_wave_counts_before_any_host_starts() {
    let job = Arc::new(Job {
        copy_fails: ["m5".to_string()].into(),
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("canary", &["c1"], 1, 0, 60),
            group("main", &["m1", "m2", "m3", "m4", "m5", "m6"], 10, 0, 0),
            group("later", &["l1"], 1, 0, 0),
        ],
    };
    let (events, emit) = recorder();
    let e = ends(&run(job.clone(), &sel, rx, emit).await);
    let log = job.entries();
    assert!(!log.iter().any(|l| l.starts_with("run m")), "{log:?}");
    assert!(!log.contains(&"stage l1".to_string()), "{log:?}");
    assert_eq!(e[0], ("c1".to_string(), "ok".to_string()));
    assert_eq!(e[5], ("m5".to_string(), "err:copy failed".to_string()));
    let wave_failed = format!(
        "{:?}",
        NotStarted::WaveFailed {
            wave: "main".into()
        }
    );
    for i in [1, 2, 3, 4, 6] {
        assert_eq!(e[i].1, wave_failed, "{e:?}");
    }
    assert!(e[7].1.contains("EarlierWaveFailed"), "{e:?}");
    assert!(events.lock().unwrap().iter().any(|e| matches!(e,
        RunnerEvent::WaveFinished { wave, failures: 1, stops_run: true, .. } if wave == "main")));
}

/// A host whose copy failed before its wave is let go as its wave starts
/// (its lock and session were held through the wave and its soak).
#[tokio::test(start_paused = true)]
async fn a_copy_failed_before_its_wave_lets_its_host_go_at_once() {
    let job = Arc::new(Job {
        copy_fails: ["m2".to_string()].into(),
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("canary", &["c1"], 1, 0, 60),
            group("main", &["m1", "m2"], 10, 1, 60),
            group("last", &["l1"], 1, 0, 0),
        ],
    };
    let (_events, emit) = recorder();
    run(job.clone(), &sel, rx, emit).await;
    let log = job.entries();
    let at = |entry: &str| log.iter().position(|l| l == entry);
    let (gone, soaked) = (at("let go m2"), at("rechecked m1"));
    assert!(gone.is_some() && soaked.is_some(), "{log:?}");
    assert!(gone < soaked, "m2 let go only after main's soak: {log:?}");
}

/// A copy that fails while its wave runs ends its host at once, without
/// waiting for an activation slot: m2's copy fails at 3 s while m1 holds
/// the only slot; m3, copied at 2 s, never starts (it started when m1
/// ended, at 11 s, before m2 took a slot and failed).
#[tokio::test(start_paused = true)]
async fn a_copy_failing_during_its_wave_ends_its_host_at_once() {
    let job = Arc::new(Job {
        copy_fails: ["m2".to_string()].into(),
        stage_ms: [("m2".to_string(), 3000), ("m3".to_string(), 2000)].into(),
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    // `later` lets three copies run at once.
    let sel = Selection {
        groups: vec![
            group("main", &["m1", "m2", "m3"], 1, 0, 0),
            group("later", &["l1"], 3, 0, 0),
        ],
    };
    let e = ends(&run(job.clone(), &sel, rx, |_| {}).await);
    let log = job.entries();
    let runs: Vec<&String> = log.iter().filter(|l| l.starts_with("run ")).collect();
    assert_eq!(runs, ["run m1"], "{log:?}");
    let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
    assert!(
        pos("ended m2 Err(\"copy failed\")") < pos("done m1"),
        "{log:?}"
    );
    assert_eq!(e[0], ("m1".to_string(), "ok".to_string()));
    assert_eq!(e[1], ("m2".to_string(), "err:copy failed".to_string()));
    assert!(e[2].1.contains("WaveFailed"), "{e:?}");
}

/// A host whose wave never runs ends not started, whether its copy ahead
/// had failed when an earlier wave stopped the run (m5's, at 1 s, while
/// the canary ran) or was still under way and was stopped (at 60 s): the
/// same facts, the same report (it said "copy failed" in the first case
/// only). A canary whose copy fails stops the run like any failed canary.
#[tokio::test(start_paused = true)]
async fn a_host_whose_wave_never_runs_is_not_started_whatever_its_copy_did() {
    for copy_ms in [1000, 60_000] {
        let job = Arc::new(Job {
            fail: ["c1".to_string()].into(),
            copy_fails: ["m5".to_string()].into(),
            stage_ms: [("m5".to_string(), copy_ms)].into(),
            ..Job::default()
        });
        let (_c, rx) = cancel::channel();
        let e = ends(&run(job.clone(), &selection(), rx, |_| {}).await);
        assert_eq!(e[0], ("c1".to_string(), "err:failed".to_string()));
        for (h, end) in &e[1..] {
            assert!(end.contains("EarlierWaveFailed"), "{copy_ms}: {h}: {e:?}");
        }
    }
    let job = Arc::new(Job {
        copy_fails: ["c1".to_string()].into(),
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    let e = ends(&run(job.clone(), &selection(), rx, |_| {}).await);
    assert_eq!(e[0], ("c1".to_string(), "err:copy failed".to_string()));
    assert!(
        e[1..].iter().all(|(_, s)| s.contains("EarlierWaveFailed")),
        "{e:?}"
    );
    assert!(!job.entries().iter().any(|l| l.starts_with("run ")));
}

/// Hosts that end at the same moment are all counted before a slot is
/// filled: m1 and m2 fail together, past a budget of one; m3 never starts
/// (it took the slot of whichever end was taken first).
#[tokio::test(start_paused = true)]
async fn ends_known_together_count_before_a_slot_is_filled() {
    let job = Arc::new(Job {
        fail: ["m1".to_string(), "m2".to_string()].into(),
        ..Default::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![group("main", &["m1", "m2", "m3"], 2, 1, 0)],
    };
    let e = ends(&run(job.clone(), &sel, rx, |_| {}).await);
    assert!(e[2].1.contains("WaveFailed"), "{e:?}");
    assert!(!job.entries().contains(&"run m3".to_string()));
}

/// A soaking wave that goes over its budget still re-checks the hosts that
/// ended well, at once (no wait), before the run stops: c1 fails while c2
/// and c3 are in flight; they end well and are re-checked (they kept their
/// good end, and their release, unwatched); c3 is found unhealthy. Its
/// failures stop the run.
#[tokio::test(start_paused = true)]
async fn a_wave_over_budget_rechecks_its_good_hosts_at_once() {
    let job = Arc::new(Job {
        fail: ["c1".to_string()].into(),
        unhealthy_after_soak: ["c3".to_string()].into(),
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("canary", &["c1", "c2", "c3"], 3, 0, 3600),
            group("main", &["m1"], 1, 0, 0),
        ],
    };
    let (events, emit) = recorder();
    let started = tokio::time::Instant::now();
    let e = ends(&run(job.clone(), &sel, rx, emit).await);
    assert!(started.elapsed() < Duration::from_secs(60), "a soak waited");
    let log = job.entries();
    for h in ["c2", "c3"] {
        assert!(log.contains(&format!("rechecked {h}")), "{log:?}");
        assert!(
            log.contains(&format!("soak cut {h} WaveOverBudget")),
            "{log:?}"
        );
    }
    assert!(!log.contains(&"rechecked c1".to_string()), "{log:?}");
    assert_eq!(e[0].1, "err:failed");
    assert_eq!(e[1].1, "ok");
    assert_eq!(e[2].1, "err:unhealthy after soak");
    assert!(e[3].1.contains("EarlierWaveFailed"), "{e:?}");
    let events = events.lock().unwrap();
    assert!(events.contains(&RunnerEvent::SoakStarted {
        wave: "canary".into(),
        seconds: 0
    }));
    assert!(
        events.contains(&RunnerEvent::WaveFinished {
            wave: "canary".into(),
            failures: 2,
            allowed: 0,
            stops_run: true,
        }),
        "{events:?}"
    );
}

/// A host that fails for a reason of the controller's own (no new
/// connection from here) stops the run within its wave's budget: m2 and
/// m3 of a wave allowing 2 failures, one at a time, never start (each
/// would have been switched and failed the same way), nor does the wave
/// after it. Each says why; the wave's failures alone (1 of 2) do not
/// stop the run.
#[tokio::test(start_paused = true)]
async fn a_failure_of_the_controllers_own_starts_no_more_hosts() {
    let job = Arc::new(Job {
        controllers: ["m1".to_string()].into(),
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("main", &["m1", "m2", "m3"], 1, 2, 60),
            group("later", &["l1"], 1, 0, 0),
        ],
    };
    let (events, emit) = recorder();
    let e = ends(&run(job.clone(), &sel, rx, emit).await);
    let log = job.entries();
    let runs: Vec<&String> = log.iter().filter(|l| l.starts_with("run ")).collect();
    assert_eq!(runs, ["run m1"], "{log:?}");
    assert_eq!(e[0], ("m1".to_string(), "err:controller".to_string()));
    let why = format!("{:?}", NotStarted::ControllerFailed { host: "m1".into() });
    for (h, end) in &e[1..] {
        assert_eq!(*end, why, "{h}: {e:?}");
    }
    assert!(events.lock().unwrap().iter().any(|e| matches!(e,
        RunnerEvent::WaveFinished { wave, failures: 1, stops_run: false, .. } if wave == "main")));
}

/// Stopped by the controller's own failure, a soaking wave re-checks its
/// hosts that ended well at once, as after a first Ctrl-C, with no wait.
#[tokio::test(start_paused = true)]
async fn a_wave_stopped_by_the_controller_rechecks_its_good_hosts_at_once() {
    let job = Arc::new(Job {
        controllers: ["m2".to_string()].into(),
        ..Job::default()
    });
    let (_c, rx) = cancel::channel();
    let sel = Selection {
        groups: vec![
            group("main", &["m1", "m2", "m3"], 2, 2, 3600),
            group("later", &["l1"], 1, 0, 0),
        ],
    };
    let start = tokio::time::Instant::now();
    let e = ends(&run(job.clone(), &sel, rx, |_| {}).await);
    let log = job.entries();
    assert!(log.contains(&"rechecked m1".to_string()), "{log:?}");
    assert!(!log.contains(&"run m3".to_string()), "{log:?}");
    assert!(start.elapsed() < Duration::from_secs(3600), "no soak wait");
    assert!(e[3].1.contains("ControllerFailed"), "{e:?}");
}
