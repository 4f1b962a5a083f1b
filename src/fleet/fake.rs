//! A fleet of fake hosts for tests of the plan, the waves and the per-host
//! pipeline: each host a stateful [`FakeHost`], the builder a
//! [`FakeBuilder`] that ships nothing and builds on cue (or hangs until its
//! command's stdin closes, as a real build under nixgate's wrapper does when
//! cancelled). A host can be made unreachable, or wedged: reached, its
//! commands never return.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

use super::{Destination, Fleet, Machine, SessionError};
use crate::activation::fake_host::FakeHost;
use crate::remote::scripted::{ScriptedRemote, ok};
use crate::remote::{Command, Exit, Output, Remote, Streaming};

/// How the fake builder answers a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Build {
    /// Each attribute builds to its closure (`attribute -> toplevel`).
    Builds(HashMap<String, String>),
    /// Runs until its stdin closes (then it was killed: exit 143).
    Hangs,
    /// Runs for ever, its stdin closed or not (a builder whose Nix ignores
    /// being told to stop).
    Deaf,
}

/// The builder: answers the source check, builds, and GC roots.
#[derive(Clone)]
pub struct FakeBuilder {
    build: Arc<Mutex<Build>>,
    /// Every command run, and whether a build's stdin was closed on it.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Adding GC roots fails (a builder whose disk is full).
    roots_fail: bool,
}

impl FakeBuilder {
    pub fn new(build: Build) -> Self {
        FakeBuilder {
            build: Arc::new(Mutex::new(build)),
            log: Arc::default(),
            roots_fail: false,
        }
    }

    /// A builder on which adding GC roots fails.
    pub fn failing_roots(self) -> Self {
        FakeBuilder {
            roots_fail: true,
            ..self
        }
    }

    fn note(&self, s: String) {
        self.log.lock().expect("log").push(s);
    }

    fn respond(&self, cmd: &Command) -> Output {
        let a = cmd.argv();
        self.note(a.join(" "));
        if a.iter().any(|x| x == "nix-store") && a.iter().any(|x| x == "--deriver") {
            let drvs: String = a[3..].iter().map(|p| format!("{p}.drv\n")).collect();
            return ok(&drvs);
        }
        if self.roots_fail && a.iter().any(|x| x.contains("gcroots/nixgate")) {
            return Output::new(Exit::Code { code: 1 }, "", "ln: No space left on device\n");
        }
        // The source is there; GC roots and anything else succeed.
        ok("present\n")
    }

    /// The build's output for these attributes: one path per line, like
    /// `nix-build`; an attribute not in the map fails to evaluate.
    fn built(&self, attrs: &[String]) -> Option<Output> {
        let build = self.build.lock().expect("build").clone();
        let Build::Builds(map) = build else {
            return None;
        };
        let mut out = String::new();
        for a in attrs {
            match map.get(a) {
                Some(p) => out.push_str(&format!("{p}\n")),
                None => {
                    return Some(Output::new(
                        Exit::Code { code: 1 },
                        "",
                        format!("error: attribute '{a}' missing\n"),
                    ));
                }
            }
        }
        Some(ok(&out))
    }
}

impl Remote for FakeBuilder {
    fn name(&self) -> &str {
        super::BUILDER
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        Ok(self.respond(cmd))
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        let argv = cmd.argv().to_vec();
        self.note(argv.join(" "));
        let attrs: Vec<String> = argv
            .windows(2)
            .filter(|w| w[0] == "-A")
            .map(|w| w[1].clone())
            .collect();
        let (stdin_w, mut stdin_r) = tokio::io::duplex(1024);
        let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
        let me = self.clone();
        let finish = tokio::spawn(async move {
            let out = match me.built(&attrs) {
                Some(out) => out,
                None => {
                    // Hangs until nixgate closes the wrapper's stdin.
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut stdin_r, &mut sink).await;
                    if matches!(*me.build.lock().expect("build"), Build::Deaf) {
                        std::future::pending::<()>().await;
                    }
                    me.note("stdin closed: build killed".into());
                    Output::new(Exit::Code { code: 143 }, "", "")
                }
            };
            let _ = out_w.write_all(&out.stdout).await;
            let _ = out_w.write_all(&out.stderr).await;
            drop(out_w);
            Output::new(out.exit, Vec::new(), Vec::new())
        });
        Ok(Streaming {
            stdin: Box::pin(stdin_w),
            stdout: Box::pin(out_r),
            finish: Box::pin(async move { Ok(finish.await?) }),
            stop: crate::remote::Stop::none(),
        })
    }
}

/// A remote of the fake fleet.
#[derive(Clone)]
pub enum FakeRemote {
    Host(ScriptedRemote),
    Builder(FakeBuilder),
    /// A host reached whose commands never return (a wedged `/nix`).
    Wedged(String),
}

impl Remote for FakeRemote {
    fn name(&self) -> &str {
        match self {
            FakeRemote::Host(r) => r.name(),
            FakeRemote::Builder(b) => b.name(),
            FakeRemote::Wedged(name) => name,
        }
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        match self {
            FakeRemote::Host(r) => r.exec(cmd).await,
            FakeRemote::Builder(b) => b.exec(cmd).await,
            FakeRemote::Wedged(_) => std::future::pending().await,
        }
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        match self {
            FakeRemote::Host(r) => r.exec_stream(cmd).await,
            FakeRemote::Builder(b) => b.exec_stream(cmd).await,
            FakeRemote::Wedged(_) => std::future::pending().await,
        }
    }
}

/// Fake hosts by name, and a builder.
pub struct FakeFleet {
    pub hosts: HashMap<String, FakeHost>,
    pub builder: FakeBuilder,
    pub unreachable: Mutex<HashSet<String>>,
    /// Hosts reached whose commands never return.
    pub wedged: Mutex<HashSet<String>>,
    /// Hosts that wedge while the run is under way: reached normally this
    /// many more times, wedged from then on.
    pub wedges_after: Mutex<HashMap<String, usize>>,
    /// Hosts whose session the run closed: using one again is a bug (the
    /// run let the host go too early), and panics like an unexpected
    /// command on a [`FakeHost`].
    pub closed: Mutex<HashSet<String>>,
    /// How long a host's connect takes (a slow handshake, a jump host).
    pub connect_takes: Mutex<std::time::Duration>,
    /// New connections fail on the controller's side: no key to offer
    /// (an agent gone).
    pub no_keys: std::sync::atomic::AtomicBool,
    /// Hosts whose confirm endpoint's name does not exist (a typo'd
    /// `confirm_address`): a new connection there fails at resolving it;
    /// one at the host's own address works.
    pub confirm_unresolved: Mutex<HashSet<String>>,
}

impl FakeFleet {
    pub fn new(hosts: &[(&str, &FakeHost)], builder: FakeBuilder) -> Arc<FakeFleet> {
        Arc::new(FakeFleet {
            hosts: hosts
                .iter()
                .map(|(n, h)| (n.to_string(), (*h).clone()))
                .collect(),
            builder,
            unreachable: Mutex::default(),
            wedged: Mutex::default(),
            wedges_after: Mutex::default(),
            closed: Mutex::default(),
            connect_takes: Mutex::default(),
            no_keys: Default::default(),
            confirm_unresolved: Mutex::default(),
        })
    }

    fn assert_open(&self, host: &str) {
        let closed = self.closed.lock().expect("set").contains(host);
        assert!(!closed, "{host} used after the run let it go");
    }
}

impl Fleet for FakeFleet {
    type Remote = FakeRemote;

    async fn connect(&self, machine: Machine<'_>) -> Result<FakeRemote, SessionError> {
        match machine {
            Machine::Builder => Ok(FakeRemote::Builder(self.builder.clone())),
            Machine::Host(h) => {
                self.assert_open(h);
                let takes = *self.connect_takes.lock().expect("duration");
                tokio::time::sleep(takes).await;
                if self.unreachable.lock().expect("set").contains(h) {
                    return Err(SessionError::Unknown(format!(
                        "{h} (unreachable in this test)"
                    )));
                }
                if let Some(left) = self.wedges_after.lock().expect("map").get_mut(h) {
                    match left.checked_sub(1) {
                        Some(l) => *left = l,
                        None => {
                            self.wedged.lock().expect("set").insert(h.to_owned());
                        }
                    }
                }
                if self.wedged.lock().expect("set").contains(h) {
                    return Ok(FakeRemote::Wedged(h.to_owned()));
                }
                let fake = self
                    .hosts
                    .get(h)
                    .ok_or_else(|| SessionError::Unknown(h.to_owned()))?;
                Ok(FakeRemote::Host(fake.remote_named(h)))
            }
        }
    }

    fn destination(&self, host: &str) -> Option<Destination> {
        Some(Destination {
            user: "root".into(),
            host: host.into(),
            port: 22,
        })
    }

    async fn fresh(
        &self,
        host: &str,
        at: Option<&crate::inventory::ConfirmEndpoint>,
    ) -> Result<FakeRemote, SessionError> {
        self.assert_open(host);
        let fake = self
            .hosts
            .get(host)
            .ok_or_else(|| SessionError::Unknown(host.to_owned()))?;
        if let Some(at) = at
            && self.confirm_unresolved.lock().expect("set").contains(host)
        {
            return Err(SessionError::Connect(Arc::new(
                crate::ssh::ConnectError::Resolve {
                    target: host.to_owned(),
                    host: at.address.clone().unwrap_or_else(|| host.to_owned()),
                    source: std::io::Error::other(
                        "failed to lookup address information: Name or service not known",
                    ),
                },
            )));
        }
        if self.no_keys.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SessionError::Connect(Arc::new(
                crate::ssh::ConnectError::AuthFailed {
                    target: host.to_owned(),
                    user: "root".into(),
                    tried: Vec::new(),
                },
            )));
        }
        if !fake.state().sshd_up {
            return Err(SessionError::Unknown(format!(
                "{host} (no new connections)"
            )));
        }
        Ok(FakeRemote::Host(fake.remote_named(host)))
    }

    async fn close_all(&self) {}

    async fn close(&self, host: &str) {
        let first = self.closed.lock().expect("set").insert(host.to_owned());
        assert!(first, "{host}'s session closed twice");
    }
}
