//! Evaluation and build on the builder: every selected host in one
//! invocation (shared evaluation, parallel builds); when that fails, each
//! host alone, so one host's failure fails that host only, with its log.
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
use super::buildlog::{BuildLog, Counts};
use crate::remote::{Command, Output, Remote};

/// What to build: `(host, attribute)` pairs from the shipped source `dir`.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub dir: String,
    pub flake: bool,
    pub hosts: Vec<(String, String)>,
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
}

/// One host's build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostBuild {
    Built { toplevel: StorePath, drv: StorePath },
    Failed { error: BuildFailure },
}

#[derive(Deserialize)]
struct JsonBuild {
    #[serde(rename = "drvPath")]
    drv_path: String,
    outputs: std::collections::BTreeMap<String, String>,
}

/// The command building `hosts` (one or all).
pub fn build_command(dir: &str, flake: bool, attrs: &[&str]) -> Command {
    if flake {
        let mut c = Command::new("nix").args([
            "--extra-experimental-features",
            "nix-command flakes",
            "build",
            "--json",
            "--no-link",
            "--keep-going",
        ]);
        for a in attrs {
            c = c.arg(format!("path:{dir}#{a}"));
        }
        c
    } else {
        let mut c = Command::new("nix-build").arg(dir);
        for a in attrs {
            c = c.arg("-A").arg(*a);
        }
        c.args(["--no-out-link", "--keep-going"])
    }
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

/// Parse a successful build's stdout into `(toplevel, drv?)` per attribute.
fn parse_success(
    flake: bool,
    stdout: &str,
    n: usize,
) -> anyhow::Result<Vec<(StorePath, Option<StorePath>)>> {
    if flake {
        // The JSON is one line; anything else that reached stdout is not it.
        let json = stdout
            .lines()
            .rfind(|l| l.trim_start().starts_with('['))
            .unwrap_or(stdout.trim());
        let builds: Vec<JsonBuild> =
            serde_json::from_str(json.trim()).context("parsing `nix build --json` output")?;
        anyhow::ensure!(
            builds.len() == n,
            "nix build reported {} results for {n} hosts",
            builds.len()
        );
        builds
            .into_iter()
            .map(|b| {
                let out = b.outputs.get("out").context("no `out` output")?;
                Ok((StorePath::parse(out)?, Some(StorePath::parse(&b.drv_path)?)))
            })
            .collect()
    } else {
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
}

fn failure_of(out: &Output) -> BuildFailure {
    let text = out.stderr_str();
    let log_tail = out.tail(20);
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
    Command::script(BUILD_WRAPPER)
        .args(cmd.argv().iter().cloned())
        .args(["--log-format", "internal-json"])
}

/// Run a build command with Nix's JSON log merged into its output,
/// reporting progress as it changes; `stop` ends it. The result's stdout
/// holds the command's own output lines, its stderr the plain-text tail of
/// the log.
async fn run_logged<R: Remote>(
    builder: &R,
    cmd: &Command,
    progress: &(dyn Fn(BuildProgress) + Send + Sync),
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
            Ok(Some(c)) => progress(c.into()),
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
    progress: &(dyn Fn(BuildProgress) + Send + Sync),
    stop: &CancellationToken,
) -> anyhow::Result<Vec<(String, HostBuild)>> {
    if req.hosts.is_empty() {
        return Ok(Vec::new());
    }
    let attrs: Vec<&str> = req.hosts.iter().map(|(_, a)| a.as_str()).collect();
    let cmd = build_command(&req.dir, req.flake, &attrs);
    let out = run_logged(builder, &cmd, progress, stop)
        .await
        .context("running the build on the builder")?;
    if out.success() {
        let built = parse_success(req.flake, &out.stdout_str(), attrs.len())?;
        let results = finish(builder, built).await?;
        return Ok(req
            .hosts
            .iter()
            .map(|(h, _)| h.clone())
            .zip(results)
            .collect());
    }
    // Something failed: each host alone, concurrently, to attribute it.
    let quiet = |_: BuildProgress| {};
    let singles = req.hosts.iter().map(|(host, attr)| async move {
        let cmd = build_command(&req.dir, req.flake, &[attr.as_str()]);
        let hb = match run_logged(builder, &cmd, &quiet, stop).await {
            Ok(out) if out.success() => match parse_success(req.flake, &out.stdout_str(), 1) {
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
    let mut results = Vec::new();
    for (host, hb) in futures_util::future::join_all(singles).await {
        let hb = hb.with_context(|| format!("building {host}"))?;
        results.push((host, hb));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let c = build_command("/var/tmp/nixgate/src/abc", false, &["a.b", "c.d"]);
        assert_eq!(
            c.argv(),
            [
                "nix-build",
                "/var/tmp/nixgate/src/abc",
                "-A",
                "a.b",
                "-A",
                "c.d",
                "--no-out-link",
                "--keep-going"
            ]
        );
        let c = build_command("/d", true, &["x"]);
        assert_eq!(c.argv().last().unwrap(), "path:/d#x");
        assert!(c.argv().contains(&"--json".to_string()));
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

    #[test]
    fn parses_json_and_lines() {
        let t = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-a";
        let d = "/nix/store/1c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-a.drv";
        let json = format!(r#"[{{"drvPath":"{d}","outputs":{{"out":"{t}"}}}}]"#);
        let v = parse_success(true, &format!("stray line\n{json}\n"), 1).unwrap();
        assert_eq!(v[0].0.as_str(), t);
        assert_eq!(v[0].1.as_ref().unwrap().as_str(), d);
        assert!(parse_success(false, &format!("{t}\n"), 2).is_err());
    }
}
