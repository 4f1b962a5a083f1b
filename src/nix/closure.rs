//! Closure queries without copying: every path of a closure with its size,
//! references and deriver (one command), in dependency order; and which paths
//! a machine lacks (one command).

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use serde::Serialize;

use super::StorePath;
use super::store_path::PathMap;
use crate::remote::{Command, Remote};

/// One store path's registration, shared: hosts built from one
/// configuration have most of their closures in common, and every host's
/// closure is a list of these handles into the builder's one answer. (As
/// copies, 500 hosts' closures held 31 MB of the controller's 228 MB peak for
/// a 300-path change; as handles, 8 bytes per path and host.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PathInfo(std::sync::Arc<PathRecord>);

impl From<PathRecord> for PathInfo {
    fn from(record: PathRecord) -> Self {
        PathInfo(std::sync::Arc::new(record))
    }
}

impl std::ops::Deref for PathInfo {
    type Target = PathRecord;
    fn deref(&self) -> &PathRecord {
        &self.0
    }
}

/// What the machine's database says of one store path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathRecord {
    pub path: StorePath,
    pub nar_size: u64,
    /// The SHA-256 of its NAR, as the machine's database records it (a relay
    /// checks what it forwards against it).
    #[serde(skip)]
    pub nar_hash: Option<NarHash>,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
}

/// A NAR's SHA-256.
pub type NarHash = [u8; 32];

/// A NAR hash as `--dump-db` prints it: 64 hex digits (Nix 2.x and Lix),
/// tolerating a `sha256:` prefix. Anything else is not understood: `None`.
pub fn parse_nar_hash(text: &str) -> Option<NarHash> {
    let hex = text.trim();
    let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `nix-store --dump-db` over the requisites, through `xargs` (no ARG_MAX limit).
/// The closures of `$@`, dumped: the one pipeline every closure query runs.
/// The query is done first: piped, a query that failed (a root not valid:
/// a broken `/run/current-system`) gave `xargs` nothing, which runs
/// `nix-store --dump-db` without arguments, the host's whole database
/// (exit 0: read, sent and parsed before the closure was found missing).
macro_rules! dump {
    () => {
        r#"r=$(nix-store --query --requisites "$@") || exit 1
[ -z "$r" ] || printf '%s\n' "$r" | xargs nix-store --dump-db"#
    };
}
const DUMP: &str = dump!();

/// Parse `nix-store --dump-db` output: per path, the path, its NAR hash, NAR
/// size, deriver (empty when unknown), reference count, then the references.
pub fn parse_dump_db(text: &str) -> anyhow::Result<Vec<PathInfo>> {
    let mut lines = text.lines();
    let mut out = Vec::new();
    // A path appears once as itself and again as every referrer's reference:
    // each text is checked and stored once, then shared.
    let mut seen: PathMap<&str, StorePath> = PathMap::default();
    while let Some(first) = lines.next() {
        if first.is_empty() {
            continue;
        }
        let path = intern(&mut seen, first)
            .with_context(|| format!("dump-db: bad path line {first:?}"))?;
        let hash = lines.next().context("dump-db: missing NAR hash")?;
        let size = lines.next().context("dump-db: missing NAR size")?;
        let nar_size = size
            .trim()
            .parse()
            .with_context(|| format!("dump-db: bad NAR size {size:?}"))?;
        let deriver = lines.next().context("dump-db: missing deriver line")?;
        let deriver = if deriver.is_empty() {
            None
        } else {
            intern(&mut seen, deriver).ok()
        };
        let n = lines.next().context("dump-db: missing reference count")?;
        let n: usize = n
            .trim()
            .parse()
            .with_context(|| format!("dump-db: bad reference count {n:?}"))?;
        let mut references = Vec::with_capacity(n.min(10_000));
        for _ in 0..n {
            let r = lines.next().context("dump-db: missing reference")?;
            references.push(
                intern(&mut seen, r).with_context(|| format!("dump-db: bad reference {r:?}"))?,
            );
        }
        out.push(PathInfo::from(PathRecord {
            path,
            nar_size,
            nar_hash: parse_nar_hash(hash),
            references,
            deriver,
        }));
    }
    Ok(out)
}

/// `s` as a store path, parsed once per text.
fn intern<'a>(
    seen: &mut PathMap<&'a str, StorePath>,
    s: &'a str,
) -> Result<StorePath, crate::nix::store_path::InvalidStorePath> {
    if let Some(p) = seen.get(s) {
        return Ok(p.clone());
    }
    let p = StorePath::parse(s)?;
    seen.insert(s, p.clone());
    Ok(p)
}

/// Sort so every path comes after all of its references (self-references allowed).
pub fn topo_sort(infos: Vec<PathInfo>) -> anyhow::Result<Vec<PathInfo>> {
    let index: PathMap<StorePath, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, p)| (p.path.clone(), i))
        .collect();
    let mut state = vec![0u8; infos.len()]; // 0 new, 1 in progress, 2 done
    let mut order = Vec::with_capacity(infos.len());
    for start in 0..infos.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some((node, next)) = stack.pop() {
            let refs = &infos[node].references;
            let mut pushed = false;
            for (k, r) in refs.iter().enumerate().skip(next) {
                let Some(&j) = index.get(r) else { continue };
                if j == node || state[j] == 2 {
                    continue;
                }
                anyhow::ensure!(state[j] != 1, "reference cycle through {}", infos[j].path);
                stack.push((node, k + 1));
                stack.push((j, 0));
                state[j] = 1;
                pushed = true;
                break;
            }
            if !pushed {
                state[node] = 2;
                order.push(node);
            }
        }
    }
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// The closure of `root` on `remote`, dependencies first.
pub async fn closure<R: Remote>(remote: &R, root: &StorePath) -> anyhow::Result<Vec<PathInfo>> {
    let out = remote
        .exec(&Command::script(DUMP).arg(root.as_str()))
        .await
        .with_context(|| format!("querying the closure of {root} on {}", remote.name()))?
        .check(&format!(
            "querying the closure of {} on {}",
            root.name(),
            remote.name()
        ))?;
    let infos = parse_dump_db(&out.stdout_str())?;
    anyhow::ensure!(
        infos.iter().any(|p| p.path == *root),
        "{root} is not valid on {}",
        remote.name()
    );
    topo_sort(infos)
}

/// The closures of several roots with one query (hosts built from one
/// configuration share most paths: the builder reads each once), each in
/// dependency order.
pub async fn closures<R: Remote>(
    remote: &R,
    roots: &[StorePath],
) -> anyhow::Result<HashMap<StorePath, Vec<PathInfo>>> {
    dump_listed(remote, DUMP_LISTED, roots).await
}

/// The closures of every path of `paths` the remote has, with one command
/// (a path it lacks gets none): the diff gate asks the builder for the
/// candidates' and for the hosts' running systems it still has in one
/// round trip (it was a validity check, then the query).
pub async fn closures_present<R: Remote>(
    remote: &R,
    paths: &[StorePath],
) -> anyhow::Result<HashMap<StorePath, Vec<PathInfo>>> {
    dump_listed(remote, DUMP_PRESENT, paths).await
}

/// Run `script` (a dump of the closures of the paths on its stdin) for
/// `paths`; each path's closure, in dependency order.
async fn dump_listed<R: Remote>(
    remote: &R,
    script: &'static str,
    paths: &[StorePath],
) -> anyhow::Result<HashMap<StorePath, Vec<PathInfo>>> {
    if paths.is_empty() {
        return Ok(HashMap::new());
    }
    let out = remote
        .exec_small_input(&Command::script(script), &path_lines(paths))
        .await
        .with_context(|| format!("querying {} closures on {}", paths.len(), remote.name()))?
        .check(&format!("querying closures on {}", remote.name()))?;
    let all = topo_sort(parse_dump_db(&out.stdout_str())?)?;
    Ok(split_closures(&all, paths))
}

/// Paths one per line, for a command that reads them on stdin (in the
/// command line while they fit): as arguments, some 1700 paths would pass
/// the 128 KiB a command line gets (two per host at 850 hosts).
fn path_lines(paths: &[StorePath]) -> Vec<u8> {
    let mut input = String::with_capacity(paths.len() * 80);
    for p in paths {
        input.push_str(p.as_str());
        input.push('\n');
    }
    input.into_bytes()
}

/// [`closures`]'s command: [`DUMP`] of the paths on stdin.
const DUMP_LISTED: &str = concat!("set -- $(cat)\n[ $# -gt 0 ] || exit 0\n", dump!());

/// [`closures_present`]'s command: the valid paths of those on stdin, their
/// closure dumped; nothing at all when none is valid (a bare `--dump-db`
/// would dump the whole store).
const DUMP_PRESENT: &str = concat!(
    "dump() { ",
    dump!(),
    r#"; }
set -- $(cat)
bad=" $(printf '%s\n' "$@" | xargs nix-store --check-validity --print-invalid | tr '\n' ' ') "
valid=
for p; do case $bad in *" $p "*) ;; *) valid="$valid $p" ;; esac; done
[ -z "$valid" ] || dump $valid"#
);

/// Each root's closure out of `all` (their union in dependency order),
/// keeping that order.
pub fn split_closures(all: &[PathInfo], roots: &[StorePath]) -> HashMap<StorePath, Vec<PathInfo>> {
    let index: HashMap<&StorePath, usize> =
        all.iter().enumerate().map(|(i, p)| (&p.path, i)).collect();
    let mut out = HashMap::new();
    for root in roots {
        let Some(&start) = index.get(root) else {
            continue;
        };
        let mut seen = vec![false; all.len()];
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(i) = stack.pop() {
            for r in &all[i].references {
                if let Some(&j) = index.get(r)
                    && !seen[j]
                {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        let closure: Vec<PathInfo> = all
            .iter()
            .zip(&seen)
            .filter(|(_, s)| **s)
            .map(|(p, _)| p.clone())
            .collect();
        out.insert(root.clone(), closure);
    }
    out
}

/// Closure sizes by path, for reports.
pub fn total_size(infos: &[PathInfo]) -> u64 {
    infos.iter().map(|p| p.nar_size).sum()
}

/// Which of `paths` are not valid on `remote` (one command, paths on stdin).
pub async fn missing<R: Remote>(remote: &R, paths: &[StorePath]) -> anyhow::Result<Vec<StorePath>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let cmd = Command::script("xargs nix-store --check-validity --print-invalid");
    let out = remote
        .exec_small_input(&cmd, &path_lines(paths))
        .await
        .with_context(|| format!("asking {} which paths it lacks", remote.name()))?
        .check(&format!("nix-store --check-validity on {}", remote.name()))?;
    let text = out.stdout_str();
    let wanted: BTreeMap<&str, &StorePath> = paths.iter().map(|p| (p.as_str(), p)).collect();
    Ok(text
        .lines()
        .filter_map(|l| wanted.get(l.trim()).map(|p| (*p).clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one query on a real store: a path the store lacks gets no
    /// closure and does not fail the others; none present, nothing (not
    /// the whole store's dump).
    #[tokio::test]
    #[ignore = "needs Nix's store (root): run scripts/test"]
    async fn closure_queries_on_a_real_store() {
        use crate::remote::local::LocalRemote;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("nixgate-closure-present");
        std::fs::write(&f, "x").unwrap();
        let out = std::process::Command::new("nix-store")
            .arg("--add")
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let valid = StorePath::parse(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        let absent =
            StorePath::parse("/nix/store/00000000000000000000000000000000-nixgate-absent").unwrap();
        let local = LocalRemote::new("local");
        let got = closures_present(&local, &[absent.clone(), valid.clone()])
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[&valid].len(), 1);
        assert!(
            closures_present(&local, std::slice::from_ref(&absent))
                .await
                .unwrap()
                .is_empty()
        );
        // More paths than a command line holds (they go on stdin).
        let mut many: Vec<StorePath> = (0..2000)
            .map(|i| StorePath::parse(&format!("/nix/store/{i:0>32}-nixgate-absent-{i}")).unwrap())
            .collect();
        many.push(valid.clone());
        let got = closures_present(&local, &many).await.unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), [&valid]);
        // `closures` reads its roots the same way.
        let got = closures(&local, &vec![valid.clone(); 2000]).await.unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), [&valid]);
        // One root, not valid (a broken /run/current-system): the query's
        // failure, not the whole store dumped (xargs given nothing ran
        // `--dump-db` bare) and the root then found missing in it.
        let e = closure(&local, &absent).await.unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("exit"), "{e}");
        assert!(!e.contains("is not valid on"), "{e}");
    }

    #[test]
    fn split_keeps_each_roots_closure_in_order() {
        let p = |n: &str, refs: &[&str]| {
            PathInfo::from(PathRecord {
                path: StorePath::parse(&format!(
                    "/nix/store/{}-{n}",
                    n.repeat(32).get(..32).unwrap()
                ))
                .unwrap(),
                nar_size: 1,
                nar_hash: None,
                references: refs
                    .iter()
                    .map(|r| {
                        StorePath::parse(&format!(
                            "/nix/store/{}-{r}",
                            r.repeat(32).get(..32).unwrap()
                        ))
                        .unwrap()
                    })
                    .collect(),
                deriver: None,
            })
        };
        let all = topo_sort(vec![
            p("a", &["c"]),
            p("b", &["c", "d"]),
            p("c", &["c"]),
            p("d", &[]),
        ])
        .unwrap();
        let find = |n: &str| {
            all.iter()
                .find(|x| x.path.name() == n)
                .unwrap()
                .path
                .clone()
        };
        let (a, b) = (find("a"), find("b"));
        let split = split_closures(&all, &[a.clone(), b.clone()]);
        let names = |r: &StorePath| -> Vec<String> {
            split[r].iter().map(|x| x.path.name().to_owned()).collect()
        };
        assert_eq!(names(&a), ["c", "a"]);
        let nb = names(&b);
        assert_eq!(nb.len(), 3);
        assert_eq!(
            nb.last().map(String::as_str),
            Some("b"),
            "dependencies first"
        );
    }

    fn sp(n: &str) -> String {
        format!("/nix/store/{}-{n}", "a".repeat(31) + &n[..1])
    }

    #[test]
    fn parses_and_sorts() {
        let (a, b, c) = (sp("a"), sp("b"), sp("c"));
        let text = format!(
            "{c}\nh\n30\n\n2\n{a}\n{b}\n{a}\nh\n10\n\n0\n{b}\nh\n20\n{}\n2\n{a}\n{b}\n",
            sp("d.drv")
        );
        let infos = parse_dump_db(&text).unwrap();
        assert_eq!(infos.len(), 3);
        assert_eq!(infos[2].deriver.as_ref().unwrap().name(), "d.drv");
        let sorted = topo_sort(infos).unwrap();
        let names: Vec<&str> = sorted.iter().map(|p| p.path.name()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(total_size(&sorted), 60);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_dump_db("not a path\n").is_err());
        assert!(parse_dump_db(&format!("{}\nh\nx\n", sp("a"))).is_err());
        assert!(parse_dump_db(&format!("{}\nh\n1\n\n5\n", sp("a"))).is_err());
    }
}
