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
use crate::remote::{Command, Remote};

/// One gate passed, with its evidence as recorded: compact JSON text (a
/// large change's diff is hundreds of kilobytes, several times that as a
/// parsed tree), shared by every copy of the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateRecord {
    pub gate: Gate,
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnownGoodMark {
    pub generation: u64,
    pub record_path: String,
    pub record: KnownGoodRecord,
}

/// What the caller knows when marking.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkRequest {
    pub closure: StorePath,
    pub commit: Option<String>,
    pub run_id: RunId,
    pub gates: Vec<GateRecord>,
    pub at: SystemTime,
}

/// Point the profile at the closure, print the generation link it got.
pub(crate) const SET_AND_READ: &str = "prof=$1; closure=$2
nix-env -p \"$prof\" --set \"$closure\" >/dev/null && readlink \"$prof\"";

/// The record on stdin, moved into place whole.
pub(crate) const WRITE_RECORD: &str = "dir=$1; gen=$2; tmp=$dir/.$gen.json.$$.tmp
mkdir -p \"$dir\" && cat > \"$tmp\" && mv -f \"$tmp\" \"$dir/$gen.json\" || { rm -f \"$tmp\"; exit 1; }";

pub(crate) const LIST: &str = "prof=$1; dir=$2
echo \"NixgateCurrent=$(readlink \"$prof\" 2>/dev/null)\"
for l in \"$prof\"-*-link; do
  [ -L \"$l\" ] || continue
  n=${l#\"$prof\"-}; n=${n%-link}
  printf 'NixgateGen=%s\\t%s\\n' \"$n\" \"$(readlink \"$l\")\"
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

/// Mark `req.closure` known-good on the host: set the profile, learn the
/// generation, write the tag record.
pub async fn mark<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    sudo: bool,
    req: MarkRequest,
) -> anyhow::Result<KnownGoodMark> {
    let prof = &paths.known_good_profile;
    let out = remote
        .exec(
            &Command::script(SET_AND_READ)
                .arg(prof)
                .arg(req.closure.as_str())
                .sudo(sudo),
        )
        .await
        .with_context(|| format!("setting {prof} on {}", remote.name()))?
        .check(&format!("nix-env -p {prof} --set {}", req.closure))?;
    let link = out.stdout_str();
    let generation = generation_of(link.trim())
        .with_context(|| format!("{prof} points at {link:?}, not a generation link"))?;
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
    let mut json = serde_json::to_vec(&record).context("encoding the known-good record")?;
    json.push(b'\n');
    let dir = paths.known_good_records.trim_end_matches('/');
    let write = Command::script(WRITE_RECORD)
        .arg(dir)
        .arg(generation.to_string())
        .sudo(sudo);
    crate::remote::exec_input(remote, &write, &json)
        .await
        .with_context(|| format!("writing the known-good record on {}", remote.name()))?
        .check("writing the known-good record")?;
    Ok(KnownGoodMark {
        generation,
        record_path: format!("{dir}/{generation}.json"),
        record,
    })
}

/// One generation of the known-good profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnownGoodGeneration {
    pub generation: u64,
    pub closure: Option<StorePath>,
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
            let (n, target) = v.split_once('\t').context("malformed generation line")?;
            gens.push(KnownGoodGeneration {
                generation: n.parse().with_context(|| format!("generation {n:?}"))?,
                closure: StorePath::parse(target.trim()).ok(),
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
