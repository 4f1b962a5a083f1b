//! Known-good, recorded on the host itself: the GC-rooted profile
//! `/nix/var/nix/profiles/nixgate-known-good` (set with `nix-env --set`; its
//! generations `nixgate-known-good-<N>-link` are the history) plus one tag
//! record per generation, `/var/lib/nixgate/known-good/<N>.json` (UTC time,
//! git commit, closure, gates passed with their evidence, run id), written
//! atomically by a fixed script that gets the JSON as an argument. The
//! controller keeps its own copy; this one survives the controller.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::links::read_store_link;
use super::settings::{HostPaths, RunId};
use crate::gates::Gate;
use crate::nix::StorePath;
use crate::remote::patient::Patient;
use crate::remote::{Command, Remote};

/// One gate passed, with its evidence as recorded: compact JSON text (a
/// large change's diff is hundreds of kilobytes, several times that as a
/// parsed tree), shared by every copy of the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateRecord {
    pub gate: Gate,
    #[serde(deserialize_with = "crate::report::stored::evidence")]
    pub evidence: Evidence,
}

/// A gate's evidence as JSON text.
pub type Evidence = std::sync::Arc<serde_json::value::RawValue>;

/// Evidence from anything serialisable (`null` if it cannot be).
pub fn evidence(value: &impl Serialize) -> Evidence {
    let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    serde_json::value::RawValue::from_string(text)
        .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
        .into()
}

impl GateRecord {
    pub fn new(gate: Gate, value: &impl Serialize) -> GateRecord {
        GateRecord {
            gate,
            evidence: evidence(value),
        }
    }

    /// The evidence parsed (for reading fields of it).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.evidence.get()).unwrap_or_default()
    }
}

impl PartialEq for GateRecord {
    fn eq(&self, other: &Self) -> bool {
        self.gate == other.gate && self.evidence.get() == other.evidence.get()
    }
}

/// The tag record of one known-good generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownGoodRecord {
    pub version: u32,
    pub host: String,
    pub generation: u64,
    pub closure: StorePath,
    /// RFC 3339, UTC, e.g. `2025-03-01T12:00:00Z`.
    pub marked_at: String,
    pub commit: Option<String>,
    pub run_id: RunId,
    pub gates: Vec<GateRecord>,
}

/// What marking produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownGoodMark {
    pub generation: u64,
    pub record_path: String,
    pub record: KnownGoodRecord,
}

/// What the caller knows when marking.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkRequest {
    pub closure: StorePath,
    /// Re-select this existing generation (a rollback to it) instead of
    /// adding one.
    pub reselect: Option<u64>,
    pub commit: Option<String>,
    pub run_id: RunId,
    pub gates: Vec<GateRecord>,
    pub at: SystemTime,
    /// What the host ran before this deploy: on the first mark ever, kept
    /// as the host's baseline (see [`baseline`]).
    pub previous: Option<StorePath>,
    /// How long each of its commands may wait for a lost connection to
    /// come back (the activation budget).
    pub patience: std::time::Duration,
}

/// The system a host ran before nixgate's first known-good mark on it: kept
/// (GC-rooted) so a rollback after that first deploy has somewhere to go,
/// and offered as never validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub closure: StorePath,
    pub recorded_at: String,
    pub run_id: String,
}

/// `$1` GC root, `$2` record, `$3` closure, `$4` time, `$5` run: written
/// once (an existing baseline is kept).
pub(crate) const RECORD_BASELINE: &str = "root=$1; file=$2; closure=$3; at=$4; run=$5
[ -e \"$file\" ] && exit 0
mkdir -p \"$(dirname \"$file\")\" && ln -sfn \"$closure\" \"$root\" &&
printf '{\"closure\":\"%s\",\"recorded_at\":\"%s\",\"run_id\":\"%s\"}\\n' \"$closure\" \"$at\" \"$run\" > \"$file.tmp\" &&
mv -f \"$file.tmp\" \"$file\"";

pub(crate) const READ_BASELINE: &str = "[ -f \"$1\" ] && [ -e \"$2\" ] && cat \"$1\"; exit 0";

/// The host's baseline, if one was recorded and its closure is still there.
pub async fn baseline<R: Remote>(
    remote: &R,
    paths: &HostPaths,
) -> anyhow::Result<Option<Baseline>> {
    let out = remote
        .exec(&Command::script(READ_BASELINE).args([&paths.baseline, &paths.baseline_root]))
        .await?
        .check("reading the baseline")?;
    let text = out.stdout_str();
    if text.trim().is_empty() {
        return Ok(None);
    }
    Ok(serde_json::from_str(text.trim()).ok())
}

async fn record_baseline<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    sudo: bool,
    closure: &StorePath,
    req: &MarkRequest,
) -> anyhow::Result<()> {
    remote
        .exec(
            &Command::script(RECORD_BASELINE)
                .args([
                    paths.baseline_root.clone(),
                    paths.baseline.clone(),
                    closure.to_string(),
                    utc_rfc3339(req.at),
                    req.run_id.to_string(),
                ])
                .within(super::settings::STEP_LIMIT)
                .sudo(sudo),
        )
        .await?
        .check("recording the baseline")?;
    Ok(())
}

/// Point the profile at the closure (`$3` empty), or re-select generation
/// `$3` (it must be the closure); print the generation links before and after.
pub(crate) const SET_AND_READ: &str = "prof=$1; closure=$2; gen=$3
old=$(readlink \"$prof\" 2>/dev/null)
if [ -n \"$gen\" ]; then
  [ \"$(readlink -f \"$prof-$gen-link\")\" = \"$closure\" ] || { echo \"generation $gen of $prof is not $closure\" >&2; exit 3; }
  nix-env -p \"$prof\" --switch-generation \"$gen\" >/dev/null || exit 1
else
  nix-env -p \"$prof\" --set \"$closure\" >/dev/null || exit 1
fi
echo \"NixgateOld=$old\"
echo \"NixgateNew=$(readlink \"$prof\")\"";

/// The record on stdin, made durable, then moved into place whole.
pub(crate) const WRITE_RECORD: &str = "dir=$1; gen=$2; tmp=$dir/.$gen.json.$$.tmp
mkdir -p \"$dir\" && cat > \"$tmp\" && { sync \"$tmp\" 2>/dev/null || sync; } &&
mv -f \"$tmp\" \"$dir/$gen.json\" && { sync \"$dir\" 2>/dev/null || true; } || { rm -f \"$tmp\"; exit 1; }";

/// Undo a mark that failed: back to generation `$2` (none: no profile), and
/// drop generation `$3` when the mark created it. `$3` empty: the mark's
/// `nix-env --set` lost its answer, so it may have made a generation: the
/// one the profile is on, if newer than `$2` and pointing at the closure
/// `$4`, is dropped.
pub(crate) const UNDO_MARK: &str = "prof=$1; old=$2; created=$3; closure=$4
if [ -z \"$created\" ] && [ -n \"$closure\" ] && [ \"$(readlink -f \"$prof\")\" = \"$closure\" ]; then
  n=$(readlink \"$prof\"); n=${n%-link}; n=${n##*-}
  if [ -z \"$old\" ] || [ \"$n\" -gt \"$old\" ]; then created=$n; fi
fi
if [ -n \"$old\" ]; then nix-env -p \"$prof\" --switch-generation \"$old\" >/dev/null || exit 1
else rm -f \"$prof\" || exit 1; fi
if [ -n \"$created\" ]; then rm -f \"$prof-$created-link\"; fi";

/// The generation link a profile points at (nothing: no profile).
pub(crate) const READ_GENERATION: &str = "readlink \"$1\" 2>/dev/null; exit 0";

/// Revoke generation `$3` (marked by a run, then found unhealthy): the
/// profile goes back to the newest generation before it (none: no
/// profile), the generation is deleted and its record kept as
/// `<N>.revoked.json`; prints the generation now current.
pub(crate) const REVOKE: &str = "prof=$1; dir=$2; gen=$3; prev=
for l in \"$prof\"-*-link; do
  [ -L \"$l\" ] || continue
  n=${l#\"$prof\"-}; n=${n%-link}
  if [ \"$n\" -lt \"$gen\" ] && { [ -z \"$prev\" ] || [ \"$n\" -gt \"$prev\" ]; }; then prev=$n; fi
done
if [ -n \"$prev\" ]; then nix-env -p \"$prof\" --switch-generation \"$prev\" >/dev/null || exit 1
else rm -f \"$prof\" || exit 1; fi
rm -f \"$prof-$gen-link\"
if [ -f \"$dir/$gen.json\" ]; then mv -f \"$dir/$gen.json\" \"$dir/$gen.revoked.json\"; fi
echo \"NixgatePrevious=$prev\"";

pub(crate) const LIST: &str = "prof=$1; dir=$2
echo \"NixgateCurrent=$(readlink \"$prof\" 2>/dev/null)\"
for l in \"$prof\"-*-link; do
  [ -L \"$l\" ] || continue
  n=${l#\"$prof\"-}; n=${n%-link}
  if [ -e \"$l\" ]; then p=present; else p=missing; fi
  printf 'NixgateGen=%s\\t%s\\t%s\\n' \"$n\" \"$(readlink \"$l\")\" \"$p\"
  if [ -f \"$dir/$n.json\" ]; then printf 'NixgateRecord=%s\\t%s\\n' \"$n\" \"$(cat \"$dir/$n.json\")\"; fi
done";

/// `<name>-<N>-link` -> N.
fn generation_of(link: &str) -> Option<u64> {
    link.rsplit('/')
        .next()?
        .strip_suffix("-link")?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a UTC instant (civil-from-days, proleptic Gregorian).
pub fn utc_rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The closure the host's known-good profile points at, if any.
pub async fn current<R: Remote>(
    remote: &R,
    paths: &HostPaths,
) -> anyhow::Result<Option<StorePath>> {
    read_store_link(remote, &paths.known_good_profile).await
}

/// Mark `req.closure` known-good on the host: set the profile (or
/// re-select its generation), learn the generation, write the tag record.
/// A record that cannot be written undoes the profile change: known-good
/// never points at a closure without its record. Each command survives a
/// lost connection for `req.patience` (see [`Patient`]): the generation the
/// profile was on is read first, so a `nix-env --set` whose answer was lost
/// after it ran is neither done twice nor left in place when the mark fails.
pub async fn mark<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    sudo: bool,
    req: MarkRequest,
) -> anyhow::Result<KnownGoodMark> {
    let prof = &paths.known_good_profile;
    let patient = Patient::new(remote, req.patience);
    let old = generation_before(&patient, prof).await?;
    let set = set_and_read(&patient, prof, &req, sudo).await;
    let generation = match set {
        Ok(g) => g,
        Err(e) => {
            // It may have run before its answer was lost.
            let undo = undo_mark(remote, prof, (old, None), &req.closure, req.patience, sudo).await;
            return Err(undone(e, undo, prof));
        }
    };
    let patience = req.patience;
    // The first mark ever on this host: what it ran before is its baseline.
    if old.is_none()
        && let Some(previous) = req.previous.as_ref().filter(|p| **p != req.closure)
        && let Err(e) = record_baseline(remote, paths, sudo, previous, &req).await
    {
        tracing::warn!("{}: the baseline was not recorded: {e:#}", remote.name());
    }
    let record = KnownGoodRecord {
        version: 1,
        host: remote.name().to_owned(),
        generation,
        closure: req.closure,
        marked_at: utc_rfc3339(req.at),
        commit: req.commit,
        run_id: req.run_id,
        gates: req.gates,
    };
    let dir = paths.known_good_records.trim_end_matches('/');
    if let Err(e) = write_record(&patient, dir, sudo, &record).await {
        let created = (old != Some(generation) && req.reselect.is_none()).then_some(generation);
        let undo = undo_mark(
            remote,
            prof,
            (old, created),
            &record.closure,
            patience,
            sudo,
        )
        .await;
        return Err(undone(e, undo, prof));
    }
    Ok(KnownGoodMark {
        generation,
        record_path: format!("{dir}/{generation}.json"),
        record,
    })
}

fn undone(e: anyhow::Error, undo: anyhow::Result<()>, prof: &str) -> anyhow::Error {
    match undo {
        Ok(()) => e.context(format!("{prof} was put back where it was")),
        Err(u) => e.context(format!("and putting {prof} back failed too: {u:#}")),
    }
}

/// The generation `prof` is on before marking (`None`: no profile yet).
async fn generation_before<R: Remote>(remote: &R, prof: &str) -> anyhow::Result<Option<u64>> {
    let out = remote
        .exec(&Command::script(READ_GENERATION).arg(prof))
        .await
        .with_context(|| format!("reading {prof} on {}", remote.name()))?
        .check(&format!("readlink {prof}"))?;
    let link = out.stdout_str();
    let link = link.trim();
    if link.is_empty() {
        return Ok(None);
    }
    generation_of(link)
        .map(Some)
        .with_context(|| format!("{prof} points at {link:?}, not a generation link"))
}

/// Point the profile at the closure (or re-select its generation); the
/// generation it is on now.
async fn set_and_read<R: Remote>(
    remote: &R,
    prof: &str,
    req: &MarkRequest,
    sudo: bool,
) -> anyhow::Result<u64> {
    let reselect = req.reselect.map(|g| g.to_string()).unwrap_or_default();
    let out = remote
        .exec(
            &Command::script(SET_AND_READ)
                .args([prof, req.closure.as_str(), reselect.as_str()])
                .sudo(sudo),
        )
        .await
        .with_context(|| format!("setting {prof} on {}", remote.name()))?
        .check(&format!("nix-env -p {prof} --set {}", req.closure))?;
    let text = out.stdout_str();
    let link = text
        .lines()
        .find_map(|l| l.strip_prefix("NixgateNew="))
        .map(str::trim)
        .unwrap_or_default();
    generation_of(link).with_context(|| format!("{prof} points at {link:?}, not a generation link"))
}

async fn write_record<R: Remote>(
    remote: &Patient<'_, R>,
    dir: &str,
    sudo: bool,
    record: &KnownGoodRecord,
) -> anyhow::Result<()> {
    let mut json = serde_json::to_vec(record).context("encoding the known-good record")?;
    json.push(b'\n');
    let write = Command::script(WRITE_RECORD)
        .within(super::settings::STEP_LIMIT)
        .arg(dir)
        .arg(record.generation.to_string())
        .sudo(sudo);
    remote
        .exec_input(&write, &json)
        .await
        .with_context(|| format!("writing the known-good record on {}", remote.name()))?
        .check("writing the known-good record")?;
    Ok(())
}

/// Put the profile back on generation `old` (none: no profile), and drop
/// generation `created` when this mark made it (`None` after a `nix-env
/// --set` whose answer was lost: [`UNDO_MARK`] finds out).
async fn undo_mark<R: Remote>(
    remote: &R,
    prof: &str,
    (old, created): (Option<u64>, Option<u64>),
    closure: &StorePath,
    patience: std::time::Duration,
    sudo: bool,
) -> anyhow::Result<()> {
    let arg = |g: Option<u64>| g.map(|g| g.to_string()).unwrap_or_default();
    Patient::new(remote, patience)
        .exec(
            &Command::script(UNDO_MARK)
                .within(super::settings::STEP_LIMIT)
                .args([prof.to_owned(), arg(old), arg(created), closure.to_string()])
                .sudo(sudo),
        )
        .await?
        .check(&format!("putting {prof} back"))?;
    Ok(())
}

/// Revoke `generation` (this run's mark, found unhealthy after the soak):
/// the profile goes back to the generation before it. Returns the
/// generation now current, if any.
pub async fn revoke<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    sudo: bool,
    generation: u64,
) -> anyhow::Result<Option<u64>> {
    let out = remote
        .exec(
            &Command::script(REVOKE)
                .within(super::settings::STEP_LIMIT)
                .args([
                    paths.known_good_profile.clone(),
                    paths.known_good_records.trim_end_matches('/').to_owned(),
                    generation.to_string(),
                ])
                .sudo(sudo),
        )
        .await
        .with_context(|| format!("revoking known-good generation {generation}"))?
        .check(&format!("revoking known-good generation {generation}"))?;
    let text = out.stdout_str();
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("NixgatePrevious="))
        .and_then(|v| v.trim().parse().ok()))
}

/// One generation of the known-good profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnownGoodGeneration {
    pub generation: u64,
    pub closure: Option<StorePath>,
    /// The closure is in the host's store (a generation link can dangle
    /// when its path was deleted by hand: it is no rollback target).
    pub present: bool,
    pub record: Option<KnownGoodRecord>,
    pub current: bool,
}

/// The known-good history on the host, oldest first.
pub async fn history<R: Remote>(
    remote: &R,
    paths: &HostPaths,
) -> anyhow::Result<Vec<KnownGoodGeneration>> {
    let out = remote
        .exec(
            &Command::script(LIST)
                .arg(&paths.known_good_profile)
                .arg(paths.known_good_records.trim_end_matches('/')),
        )
        .await
        .with_context(|| format!("listing known-good generations on {}", remote.name()))?
        .check("listing known-good generations")?;
    parse_history(&out.stdout_str())
}

pub fn parse_history(stdout: &str) -> anyhow::Result<Vec<KnownGoodGeneration>> {
    let mut current = None;
    let mut gens: Vec<KnownGoodGeneration> = Vec::new();
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("NixgateCurrent=") {
            current = generation_of(v.trim());
        } else if let Some(v) = line.strip_prefix("NixgateGen=") {
            let mut fields = v.split('\t');
            let (Some(n), Some(target)) = (fields.next(), fields.next()) else {
                anyhow::bail!("malformed generation line {v:?}");
            };
            gens.push(KnownGoodGeneration {
                generation: n.parse().with_context(|| format!("generation {n:?}"))?,
                closure: StorePath::parse(target.trim()).ok(),
                present: fields.next().map(str::trim) != Some("missing"),
                record: None,
                current: false,
            });
        } else if let Some(v) = line.strip_prefix("NixgateRecord=") {
            let (n, json) = v.split_once('\t').context("malformed record line")?;
            let n: u64 = n.parse().with_context(|| format!("generation {n:?}"))?;
            // A record nixgate cannot read is reported as absent, not fatal.
            let record = serde_json::from_str(json).ok();
            if let Some(g) = gens.iter_mut().find(|g| g.generation == n) {
                g.record = record;
            }
        }
    }
    for g in &mut gens {
        g.current = Some(g.generation) == current;
    }
    gens.sort_by_key(|g| g.generation);
    Ok(gens)
}

#[cfg(test)]
#[path = "known_good_tests.rs"]
mod tests;
