//! Groups relay copies that start together so every path leaves the builder
//! once per batch: the first host to arrive opens a batch, which stays open
//! while hosts keep arriving (each arrival extends it by the quiet period,
//! up to a cap); then one relay copies to all of them, each path to the hosts
//! that lack it (see [`crate::nix::fanout`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::fleet::Fleet;
use crate::nix::StorePath;
use crate::nix::closure::PathInfo;
use crate::nix::copy::CopyProgress;
use crate::nix::fanout::{self, Received, Target};

type Progress = Arc<dyn Fn(CopyProgress) + Send + Sync>;

struct Member<R> {
    target: R,
    closure: Arc<Vec<PathInfo>>,
    lacking: HashSet<StorePath>,
    progress: Progress,
    reply: oneshot::Sender<anyhow::Result<Received>>,
}

type Batch<R> = Arc<Mutex<Vec<Member<R>>>>;

/// The batches of one run's relay copies.
pub struct RelayHub<F: Fleet> {
    fleet: Arc<F>,
    quiet: Duration,
    cap: Duration,
    open: Mutex<Option<Batch<F::Remote>>>,
}

impl<F: Fleet> RelayHub<F> {
    /// A batch closes once no host joined for `quiet`, or `cap` after it opened.
    pub fn new(fleet: Arc<F>, quiet: Duration, cap: Duration) -> Arc<RelayHub<F>> {
        Arc::new(RelayHub {
            fleet,
            quiet,
            cap,
            open: Mutex::new(None),
        })
    }

    /// Join the current batch (or open one) and wait for its relay to end.
    /// `lacking` is what the host lacks of `closure`.
    pub async fn share(
        self: &Arc<Self>,
        target: F::Remote,
        closure: Arc<Vec<PathInfo>>,
        lacking: HashSet<StorePath>,
        progress: Progress,
    ) -> anyhow::Result<Received> {
        let (tx, rx) = oneshot::channel();
        let member = Member {
            target,
            closure,
            lacking,
            progress,
            reply: tx,
        };
        {
            let mut open = self
                .open
                .lock()
                .map_err(|_| anyhow::anyhow!("relay hub poisoned"))?;
            match open.as_ref() {
                Some(batch) => batch
                    .lock()
                    .map_err(|_| anyhow::anyhow!("relay batch poisoned"))?
                    .push(member),
                None => {
                    let batch = Arc::new(Mutex::new(vec![member]));
                    *open = Some(batch.clone());
                    let hub = self.clone();
                    tokio::spawn(async move {
                        let opened = tokio::time::Instant::now();
                        let mut seen = 0;
                        loop {
                            tokio::time::sleep(hub.quiet).await;
                            let now = batch.lock().map(|m| m.len()).unwrap_or(seen);
                            if now == seen || opened.elapsed() >= hub.cap {
                                break;
                            }
                            seen = now;
                        }
                        // Close the batch: later arrivals open the next one.
                        if let Ok(mut open) = hub.open.lock() {
                            *open = None;
                        }
                        let members: Option<Vec<Member<F::Remote>>> =
                            batch.lock().ok().map(|mut m| std::mem::take(&mut *m));
                        if let Some(members) = members {
                            hub.run(members).await;
                        }
                    });
                }
            }
        }
        rx.await
            .map_err(|_| anyhow::anyhow!("the shared copy stopped before it finished"))?
    }

    async fn run(&self, members: Vec<Member<F::Remote>>) {
        let fail_all = |members: Vec<Member<F::Remote>>, msg: String| {
            for m in members {
                let _ = m.reply.send(Err(anyhow::anyhow!("{msg}")));
            }
        };
        let closures: Vec<&[PathInfo]> = members.iter().map(|m| m.closure.as_slice()).collect();
        let order = match fanout::union(&closures) {
            Ok(o) => o,
            Err(e) => return fail_all(members, format!("combining closures: {e:#}")),
        };
        let builder = match self.fleet.builder().await {
            Ok(b) => b,
            Err(e) => return fail_all(members, format!("connecting to the builder: {e:#}")),
        };
        let targets: Vec<Target<F::Remote>> = members
            .iter()
            .map(|m| Target {
                remote: &m.target,
                lacking: &m.lacking,
                progress: m.progress.as_ref(),
            })
            .collect();
        let results = fanout::relay(&builder, &targets, &order).await;
        drop(targets);
        for (m, r) in members.into_iter().zip(results) {
            let _ = m.reply.send(r);
        }
    }
}
