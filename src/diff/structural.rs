//! The structural diff (nix-diff's idea): walk the old and new derivations
//! from the top down, descending only into inputs that differ, and report
//! the first real causes. Derivations are read from the builder one BFS level
//! per command, so a whole diff costs about (depth) round trips.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::aterm::{Derivation, parse_derivation};
use crate::nix::StorePath;
use crate::remote::{Command, Remote, unpoisoned};

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

/// Replace every store path hash in `s` by a placeholder, so values that
/// differ only because an input's hash changed compare equal.
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
            out.push_str("<hash>");
            rest = &after[32..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
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
    let by_name = |set: &BTreeSet<String>| -> BTreeMap<String, String> {
        set.iter()
            .map(|p| (drv_name(p).to_owned(), p.clone()))
            .collect()
    };
    let (os, ns) = (by_name(&old.input_srcs), by_name(&new.input_srcs));
    for (name, p) in &ns {
        match os.get(name) {
            None => causes.push(Cause::SourceAdded { path: p.clone() }),
            Some(q) if q != p => causes.push(Cause::Source {
                name: name.clone(),
                old: q.clone(),
                new: p.clone(),
            }),
            _ => {}
        }
    }
    for (name, p) in &os {
        if !ns.contains_key(name) {
            causes.push(Cause::SourceRemoved { path: p.clone() });
        }
    }
    let names = |m: &BTreeMap<String, BTreeSet<String>>| -> BTreeMap<String, String> {
        m.keys()
            .map(|p| (drv_name(p).to_owned(), p.clone()))
            .collect()
    };
    let (oi, ni) = (names(&old.input_drvs), names(&new.input_drvs));
    let mut descend = Vec::new();
    for (name, p) in &ni {
        match oi.get(name) {
            None => causes.push(Cause::InputAdded { drv: p.clone() }),
            Some(q) if q != p => descend.push((name.clone(), q.clone(), p.clone())),
            _ => {}
        }
    }
    for (name, p) in &oi {
        if !ni.contains_key(name) {
            causes.push(Cause::InputRemoved { drv: p.clone() });
        }
    }
    (causes, descend)
}

/// Where derivation texts come from.
trait Drvs {
    async fn fetch(&mut self, paths: &[String]) -> anyhow::Result<()>;
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

/// Reads `.drv` files in one command per batch and a constant number of
/// processes (not one per file): `missing PATH` lines for unreadable ones,
/// `wc -c` of the rest, a marker line, then their contents back to back
/// (`wc` and `cat` skip the same unreadable files). Linear in the batch: a
/// loop that rebuilt the argument list (`set -- "$@" "$f"`) took 0.28 s of
/// builder CPU for 300 derivations and grew with the square.
const READ: &str = r#"for f; do [ -r "$f" ] || printf 'missing %s\n' "$f"; done
wc -c -- "$@" 2>/dev/null
echo "--nixgate-drvs--"
cat -- "$@" 2>/dev/null
exit 0"#;

/// Split a [`READ`] batch into `(path, text)` pairs.
fn split_batch(bytes: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    const MARK: &[u8] = b"--nixgate-drvs--\n";
    let at = bytes
        .windows(MARK.len())
        .position(|w| w == MARK)
        .context("derivation batch without its marker")?;
    let head = String::from_utf8_lossy(&bytes[..at]);
    let mut sizes = Vec::new();
    for line in head.lines() {
        if line.starts_with("missing ") {
            continue;
        }
        let (len, path) = line
            .trim_start()
            .split_once(' ')
            .context("bad derivation size line")?;
        // `wc` ends with a total line when given several files.
        if path.starts_with('/') {
            sizes.push((len.parse::<usize>().context("bad derivation size")?, path));
        }
    }
    let mut i = at + MARK.len();
    let mut out = Vec::with_capacity(sizes.len());
    for (len, path) in sizes {
        let end = i + len;
        anyhow::ensure!(end <= bytes.len(), "truncated derivation batch at {path}");
        out.push((
            path.to_owned(),
            String::from_utf8_lossy(&bytes[i..end]).into_owned(),
        ));
        i = end;
    }
    Ok(out)
}

/// Derivations read from the builder, shared by the diffs of one run: hosts
/// built from one configuration share most derivations, so each is read and
/// parsed once per run, not once per host. A diff claims the paths it
/// wants that nobody is reading (and waits for the reads of the others),
/// and its claim joins the queue of the next read: one command on the
/// builder at a time, each taking every path queued by then. So the diffs
/// of many hosts that reach a level together read it in one or two
/// commands, not one each: twenty commands at once on the builder's one
/// connection queued for its 8 channels, most of them opening a channel
/// first (two round trips), so a level of 20 hosts' diffs took 4-6 round
/// trips at 50 ms where it now takes 2 (BENCHMARKS.md). (Before that,
/// reads took turns one host at a time: 1.2 s of 20 hosts' plan.) One cache
/// serves the diffs of one run, against one builder.
#[derive(Debug, Default)]
pub struct SharedDrvCache {
    drvs: std::sync::Mutex<HashMap<String, Arc<Derivation>>>,
    /// Paths being read, each with its read's end (the read's sender is
    /// dropped when it ends, whether it read the path or not).
    reading: std::sync::Mutex<HashMap<String, tokio::sync::watch::Receiver<()>>>,
    /// Claimed paths waiting for the next read, and its outcome.
    queue: std::sync::Mutex<Queued>,
    /// Held by the read on its way to the builder.
    turn: tokio::sync::Mutex<()>,
}

/// The outcome of one read, for every diff whose paths it took (an error as
/// text: each of them reports it).
type ReadOutcome = Arc<std::sync::OnceLock<Result<(), String>>>;

#[derive(Debug, Default)]
struct Queued {
    paths: Vec<String>,
    outcome: ReadOutcome,
}

/// Paths one read claimed; dropped when the read ends, which lets go of
/// them and wakes every diff waiting for them.
struct Claim<'c> {
    cache: &'c SharedDrvCache,
    paths: Vec<String>,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut reading = unpoisoned(&self.cache.reading);
        for p in &self.paths {
            reading.remove(p);
        }
    }
}

impl SharedDrvCache {
    /// Claim the paths of `want` nobody is reading; the ends of the reads
    /// of the others.
    fn claim(&self, want: &[&String]) -> (Claim<'_>, Vec<tokio::sync::watch::Receiver<()>>) {
        let (done, end) = tokio::sync::watch::channel(());
        let mut claim = Claim {
            cache: self,
            paths: Vec::new(),
            _done: done,
        };
        let mut others = Vec::new();
        let mut reading = unpoisoned(&self.reading);
        for p in want {
            match reading.get(*p) {
                Some(theirs) => others.push(theirs.clone()),
                None => {
                    reading.insert((*p).clone(), end.clone());
                    claim.paths.push((*p).clone());
                }
            }
        }
        (claim, others)
    }
}

struct RemoteDrvs<'r, R: Remote> {
    remote: &'r R,
    shared: &'r SharedDrvCache,
    cache: HashMap<String, Arc<Derivation>>,
}

impl<R: Remote> RemoteDrvs<'_, R> {
    /// Take what the run already read; keep the rest in `want`.
    fn take_shared(&mut self, want: &mut Vec<&String>) {
        if let Ok(shared) = self.shared.drvs.lock() {
            want.retain(|p| match shared.get(*p) {
                Some(d) => {
                    self.cache.insert((*p).clone(), d.clone());
                    false
                }
                None => true,
            });
        }
    }
}

impl SharedDrvCache {
    /// Queue `paths` (claimed by the caller) for the next read and wait
    /// for it: the first caller to get the turn reads every path queued
    /// by then, the others find their paths read when their turn comes.
    async fn read_queued<R: Remote>(&self, remote: &R, paths: &[String]) -> anyhow::Result<()> {
        let mine = {
            let mut q = unpoisoned(&self.queue);
            q.paths.extend_from_slice(paths);
            q.outcome.clone()
        };
        let _turn = self.turn.lock().await;
        if mine.get().is_none() {
            // Diffs ready at this moment (their last read just answered)
            // queue their paths before this read takes them.
            tokio::task::yield_now().await;
            let taken = std::mem::take(&mut *unpoisoned(&self.queue));
            let read = self.read(remote, &taken.paths).await;
            let _ = taken.outcome.set(read.map_err(|e| format!("{e:#}")));
        }
        match mine.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            None => Err(anyhow::anyhow!(
                "a derivation read ended without an outcome"
            )),
        }
    }

    /// Read `paths` on the builder into the cache.
    async fn read<R: Remote>(&self, remote: &R, paths: &[String]) -> anyhow::Result<()> {
        // A count of paths (2000 here before) can pass the 128 KiB of the
        // one argument the command line becomes: runs by length.
        for batch in crate::remote::command::arg_batches(paths) {
            let out = remote
                .exec(&Command::script(READ).args(batch.iter().map(|s| s.as_str())))
                .await
                .context("reading derivations on the builder")?
                .check("reading derivations on the builder")?;
            let parsed = split_batch(&out.stdout)?
                .into_iter()
                .filter_map(|(path, text)| {
                    parse_derivation(&text).ok().map(|d| (path, Arc::new(d)))
                });
            unpoisoned(&self.drvs).extend(parsed);
        }
        Ok(())
    }
}

impl<R: Remote> Drvs for RemoteDrvs<'_, R> {
    async fn fetch(&mut self, paths: &[String]) -> anyhow::Result<()> {
        let mut want: Vec<&String> = paths
            .iter()
            .filter(|p| !self.cache.contains_key(*p))
            .collect();
        want.sort();
        want.dedup();
        // Each round reads what nobody is reading and waits for the rest;
        // a path another read ended without (unreadable, or that read
        // failed) is claimed and read here in a later round, once.
        loop {
            self.take_shared(&mut want);
            if want.is_empty() {
                return Ok(());
            }
            let (claim, others) = self.shared.claim(&want);
            if !claim.paths.is_empty() {
                self.shared.read_queued(self.remote, &claim.paths).await?;
                self.take_shared(&mut want);
                // Found unreadable: not asked for again.
                want.retain(|p| !claim.paths.contains(p));
            }
            drop(claim);
            for mut end in others {
                // Err: that read ended (its sender dropped), as expected.
                let _ = end.changed().await;
            }
        }
    }
    fn get(&self, path: &str) -> Option<&Derivation> {
        self.cache.get(path).map(|d| d.as_ref())
    }
}

/// A differing pair of derivations -> its local causes and the input pairs
/// `(name, old, new)` to descend into.
type Walked = HashMap<(String, String), (Vec<Cause>, Vec<(String, String, String)>)>;

/// How deep the walk goes before it stops explaining.
const MAX_DEPTH: usize = 64;

async fn walk<D: Drvs>(drvs: &mut D, old: &str, new: &str) -> anyhow::Result<Option<Vec<Cause>>> {
    // BFS over differing pairs; then assemble the cause tree.
    let mut local: Walked = HashMap::new();
    let mut level = vec![(old.to_owned(), new.to_owned())];
    drvs.fetch(&[old.to_owned(), new.to_owned()]).await?;
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
mod tests {
    use super::*;

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
    /// and how many reads ran at once.
    struct SlowBuilder {
        files: HashMap<String, String>,
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
            let paths: Vec<String> = cmd.argv()[4..].to_vec();
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

    #[tokio::test(start_paused = true)]
    async fn hosts_read_a_level_together_and_shared_derivations_once() {
        // Each host's system derivation is its own; both depend on one
        // changed library, which is shared.
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
        let mut all: Vec<&String> = reads.iter().flatten().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a derivation read twice: {reads:?}");
        assert_eq!(n, 6, "{reads:?}");
        // One command a level: both systems' own derivations, then the
        // shared library's two.
        assert_eq!(reads.len(), 2, "{reads:?}");
        assert_eq!(
            b.most.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{reads:?}"
        );
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

    fn drv(env: &[(&str, &str)], inputs: &[&str]) -> Derivation {
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

    fn p(h: char, name: &str) -> String {
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
}
