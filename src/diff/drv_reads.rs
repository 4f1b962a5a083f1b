//! Derivations read from the builder for the structural diff
//! ([`super::structural`]): batched reads shared by the diffs of one run,
//! and a walk on the builder that sends, in one command, every derivation
//! a diff will descend into.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;

use super::aterm::{Derivation, parse_derivation};
use super::structural::Drvs;
use crate::remote::{Command, Remote, unpoisoned};

/// [`READ`]'s text, shared with [`WALK`].
macro_rules! read_body {
    () => {
        r#"for f; do [ -r "$f" ] || printf 'missing %s\n' "$f"; done
wc -c -- "$@" 2>/dev/null
echo "--nixgate-drvs--"
cat -- "$@" 2>/dev/null
exit 0"#
    };
}

/// Reads `.drv` files in one command per batch and a constant number of
/// processes (not one per file): `missing PATH` lines for unreadable ones,
/// `wc -c` of the rest, a marker line, then their contents back to back
/// (`wc` and `cat` skip the same unreadable files). Linear in the batch: a
/// loop that rebuilt the argument list (`set -- "$@" "$f"`) took 0.28 s of
/// builder CPU for 300 derivations and grew with the square.
pub(super) const READ: &str = read_body!();

/// The most derivations one walk sends: about 180 KB of `wc` and `cat`
/// arguments, within the 256 KiB older macOS takes; a diff reads any
/// beyond level by level.
const WALK_MAX: usize = 2000;

/// Where derivations live (a diff pairs inputs by the name after the hash).
const STORE: &str = "/nix/store";

/// `$1` the most derivations to send, `$2` the most levels, `$3` the store
/// directory, `$4` = 2k, then k pairs `old new` of derivations: the
/// builder walks down from each pair as the diff does (inputs paired by
/// the name after their hash, descending where the paths differ), and
/// sends every derivation it visited as [`READ`] does. The walk only
/// chooses what to send: the diff compares what it parsed, and reads what
/// the walk left out level by level. A diff read one level per command
/// before: a one-package change three levels deep took three round trips
/// on the builder (about 170 ms at 50 ms RTT, on every push's plan).
/// POSIX `awk` (mawk's, BSD's): no interval expressions, arrays cleared
/// with `split`; globbing off for the list (a store path may hold `?`).
/// A builder without a working `awk` sends the roots alone (then the diff
/// reads level by level, as before).
pub(super) const WALK: &str = concat!(
    r#"max=$1; depth=$2; store=$3; n=$4; shift 4
walked=$(awk -v n="$n" -v max="$max" -v depth="$depth" -v store="$store" '
function inputs(f, out,   line, s, q) {
  s = ""
  while ((getline line < f) > 0) s = s line
  close(f)
  while (match(s, re)) {
    q = substr(s, RSTART + 1, RLENGTH - 2)
    out[substr(q, cut)] = q
    s = substr(s, RSTART + RLENGTH)
  }
}
function see(p) { if (!(p in seen)) { seen[p] = 1; count++; print p } }
BEGIN {
  re = "\"" store "/[^\"]*[.]drv\""
  cut = length(store) + 35
  k = 0
  for (i = 1; i + 1 <= n; i += 2) { qo[k] = ARGV[i]; qn[k] = ARGV[i + 1]; k++ }
  for (d = 0; d < depth && k > 0 && count < max; d++) {
    m = 0
    for (j = 0; j < k && count < max; j++) {
      o = qo[j]; w = qn[j]
      if ((o " " w) in done) continue
      done[o " " w] = 1
      see(o); see(w)
      split("", oi); split("", ni)
      inputs(o, oi); inputs(w, ni)
      for (x in ni) if ((x in oi) && oi[x] != ni[x]) { po[m] = oi[x]; pn[m] = ni[x]; m++ }
    }
    split("", qo); split("", qn)
    for (j = 0; j < m; j++) { qo[j] = po[j]; qn[j] = pn[j] }
    split("", po); split("", pn)
    k = m
  }
}' "$@") || walked=
set -f
[ -z "$walked" ] || set -- $walked
[ $# -gt 0 ] || { echo "--nixgate-drvs--"; exit 0; }
"#,
    read_body!()
);

/// Split a [`READ`] batch into `(path, text)` pairs.
pub(super) fn split_batch(bytes: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
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
    /// Pairs to walk from ([`WALK`]).
    pairs: Vec<(String, String)>,
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

pub(super) struct RemoteDrvs<'r, R: Remote> {
    pub(super) remote: &'r R,
    pub(super) shared: &'r SharedDrvCache,
    pub(super) cache: HashMap<String, Arc<Derivation>>,
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
    /// Queue `paths` and `pairs` to walk from (claimed by the caller) for
    /// the next read and wait for it: the first caller to get the turn
    /// reads every path and pair queued by then, the others find theirs
    /// read when their turn comes.
    async fn read_queued<R: Remote>(
        &self,
        remote: &R,
        paths: &[String],
        pairs: &[(String, String)],
    ) -> anyhow::Result<()> {
        let mine = {
            let mut q = unpoisoned(&self.queue);
            q.paths.extend_from_slice(paths);
            q.pairs.extend_from_slice(pairs);
            q.outcome.clone()
        };
        let _turn = self.turn.lock().await;
        if mine.get().is_none() {
            // Diffs ready at this moment (their last read just answered)
            // queue their paths before this read takes them.
            tokio::task::yield_now().await;
            let taken = std::mem::take(&mut *unpoisoned(&self.queue));
            let read = self.read(remote, &taken.paths, &taken.pairs).await;
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

    /// Read on the builder into the cache: what the walks from `pairs`
    /// visit, and `paths`.
    async fn read<R: Remote>(
        &self,
        remote: &R,
        paths: &[String],
        pairs: &[(String, String)],
    ) -> anyhow::Result<()> {
        for chunk in pair_batches(pairs) {
            let walk = Command::script(WALK)
                .arg(WALK_MAX.to_string())
                .arg(super::structural::MAX_DEPTH.to_string())
                .arg(STORE)
                .arg((2 * chunk.len()).to_string())
                .args(chunk.iter().flat_map(|(o, n)| [o.as_str(), n.as_str()]));
            self.read_one(remote, &walk).await?;
        }
        // A count of paths (2000 here before) can pass the 128 KiB of the
        // one argument the command line becomes: runs by length.
        for batch in crate::remote::command::arg_batches(paths) {
            let read = Command::script(READ).args(batch.iter().map(|s| s.as_str()));
            self.read_one(remote, &read).await?;
        }
        Ok(())
    }

    async fn read_one<R: Remote>(&self, remote: &R, cmd: &Command) -> anyhow::Result<()> {
        let out = remote
            .exec(cmd)
            .await
            .context("reading derivations on the builder")?
            .check("reading derivations on the builder")?;
        let parsed = split_batch(&out.stdout)?
            .into_iter()
            .filter_map(|(path, text)| parse_derivation(&text).ok().map(|d| (path, Arc::new(d))));
        unpoisoned(&self.drvs).extend(parsed);
        Ok(())
    }
}

/// `pairs` in runs a command line takes, as
/// [`crate::remote::command::arg_batches`] makes them, a pair never split.
fn pair_batches(pairs: &[(String, String)]) -> Vec<&[(String, String)]> {
    use crate::remote::quote::quote;
    crate::remote::command::batches_by(pairs, |(o, n)| quote(o).len() + quote(n).len() + 2)
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
                self.shared
                    .read_queued(self.remote, &claim.paths, &[])
                    .await?;
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
    /// The two roots of a diff, with everything the builder's walk from
    /// them visits ([`WALK`]): one command for a whole diff where nobody
    /// reads either root already; else as [`Drvs::fetch`] does.
    async fn fetch_below(&mut self, old: &str, new: &str) -> anyhow::Result<()> {
        let roots = [old.to_owned(), new.to_owned()];
        let mut want: Vec<&String> = roots
            .iter()
            .filter(|p| !self.cache.contains_key(*p))
            .collect();
        self.take_shared(&mut want);
        if want.len() == 2 {
            let (claim, others) = self.shared.claim(&want);
            if others.is_empty() {
                let pair = (roots[0].clone(), roots[1].clone());
                self.shared.read_queued(self.remote, &[], &[pair]).await?;
                // What the walk could not read is unreadable.
                self.take_shared(&mut want);
                return Ok(());
            }
            drop(claim);
        }
        self.fetch(&roots).await
    }
    fn get(&self, path: &str) -> Option<&Derivation> {
        self.cache.get(path).map(|d| d.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::aterm::print_derivation;
    use crate::remote::local::LocalRemote;

    fn drv(v: &str, inputs: &[&String]) -> String {
        let inputs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        print_derivation(&super::super::structural::tests::drv(&[("v", v)], &inputs))
    }

    /// [`WALK`] run by this machine's `sh` and `awk` over a store of its
    /// own: from the roots it descends into the inputs that differ by
    /// path under the same name and sends those, not the inputs both sides
    /// share; its bounds hold; a missing root is sent as missing.
    #[tokio::test]
    async fn the_builder_walks_down_the_differing_inputs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store").display().to_string();
        std::fs::create_dir(&store).unwrap();
        let p = |h: char, name: &str| format!("{store}/{}-{name}", h.to_string().repeat(32));
        let (deep0, deep1) = (p('a', "deep.drv"), p('b', "deep.drv"));
        let (lib0, lib1) = (p('c', "lib-1.drv"), p('d', "lib-1.drv"));
        let same = p('e', "same.drv");
        let (root0, root1) = (p('f', "system.drv"), p('g', "system.drv"));
        for (path, text) in [
            (&deep0, drv("1", &[])),
            (&deep1, drv("2", &[])),
            (&lib0, drv("x", &[&deep0])),
            (&lib1, drv("x", &[&deep1])),
            (&same, drv("s", &[])),
            (&root0, drv("r", &[&lib0, &same])),
            (&root1, drv("r", &[&lib1, &same])),
        ] {
            std::fs::write(path, text).unwrap();
        }
        let walk = |max: &str, depth: &str, pairs: &[&String]| {
            Command::script(WALK)
                .args([max, depth, &store])
                .arg(pairs.len().to_string())
                .args(pairs.iter().map(|s| s.as_str()))
        };
        let sent = |out: crate::remote::Output| -> Vec<String> {
            assert!(out.success(), "{}", out.stderr_str());
            let mut got: Vec<String> = split_batch(&out.stdout)
                .unwrap()
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            got.sort();
            got
        };
        let r = LocalRemote::new("builder");
        let mut want: Vec<String> = [&deep0, &deep1, &lib0, &lib1, &root0, &root1]
            .map(String::clone)
            .to_vec();
        want.sort();
        let got = sent(
            r.exec(&walk("4000", "64", &[&root0, &root1]))
                .await
                .unwrap(),
        );
        assert_eq!(got, want);
        // One level: the roots alone; four paths at most: a level more.
        let got = sent(r.exec(&walk("4000", "1", &[&root0, &root1])).await.unwrap());
        assert_eq!(got, [root0.clone(), root1.clone()]);
        let got = sent(r.exec(&walk("3", "64", &[&root0, &root1])).await.unwrap());
        assert_eq!(
            got,
            [lib0.clone(), lib1.clone(), root0.clone(), root1.clone()]
        );
        // The old root gone: the new one is sent, nothing below it.
        std::fs::remove_file(&root0).unwrap();
        let out = r
            .exec(&walk("4000", "64", &[&root0, &root1]))
            .await
            .unwrap();
        assert!(
            out.stdout_str().contains(&format!("missing {root0}")),
            "{out:?}"
        );
        assert_eq!(sent(out), std::slice::from_ref(&root1));
        // Nothing to walk: nothing read (not `wc` of its stdin).
        let out = r.exec(&walk("4000", "64", &[])).await.unwrap();
        assert!(sent(out).is_empty());
        // No awk on the builder: the roots alone.
        std::fs::write(&root0, drv("r", &[&lib0, &same])).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for tool in ["sh", "wc", "cat"] {
            let found = which(tool);
            std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
        }
        let no_awk = walk("4000", "64", &[&root0, &root1]).env("PATH", bin.display().to_string());
        let got = sent(r.exec(&no_awk).await.unwrap());
        assert_eq!(got, [root0.clone(), root1.clone()]);
    }

    fn which(tool: &str) -> std::path::PathBuf {
        ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {tool}"))
    }

    #[test]
    fn pairs_go_in_runs_a_command_line_takes_never_split() {
        let pair = |i: usize| {
            (
                format!("/nix/store/{i:0>32}-a.drv"),
                format!("/nix/store/{i:0>32}-b.drv"),
            )
        };
        let pairs: Vec<(String, String)> = (0..1000).map(pair).collect();
        let runs = pair_batches(&pairs);
        assert!(runs.len() > 1);
        assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), 1000);
        for r in &runs {
            assert!(r.iter().map(|(o, n)| o.len() + n.len() + 2).sum::<usize>() <= 64 * 1024);
        }
        assert!(pair_batches(&[]).is_empty());
    }
}
