//! Evaluation and build on the builder: every selected host in one
//! invocation (shared evaluation, parallel builds); when that fails, each
//! host alone, so one host's failure fails that host only, with its log.
//!
//! Past one builder: the builder's Nix can hand derivations to remote
//! builders ([`BuildOptions`], Nix's own distributed builds: `--option
//! builders`, its build hook, the results copied back to the builder).
//! Evaluation stays on the builder; the JSON log says which machine builds
//! each derivation ([`BuildUpdate::Building`]). A remote builder that is
//! down is Nix's business: with local build slots left Nix builds there
//! instead; with `max-jobs 0` the build fails with "cannot build on ...",
//! which becomes [`BuildFailure::NoMachine`] per host.
//!
//! A disk that fills on the builder (its store, or the build's TMPDIR)
//! fails evaluation and builds alike, and Nix 2.8 and 2.26 then often stop
//! on their own write error ("writing to file: No space left on device"),
//! which names neither: it becomes [`BuildFailure::NoSpace`] for each host
//! it failed, with the log's words ([`buildlog::out_of_space`]) and one
//! `df` of the builder's store ([`space::store_space`]). Any line of the
//! log counts, a builder's own included: a builder that prints the words
//! and fails for another reason is called out of space too (its store
//! measured roomy, the words then say so).
//!
//! A build can be cancelled: it runs under [`BUILD_WRAPPER`], which ends
//! Nix (SIGTERM: Nix stops its builders, and a daemon stops a client's
//! builds when the client goes) as soon as the command's stdin closes.
//! The controller closes it on Ctrl-C; a controller that dies drops the SSH
//! connection, which closes it too. Closing the channel alone is not
//! enough: sshd does not signal the command, and Nix would build on.

use anyhow::Context;
use serde::{Deserialize, Serialize};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::StorePath;
use super::buildlog::{self, BuildLog, Counts, Logged};
use super::space::{self, StoreSpace};
use crate::remote::{Command, Output, Remote};

/// What to build: `(host, attribute)` pairs from the shipped source `dir`.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub dir: String,
    pub flake: bool,
    pub hosts: Vec<(String, String)>,
    pub options: BuildOptions,
}

/// Nix's distributed builds for one build, as options of that command
/// (never the builder's `nix.conf`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Machine lines (`--option builders "a ; b"`); empty: the builder's own.
    pub builders: Vec<String>,
    /// `--option builders-use-substitutes true`.
    pub use_substitutes: bool,
    /// `--option max-jobs N` (0: every derivation remote).
    pub max_jobs: Option<u32>,
}

impl BuildOptions {
    /// The `--option NAME VALUE` arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut opt = |name: &str, value: String| {
            a.extend(["--option".to_owned(), name.to_owned(), value]);
        };
        if !self.builders.is_empty() {
            opt("builders", self.builders.join(" ; "));
        }
        if self.use_substitutes {
            opt("builders-use-substitutes", "true".into());
        }
        if let Some(n) = self.max_jobs {
            opt("max-jobs", n.to_string());
        }
        a
    }
}

/// What a running build tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildUpdate {
    Progress(BuildProgress),
    /// A derivation started building: on the builder (`machine` `None`) or
    /// on this remote builder.
    Building {
        drv: StorePath,
        machine: Option<String>,
    },
}

/// Build progress: derivations built, running and failed out of those to
/// build, as the builder's Nix counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuildProgress {
    pub built: u64,
    pub to_build: u64,
    pub running: u64,
    pub failed: u64,
}

impl From<Counts> for BuildProgress {
    fn from(c: Counts) -> Self {
        BuildProgress {
            built: c.done,
            to_build: c.expected,
            running: c.running,
            failed: c.failed,
        }
    }
}

/// Why a host did not build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuildFailure {
    #[error("evaluation failed:\n  {}", log_tail.join("\n  "))]
    Eval { log_tail: Vec<String> },
    #[error("build failed:\n  {}", log_tail.join("\n  "))]
    Build { log_tail: Vec<String> },
    /// The flake's `flake.lock` does not lock every input, and the
    /// builder's Nix will not evaluate it without changing the lock (Nix
    /// 2.8: "requires lock file changes"; 2.26: "cannot update unlocked
    /// flake input"). nixgate builds what the commit locks and never
    /// writes a lock file.
    #[error("its flake.lock does not lock every input:\n  {}", log_tail.join("\n  "))]
    LockIncomplete { log_tail: Vec<String> },
    /// No machine could take a derivation: the builder builds nothing
    /// itself (`max_jobs = 0`) and the remote builders were down or lacked
    /// the system or features. `unreachable`: each remote builder Nix could
    /// not use, with Nix's words.
    #[error("no machine could build it{}:\n  {}", unreachable_words(unreachable), log_tail.join("\n  "))]
    NoMachine {
        unreachable: Vec<MachineError>,
        log_tail: Vec<String>,
    },
    /// A disk on the builder filled while it evaluated or built: `said`
    /// is the line of the log that says so, in Nix's or the builder's
    /// words ([`buildlog::out_of_space`]); `store`, how full the builder's
    /// store was when the build ended (`None`: `df` could not tell).
    /// `database_unusable`: Nix could not even open its database (SQLite's
    /// "disk I/O error" on a store measured nearly full): its own garbage
    /// collector cannot run either until something else frees room.
    #[error("the builder ran out of disk space ({said}):\n  {}", log_tail.join("\n  "))]
    NoSpace {
        said: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        store: Option<StoreSpace>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        database_unusable: bool,
        log_tail: Vec<String>,
    },
}

/// A remote builder Nix could not use, and why (Nix's message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineError {
    pub machine: String,
    pub error: String,
}

fn unreachable_words(m: &[MachineError]) -> String {
    m.iter()
        .map(|e| format!("; {} failed: {}", e.machine, e.error))
        .collect()
}

/// Nix's "cannot build on 'MACHINE': error: ..." lines (2.8 and 2.26).
fn machine_errors(text: &str) -> Vec<MachineError> {
    let mut out: Vec<MachineError> = text
        .lines()
        .filter_map(|l| {
            let rest = l.split_once("cannot build on '")?.1;
            let (machine, error) = rest.split_once("': ")?;
            let error = error.trim().trim_start_matches("error:").trim();
            Some(MachineError {
                machine: machine.to_owned(),
                error: error.to_owned(),
            })
        })
        .collect();
    out.dedup();
    out
}

/// One host's build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostBuild {
    Built { toplevel: StorePath, drv: StorePath },
    Failed { error: BuildFailure },
}

/// `BUILD_CLASSIC LEADER NIX-BUILD-ARGUMENTS...`: `nix-build` with its
/// results GC-rooted by itself (`--out-link`), named for the first host
/// built: `$base/LEADER/built`, `-2`, ... (as for the evaluated
/// derivations, [`super::gcroots::hold_evaluated`]; nix-build replaces
/// the links it makes, and an earlier, larger batch's extra ones go
/// first: a failed build leaves the roots as they were).
/// With `--no-out-link` nothing rooted a built system between the build's
/// end and the roots added after it (two round trips: its derivers, then
/// the roots), and a garbage collection in between took it. `exec`: the
/// build's cancel ([`BUILD_WRAPPER`]) signals Nix itself. A directory for
/// the links that cannot be made builds unrooted, as before.
const BUILD_CLASSIC: &str = concat!(
    super::gcroots::root_base!(),
    r#"leader=$1; shift
l="$base/$leader/built"
n=0; for a in "$@"; do [ "$a" != -A ] || n=$((n + 1)); done
if mkdir -p "${l%/*}" 2>/dev/null; then
  unhold "$l" $((n + 1))
  exec nix-build "$@" --out-link "$l"
fi
exec nix-build "$@" --no-out-link"#
);

/// The command building `attrs` of the classic (not flake) expression in
/// `dir`, with `options`, its results rooted under `leader`'s name (the
/// first host built, [`BUILD_CLASSIC`]). Flakes: [`super::flake_build`].
pub fn build_command(dir: &str, attrs: &[&str], leader: &str, options: &BuildOptions) -> Command {
    let mut c = Command::script(BUILD_CLASSIC).arg(leader).arg(dir);
    for a in attrs {
        c = c.arg("-A").arg(*a);
    }
    c.arg("--keep-going").args(options.args())
}

/// The command printing the derivation of `attr` (writing it to the store,
/// building nothing): how an old system's derivation is recovered from its
/// commit when the builder no longer has it.
pub fn instantiate_command(dir: &str, flake: bool, attr: &str) -> Command {
    if flake {
        Command::new("nix")
            .args([
                "--extra-experimental-features",
                "nix-command flakes",
                "eval",
                "--raw",
                // The shipped source is shared: never a lock file written
                // into it (nor inputs locked anew: what the commit locks).
                "--no-write-lock-file",
                "--no-update-lock-file",
            ])
            .arg(format!("path:{dir}#{attr}.drvPath"))
    } else {
        Command::new("nix-instantiate").arg(dir).arg("-A").arg(attr)
    }
}

/// Instantiate `attr` from the shipped source `dir`: its derivation.
pub async fn instantiate<R: Remote>(
    builder: &R,
    dir: &str,
    flake: bool,
    attr: &str,
) -> anyhow::Result<StorePath> {
    let out = builder
        .exec(&instantiate_command(dir, flake, attr))
        .await
        .context("instantiating on the builder")?
        .check(&format!("instantiating {attr}"))?;
    let text = out.stdout_str();
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".drv"))
        .with_context(|| format!("instantiating {attr} printed no derivation: {text:?}"))?;
    Ok(StorePath::parse(line)?)
}

/// Parse a successful classic build's stdout: one toplevel per attribute,
/// in the order asked (`nix-build` prints them so in every version).
fn parse_success(stdout: &str, n: usize) -> anyhow::Result<Vec<(StorePath, Option<StorePath>)>> {
    let paths: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    anyhow::ensure!(
        paths.len() == n,
        "nix-build printed {} paths for {n} hosts",
        paths.len()
    );
    paths
        .into_iter()
        .map(|p| Ok((StorePath::parse(p)?, None)))
        .collect()
}

pub(super) fn failure_of(out: &Output) -> BuildFailure {
    let text = out.stderr_str();
    let log_tail = out.tail(20);
    // Before anything else: a full disk fails evaluation (writing a
    // derivation) and builds alike, and Nix 2.8 stops with its own write
    // error, which reads like neither.
    if let Some(said) = buildlog::out_of_space(&text) {
        return BuildFailure::NoSpace {
            said,
            store: None,
            database_unusable: false,
            log_tail,
        };
    }
    // Nix 2.8's words, and 2.26's (the flake evaluated purely).
    if text.contains("requires lock file changes")
        || text.contains("cannot update unlocked flake input")
    {
        return BuildFailure::LockIncomplete { log_tail };
    }
    let lower = text.to_lowercase();
    if lower.contains("unable to start any build")
        || lower.contains("failed to find a machine for remote build")
    {
        return BuildFailure::NoMachine {
            unreachable: machine_errors(&text),
            log_tail,
        };
    }
    let built = text.contains("error: builder for")
        || text.contains("build of '")
        || text.contains("failed with exit code");
    if built {
        BuildFailure::Build { log_tail }
    } else {
        BuildFailure::Eval { log_tail }
    }
}

/// Derivers of `paths`, one command (classic builds print only out paths).
async fn derivers<R: Remote>(builder: &R, paths: &[StorePath]) -> anyhow::Result<Vec<StorePath>> {
    let out = builder
        .exec(
            &Command::new("nix-store")
                .args(["--query", "--deriver"])
                .args(paths.iter().map(|p| p.as_str())),
        )
        .await?
        .check("nix-store --query --deriver")?;
    out.stdout_str()
        .lines()
        .map(|l| StorePath::parse(l.trim()).map_err(Into::into))
        .collect()
}

async fn finish<R: Remote>(
    builder: &R,
    built: Vec<(StorePath, Option<StorePath>)>,
) -> anyhow::Result<Vec<HostBuild>> {
    let missing: Vec<StorePath> = built
        .iter()
        .filter(|(_, d)| d.is_none())
        .map(|(t, _)| t.clone())
        .collect();
    let mut found = derivers(builder, &missing).await?.into_iter();
    built
        .into_iter()
        .map(|(toplevel, drv)| {
            let drv = match drv {
                Some(d) => d,
                None => found.next().context("missing deriver")?,
            };
            Ok(HostBuild::Built { toplevel, drv })
        })
        .collect()
}

/// Runs `"$@"` (the build) with its stderr merged into stdout and its stdin
/// empty; ends it with SIGTERM when the wrapper's own stdin closes. The
/// watcher reads a copy of stdin kept on fd 3 (a background job's stdin is
/// /dev/null); when the build ends first, the watcher is killed (its `cat`
/// goes at the channel's close, holding no output).
pub(crate) const BUILD_WRAPPER: &str = r#"exec 3<&0 </dev/null
"$@" 2>&1 3<&- &
build=$!
{ cat <&3; kill -TERM "$build"; } >/dev/null 2>&1 &
watch=$!
exec 3<&-
wait "$build"; code=$?
kill "$watch" 2>/dev/null
exit "$code""#;

/// The error a cancelled build ends with.
#[derive(Debug, thiserror::Error)]
#[error("the build was cancelled (Ctrl-C); Nix on the builder was told to stop")]
pub struct Cancelled;

/// Was this error a cancelled build?
pub fn was_cancelled(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Cancelled>().is_some())
}

/// How long a cancelled build may take to end before nixgate stops waiting
/// (Nix ends promptly on SIGTERM; a builder that does not is left to it).
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The command running `cmd` under [`BUILD_WRAPPER`], with Nix's JSON log.
pub fn logged_command(cmd: &Command) -> Command {
    let wrapped = Command::script(BUILD_WRAPPER)
        .args(cmd.argv().iter().cloned())
        .args(["--log-format", "internal-json"]);
    cmd.env_vars()
        .iter()
        .fold(wrapped, |c, (k, v)| c.env(k.clone(), v.clone()))
}

/// Run a Nix command (a build, a copy) with its JSON log merged into its
/// output, handing what the log tells to `told` as it comes; `stop` ends it.
/// The result's stdout holds the command's own output lines, its stderr the
/// plain-text tail of the log.
pub(crate) async fn run_logged<R: Remote>(
    builder: &R,
    cmd: &Command,
    told: &(dyn Fn(Logged) + Send + Sync),
    stop: &CancellationToken,
) -> anyhow::Result<Output> {
    let s = builder.exec_piped(&logged_command(cmd)).await?;
    let mut stdin = Some(s.stdin);
    let mut reader = tokio::io::BufReader::new(s.stdout);
    let mut log = BuildLog::new(40);
    let mut stdout = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = tokio::select! {
            n = reader.read_until(b'\n', &mut buf) => n.context("reading the build's output")?,
            _ = stop.cancelled(), if stdin.is_some() => {
                // EOF on stdin: the wrapper ends the build.
                if let Some(mut i) = stdin.take() {
                    let _ = i.shutdown().await;
                }
                let _ = tokio::time::timeout(CANCEL_GRACE, s.finish).await;
                return Err(Cancelled.into());
            }
        };
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        match log.feed(line.trim_end_matches(['\n', '\r'])) {
            Ok(Some(t)) => told(t),
            Ok(None) => {}
            Err(plain) => {
                stdout.extend_from_slice(plain.as_bytes());
                stdout.push(b'\n');
            }
        }
    }
    let end = s.finish.await?;
    drop(stdin);
    if stop.is_cancelled() {
        return Err(Cancelled.into());
    }
    let mut stderr = log.text().into_bytes();
    stderr.extend_from_slice(&end.stderr);
    Ok(Output::new(end.exit, stdout, stderr))
}

/// Build every host of `req`; results in request order. `Err` when the
/// builder cannot be used at all, or `stop` cancelled the build
/// ([`was_cancelled`]).
pub async fn build_hosts<R: Remote>(
    builder: &R,
    req: &BuildRequest,
    progress: &(dyn Fn(BuildUpdate) + Send + Sync),
    stop: &CancellationToken,
) -> anyhow::Result<Vec<(String, HostBuild)>> {
    if req.hosts.is_empty() {
        return Ok(Vec::new());
    }
    let told = |t: Logged| match t {
        Logged::Progress(c) => progress(BuildUpdate::Progress(c.into())),
        Logged::Building { drv, machine } => {
            if let Ok(drv) = StorePath::parse(&drv) {
                progress(BuildUpdate::Building { drv, machine })
            }
        }
        Logged::CopyPlanned { .. } | Logged::Copied { .. } => {}
    };
    if req.flake {
        return super::flake_build::build_hosts(builder, req, &told, stop).await;
    }
    let attrs: Vec<&str> = req.hosts.iter().map(|(_, a)| a.as_str()).collect();
    let leader = req.hosts.first().map_or("", |(h, _)| h.as_str());
    let cmd = build_command(&req.dir, &attrs, leader, &req.options);
    let out = run_logged(builder, &cmd, &told, stop)
        .await
        .context("running the build on the builder")?;
    if out.success() {
        let built = parse_success(&out.stdout_str(), attrs.len())?;
        let results = finish(builder, built).await?;
        return Ok(req
            .hosts
            .iter()
            .map(|(h, _)| h.clone())
            .zip(results)
            .collect());
    }
    // Something failed: each host alone, concurrently, to attribute it.
    let quiet = |_: Logged| {};
    let singles = req.hosts.iter().map(|(host, attr)| async move {
        let cmd = build_command(&req.dir, &[attr.as_str()], host, &req.options);
        let hb = match run_logged(builder, &cmd, &quiet, stop).await {
            Ok(out) if out.success() => match parse_success(&out.stdout_str(), 1) {
                Ok(built) => finish(builder, built).await.map(|mut v| v.remove(0)),
                Err(e) => Err(e),
            },
            Ok(out) => Ok(HostBuild::Failed {
                error: failure_of(&out),
            }),
            Err(e) => Err(e),
        };
        (host.clone(), hb)
    });
    let mut results = each_host(futures_util::future::join_all(singles).await, "building")?;
    measure_store_for_space_failures(builder, &mut results).await;
    Ok(results)
}

/// Every host's answer, or the first command that could not give one
/// (the builder lost, Ctrl-C), naming what it was `doing` for which host.
pub(super) fn each_host<T>(
    answers: Vec<(String, anyhow::Result<T>)>,
    doing: &str,
) -> anyhow::Result<Vec<(String, T)>> {
    answers
        .into_iter()
        .map(|(host, a)| {
            let a = a.with_context(|| format!("{doing} {host}"))?;
            Ok((host, a))
        })
        .collect()
}

/// When a host's build ran out of space, how full the builder's store is
/// now (one `df` for all such hosts), so the words can say which store
/// and how full. A failure whose log says only that Nix's database had an
/// I/O error ([`buildlog::database_io_error`]) is out of space when the
/// store is measured nearly full: on a full disk Nix 2.8 cannot open its
/// database at all, and says nothing else.
pub(super) async fn measure_store_for_space_failures<R: Remote>(
    builder: &R,
    results: &mut [(String, HostBuild)],
) {
    let about_space = |hb: &HostBuild| match hb {
        HostBuild::Failed {
            error: BuildFailure::NoSpace { .. },
        } => true,
        HostBuild::Failed {
            error: BuildFailure::Eval { log_tail } | BuildFailure::Build { log_tail },
        } => buildlog::database_io_error(&log_tail.join("\n")).is_some(),
        _ => false,
    };
    if !results.iter().any(|(_, hb)| about_space(hb)) {
        return;
    }
    let measured = space::store_space(builder).await;
    let full = measured.as_ref().is_some_and(StoreSpace::nearly_full);
    for (_, hb) in results.iter_mut() {
        let HostBuild::Failed { error } = hb else {
            continue;
        };
        match error {
            BuildFailure::NoSpace { store, .. } => store.clone_from(&measured),
            BuildFailure::Eval { log_tail } | BuildFailure::Build { log_tail } if full => {
                if let Some(said) = buildlog::database_io_error(&log_tail.join("\n")) {
                    *error = BuildFailure::NoSpace {
                        said,
                        store: measured.clone(),
                        database_unusable: true,
                        log_tail: std::mem::take(log_tail),
                    };
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let none = BuildOptions::default();
        let c = build_command("/var/tmp/nixgate/src/abc", &["a.b", "c.d"], "web1", &none);
        assert_eq!(c.argv()[..4], ["sh", "-c", BUILD_CLASSIC, "nixgate"]);
        assert_eq!(
            c.argv()[4..],
            [
                "web1",
                "/var/tmp/nixgate/src/abc",
                "-A",
                "a.b",
                "-A",
                "c.d",
                "--keep-going"
            ]
        );
        let remote = BuildOptions {
            builders: vec!["ssh://b2 x86_64-linux".into(), "ssh://b3".into()],
            use_substitutes: true,
            max_jobs: Some(0),
        };
        let c = build_command("/d", &["x"], "web1", &remote);
        assert_eq!(
            c.argv()[9..],
            [
                "--option",
                "builders",
                "ssh://b2 x86_64-linux ; ssh://b3",
                "--option",
                "builders-use-substitutes",
                "true",
                "--option",
                "max-jobs",
                "0"
            ]
        );
        assert_eq!(
            instantiate_command("/d", false, "a.b").argv(),
            ["nix-instantiate", "/d", "-A", "a.b"]
        );
        assert_eq!(
            instantiate_command("/d", true, "a.b")
                .argv()
                .last()
                .unwrap(),
            "path:/d#a.b.drvPath"
        );
    }

    /// Run the classic build's script with a `nix-build` that logs its
    /// arguments and prints `printed`, the roots under `dir/gcroots/`.
    fn classic_build(d: &str, printed: &str) -> (std::process::Output, String) {
        let log = format!("{d}/nix-build.log");
        let stub = format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\necho {printed}\n");
        crate::remote::local::executable(format!("{d}/nix-build"), &stub);
        let c = build_command(
            "/src/abc",
            &["web1", "web2"],
            "web1",
            &BuildOptions::default(),
        );
        let script = c.argv()[2].replace("/nix/var/nix/gcroots/", &format!("{d}/gcroots/"));
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .args(&c.argv()[3..])
            .env("PATH", format!("{d}:/usr/bin:/bin"))
            .env("HOME", format!("{d}/home"))
            .env_remove("XDG_STATE_HOME")
            .output()
            .unwrap();
        (out, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// The classic build roots what it built itself (`--out-link`): with
    /// `--no-out-link` nothing rooted it until the roots after the build,
    /// two round trips later, and a GC in between took it. A larger earlier
    /// batch's extra links go first; the output is the build's.
    #[test]
    fn a_classic_build_roots_its_results_itself() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        // Where the links go, as root or as a user with a per-user dir.
        let at = if rustix::process::geteuid().is_root() {
            format!("{d}/gcroots/nixgate/web1")
        } else {
            let id = std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap();
            let user = String::from_utf8_lossy(&id.stdout).trim().to_owned();
            format!("{d}/gcroots/per-user/{user}/nixgate/web1")
        };
        std::fs::create_dir_all(&at).unwrap();
        for n in ["-2", "-3"] {
            std::os::unix::fs::symlink("/nix/store/old", format!("{at}/built{n}")).unwrap();
        }
        let (out, log) = classic_build(d, "/nix/store/printed");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/nix/store/printed\n");
        let args: Vec<&str> = log.lines().collect();
        assert_eq!(
            args,
            [
                "/src/abc",
                "-A",
                "web1",
                "-A",
                "web2",
                "--keep-going",
                "--out-link",
                &format!("{at}/built")
            ],
            "{log}"
        );
        // Two hosts: nix-build replaces `built-2`; `built-3` is gone.
        assert!(std::fs::symlink_metadata(format!("{at}/built-2")).is_ok());
        assert!(std::fs::symlink_metadata(format!("{at}/built-3")).is_err());
    }

    /// Real Nix (2.8 here): a classic build of two hosts, then a garbage
    /// collection of its results before the roots after the build
    /// (`nix-store --delete` refuses a live path): they survive.
    #[test]
    #[ignore = "needs Nix and a writable store (root): run scripts/test"]
    fn real_nix_a_classic_build_survives_a_gc_until_its_roots() {
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let sys = |n: &str| {
            format!(
                "{n} = derivation {{ name = \"ng-classic-{n}\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo {unique} > $out\" ]; }};"
            )
        };
        std::fs::write(
            format!("{d}/default.nix"),
            format!("{{ {} {} }}", sys("web1"), sys("web2")),
        )
        .unwrap();
        let roots = format!("/nix/var/nix/gcroots/nixgate-test-{unique}");
        let options = BuildOptions::default();
        let c = build_command(d, &["web1", "web2"], "web1", &options);
        let script = c.argv()[2].replace("/nix/var/nix/gcroots/", &format!("{roots}/"));
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .args(&c.argv()[3..])
            .args([
                "--option",
                "sandbox",
                "false",
                "--option",
                "build-users-group",
                "",
            ])
            .args(["--option", "substituters", ""])
            .output()
            .unwrap();
        let built = parse_success(&String::from_utf8_lossy(&out.stdout), 2);
        let gc: Vec<std::process::Output> = built
            .iter()
            .flatten()
            .map(|(t, _)| {
                std::process::Command::new("nix-store")
                    .args(["--delete", t.as_str()])
                    .output()
                    .unwrap()
            })
            .collect();
        let _ = std::fs::remove_dir_all(&roots);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(built.unwrap().len(), 2);
        for g in gc {
            assert!(!g.status.success(), "deleted: {g:?}");
        }
    }

    #[test]
    fn parses_lines() {
        let t = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-a";
        let v = parse_success(&format!("{t}\n"), 1).unwrap();
        assert_eq!(v[0].0.as_str(), t);
        assert!(parse_success(&format!("{t}\n"), 2).is_err());
    }
}

#[cfg(test)]
mod no_machine {
    use super::*;
    use crate::remote::Exit;

    #[test]
    fn a_down_remote_builder_is_named_with_nix_words() {
        // Nix 2.8's log tail (colours stripped) for `--option max-jobs 0`
        // and a remote builder nothing listens for; 2.26 says "failed to
        // start SSH connection to" and "Unable to start any build".
        for (said, unable) in [
            ("cannot connect to 'root@127.238.0.200'", "unable"),
            (
                "failed to start SSH connection to 'root@127.240.0.200'",
                "Unable",
            ),
        ] {
            let tail = format!(
                "cannot build on 'ssh://root@127.0.0.200': error: {said}: ssh: connect to host 127.0.0.200 port 22: Connection refused\n\
                 Failed to find a machine for remote build!\n\
                 error: {unable} to start any build; remote machines may not have all required system features.\n"
            );
            let out = Output::new(Exit::Code { code: 1 }, Vec::new(), tail.into_bytes());
            match failure_of(&out) {
                BuildFailure::NoMachine {
                    unreachable,
                    log_tail,
                } => {
                    assert_eq!(unreachable.len(), 1);
                    assert_eq!(unreachable[0].machine, "ssh://root@127.0.0.200");
                    assert!(unreachable[0].error.starts_with(said), "{unreachable:?}");
                    assert_eq!(log_tail.len(), 3);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod no_space {
    use super::*;
    use crate::remote::Exit;
    use crate::remote::scripted::{ScriptedRemote, ok};

    /// What the test fleet's builder (Nix 2.8, a 48 MiB /nix) printed when
    /// a host's filler derivations filled its store, as `--log-format
    /// internal-json` lines.
    const FULL: &str = r#"@nix {"action":"msg","level":3,"msg":"these 14 derivations will be built:"}
@nix {"action":"start","fields":["/nix/store/9kiy0n90wrxw95armwj43vlbdcr340wp-filler-0-1.0.drv","",1,1],"id":7,"level":3,"text":"building","type":105}
@nix {"action":"result","fields":["head: error writing 'standard output': No space left on device"],"id":7,"type":101}
@nix {"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m writing to file: No space left on device"}
@nix {"action":"msg","level":0,"msg":"(use '--show-trace' to show detailed location information)"}"#;

    #[test]
    fn a_full_store_is_not_an_evaluation_error() {
        let mut log = BuildLog::new(40);
        for l in FULL.lines() {
            log.feed(l).unwrap();
        }
        let out = Output::new(Exit::Code { code: 1 }, Vec::new(), log.text().into_bytes());
        match failure_of(&out) {
            BuildFailure::NoSpace {
                said,
                store,
                database_unusable,
                log_tail,
            } => {
                assert!(!database_unusable);
                assert_eq!(said, "writing to file: No space left on device");
                assert_eq!(store, None, "measured by build_hosts, not here");
                assert_eq!(log_tail.len(), 4);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_json_carries_it_as_data() {
        let f = BuildFailure::NoSpace {
            said: "writing to file: No space left on device".into(),
            store: Some(StoreSpace {
                dir: "/nix/store".into(),
                mounted_on: "/nix".into(),
                size_bytes: 48 << 20,
                free_bytes: 0,
            }),
            database_unusable: false,
            log_tail: vec!["error: writing to file: No space left on device".into()],
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "no_space",
                "said": "writing to file: No space left on device",
                "store": {
                    "dir": "/nix/store",
                    "mounted_on": "/nix",
                    "size_bytes": 50331648,
                    "free_bytes": 0
                },
                "log_tail": ["error: writing to file: No space left on device"]
            })
        );
        // Stored run reports read it back; one without a measure too.
        assert_eq!(serde_json::from_value::<BuildFailure>(v).unwrap(), f);
        let unmeasured: BuildFailure = serde_json::from_str(
            r#"{"kind":"no_space","said":"database or disk is full","log_tail":[]}"#,
        )
        .unwrap();
        assert!(matches!(
            unmeasured,
            BuildFailure::NoSpace { store: None, .. }
        ));
    }

    #[tokio::test]
    async fn the_store_is_measured_once_for_every_host_that_ran_out() {
        let builder = ScriptedRemote::new("builder", |c| match c.argv()[0].as_str() {
            "df" => ok(
                "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                        fleet-small-nix 49152 49152 0 100% /nix\n",
            ),
            // The wrapper merges the log into stdout.
            _ => Output::new(Exit::Code { code: 1 }, FULL, ""),
        });
        let req = BuildRequest {
            dir: "/var/tmp/nixgate/src/abc".into(),
            flake: false,
            hosts: vec![
                ("web1".into(), "a.web1".into()),
                ("web2".into(), "a.web2".into()),
            ],
            options: BuildOptions::default(),
        };
        let got = build_hosts(&builder, &req, &|_| {}, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        for (host, hb) in &got {
            let HostBuild::Failed {
                error: BuildFailure::NoSpace { said, store, .. },
            } = hb
            else {
                panic!("{host}: {hb:?}");
            };
            assert!(said.contains("No space left on device"), "{said}");
            let store = store.as_ref().expect("measured");
            assert_eq!(
                (store.dir.as_str(), store.mounted_on.as_str()),
                ("/nix/store", "/nix")
            );
            assert_eq!((store.size_bytes, store.free_bytes), (48 << 20, 0));
        }
        let dfs = builder.argvs().iter().filter(|a| a[0] == "df").count();
        assert_eq!(dfs, 1, "{:?}", builder.argvs());
    }
}

#[cfg(test)]
mod database_unusable {
    use super::*;
    use crate::remote::Exit;
    use crate::remote::scripted::{ScriptedRemote, ok};

    /// Nix 2.8 on the test fleet's builder, its 48 MiB /nix filled to the
    /// last byte before the build: it cannot open its database.
    const IO: &str = r#"@nix {"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m executing SQLite statement 'pragma synchronous = normal': disk I/O error (in '/nix/var/nix/db/db.sqlite')"}"#;

    fn builder(free_kib: u64) -> ScriptedRemote {
        ScriptedRemote::new("builder", move |c| match c.argv()[0].as_str() {
            "df" => ok(&format!(
                "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                 fleet-small-nix 49152 {} {free_kib} 99% /nix\n",
                49152 - free_kib
            )),
            _ => Output::new(Exit::Code { code: 1 }, IO, ""),
        })
    }

    async fn build(b: &ScriptedRemote) -> BuildFailure {
        let req = BuildRequest {
            dir: "/d".into(),
            flake: false,
            hosts: vec![("web1".into(), "a.web1".into())],
            options: BuildOptions::default(),
        };
        let mut got = build_hosts(b, &req, &|_| {}, &CancellationToken::new())
            .await
            .unwrap();
        match got.remove(0).1 {
            HostBuild::Failed { error } => error,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn on_a_full_store_it_is_no_space() {
        match build(&builder(0)).await {
            BuildFailure::NoSpace {
                said,
                store,
                database_unusable,
                ..
            } => {
                assert!(said.contains("disk I/O error"), "{said}");
                assert_eq!(store.map(|s| s.free_bytes), Some(0));
                assert!(database_unusable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn on_a_store_with_room_it_stays_what_it_was() {
        // A failing disk, not a full one: the words stay Nix's.
        let b = builder(40 * 1024);
        assert!(matches!(build(&b).await, BuildFailure::Eval { .. }));
        assert_eq!(b.argvs().iter().filter(|a| a[0] == "df").count(), 1);
    }

    #[tokio::test]
    async fn other_failures_cost_no_df() {
        let b = ScriptedRemote::new("builder", |_| {
            Output::new(
                Exit::Code { code: 1 },
                r#"@nix {"action":"msg","level":0,"msg":"error: attribute 'web1' missing"}"#,
                "",
            )
        });
        assert!(matches!(build(&b).await, BuildFailure::Eval { .. }));
        assert!(b.argvs().iter().all(|a| a[0] != "df"), "{:?}", b.argvs());
    }
}
