//! The structural diff (nix-diff's idea): walk the old and new derivations
//! from the top down, descending only into inputs that differ, and report
//! the first real causes. Derivations are read from the builder one BFS level
//! per command, so a whole diff costs about (depth) round trips.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::aterm::Derivation;
use super::drv_reads::RemoteDrvs;
pub use super::drv_reads::SharedDrvCache;
use crate::nix::StorePath;
use crate::remote::Remote;

/// Why a derivation differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    Env {
        key: String,
        old: Option<String>,
        new: Option<String>,
    },
    Builder {
        old: String,
        new: String,
    },
    Args {
        old: Vec<String>,
        new: Vec<String>,
    },
    System {
        old: String,
        new: String,
    },
    /// A source file of the same name with different contents.
    Source {
        name: String,
        old: String,
        new: String,
    },
    SourceAdded {
        path: String,
    },
    SourceRemoved {
        path: String,
    },
    Outputs {
        old: Vec<String>,
        new: Vec<String>,
    },
    /// A dependency changed, for these reasons.
    Input {
        name: String,
        old: String,
        new: String,
        causes: Vec<Cause>,
    },
    InputAdded {
        drv: String,
    },
    InputRemoved {
        drv: String,
    },
}

impl Cause {
    /// A cause of the derivation itself, not inherited from a dependency.
    pub fn is_local(&self) -> bool {
        !matches!(self, Cause::Input { .. })
    }
}

/// The structural diff's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Structural {
    Identical,
    Explained {
        old_drv: StorePath,
        new_drv: StorePath,
        causes: Vec<Cause>,
    },
    /// The old system's derivation is unknown or gone from the builder.
    OldDerivationMissing {
        old_drv: Option<StorePath>,
    },
}

/// `/nix/store/<hash>-name` -> `name` (derivation names pair inputs).
fn drv_name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.get(33..).unwrap_or(base)
}

/// Mask every store path's hash in `s`, and its name's version (kept: the
/// package name and output, so a path swapped for another package's, or
/// for another output of the same, is still a change), so values that
/// differ only because an input changed compare equal: a dependent of
/// `openssl-3.0.13` now built with `openssl-3.0.14` names it in its env;
/// that it is another input is the input diff's to say (a change of its
/// own made every dependent of an upgraded package drift under
/// `--expect`). A sub-path (`.../bin/sh`) is kept.
fn mask_hashes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("/nix/store/") {
        out.push_str(&rest[..i + 11]);
        let after = &rest[i + 11..];
        if after.len() >= 33
            && after.as_bytes()[32] == b'-'
            && after[..32].bytes().all(|b| b.is_ascii_alphanumeric())
        {
            out.push_str("<hash>-");
            let name_len = after[33..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(b))
                .count();
            let name = &after[33..33 + name_len];
            match super::names::split_name_parts(name) {
                (pname, output, Some(_)) => {
                    out.push_str(pname);
                    out.push_str("-<v>");
                    if let Some(o) = output {
                        out.push('-');
                        out.push_str(o);
                    }
                }
                _ => out.push_str(name),
            }
            rest = &after[33 + name_len..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A derivation path's name without `.drv`:
/// `/nix/store/<hash>-openssl-3.0.13.drv` -> `openssl-3.0.13`.
pub(super) fn drv_base(path: &str) -> &str {
    drv_name(path).trim_end_matches(".drv")
}

/// The package name of an input derivation's path: `openssl`.
fn input_pname(path: &str) -> String {
    super::names::split_name(drv_base(path)).0
}

/// Input derivation paths by name (`source.drv` may be several).
fn inputs_by_name(m: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<&str, Vec<&String>> {
    let mut g: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for p in m.keys() {
        g.entry(drv_name(p)).or_default().push(p);
    }
    g
}

/// Pair the input derivations of two versions of a derivation: by name
/// (`openssl-3.0.13.drv`); several of one name (`source.drv`, every
/// `fetchFromGitHub`) by what is left of each side once the paths both
/// have are set aside (one each: a pair; else added and removed: a map by
/// name kept one of them, and paired the wrong ones or hid a change);
/// then what is still unpaired by package name, the version left out (one
/// `openssl-*` each side: a dependency's version bump is a changed input,
/// not one removed and another added). The causes of what stays
/// unpaired, and the pairs `(name, old, new)` to descend into.
fn pair_inputs(
    old: &BTreeMap<String, BTreeSet<String>>,
    new: &BTreeMap<String, BTreeSet<String>>,
) -> (Vec<Cause>, Vec<(String, String, String)>) {
    let (og, ng) = (inputs_by_name(old), inputs_by_name(new));
    let names: BTreeSet<&str> = og.keys().chain(ng.keys()).copied().collect();
    let (mut removed, mut added, mut descend) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        let (o, n) = (og.get(name), ng.get(name));
        let only = |a: Option<&Vec<&String>>, b: Option<&Vec<&String>>| -> Vec<String> {
            a.into_iter()
                .flatten()
                .filter(|p| b.is_none_or(|b| !b.contains(p)))
                .map(|p| p.to_string())
                .collect()
        };
        let (o, n) = (only(o, n), only(n, o));
        match (o.as_slice(), n.as_slice()) {
            ([a], [b]) => descend.push((name.to_owned(), a.clone(), b.clone())),
            _ => {
                removed.extend(o);
                added.extend(n);
            }
        }
    }
    let count = |v: &[String], pname: &str| v.iter().filter(|p| input_pname(p) == pname).count();
    let pairs: Vec<(String, String)> = removed
        .iter()
        .filter_map(|r| {
            let pname = input_pname(r);
            let a = added.iter().find(|a| input_pname(a) == pname)?;
            (count(&removed, &pname) == 1 && count(&added, &pname) == 1)
                .then(|| (r.clone(), a.clone()))
        })
        .collect();
    for (r, a) in pairs {
        removed.retain(|x| *x != r);
        added.retain(|x| *x != a);
        descend.push((drv_name(&a).to_owned(), r, a));
    }
    let mut causes: Vec<Cause> = added
        .into_iter()
        .map(|drv| Cause::InputAdded { drv })
        .collect();
    causes.extend(removed.into_iter().map(|drv| Cause::InputRemoved { drv }));
    (causes, descend)
}

/// The local causes of `old` vs `new`, and the input pairs to descend into.
fn compare(old: &Derivation, new: &Derivation) -> (Vec<Cause>, Vec<(String, String, String)>) {
    let mut causes = Vec::new();
    if old.system != new.system {
        causes.push(Cause::System {
            old: old.system.clone(),
            new: new.system.clone(),
        });
    }
    if mask_hashes(&old.builder) != mask_hashes(&new.builder) {
        causes.push(Cause::Builder {
            old: old.builder.clone(),
            new: new.builder.clone(),
        });
    }
    let margs = |a: &[String]| a.iter().map(|x| mask_hashes(x)).collect::<Vec<_>>();
    if margs(&old.args) != margs(&new.args) {
        causes.push(Cause::Args {
            old: old.args.clone(),
            new: new.args.clone(),
        });
    }
    let (oo, no): (Vec<String>, Vec<String>) = (
        old.outputs.keys().cloned().collect(),
        new.outputs.keys().cloned().collect(),
    );
    if oo != no {
        causes.push(Cause::Outputs { old: oo, new: no });
    }
    let keys: BTreeSet<&String> = old.env.keys().chain(new.env.keys()).collect();
    for k in keys {
        let (a, b) = (old.env.get(k), new.env.get(k));
        if a.map(|v| mask_hashes(v)) != b.map(|v| mask_hashes(v)) {
            causes.push(Cause::Env {
                key: k.clone(),
                old: a.cloned(),
                new: b.cloned(),
            });
        }
    }
    causes.extend(source_changes(&old.input_srcs, &new.input_srcs));
    let (unpaired, descend) = pair_inputs(&old.input_drvs, &new.input_drvs);
    causes.extend(unpaired);
    (causes, descend)
}

/// The changed sources of a derivation: paths on both sides set aside,
/// the rest paired by name (in path order within a name); what is left
/// unpaired was added or removed. By name alone, two sources of one name
/// (flake inputs are all `source`) hid each other: `{A, B}` -> `{A', B}`
/// both read `source -> B`, and the changed A explained nothing.
fn source_changes(old: &BTreeSet<String>, new: &BTreeSet<String>) -> Vec<Cause> {
    let by_name = |set: &BTreeSet<String>, other: &BTreeSet<String>| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in set.difference(other) {
            m.entry(drv_name(p).to_owned()).or_default().push(p.clone());
        }
        m
    };
    let (mut os, ns) = (by_name(old, new), by_name(new, old));
    let mut causes = Vec::new();
    for (name, news) in ns {
        let mut olds = os.remove(&name).unwrap_or_default().into_iter();
        for p in news {
            causes.push(match olds.next() {
                Some(q) => Cause::Source {
                    name: name.clone(),
                    old: q,
                    new: p,
                },
                None => Cause::SourceAdded { path: p },
            });
        }
        causes.extend(olds.map(|q| Cause::SourceRemoved { path: q }));
    }
    causes.extend(
        os.into_values()
            .flatten()
            .map(|q| Cause::SourceRemoved { path: q }),
    );
    causes
}

/// Where derivation texts come from.
pub(super) trait Drvs {
    async fn fetch(&mut self, paths: &[String]) -> anyhow::Result<()>;
    /// A diff's two roots, and as much below them as the source sends at
    /// once.
    async fn fetch_below(&mut self, old: &str, new: &str) -> anyhow::Result<()> {
        self.fetch(&[old.to_owned(), new.to_owned()]).await
    }
    fn get(&self, path: &str) -> Option<&Derivation>;
}

struct Local<'a>(&'a BTreeMap<String, Derivation>);

impl Drvs for Local<'_> {
    async fn fetch(&mut self, _: &[String]) -> anyhow::Result<()> {
        Ok(())
    }
    fn get(&self, path: &str) -> Option<&Derivation> {
        self.0.get(path)
    }
}

/// A differing pair of derivations -> its local causes and the input pairs
/// `(name, old, new)` to descend into.
type Walked = HashMap<(String, String), (Vec<Cause>, Vec<(String, String, String)>)>;

/// How deep the walk goes before it stops explaining.
pub(super) const MAX_DEPTH: usize = 64;

async fn walk<D: Drvs>(drvs: &mut D, old: &str, new: &str) -> anyhow::Result<Option<Vec<Cause>>> {
    // BFS over differing pairs; then assemble the cause tree.
    let mut local: Walked = HashMap::new();
    let mut level = vec![(old.to_owned(), new.to_owned())];
    drvs.fetch_below(old, new).await?;
    if drvs.get(old).is_none() {
        return Ok(None);
    }
    for _ in 0..MAX_DEPTH {
        if level.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for (o, n) in &level {
            if local.contains_key(&(o.clone(), n.clone())) {
                continue;
            }
            let (Some(od), Some(nd)) = (drvs.get(o), drvs.get(n)) else {
                continue;
            };
            let (causes, descend) = compare(od, nd);
            for (_, a, b) in &descend {
                next.push((a.clone(), b.clone()));
            }
            local.insert((o.clone(), n.clone()), (causes, descend));
        }
        let want: Vec<String> = next
            .iter()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect();
        drvs.fetch(&want).await?;
        level = next;
    }
    fn assemble(k: &(String, String), local: &Walked, depth: usize) -> Vec<Cause> {
        let Some((causes, descend)) = local.get(k) else {
            return Vec::new();
        };
        let mut out = causes.clone();
        if depth < MAX_DEPTH {
            for (name, a, b) in descend {
                out.push(Cause::Input {
                    name: name.trim_end_matches(".drv").to_owned(),
                    old: a.clone(),
                    new: b.clone(),
                    causes: assemble(&(a.clone(), b.clone()), local, depth + 1),
                });
            }
        }
        out
    }
    Ok(Some(assemble(&(old.to_owned(), new.to_owned()), &local, 0)))
}

/// The structural diff of the old and new system derivations, read on the builder.
pub async fn structural_diff<R: Remote>(
    builder: &R,
    cache: &SharedDrvCache,
    old_drv: Option<&StorePath>,
    new_drv: &StorePath,
) -> anyhow::Result<Structural> {
    let Some(old) = old_drv else {
        return Ok(Structural::OldDerivationMissing { old_drv: None });
    };
    if old == new_drv {
        return Ok(Structural::Identical);
    }
    let mut drvs = RemoteDrvs {
        remote: builder,
        shared: cache,
        cache: HashMap::new(),
    };
    Ok(
        match walk(&mut drvs, old.as_str(), new_drv.as_str()).await? {
            None => Structural::OldDerivationMissing {
                old_drv: Some(old.clone()),
            },
            Some(causes) => Structural::Explained {
                old_drv: old.clone(),
                new_drv: new_drv.clone(),
                causes,
            },
        },
    )
}

/// The same over derivations in memory (tests, benchmarks).
pub async fn structural_diff_local(
    drvs: &BTreeMap<String, Derivation>,
    old: &str,
    new: &str,
) -> Option<Vec<Cause>> {
    walk(&mut Local(drvs), old, new).await.ok().flatten()
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::drv_reads::{READ, WALK, split_batch};
    use super::*;
    use crate::remote::Command;

    #[tokio::test]
    async fn batch_reader_runs_a_few_processes_and_splits_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.drv");
        let b = dir.path().join("b.drv");
        std::fs::write(&a, "Derive(1)\n\n").unwrap();
        std::fs::write(&b, "Derive(22)").unwrap();
        let gone = dir.path().join("gone.drv");
        let paths = [&a, &gone, &b].map(|p| p.display().to_string());
        let out = crate::remote::local::LocalRemote::new("builder")
            .exec(&Command::script(READ).args(paths.iter().map(String::as_str)))
            .await
            .unwrap();
        assert!(out.success(), "{}", out.stderr_str());
        let got = split_batch(&out.stdout).unwrap();
        assert_eq!(
            got,
            [
                (paths[0].clone(), "Derive(1)\n\n".to_string()),
                (paths[2].clone(), "Derive(22)".to_string())
            ]
        );
        // One file alone: no total line.
        let out = crate::remote::local::LocalRemote::new("builder")
            .exec(&Command::script(READ).arg(paths[2].as_str()))
            .await
            .unwrap();
        assert_eq!(split_batch(&out.stdout).unwrap().len(), 1);
        // None readable.
        let out = crate::remote::local::LocalRemote::new("builder")
            .exec(&Command::script(READ).arg(paths[1].as_str()))
            .await
            .unwrap();
        assert!(split_batch(&out.stdout).unwrap().is_empty());
    }

    /// A builder whose reads take 50 ms: which paths each read asked for,
    /// and how many reads ran at once. Its walks send the pairs' roots
    /// alone (the diff reads the rest level by level), or, `walks_all`,
    /// every file it has (a walk may send more than the diff needs).
    struct SlowBuilder {
        files: HashMap<String, String>,
        walks_all: bool,
        reads: std::sync::Mutex<Vec<Vec<String>>>,
        running: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    impl Remote for SlowBuilder {
        fn name(&self) -> &str {
            "builder"
        }
        async fn exec(&self, cmd: &Command) -> anyhow::Result<crate::remote::Output> {
            use std::sync::atomic::Ordering::SeqCst;
            let a = cmd.argv();
            let paths: Vec<String> = match a[2].as_str() {
                s if s == WALK && self.walks_all => {
                    let mut all: Vec<String> = self.files.keys().cloned().collect();
                    all.sort();
                    all
                }
                s if s == WALK => a[8..].to_vec(),
                _ => a[4..].to_vec(),
            };
            self.reads.lock().unwrap().push(paths.clone());
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.running.fetch_sub(1, SeqCst);
            let mut head = String::new();
            let mut body = String::new();
            for p in &paths {
                match self.files.get(p) {
                    Some(t) => {
                        head.push_str(&format!("{} {p}\n", t.len()));
                        body.push_str(t);
                    }
                    None => head.push_str(&format!("missing {p}\n")),
                }
            }
            Ok(crate::remote::scripted::ok(&format!(
                "{head}--nixgate-drvs--\n{body}"
            )))
        }
        async fn exec_stream(&self, _: &Command) -> anyhow::Result<crate::remote::Streaming> {
            unreachable!("the diff only execs")
        }
    }

    #[tokio::test]
    async fn a_level_of_two_thousand_derivations_is_read_in_commands_a_shell_takes() {
        // Each rendered command is one argument to `sh -c` (sshd's, here the
        // local one), at most 128 KiB: 2000 paths of 80 bytes are 160 KB.
        let paths: Vec<String> = (0..2000)
            .map(|i| p('a', &format!("{i:0>4}-a-derivation-with-a-long-name.drv")))
            .collect();
        assert!(paths.iter().map(|p| p.len() + 1).sum::<usize>() > 128 * 1024);
        let cache = SharedDrvCache::default();
        let mut drvs = RemoteDrvs {
            remote: &crate::remote::local::LocalRemote::new("builder"),
            shared: &cache,
            cache: HashMap::new(),
        };
        // None exists: each is read, found missing, and not asked again.
        drvs.fetch(&paths).await.unwrap();
        assert!(drvs.cache.is_empty());
    }

    /// Two hosts' diffs at once: each host's system derivation is its own;
    /// both depend on one changed library, which is shared. Every diff
    /// explains the library; the reads the builder saw, and how many ran at
    /// once.
    async fn two_hosts_one_library(walks_all: bool) -> (Vec<Vec<String>>, usize) {
        let (lib_a, lib_b) = (p('a', "lib-1.drv"), p('b', "lib-1.drv"));
        let text = |env: &[(&str, &str)], inputs: &[&str]| {
            super::super::aterm::print_derivation(&drv(env, inputs))
        };
        let mut files = HashMap::new();
        files.insert(lib_a.clone(), text(&[("v", "1")], &[]));
        files.insert(lib_b.clone(), text(&[("v", "2")], &[]));
        let mut systems = Vec::new();
        for (i, h) in ['c', 'd', 'f', 'g'].chunks(2).enumerate() {
            let (old, new) = (
                p(h[0], &format!("system-{i}.drv")),
                p(h[1], &format!("system-{i}.drv")),
            );
            files.insert(old.clone(), text(&[("host", &i.to_string())], &[&lib_a]));
            files.insert(new.clone(), text(&[("host", &i.to_string())], &[&lib_b]));
            systems.push((
                StorePath::parse(&old).unwrap(),
                StorePath::parse(&new).unwrap(),
            ));
        }
        let b = SlowBuilder {
            files,
            walks_all,
            reads: Default::default(),
            running: Default::default(),
            most: Default::default(),
        };
        let cache = SharedDrvCache::default();
        let diffs = systems
            .iter()
            .map(|(o, n)| structural_diff(&b, &cache, Some(o), n));
        for d in futures_util::future::join_all(diffs).await {
            let Structural::Explained { causes, .. } = d.unwrap() else {
                panic!("not explained")
            };
            assert!(
                matches!(&causes[0], Cause::Input { name, .. } if name == "lib-1"),
                "{causes:?}"
            );
        }
        let reads = b.reads.lock().unwrap().clone();
        (reads, b.most.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_read_a_level_together_and_shared_derivations_once() {
        let (reads, most) = two_hosts_one_library(false).await;
        let mut all: Vec<&String> = reads.iter().flatten().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a derivation read twice: {reads:?}");
        assert_eq!(n, 6, "{reads:?}");
        // One command a level: both systems' own derivations (the walk
        // sent nothing below them), then the shared library's two.
        assert_eq!(reads.len(), 2, "{reads:?}");
        assert_eq!(most, 1, "{reads:?}");
    }

    /// A walk that sent everything below the roots: both diffs are
    /// explained from one command on the builder.
    #[tokio::test(start_paused = true)]
    async fn a_walk_on_the_builder_reads_whole_diffs_in_one_command() {
        let (reads, _) = two_hosts_one_library(true).await;
        assert_eq!(reads.len(), 1, "{reads:?}");
    }

    /// A builder whose reads fail, slowly.
    struct FailingBuilder(std::sync::atomic::AtomicUsize);

    impl Remote for FailingBuilder {
        fn name(&self) -> &str {
            "builder"
        }
        async fn exec(&self, _: &Command) -> anyhow::Result<crate::remote::Output> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            anyhow::bail!("connection lost")
        }
        async fn exec_stream(&self, _: &Command) -> anyhow::Result<crate::remote::Streaming> {
            unreachable!("the diff only execs")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_fails_every_diff_that_waited_for_it() {
        let b = FailingBuilder(Default::default());
        let cache = SharedDrvCache::default();
        let sp = |h: char| StorePath::parse(&p(h, "system.drv")).unwrap();
        let (a, c) = (sp('a'), sp('c'));
        let (x, y) = (sp('b'), sp('d'));
        let (one, two) = tokio::join!(
            structural_diff(&b, &cache, Some(&a), &x),
            structural_diff(&b, &cache, Some(&c), &y)
        );
        for r in [one, two] {
            let e = format!("{:#}", r.expect_err("a failed read explains nothing"));
            assert!(e.contains("connection lost"), "{e}");
        }
        // Both diffs' paths went in one read.
        assert_eq!(b.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A derivation with these env values and inputs (its `out` output).
    pub(in crate::diff) fn drv(env: &[(&str, &str)], inputs: &[&str]) -> Derivation {
        Derivation {
            outputs: [(
                "out".to_string(),
                super::super::aterm::DrvOutput {
                    path: String::new(),
                    hash_algo: String::new(),
                    hash: String::new(),
                },
            )]
            .into(),
            input_drvs: inputs
                .iter()
                .map(|i| (i.to_string(), ["out".to_string()].into()))
                .collect(),
            input_srcs: BTreeSet::new(),
            system: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec![],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub(in crate::diff) fn p(h: char, name: &str) -> String {
        format!("/nix/store/{}-{name}", h.to_string().repeat(32))
    }

    #[tokio::test]
    async fn explains_a_flag_change_through_a_dependency() {
        let (ssl_a, ssl_b) = (p('a', "openssl-3.0.13.drv"), p('b', "openssl-3.0.13.drv"));
        let (ngx_a, ngx_b) = (p('c', "nginx-1.24.0.drv"), p('d', "nginx-1.24.0.drv"));
        let zlib = p('e', "zlib-1.3.1.drv");
        let mut m = BTreeMap::new();
        m.insert(
            ssl_a.clone(),
            drv(&[("configureFlags", "shared no-ssl3")], &[&zlib]),
        );
        m.insert(
            ssl_b.clone(),
            drv(&[("configureFlags", "shared")], &[&zlib]),
        );
        m.insert(
            ngx_a.clone(),
            drv(
                &[("deps", &format!("{} x", p('f', "openssl-3.0.13")))],
                &[&ssl_a, &zlib],
            ),
        );
        m.insert(
            ngx_b.clone(),
            drv(
                &[("deps", &format!("{} x", p('g', "openssl-3.0.13")))],
                &[&ssl_b, &zlib],
            ),
        );
        let causes = structural_diff_local(&m, &ngx_a, &ngx_b).await.unwrap();
        // nginx's env differs only by the input's hash: not a cause of its own.
        assert_eq!(causes.len(), 1, "{causes:?}");
        let Cause::Input {
            name,
            causes: inner,
            ..
        } = &causes[0]
        else {
            panic!("{causes:?}")
        };
        assert_eq!(name, "openssl-3.0.13");
        assert_eq!(
            inner,
            &vec![Cause::Env {
                key: "configureFlags".into(),
                old: Some("shared no-ssl3".into()),
                new: Some("shared".into())
            }]
        );
        assert!(
            structural_diff_local(&m, &p('z', "x.drv"), &ngx_b)
                .await
                .is_none(),
            "missing old derivation"
        );
    }

    /// A dependency's version bump is a changed input of its dependents,
    /// explained below it, and the dependent's env naming the new version
    /// is not a change of its own: with `--expect openssl`, every package
    /// built with it was drift (an input removed, one added, its env).
    /// openssl 3.0.13 -> 3.0.14, and curl 8.7.1 built with each (its env
    /// names the openssl it was built with): the derivations, and curl's
    /// old and new paths.
    pub(in crate::diff) fn openssl_bump_under_curl()
    -> (BTreeMap<String, Derivation>, String, String) {
        let (ssl_a, ssl_b) = (p('a', "openssl-3.0.13.drv"), p('b', "openssl-3.0.14.drv"));
        let (curl_a, curl_b) = (p('c', "curl-8.7.1.drv"), p('d', "curl-8.7.1.drv"));
        let mut m = BTreeMap::new();
        m.insert(ssl_a.clone(), drv(&[("version", "3.0.13")], &[]));
        m.insert(ssl_b.clone(), drv(&[("version", "3.0.14")], &[]));
        let dep = |h: char, v: &str| format!("{}/include", p(h, &format!("openssl-{v}-dev")));
        m.insert(
            curl_a.clone(),
            drv(&[("buildInputs", &dep('e', "3.0.13"))], &[&ssl_a]),
        );
        m.insert(
            curl_b.clone(),
            drv(&[("buildInputs", &dep('f', "3.0.14"))], &[&ssl_b]),
        );
        (m, curl_a, curl_b)
    }

    #[tokio::test]
    async fn a_dependencys_version_bump_is_a_changed_input() {
        let (m, curl_a, curl_b) = openssl_bump_under_curl();
        let causes = structural_diff_local(&m, &curl_a, &curl_b).await.unwrap();
        let [
            Cause::Input {
                name,
                causes: inner,
                ..
            },
        ] = causes.as_slice()
        else {
            panic!("{causes:?}")
        };
        assert_eq!(name, "openssl-3.0.14");
        assert!(
            matches!(inner.as_slice(), [Cause::Env { key, .. }] if key == "version"),
            "{inner:?}"
        );
    }

    /// Two inputs of one name (`source`: every `fetchFromGitHub`), one of
    /// them changed: that one is paired with its old self, whatever the
    /// hashes' order (a map by name kept the last of each side: the
    /// change was hidden, or the wrong two were compared).
    #[tokio::test]
    async fn inputs_sharing_a_name_are_paired_by_what_changed() {
        let kept = p('z', "source.drv");
        let (old, new) = (p('a', "source.drv"), p('b', "source.drv"));
        let (pkg_a, pkg_b) = (p('c', "tool-1.0.drv"), p('d', "tool-1.0.drv"));
        let mut m = BTreeMap::new();
        m.insert(kept.clone(), drv(&[("url", "k")], &[]));
        m.insert(old.clone(), drv(&[("url", "v1")], &[]));
        m.insert(new.clone(), drv(&[("url", "v2")], &[]));
        m.insert(pkg_a.clone(), drv(&[], &[&kept, &old]));
        m.insert(pkg_b.clone(), drv(&[], &[&kept, &new]));
        let causes = structural_diff_local(&m, &pkg_a, &pkg_b).await.unwrap();
        let [
            Cause::Input {
                name,
                old: o,
                new: n,
                causes: inner,
            },
        ] = causes.as_slice()
        else {
            panic!("{causes:?}")
        };
        assert_eq!((name.as_str(), o, n), ("source", &old, &new));
        assert!(
            matches!(inner.as_slice(), [Cause::Env { key, .. }] if key == "url"),
            "{inner:?}"
        );
    }

    /// Two flake inputs, both named `source`, one changed: the change is
    /// found (by name alone the unchanged one hid it).
    #[test]
    fn a_changed_source_beside_another_of_its_name_is_a_cause() {
        let (a, a2, b) = (p('a', "source"), p('b', "source"), p('z', "source"));
        let mut old = drv(&[], &[]);
        let mut new = drv(&[], &[]);
        old.input_srcs = [a.clone(), b.clone()].into();
        new.input_srcs = [a2.clone(), b.clone()].into();
        let (causes, _) = compare(&old, &new);
        assert!(
            matches!(causes.as_slice(), [Cause::Source { name, old, new }]
                if name == "source" && *old == a && *new == a2),
            "{causes:?}"
        );
        // One more of the name: added; one fewer: removed.
        new.input_srcs.insert(p('c', "source"));
        let (causes, _) = compare(&old, &new);
        assert!(
            matches!(causes.as_slice(), [Cause::Source { .. }, Cause::SourceAdded { path }] if *path == p('c', "source")),
            "{causes:?}"
        );
        let (causes, _) = compare(&new, &old);
        assert!(
            matches!(causes.as_slice(), [Cause::Source { .. }, Cause::SourceRemoved { path }] if *path == p('c', "source")),
            "{causes:?}"
        );
    }

    /// Masked: a path's hash and version; kept: its package name and
    /// output (another package's path, or another output, is a change),
    /// their order, and text glued to them.
    #[test]
    fn masking_keeps_what_a_version_bump_does_not_change() {
        let p = |h: char, n: &str| format!("/nix/store/{}-{n}", h.to_string().repeat(32));
        let same = |a: &str, b: &str| mask_hashes(a) == mask_hashes(b);
        assert!(same(
            &format!("{}/lib", p('a', "openssl-3.0.13")),
            &format!("{}/lib", p('b', "openssl-3.0.14"))
        ));
        assert!(!same(
            &p('a', "openssl-3.0.13"),
            &p('b', "openssl-3.0.13-dev")
        ));
        assert!(!same(
            &format!("{}:{}", p('a', "zlib-1.3"), p('b', "bzip2-1.0.8")),
            &format!("{}:{}", p('c', "bzip2-1.0.8"), p('d', "zlib-1.3"))
        ));
        assert!(!same(&p('a', "libressl-3.8.2"), &p('b', "openssl-3.0.13")));
        assert!(same(&p('a', "source"), &p('b', "source")));
    }
}
