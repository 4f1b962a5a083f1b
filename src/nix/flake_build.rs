//! Flake builds: every host's system evaluated in one `nix eval`, whose
//! answer pairs each host with its derivation, then the derivations
//! realised in one `nix-store --realise`.
//!
//! Why not one `nix build --json` of every host's attribute: before Nix
//! 2.16 its JSON lists the results in Nix's own order (its goals sorted by
//! derivation name), not in the order asked (upstream fixed it in 2.16).
//! Measured with Nix 2.8: asked for `zeta`, `alpha`, `mid`, it answered
//! `alpha`, `mid`, `zeta`. Paired by position, hosts were given each
//! other's systems: GC-rooted, diffed and deployed under the wrong names.
//! Here the pairing comes from a JSON list the evaluation builds itself (a
//! list keeps its order in every Nix), and the build is told derivations,
//! not attributes; the realised outputs are checked against the evaluated
//! ones. The evaluation is the one `nix build` made (one process for every
//! host, shared imports), so the split costs one command more, not a
//! second evaluation.
//!
//! The attribute is looked up as `nix build path:DIR#ATTR` looks it up:
//! `packages.<system>.ATTR`, `legacyPackages.<system>.ATTR`, then `ATTR`,
//! the first that exists (the others are not evaluated).
//!
//! The evaluation is pure, as `nix build`'s is: the flake is fetched by a
//! locked reference (`path:DIR?narHash=...`, its hash taken on the builder
//! in the same command), so nothing of the builder's environment (`NIX_PATH`,
//! `~/.config/nixpkgs`, `getEnv`) reaches the systems. The source directory
//! and the attributes are `--argstr`s of a fixed expression: no inventory
//! text is ever spliced into Nix code.
//!
//! What differs from `nix build`: a flake's `nixConfig` is not applied
//! (its extra substituters go unused), and Nix's flake evaluation cache is
//! not used (a push retried evaluates again). And a lock file is never
//! written: a `flake.lock` that does not lock every input is refused
//! ([`BuildFailure::LockIncomplete`]; Nix 2.8 says "requires lock file
//! changes", 2.26 "cannot update unlocked flake input ... in pure mode"),
//! where `nix build` locked the missing inputs itself. nixgate builds what
//! the commit locks.

use anyhow::Context;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::StorePath;
use super::build::{
    BuildFailure, BuildRequest, HostBuild, each_host, failure_of, measure_store_for_space_failures,
    run_logged,
};
use super::buildlog::Logged;
use crate::remote::{Command, Remote};

/// `EVAL_SCRIPT DIR ATTRS LEADER [NIX OPTION...]`: each attribute's
/// derivation and output, in the order asked (ATTRS: a JSON list of
/// attribute paths, each a list of names), as JSON on stdout; the
/// derivations GC-rooted before the command ends, as a batch named for
/// LEADER ([`crate::nix::gcroots::hold_evaluated`]).
///
/// `nix eval` runs in the background, waited for, and a SIGTERM (the
/// build's cancel, [`super::build::BUILD_WRAPPER`]) passed on to it: the
/// shell stays to root what it wrote, so it can no longer `exec` Nix to
/// have the signal reach it.
const EVAL_SCRIPT: &str = concat!(
    r#"dir=$1; attrs=$2; leader=$3; shift 3
nix() { command nix --extra-experimental-features 'nix-command flakes' "$@"; }
hash=$(nix hash path --sri "$dir") || exit 1
system=$(nix eval --impure --raw --expr builtins.currentSystem) || exit 1
hash=$(printf %s "$hash" | sed 's/+/%2B/g; s|/|%2F|g; s/=/%3D/g')
expr=$(cat <<'NIX'
{ flake, attrs, system }:
let
  f = builtins.getFlake flake;
  find = v: path:
    if path == [ ] then { found = true; value = v; }
    else
      let n = builtins.head path; in
      if builtins.isAttrs v && builtins.hasAttr n v
      then find v.${n} (builtins.tail path)
      else { found = false; };
  first = tries:
    if tries == [ ] then { found = false; }
    else
      let r = find f (builtins.head tries); in
      if r.found then r else first (builtins.tail tries);
  pick = path:
    let r = first [ ([ "packages" system ] ++ path) ([ "legacyPackages" system ] ++ path) path ]; in
    if r.found then r.value
    else throw "flake '${flake}' does not provide attribute '${builtins.concatStringsSep "." path}'";
in
{ r = map (path: let t = pick path; in { drv = t.drvPath; out = t.outPath; }) (builtins.fromJSON attrs); }
NIX
)
out=$(mktemp) || exit 1
pid=
trap 'kill "$pid" 2>/dev/null; rm -f "$out"; exit 143' TERM
# Not the function: its subshell, not Nix, would be $! and get the signal.
command nix --extra-experimental-features 'nix-command flakes' eval --json --expr "$expr" r \
  --argstr flake "path:$dir?narHash=$hash" \
  --argstr attrs "$attrs" --argstr system "$system" "$@" >"$out" &
pid=$!
wait "$pid"; code=$?
if [ "$code" != 0 ]; then rm -f "$out"; exit "$code"; fi
cat "$out"
"#,
    crate::nix::gcroots::hold_evaluated!(),
    r#"# Store paths hold no comma nor quote: each "drv" value whole.
hold_evaluated $(tr ',' '\n' <"$out" | sed -n 's/.*"drv":"\([^"]*\)".*/\1/p')
rm -f "$out""#
);

/// One host's evaluated system.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Evaluated {
    drv: String,
    out: String,
}

/// Split a Nix attribute path (`a."b.c".d`) into its names, as Nix does
/// for a flake fragment: dots separate, double quotes quote.
pub fn attr_path(attr: &str) -> Vec<String> {
    let mut names = vec![String::new()];
    let mut quoted = false;
    for c in attr.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => names.push(String::new()),
            c => names.last_mut().expect("never empty").push(c),
        }
    }
    names
}

/// The command evaluating `attrs` of the flake in `dir`, rooting the
/// derivations under `leader`'s name (the first host evaluated).
pub fn eval_command(dir: &str, attrs: &[&str], leader: &str, options: &[String]) -> Command {
    let paths: Vec<Vec<String>> = attrs.iter().map(|a| attr_path(a)).collect();
    let json = serde_json::to_string(&paths).expect("a list of strings serialises");
    Command::script(EVAL_SCRIPT)
        .arg(dir)
        .arg(json)
        .arg(leader)
        .args(options.iter().cloned())
}

/// The command realising `drvs`.
pub fn realise_command(drvs: &[&StorePath], options: &[String]) -> Command {
    Command::new("nix-store")
        .args(["--realise", "--keep-going"])
        .args(drvs.iter().map(|d| d.as_str()))
        .args(options.iter().cloned())
}

/// Parse the evaluation's answer: one `(out, drv)` per attribute asked.
fn parse_evaluated(stdout: &str, n: usize) -> anyhow::Result<Vec<(StorePath, StorePath)>> {
    // The JSON is one line; anything else that reached stdout is not it.
    let json = stdout
        .lines()
        .rfind(|l| l.trim_start().starts_with('['))
        .unwrap_or(stdout.trim());
    let got: Vec<Evaluated> =
        serde_json::from_str(json.trim()).context("parsing `nix eval --json` output")?;
    anyhow::ensure!(
        got.len() == n,
        "nix eval answered {} systems for {n} hosts",
        got.len()
    );
    got.into_iter()
        .map(|e| Ok((StorePath::parse(&e.out)?, StorePath::parse(&e.drv)?)))
        .collect()
}

/// Build every host of `req` (a flake): results in request order.
pub async fn build_hosts<R: Remote>(
    builder: &R,
    req: &BuildRequest,
    told: &(dyn Fn(Logged) + Send + Sync),
    stop: &CancellationToken,
) -> anyhow::Result<Vec<(String, HostBuild)>> {
    let options = req.options.args();
    let evaluated = evaluate(builder, req, &options, told, stop).await?;
    let mut results = realise(builder, evaluated, &options, told, stop).await?;
    if results
        .iter()
        .any(|(_, hb)| matches!(hb, HostBuild::Failed { .. }))
    {
        measure_store_for_space_failures(builder, &mut results).await;
    }
    Ok(results)
}

/// Each host's `(out, drv)`, or why it did not evaluate: all hosts in one
/// command; when that fails, each host alone, so one host's error fails
/// that host only.
async fn evaluate<R: Remote>(
    builder: &R,
    req: &BuildRequest,
    options: &[String],
    told: &(dyn Fn(Logged) + Send + Sync),
    stop: &CancellationToken,
) -> anyhow::Result<Vec<(String, Result<(StorePath, StorePath), BuildFailure>)>> {
    let attrs: Vec<&str> = req.hosts.iter().map(|(_, a)| a.as_str()).collect();
    let leader = req.hosts.first().map_or("", |(h, _)| h.as_str());
    let cmd = eval_command(&req.dir, &attrs, leader, options);
    let out = run_logged(builder, &cmd, told, stop)
        .await
        .context("evaluating on the builder")?;
    if out.success() {
        let systems = parse_evaluated(&out.stdout_str(), attrs.len())?;
        let hosts = req.hosts.iter().map(|(h, _)| h.clone());
        return Ok(hosts.zip(systems.into_iter().map(Ok)).collect());
    }
    if req.hosts.len() == 1 {
        return Ok(vec![(req.hosts[0].0.clone(), Err(failure_of(&out)))]);
    }
    let quiet = |_: Logged| {};
    let singles = req.hosts.iter().map(|(host, attr)| async move {
        let cmd = eval_command(&req.dir, &[attr.as_str()], host, options);
        let one = match run_logged(builder, &cmd, &quiet, stop).await {
            Ok(out) if out.success() => {
                parse_evaluated(&out.stdout_str(), 1).map(|mut v| Ok(v.remove(0)))
            }
            Ok(out) => Ok(Err(failure_of(&out))),
            Err(e) => Err(e),
        };
        (host.clone(), one)
    });
    each_host(futures_util::future::join_all(singles).await, "evaluating")
}

type Evaluation = Result<(StorePath, StorePath), BuildFailure>;

/// Realise the evaluated hosts' derivations: all in one command; when that
/// fails, each alone, so one host's failed build fails that host only.
async fn realise<R: Remote>(
    builder: &R,
    evaluated: Vec<(String, Evaluation)>,
    options: &[String],
    told: &(dyn Fn(Logged) + Send + Sync),
    stop: &CancellationToken,
) -> anyhow::Result<Vec<(String, HostBuild)>> {
    let drvs: Vec<&StorePath> = evaluated
        .iter()
        .filter_map(|(_, e)| e.as_ref().ok().map(|(_, drv)| drv))
        .collect();
    // Nothing evaluated: every host carries its own failure.
    let (printed, alone) = if drvs.is_empty() {
        (String::new(), None)
    } else {
        let out = run_logged(builder, &realise_command(&drvs, options), told, stop)
            .await
            .context("building on the builder")?;
        if !out.success() && drvs.len() > 1 {
            return realise_each(builder, evaluated, options, stop).await;
        }
        (
            out.stdout_str(),
            (!out.success()).then(|| realise_failure(&out)),
        )
    };
    evaluated
        .into_iter()
        .map(|(host, e)| {
            let hb = match (e, &alone) {
                (Err(error), _) => HostBuild::Failed { error },
                (Ok(_), Some(error)) => HostBuild::Failed {
                    error: error.clone(),
                },
                (Ok((toplevel, drv)), None) => built(&printed, toplevel, drv)?,
            };
            Ok((host, hb))
        })
        .collect()
}

/// Realise each evaluated host's derivation alone, concurrently.
async fn realise_each<R: Remote>(
    builder: &R,
    evaluated: Vec<(String, Evaluation)>,
    options: &[String],
    stop: &CancellationToken,
) -> anyhow::Result<Vec<(String, HostBuild)>> {
    let quiet = |_: Logged| {};
    let singles = evaluated.into_iter().map(|(host, e)| async move {
        let hb = match e {
            Err(error) => Ok(HostBuild::Failed { error }),
            Ok((toplevel, drv)) => {
                let cmd = realise_command(&[&drv], options);
                match run_logged(builder, &cmd, &quiet, stop).await {
                    Ok(out) if out.success() => built(&out.stdout_str(), toplevel, drv),
                    Ok(out) => Ok(HostBuild::Failed {
                        error: realise_failure(&out),
                    }),
                    Err(e) => Err(e),
                }
            }
        };
        (host, hb)
    });
    each_host(futures_util::future::join_all(singles).await, "building")
}

/// The host's build, once `nix-store --realise` printed its output.
fn built(printed: &str, toplevel: StorePath, drv: StorePath) -> anyhow::Result<HostBuild> {
    anyhow::ensure!(
        printed.lines().any(|l| l.trim() == toplevel.as_str()),
        "`nix-store --realise {drv}` succeeded without printing {toplevel}, the output its evaluation named"
    );
    Ok(HostBuild::Built { toplevel, drv })
}

/// Why a realisation failed: never an evaluation (the derivation exists).
fn realise_failure(out: &crate::remote::Output) -> BuildFailure {
    match failure_of(out) {
        BuildFailure::Eval { log_tail } => BuildFailure::Build { log_tail },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::build::{BuildOptions, build_hosts};
    use crate::remote::scripted::{ScriptedRemote, ok};
    use crate::remote::{Exit, Output};

    const ZETA: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-zeta";
    const ALPHA: &str = "/nix/store/1c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-alpha";

    fn drv(out: &str) -> String {
        format!("{out}.drv")
            .replacen("/0c0", "/2c0", 1)
            .replacen("/1c0", "/3c0", 1)
    }

    /// The `(dir, attrs)` arguments of an evaluation, through the wrapper.
    fn eval_args(c: &Command) -> Option<(&str, &str)> {
        let a = c.argv();
        let at = a.iter().position(|w| w == EVAL_SCRIPT)?;
        Some((a.get(at + 2)?.as_str(), a.get(at + 3)?.as_str()))
    }

    /// A builder whose evaluation answers in the order asked and whose
    /// `nix-store --realise` prints in its own (sorted) order, as Nix 2.8's
    /// `nix build --json` did; `failing` does not evaluate.
    fn builder(failing: Option<&'static str>) -> ScriptedRemote {
        ScriptedRemote::new("builder", move |c| {
            let argv = c.argv().join(" ");
            if let Some((_, attrs)) = eval_args(c) {
                let attrs: Vec<Vec<String>> = serde_json::from_str(attrs).unwrap();
                let names: Vec<&str> = attrs.iter().map(|a| a[1].as_str()).collect();
                if let Some(f) = failing.filter(|f| names.contains(f)) {
                    let said = format!("error: attribute '{f}' missing");
                    return Output::new(Exit::Code { code: 1 }, said, "");
                }
                let json: Vec<serde_json::Value> = names
                    .iter()
                    .map(|n| {
                        let out = if *n == "zeta" { ZETA } else { ALPHA };
                        serde_json::json!({ "drv": drv(out), "out": out })
                    })
                    .collect();
                return ok(&serde_json::to_string(&json).unwrap());
            }
            assert!(argv.contains("nix-store --realise"), "{argv}");
            let mut outs: Vec<&str> = [ALPHA, ZETA]
                .into_iter()
                .filter(|o| argv.contains(&drv(o)))
                .collect();
            outs.sort();
            ok(&(outs.join("\n") + "\n"))
        })
    }

    fn request(hosts: &[&str]) -> BuildRequest {
        BuildRequest {
            dir: "/var/tmp/nixgate/src/abc".into(),
            flake: true,
            hosts: hosts
                .iter()
                .map(|h| (h.to_string(), format!("nixosConfigurations.{h}")))
                .collect(),
            options: BuildOptions::default(),
        }
    }

    #[tokio::test]
    async fn each_host_gets_the_system_its_evaluation_named() {
        let b = builder(None);
        let got = build_hosts(
            &b,
            &request(&["zeta", "alpha"]),
            &|_| {},
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        let tops: Vec<(&str, &str)> = got
            .iter()
            .map(|(h, hb)| match hb {
                HostBuild::Built { toplevel, drv: d } => {
                    assert_eq!(d.as_str(), drv(toplevel.as_str()));
                    (h.as_str(), toplevel.as_str())
                }
                other => panic!("{h}: {other:?}"),
            })
            .collect();
        assert_eq!(tops, [("zeta", ZETA), ("alpha", ALPHA)]);
        // Evaluated once, realised once: no second evaluation.
        assert_eq!(b.argvs().len(), 2, "{:?}", b.argvs());
    }

    #[tokio::test]
    async fn a_host_that_does_not_evaluate_fails_alone() {
        let b = builder(Some("zeta"));
        let got = build_hosts(
            &b,
            &request(&["zeta", "alpha"]),
            &|_| {},
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(
            matches!(&got[0], (h, HostBuild::Failed { error: BuildFailure::Eval { log_tail } })
                if h == "zeta" && log_tail.concat().contains("'zeta' missing")),
            "{got:?}"
        );
        assert!(
            matches!(&got[1], (h, HostBuild::Built { toplevel, .. }) if h == "alpha" && toplevel.as_str() == ALPHA),
            "{got:?}"
        );
    }

    /// The script's Nix commands, against a `nix` that records its
    /// arguments: every one asks for the flake features (the last, run by
    /// `exec`, skipped the shell function that adds them: a builder whose
    /// nix.conf does not enable them failed every flake push).
    #[test]
    fn every_nix_command_of_the_evaluation_enables_flakes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let stub = format!(
            "#!/bin/sh\nprintf '%s' \"$*\" | tr '\\n' ' ' >> {d}/calls\necho >> {d}/calls\ncase \"$*\" in *' hash path '*) echo sha256-AB+/c= ;; *currentSystem*) printf x86_64-linux ;; *) echo '[]' ;; esac\n"
        );
        crate::remote::local::executable(format!("{d}/nix"), &stub);
        let c = eval_command(
            "/src/abc",
            &["a.b"],
            "web1",
            &["--option".into(), "max-jobs".into(), "0".into()],
        );
        let out = run_with_roots_in(&c, d, d);
        assert!(out.status.success(), "{out:?}");
        let calls = std::fs::read_to_string(format!("{d}/calls")).unwrap();
        let calls: Vec<&str> = calls.lines().collect();
        assert_eq!(calls.len(), 3, "{calls:?}");
        for c in &calls {
            assert!(
                c.starts_with("--extra-experimental-features nix-command flakes "),
                "{c}"
            );
        }
        let eval = calls[2];
        assert!(
            eval.contains("--argstr flake path:/src/abc?narHash=sha256-AB%2B%2Fc%3D"),
            "{eval}"
        );
        assert!(eval.contains(r#"--argstr attrs [["a","b"]]"#), "{eval}");
        assert!(eval.ends_with("--option max-jobs 0"), "{eval}");
    }

    /// Run `c` (the evaluation) with `bin` first on PATH, its GC roots
    /// under `dir/gcroots/` instead of the system's (a file there: no
    /// directory can be made, the fallback of a non-root user on Nix 2.14+),
    /// `HOME` in `dir`.
    fn run_with_roots_in(c: &Command, bin: &str, dir: &str) -> std::process::Output {
        let mut argv = c.argv().to_vec();
        argv[2] = argv[2].replace("/nix/var/nix/gcroots/", &format!("{dir}/gcroots/"));
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env(
                "PATH",
                format!("{bin}:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .env("HOME", format!("{dir}/home"))
            .env_remove("XDG_STATE_HOME")
            .output()
            .unwrap()
    }

    /// A `nix` whose evaluation answers `json`.
    fn nix_answering(d: &str, json: &str) {
        let stub = format!(
            "#!/bin/sh\ncase \"$*\" in *' hash path '*) echo sha256-AB= ;; *currentSystem*) printf x86_64-linux ;; *) echo '{json}' ;; esac\n"
        );
        crate::remote::local::executable(format!("{d}/nix"), &stub);
    }

    /// The link `name` under the gcroots directory `g` (as root under
    /// `nixgate/`, else under `per-user/USER/nixgate/`).
    fn root_link(g: &std::path::Path, name: &str) -> Option<String> {
        let at = if g.join("nixgate").exists() {
            g.join("nixgate")
        } else {
            let user = std::fs::read_dir(g.join("per-user")).ok()?.next()?.ok()?;
            user.path().join("nixgate")
        };
        let l = std::fs::read_link(at.join(name)).ok()?;
        Some(l.to_str()?.to_owned())
    }

    /// The evaluation's command roots the derivations it wrote before it
    /// ends, named for the first host: nothing else roots them until the
    /// build is over, and a GC in between deleted them. A later, smaller
    /// batch of the same leader replaces it whole.
    #[test]
    fn the_evaluation_roots_the_derivations_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let answer = |outs: &[&str]| {
            let v: Vec<serde_json::Value> = outs
                .iter()
                .map(|o| serde_json::json!({ "drv": drv(o), "out": o }))
                .collect();
            serde_json::to_string(&v).unwrap()
        };
        nix_answering(d, &answer(&[ZETA, ALPHA]));
        let c = eval_command("/src/abc", &["zeta", "alpha"], "zeta", &[]);
        let out = run_with_roots_in(&c, d, d);
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            parse_evaluated(&said, 2).unwrap()[0].1.as_str(),
            drv(ZETA),
            "{said}"
        );
        let g = dir.path().join("gcroots");
        assert_eq!(root_link(&g, "zeta/evaluated"), Some(drv(ZETA)));
        assert_eq!(root_link(&g, "zeta/evaluated-2"), Some(drv(ALPHA)));
        nix_answering(d, &answer(&[ALPHA]));
        let c = eval_command("/src/abc", &["alpha"], "zeta", &[]);
        assert!(run_with_roots_in(&c, d, d).status.success());
        assert_eq!(root_link(&g, "zeta/evaluated"), Some(drv(ALPHA)));
        assert_eq!(root_link(&g, "zeta/evaluated-2"), None);
    }

    /// A non-root builder on Nix 2.14+ or Lix (no gcroots directory of its
    /// own): a derivation's plain link is no root there, and `nix-store
    /// --realise` would build it. One `nix-instantiate --add-root` roots
    /// the whole batch, however many hosts.
    #[test]
    fn without_a_gcroots_directory_one_nix_instantiate_roots_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        std::fs::write(format!("{d}/gcroots"), "").unwrap();
        let v = serde_json::json!([{ "drv": drv(ZETA), "out": ZETA }, { "drv": drv(ALPHA), "out": ALPHA }]);
        nix_answering(d, &v.to_string());
        let log = format!("{d}/instantiate.log");
        let stub = format!("#!/bin/sh\nprintf '%s\\n' \"$@\" >> {log}\necho --- >> {log}\n");
        crate::remote::local::executable(format!("{d}/nix-instantiate"), &stub);
        let c = eval_command("/src/abc", &["zeta", "alpha"], "zeta", &[]);
        let out = run_with_roots_in(&c, d, d);
        assert!(out.status.success(), "{out:?}");
        let log = std::fs::read_to_string(&log).unwrap();
        let calls: Vec<Vec<&str>> = log
            .split("---\n")
            .filter(|c| !c.is_empty())
            .map(|c| c.lines().collect())
            .collect();
        assert_eq!(calls.len(), 1, "{log}");
        let root = format!("{d}/home/.local/state/nixgate/gcroots/zeta/evaluated");
        assert_eq!(calls[0][..2], ["--add-root", root.as_str()], "{log}");
        let both = format!("{} {}", drv(ZETA), drv(ALPHA));
        assert_eq!(calls[0][2..4], ["--argstr", "ps"], "{log}");
        assert_eq!(calls[0][4], both, "{log}");
    }

    /// Ctrl-C's SIGTERM reaches the evaluating Nix: the shell no longer
    /// `exec`s it (it stays to root what it wrote), and a Nix left running
    /// would evaluate on for nobody.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_cancelled_evaluation_ends_nix() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let stub = format!(
            "#!/bin/sh\ncase \"$*\" in *' hash path '*) echo sha256-AB= ;; *currentSystem*) printf x86_64-linux ;; *) echo $$ > {d}/nix.pid; exec sleep 30 ;; esac\n"
        );
        crate::remote::local::executable(format!("{d}/nix"), &stub);
        let c = eval_command("/src/abc", &["zeta"], "zeta", &[]);
        let mut argv = c.argv().to_vec();
        argv[2] = argv[2].replace("/nix/var/nix/gcroots/", &format!("{d}/gcroots/"));
        let mut sh = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("PATH", format!("{d}:/usr/bin:/bin"))
            .spawn()
            .unwrap();
        let pid_file = format!("{d}/nix.pid");
        let mut nix = None;
        for _ in 0..250 {
            nix = std::fs::read_to_string(&pid_file)
                .ok()
                .filter(|p| p.ends_with('\n'));
            if nix.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let nix = nix.expect("nix eval never started");
        let nix = nix.trim();
        let term = std::process::Command::new("kill")
            .args(["-s", "TERM", &sh.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let _ = sh.wait();
        // Gone, or a zombie waiting for init to reap it.
        let running = || {
            std::fs::read_to_string(format!("/proc/{nix}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
                .unwrap_or(false)
        };
        let mut ended = false;
        for _ in 0..100 {
            if !running() {
                ended = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !ended {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", nix])
                .status();
        }
        assert!(ended, "nix eval ran on after the cancel");
    }

    /// A real flake evaluated by the builder's script with Nix (2.8 here),
    /// then its derivation deleted as a garbage collection would before its
    /// build (`nix-store --delete` refuses a live path): it survives, in
    /// both ways of rooting, and builds.
    #[test]
    #[ignore = "needs Nix and a writable store (root): run scripts/test"]
    fn real_nix_an_evaluated_derivation_survives_a_gc_until_its_build() {
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        for fallback in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            let flake = format!("{d}/src");
            std::fs::create_dir_all(&flake).unwrap();
            std::fs::write(
                format!("{flake}/flake.nix"),
                format!(
                    "{{ outputs = {{ self }}: {{ web1 = derivation {{ name = \"ng-evalroot\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo {unique}{fallback} > $out\" ]; }}; }}; }}\n"
                ),
            )
            .unwrap();
            std::fs::write(
                format!("{flake}/flake.lock"),
                r#"{"nodes":{"root":{}},"root":"root","version":7}"#,
            )
            .unwrap();
            // Roots in a directory of the real gcroots (as root), or, in the
            // fallback, in the temp dir and registered by the store.
            let roots = if fallback {
                std::fs::write(format!("{d}/gcroots"), "").unwrap();
                d.to_owned()
            } else {
                format!("/nix/var/nix/gcroots/nixgate-test-{unique}")
            };
            let options = ["--option", "substituters", ""].map(str::to_owned);
            let c = eval_command(&flake, &["web1"], "web1", &options);
            let out = run_with_roots_in(&c, "/nonexistent", &roots);
            assert!(out.status.success(), "{out:?}");
            let said = String::from_utf8_lossy(&out.stdout);
            let (toplevel, drv) = parse_evaluated(&said, 1).unwrap().remove(0);
            let gc = std::process::Command::new("nix-store")
                .args(["--delete", drv.as_str()])
                .output()
                .unwrap();
            let built = std::process::Command::new("nix-store")
                .args(["--realise", drv.as_str(), "--option", "sandbox", "false"])
                .args(["--option", "build-users-group", ""])
                .output()
                .unwrap();
            if !fallback {
                std::fs::remove_dir_all(&roots).unwrap();
            }
            assert!(!gc.status.success(), "deleted: {gc:?}");
            assert!(built.status.success(), "{built:?}");
            assert_eq!(
                String::from_utf8_lossy(&built.stdout).trim(),
                toplevel.as_str()
            );
        }
    }

    #[test]
    fn attribute_paths_split_as_nix_splits_them() {
        assert_eq!(
            attr_path("nixosConfigurations.\"web1.example\".config.system"),
            ["nixosConfigurations", "web1.example", "config", "system"]
        );
        assert_eq!(attr_path("a"), ["a"]);
    }

    #[test]
    fn inventory_text_reaches_nix_only_as_arguments() {
        let c = eval_command("/d/x\"y", &["a.\"${b}\"", "c"], "web1", &[]);
        assert_eq!(eval_args(&c), Some(("/d/x\"y", r#"[["a","${b}"],["c"]]"#)));
        // Through the build wrapper too, its log option last.
        let logged = crate::nix::build::logged_command(&c);
        assert_eq!(eval_args(&logged), eval_args(&c));
        assert_eq!(
            logged.argv().last().map(String::as_str),
            Some("internal-json")
        );
    }

    #[test]
    fn an_incomplete_lock_is_its_own_failure() {
        // Nix 2.8's words, through the wrapper's merged log.
        for said in [
            "error: flake 'path:/var/tmp/nixgate/src/abc' requires lock file changes but they're not allowed due to '--no-update-lock-file'",
            "error: cannot update unlocked flake input 'nixpkgs' in pure mode",
        ] {
            let out = Output::new(Exit::Code { code: 1 }, "", said);
            assert!(
                matches!(failure_of(&out), BuildFailure::LockIncomplete { .. }),
                "{said}"
            );
        }
    }
}
