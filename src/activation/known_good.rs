//! Known-good, recorded on the host itself: the GC-rooted profile
//! `/nix/var/nix/profiles/nixgate-known-good` (set with `nix-env --set`; its
//! generations `nixgate-known-good-<N>-link` are the history) plus one tag
//! record per generation, `/var/lib/nixgate/known-good/<N>.json` (UTC time,
//! git commit, closure, gates passed with their evidence, run id), written
//! atomically by a fixed script that gets the JSON on its stdin (`MARK`).
//! The host's records are the only ones: the controller keeps no copy (a
//! host may be deployed from several controllers, and its history outlives
//! any of them), so every reader asks the host.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::links::read_store_link;
use super::settings::{HostPaths, RunId};
use crate::gates::Gate;
use crate::nix::StorePath;
use crate::remote::patient::Patient;
use crate::remote::{Command, Exit, Remote};

/// One gate passed, with its evidence as recorded: compact JSON text (a
/// large change's diff is hundreds of kilobytes, several times that as a
/// parsed tree), shared by every copy of the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateRecord {
    pub gate: Gate,
    #[serde(deserialize_with = "crate::report::stored::evidence")]
    pub evidence: Evidence,
}

/// A gate's evidence as JSON text (the diff gate's in pieces shared
/// between hosts).
pub type Evidence = crate::report::shared_json::SharedJson;

impl GateRecord {
    pub fn new(gate: Gate, value: &impl Serialize) -> GateRecord {
        GateRecord {
            gate,
            evidence: Evidence::of(value),
        }
    }

    /// The evidence parsed (for reading fields of it).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.evidence.get()).unwrap_or_default()
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
    /// The generation the profile was on before this mark (`None`: there
    /// was no profile), written by the host: what undoing it goes back to.
    #[serde(default)]
    pub replaced: Option<u64>,
    /// Whether this mark added the generation (`false`: the profile's
    /// newest generation was this closure already, proven by an earlier
    /// mark, or a rollback re-selected one), written by the host; `None`
    /// in records from before it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// Written by a rollback's re-selection of this generation: where the
    /// profile was when it was first marked (from the record it overwrote,
    /// whose own `lineage`, else older `replaced`, said so), since its
    /// `replaced` now names the newer generation the rollback left. Back
    /// from it goes on from there ([`crate::plan::rollback_target`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<u64>,
    /// Marked in a wave with a soak, whose re-check has not passed yet
    /// (written by the host, cleared by [`SOAKED`] once it has): not proven.
    /// A controller killed mid-soak leaves it, so the generation is never
    /// taken for proven: not a rollback target, not validated for the diff
    /// gate, revoked by the next run whose soak fails on it (a re-mark of
    /// the same closure adds no generation, and `created` alone let the
    /// unsoaked one stand). Absent (older records, marks without a soak):
    /// the mark was final.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub soak_pending: bool,
    /// When MARK wrote the record, by the host's clock (RFC 3339, UTC):
    /// comparable with the host's own times (a magic-rollback revert's
    /// `reverted_at`), as `marked_at`, the controller's, is not (a host
    /// clock an hour fast showed a revert before a good mark as after it).
    /// `None` in records from before it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marked_on_host: Option<String>,
    /// Written by a `nixgate rollback` that took the host here: the system
    /// it ran before, the closure a person decided against. A later push
    /// of that very closure is refused while the host stands on this mark
    /// ([`crate::plan::Refusal::RolledBack`]): the nightly cron push of the
    /// unchanged HEAD redeployed it, silently, the night after the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<StorePath>,
}

/// A `nixgate rollback` that took a host away from a closure: its run and
/// when (see [`KnownGoodRecord::rolled_back_from`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledAway {
    pub run_id: RunId,
    /// When the rollback marked where it took the host (the controller's
    /// clock, RFC 3339, UTC).
    pub at: String,
    /// The known-good generation the rollback took the host to, where it
    /// stands.
    pub generation: u64,
}

impl KnownGoodRecord {
    /// Was the candidate proven live by rebooting into it (a change only a
    /// reboot makes: its systemd, its kernel)? Going back goes by a reboot
    /// too ([`super::RollbackMode::Reboot`]).
    pub fn rebooted_in(&self) -> bool {
        self.gates.iter().any(|g| {
            g.gate == Gate::LiveActivate
                && matches!(
                    serde_json::from_value(g.value()),
                    Ok(super::events::GateEvidence::Rebooted { .. })
                )
        })
    }
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
    /// A soak re-checks the host after its wave: the mark is provisional
    /// (`soak_pending`) until [`soak_passed`].
    pub soak_follows: bool,
    /// A rollback's mark: the system the host ran before it (see
    /// [`KnownGoodRecord::rolled_back_from`]).
    pub rolled_back_from: Option<StorePath>,
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

/// Shell functions reading a known-good record's `replaced` and `created`
/// (`replaced_of FILE`, `created_of FILE`, `lineage_of FILE`, the last
/// written by a re-selection only, `soak_of FILE`, `true` while its soak
/// is pending; empty when absent), for MARK, UNDO_MARK, REVOKE and
/// SOAKED alike. The record is one line, written by MARK, its fields in
/// this order (`lineage`, then `soak_pending`, only when written; then
/// `marked_on_host`, the host's time).
macro_rules! record_fields {
    () => {
        r#"replaced_of() { sed -n 's/^{"generation":[0-9]*,"replaced":\([0-9]*\),.*/\1/p' "$1" 2>/dev/null; }
created_of() { sed -n 's/^{"generation":[0-9]*,"replaced":[0-9a-z]*,"created":\([a-z]*\),.*/\1/p' "$1" 2>/dev/null; }
lineage_of() { sed -n 's/^{"generation":[0-9]*,"replaced":[0-9a-z]*,"created":[a-z]*,"lineage":\([0-9]*\),.*/\1/p' "$1" 2>/dev/null; }
soak_of() { sed -n 's/^{"generation":[0-9]*,"replaced":[0-9a-z]*,"created":[a-z]*,\("lineage":[0-9]*,\)\{0,1\}"soak_pending":\(true\),.*/\2/p' "$1" 2>/dev/null; }
"#
    };
}

/// Mark known-good in one host command: `$1` profile, `$2` records
/// directory, `$3` closure, `$4` generation to re-select (empty: `nix-env
/// --set`), `$5` run, `$6` the record's length in bytes, then the baseline's
/// GC root, file, closure (empty: none to record) and time, and `${11}`
/// `pending` when a soak re-checks the host after its wave. The record
/// comes on stdin without its `generation`, which is spliced in once known.
///
/// One command, not three, for two reasons. The controller may vanish
/// between them (the fault matrix SIGKILLed it while marking: the profile
/// pointed at the candidate with no record, and `status` called it
/// known-good): this script ignores SIGHUP and SIGPIPE, so once the record
/// has arrived whole (its length is checked) it sets the profile and writes
/// the record, or puts the profile back, whatever happens to the session.
/// And each command is a round trip (issue 21: 2 of them saved).
///
/// Run twice (its answer was lost), it converges: `nix-env --set` of the
/// closure the profile is on adds no generation, and the record is written
/// again. The two may run at once (the first still runs, without its
/// session, when the second starts): each has its own copy of the record,
/// and where `flock` exists they take turns. Seen on the fault matrix (SSH
/// dropped while marking): the second removed the record file the first
/// still needed, whose failure then "put back" the known-good profile, after
/// the next run had marked it. A host that went down between the set and
/// the record is left with a generation without a record, which `status`
/// flags and the next mark adopts.
///
/// The record says which generation it replaced (`replaced`), so a mark
/// whose answer never came back can be undone ([`UNDO_MARK`]). A
/// re-selection (a rollback to generation K) writes its record over K's
/// own, the proof K was known-good: it keeps that one as
/// `.K.before-<run>.json` for the undo to put back. The host cannot tell
/// whether the answer arrives, so a mark that stands leaves its copy; the
/// next mark (another run's: the host lock keeps runs apart, and a run's
/// undo comes before it lets the host go) removes it.
///
/// The records are readable by all (`umask 022`, the directory opened up):
/// the pipeline's first read and `status` read them without `sudo`, and
/// sudo keeps a user's umask of 077 (the known-good was then invisible to
/// both). They hold no secret: closures, gates' evidence, a commit.
///
/// A mark a soak follows is provisional (`"soak_pending":true`, cleared by
/// [`SOAKED`] once the soak passed) unless the generation was proven
/// already: a re-selection or re-use of a generation whose record (of this
/// closure) is final stays final. One made, one without a record, and one
/// still pending (an earlier run's soak never ended: its controller was
/// killed) are pending. A mark no soak follows is final, as before soaks
/// were recorded.
///
/// Exits: 3 the generation to re-select is not the closure; 4 the record
/// could not be written and the profile was put back; 5 neither; 6 the
/// record arrived cut short (nothing changed).
pub(crate) const MARK: &str = concat!(
    record_fields!(),
    r#"prof=$1; dir=$2; closure=$3; gen=$4; run=$5; len=$6; broot=$7; bfile=$8; bclosure=$9; bat=${10}; soak=${11}
trap '' HUP PIPE TERM
umask 022
mkdir -p "$dir" || exit 1
chmod go+rx "$dir" 2>/dev/null
tmp=$dir/.pending-$run.$$.json; kept=; lineage=
cat > "$tmp" || { rm -f "$tmp"; exit 1; }
# One mark at a time: a mark tried again after a dropped session runs while
# the first still does (it ignores the hang-up).
if command -v flock >/dev/null 2>&1; then exec 8>>"$dir/.mark.lock" && flock 8; fi
if [ "$(wc -c < "$tmp" | tr -d ' ')" != "$len" ]; then rm -f "$tmp"; echo "the record arrived cut short" >&2; exit 6; fi
# What an earlier run's re-selection kept for its undo: that run is over.
for f in "$dir"/.*.before-*; do case ${f##*/} in .*.before-"$run".json*) ;; *) rm -f "$f" ;; esac; done
old=$(readlink "$prof" 2>/dev/null); oldn=${old%-link}; oldn=${oldn##*-}
[ -n "$old" ] || oldn=
# Run again after a lost answer: this run's mark stands, as it was made.
if [ -n "$old" ] && [ "$(readlink -f "$prof")" = "$closure" ] && grep -qF "\"run_id\":\"$run\"" "$dir/$oldn.json" 2>/dev/null; then
  rm -f "$tmp"; echo "NixgateNew=$old"
  echo "NixgateReplaced=$(replaced_of "$dir/$oldn.json")"
  echo "NixgateCreated=$(created_of "$dir/$oldn.json")"
  echo "NixgateSoak=$(soak_of "$dir/$oldn.json")"
  exit 0
fi
# The first mark ever: what the host ran before is its baseline (kept once).
if [ -z "$old" ] && [ -n "$bclosure" ] && [ ! -e "$bfile" ]; then
  { mkdir -p "$(dirname "$bfile")" && ln -sfn "$bclosure" "$broot" &&
    printf '{"closure":"%s","recorded_at":"%s","run_id":"%s"}\n' "$bclosure" "$bat" "$run" > "$bfile.tmp" &&
    mv -f "$bfile.tmp" "$bfile"; } || echo "NixgateBaseline=failed"
fi
# What the profile was on, for an undo after a host that went down here
# (kept from a first attempt that went down after its nix-env).
pending=$dir/.pending-$run.replaced
[ -f "$pending" ] || echo "$oldn" > "$pending" || { rm -f "$tmp"; exit 1; }
replaced=$(cat "$pending")
# The newest generation before this mark: `nix-env --set` of the newest
# one's closure makes none (even while an older one is selected), and an
# undo must never delete a generation it did not make.
if [ ! -f "$pending.last" ]; then
  last=0
  for l in "$prof"-*-link; do
    [ -L "$l" ] || continue
    k=${l#"$prof"-}; k=${k%-link}; [ "$k" -le "$last" ] || last=$k
  done
  echo "$last" > "$pending.last" || { rm -f "$tmp" "$pending"; exit 1; }
fi
last=$(cat "$pending.last")
# `keep N`: generation N's record, an earlier run's, which the record
# written below replaces, is kept for an undo to put back (a mark that
# stands leaves it to the next mark); fails when it could not be.
keep() {
  kept=$dir/.$1.before-$run.json
  [ -f "$kept" ] || [ ! -f "$dir/$1.json" ] || grep -qF "\"run_id\":\"$run\"" "$dir/$1.json" ||
    { cp "$dir/$1.json" "$kept.tmp" && { sync "$kept.tmp" 2>/dev/null || sync; } && mv -f "$kept.tmp" "$kept"; } ||
    { rm -f "$kept.tmp"; return 1; }
}
if [ -n "$gen" ]; then
  [ "$(readlink -f "$prof-$gen-link")" = "$closure" ] || { rm -f "$tmp" "$pending" "$pending.last"; echo "generation $gen of $prof is not $closure" >&2; exit 3; }
  keep "$gen" || { rm -f "$tmp" "$pending" "$pending.last"; exit 1; }
  # Where the profile was when $gen was first marked (its record's, or the
  # one it keeps): the record written below names the generation left.
  lineage=$(lineage_of "$dir/$gen.json")
  if [ -z "$lineage" ]; then r=$(replaced_of "$dir/$gen.json"); [ -z "$r" ] || [ "$r" -ge "$gen" ] || lineage=$r; fi
  nix-env -p "$prof" --switch-generation "$gen" >/dev/null || { rm -f "$tmp" "$pending" "$pending.last" "$kept"; exit 1; }
else
  nix-env -p "$prof" --set "$closure" >/dev/null || { rm -f "$tmp" "$pending" "$pending.last"; exit 1; }
fi
new=$(readlink "$prof"); n=${new%-link}; n=${n##*-}
created=false; [ -n "$gen" ] || [ "$n" -le "$last" ] || created=true
# A generation re-used by `--set` (the newest was this closure while an
# older one was selected): its record is kept as a re-selection's is.
keptfail=
if [ -z "$gen" ] && [ "$created" = false ]; then keep "$n" || keptfail=1; fi
rec=$dir/.$n.json.$$.tmp
lin=; [ -z "$lineage" ] || lin="\"lineage\":$lineage,"
# A soak follows: provisional, unless the generation was proven already
# (its record, of this closure, final).
sp=
if [ "$soak" = pending ]; then
  if [ "$created" = true ] || [ ! -f "$dir/$n.json" ] || ! grep -qF "\"closure\":\"$closure\"" "$dir/$n.json" ||
    [ -n "$(soak_of "$dir/$n.json")" ]; then sp='"soak_pending":true,'; fi
fi
if [ -z "$keptfail" ] && { printf '{"generation":%s,"replaced":%s,"created":%s,%s%s"marked_on_host":"%s",' "$n" "${replaced:-null}" "$created" "$lin" "$sp" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"; tail -c +2 "$tmp"; } > "$rec" &&
  { sync "$rec" 2>/dev/null || sync; } && mv -f "$rec" "$dir/$n.json" && { sync "$dir" 2>/dev/null || true; }; then
  rm -f "$tmp" "$pending" "$pending.last"
  echo "NixgateNew=$new"
  echo "NixgateReplaced=$replaced"
  echo "NixgateCreated=$created"
  echo "NixgateSoak=${sp:+true}"
  exit 0
fi
rm -f "$rec" "$tmp" "$pending" "$pending.last"
[ -z "$kept" ] || rm -f "$kept"
echo "writing $dir/$n.json failed" >&2
if [ -n "$replaced" ]; then nix-env -p "$prof" --switch-generation "$replaced" >/dev/null || exit 5
else rm -f "$prof" || exit 5; fi
if [ "$created" = true ]; then rm -f "$prof-$n-link"; fi
exit 4"#
);

/// Undo this run's mark (`$3`), made by [`MARK`] although its answer never
/// came back: when the generation the profile is on has this run's record,
/// the profile goes back to the generation the record says it replaced
/// (none: no profile), a generation the mark created is deleted (`$4`
/// empty: it was not a re-selection), and the record is kept as
/// `<N>.undone.json`; a re-selection's (`$4` not empty) goes there for
/// the record it overwrote, which [`MARK`] kept (without it, generation N
/// was left with no record: refused for good as a mark that never
/// finished); so does a mark's that re-used a generation (`nix-env --set`
/// of the newest one's closure), whose record MARK kept too. A mark that
/// re-used the generation it replaced (the same closure) is left: that
/// generation was known-good before (its own record is put back all the
/// same). A mark
/// cut off between `nix-env` and the record (the host went down) left
/// `.pending-<run>.replaced`, naming the generation to go back to. Prints
/// what it did.
pub(crate) const UNDO_MARK: &str = concat!(
    record_fields!(),
    r#"prof=$1; dir=$2; run=$3; reselected=$4
trap '' HUP PIPE TERM
if command -v flock >/dev/null 2>&1 && mkdir -p "$dir"; then exec 8>>"$dir/.mark.lock" && flock 8; fi
pending=$dir/.pending-$run.replaced
# What this run's re-selection kept of the record it overwrote (see MARK).
forget() { for f in "$dir"/.*.before-"$run".json*; do rm -f "$f"; done; }
cur=$(readlink "$prof" 2>/dev/null) || { rm -f "$pending"; forget; echo "NixgateUndo=none"; exit 0; }
n=${cur%-link}; n=${n##*-}
rec=$dir/$n.json
kept=$dir/.$n.before-$run.json
# This run's record goes (as <N>.undone.json) for the one it overwrote (a
# re-selection's, or a re-used generation's: MARK kept it).
putback() {
  [ -f "$kept" ] || return 1
  cp "$rec" "$dir/$n.undone.json" 2>/dev/null; mv -f "$kept" "$rec" || true
}
if grep -qF "\"run_id\":\"$run\"" "$rec" 2>/dev/null; then
  prev=$(replaced_of "$rec")
  created=$(created_of "$rec")
elif [ -f "$pending" ] && [ ! -f "$rec" ]; then
  # Cut off between the profile and the record (the host went down).
  prev=$(cat "$pending")
  last=$(cat "$pending.last" 2>/dev/null); created=
  [ -z "$last" ] || [ "$n" -gt "$last" ] || created=false
else
  rm -f "$pending" "$pending.last"; forget; echo "NixgateUndo=none"; exit 0
fi
[ "$prev" != "$n" ] || { putback; rm -f "$pending" "$pending.last"; forget; echo "NixgateUndo=kept"; exit 0; }
if [ -n "$prev" ]; then nix-env -p "$prof" --switch-generation "$prev" >/dev/null || exit 1
else rm -f "$prof" || exit 1; fi
# Only a generation this mark made goes (a record from before `created`
# was written says nothing: as before, it goes).
[ -n "$reselected" ] || [ "$created" = false ] || rm -f "$prof-$n-link"
putback || [ ! -f "$rec" ] || mv -f "$rec" "$dir/$n.undone.json"
rm -f "$pending" "$pending.last" "$dir/.pending-$run".*.json
forget
echo "NixgateUndo=$n""#
);

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

/// Revoke generation `$3` (marked by a run, then found unhealthy): the
/// profile goes back to the generation its record says the mark replaced
/// (where the profile was: after a rollback re-selected an older one, the
/// newest before it is the system rolled away from), else, with no such
/// record or that generation gone, the newest generation before it (none:
/// no profile); the generation is deleted and its record kept as
/// `<N>.revoked.json`; prints the generation now current. Run again (an
/// answer lost), a generation revoked already (its record moved, its link
/// gone) is not revoked twice: the generation now current is printed
/// (before, the second run looked for "the newest before it" with the
/// record gone, and could move the profile again). Ignores HUP, PIPE and
/// TERM, as MARK does: a session cut mid-way does not leave it half done;
/// holds MARK's lock, so a retry waits for the first run still going.
pub(crate) const REVOKE: &str = concat!(
    record_fields!(),
    "prof=$1; dir=$2; gen=$3
trap '' HUP PIPE TERM
if command -v flock >/dev/null 2>&1 && mkdir -p \"$dir\"; then exec 8>>\"$dir/.mark.lock\" && flock 8; fi
if [ -f \"$dir/$gen.revoked.json\" ] && [ ! -f \"$dir/$gen.json\" ] && [ ! -L \"$prof-$gen-link\" ]; then
  cur=$(readlink \"$prof\" 2>/dev/null); cur=${cur%-link}; [ -z \"$cur\" ] || cur=${cur##*-}
  echo \"NixgatePrevious=$cur\"; exit 0
fi
prev=$(replaced_of \"$dir/$gen.json\")
if [ -n \"$prev\" ] && { [ \"$prev\" -ge \"$gen\" ] || [ ! -L \"$prof-$prev-link\" ]; }; then prev=; fi
[ -n \"$prev\" ] || for l in \"$prof\"-*-link; do
  [ -L \"$l\" ] || continue
  n=${l#\"$prof\"-}; n=${n%-link}
  if [ \"$n\" -lt \"$gen\" ] && { [ -z \"$prev\" ] || [ \"$n\" -gt \"$prev\" ]; }; then prev=$n; fi
done
if [ -n \"$prev\" ]; then nix-env -p \"$prof\" --switch-generation \"$prev\" >/dev/null || exit 1
else rm -f \"$prof\" || exit 1; fi
rm -f \"$prof-$gen-link\"
if [ -f \"$dir/$gen.json\" ]; then mv -f \"$dir/$gen.json\" \"$dir/$gen.revoked.json\"; fi
echo \"NixgatePrevious=$prev\""
);

/// Generation `$3`'s soak passed: its record, if it is still run `$4`'s
/// mark (a later run's re-mark is that run's to settle), pending, and
/// the generation the known-good profile `$1` points at, is
/// written again without `soak_pending` (atomically, under MARK's lock,
/// ignoring a hang-up as MARK does). Prints `NixgateSoaked=` the
/// generation when it cleared it, empty when there was nothing to clear;
/// safe to repeat.
pub(crate) const SOAKED: &str = concat!(
    record_fields!(),
    r#"prof=$1; dir=$2; gen=$3; run=$4
trap '' HUP PIPE TERM
umask 022
if command -v flock >/dev/null 2>&1 && mkdir -p "$dir"; then exec 8>>"$dir/.mark.lock" && flock 8; fi
rec=$dir/$gen.json
if ! grep -qF "\"run_id\":\"$run\"" "$rec" 2>/dev/null || [ -z "$(soak_of "$rec")" ]; then echo "NixgateSoaked="; exit 0; fi
# Still the known-good (another run that took the host over, its lock
# lost during the soak, marked its own since): else the soak proved
# someone else's system, and this mark stays pending.
cur=$(readlink "$prof" 2>/dev/null) || cur=
if [ "${cur##*/}" != "${prof##*/}-$gen-link" ]; then echo "NixgateSoaked="; exit 0; fi
tmp=$dir/.$gen.json.$$.tmp
if sed '1s/^\({"generation":[0-9]*,"replaced":[0-9a-z]*,"created":[a-z]*,\("lineage":[0-9]*,\)\{0,1\}\)"soak_pending":true,/\1/' "$rec" > "$tmp" &&
  { sync "$tmp" 2>/dev/null || sync; } && mv -f "$tmp" "$rec"; then
  echo "NixgateSoaked=$gen"; exit 0
fi
rm -f "$tmp"; echo "rewriting $rec failed" >&2; exit 1"#
);

/// This run's soak passed on the host: its mark of `generation` is final
/// ([`SOAKED`]). Asked again over a lost connection for `patience`.
/// Returns whether it cleared anything (`false`: the record was final
/// already, or another run's now).
pub async fn soak_passed<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    sudo: bool,
    (generation, run): (u64, &RunId),
    patience: std::time::Duration,
) -> anyhow::Result<bool> {
    let what = format!("recording that known-good generation {generation} passed its soak");
    let out = Patient::new(remote, patience)
        .exec(
            &Command::script(SOAKED)
                .within(super::settings::STEP_LIMIT)
                .args([
                    paths.known_good_profile.clone(),
                    paths.known_good_records.trim_end_matches('/').to_owned(),
                    generation.to_string(),
                    run.to_string(),
                ])
                .sudo(sudo),
        )
        .await
        .with_context(|| what.clone())?
        .check(&what)?;
    Ok(out.stdout_str().lines().any(|l| {
        l.strip_prefix("NixgateSoaked=")
            .is_some_and(|g| !g.trim().is_empty())
    }))
}

/// The known-good history: the profile's current generation, each
/// generation (its closure, whether that is still there) with its record,
/// and what each mark cut off before its record left behind
/// (`.pending-<run>.replaced`, see [`MARK`]: the generation the profile was
/// on before that mark, empty for none).
///
/// `$3`, when not empty, is the one closure whose records are wanted: any
/// other generation's record is only named with the closure it is of
/// (`NixgateRecordOf=<N>\t<closure>`, every such record read by one `grep`),
/// enough to know which generations have one. Only nixgate's own compact
/// form is matched, as the whole history parses only that (one line); a
/// compact record this nixgate cannot parse counts here, not there.
/// One `readlink` reads every
/// link (one each only when a link went meanwhile). Records are 5 KiB for
/// a one-package change and 50 KiB for 300 changed paths (the diff's
/// evidence), a generation is added by every push that changes a host,
/// and the diff gate reads the history of every host on every push: with
/// 30 such generations that was 1.5 MB and 60 processes per host and push.
pub(crate) const LIST: &str = r#"prof=$1; dir=$2; want=$3
echo "NixgateCurrent=$(readlink "$prof" 2>/dev/null)"
for p in "$dir"/.pending-*.replaced; do
  if v=$(cat "$p" 2>/dev/null); then printf 'NixgatePending=%s\n' "$v"; fi
done
# stdin: the target of each link of "$@", a line each.
gens() {
  others=
  for l; do
    IFS= read -r t || t=
    n=${l#"$prof"-}; n=${n%-link}
    if [ -e "$l" ]; then p=present; else p=missing; fi
    printf 'NixgateGen=%s\t%s\t%s\n' "$n" "$t" "$p"
    [ -f "$dir/$n.json" ] || continue
    if [ -z "$want" ] || [ "$t" = "$want" ]; then printf 'NixgateRecord=%s\t%s\n' "$n" "$(cat "$dir/$n.json")"
    else others="$others $n"; fi
  done
  [ -n "$others" ] || return 0
  set --; for n in $others; do set -- "$@" "$dir/$n.json"; done
  q='"'; last=
  grep -H -o -m 1 '"closure":"[^"]*"' "$@" 2>/dev/null | while IFS= read -r l; do
    f=${l%%:${q}closure${q}:*}; n=${f##*/}; n=${n%.json}
    [ "$n" != "$last" ] || continue; last=$n
    c=${l#*:${q}closure${q}:${q}}; printf 'NixgateRecordOf=%s\t%s\n' "$n" "${c%$q}"
  done
}
set --
for l in "$prof"-*-link; do [ -L "$l" ] && set -- "$@" "$l"; done
[ "$#" = 0 ] && exit 0
if t=$(readlink -- "$@" 2>/dev/null); then printf '%s\n' "$t" | gens "$@"
else for l; do readlink -- "$l" 2>/dev/null || echo; done | gens "$@"; fi
exit 0"#;

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
/// re-select its generation) and write the tag record, in one command
/// ([`MARK`]): known-good never points at a closure without its record,
/// even when the controller dies mid-mark. The command survives a lost
/// connection for `req.patience` (see [`Patient`]); run again, it adds no
/// generation.
pub async fn mark<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    sudo: bool,
    req: MarkRequest,
) -> anyhow::Result<KnownGoodMark> {
    let prof = &paths.known_good_profile;
    let dir = paths.known_good_records.trim_end_matches('/').to_owned();
    let mut record = KnownGoodRecord {
        version: 1,
        host: remote.name().to_owned(),
        generation: 0,
        replaced: None,
        created: None,
        // The host's own bookkeeping for rollbacks (see MARK): not
        // reported back.
        lineage: None,
        // Decided by the host (see MARK).
        soak_pending: false,
        marked_on_host: None,
        closure: req.closure.clone(),
        marked_at: utc_rfc3339(req.at),
        commit: req.commit.clone(),
        run_id: req.run_id.clone(),
        gates: req.gates.clone(),
        rolled_back_from: req.rolled_back_from.clone(),
    };
    let body = record_body(&record)?;
    let reselect = req.reselect.map(|g| g.to_string()).unwrap_or_default();
    let baseline = req
        .previous
        .as_ref()
        .filter(|p| **p != req.closure)
        .map(ToString::to_string)
        .unwrap_or_default();
    let cmd = Command::script(MARK)
        .within(super::settings::STEP_LIMIT)
        .args([
            prof.clone(),
            dir.clone(),
            req.closure.to_string(),
            reselect,
            req.run_id.to_string(),
            body.len().to_string(),
            paths.baseline_root.clone(),
            paths.baseline.clone(),
            baseline,
            utc_rfc3339(req.at),
            if req.soak_follows { "pending" } else { "" }.to_owned(),
        ])
        .sudo(sudo);
    let sent = std::time::Instant::now();
    let out = Patient::new(remote, req.patience)
        .exec_small_input(&cmd, &body)
        .await;
    // Stopped by its bound on the host (`timeout`: 124, 137 when killed) it may have set
    // the profile and not written the record, as a lost one may have. A 137
    // sooner than the bound is `timeout -k` ending a mark that ignored a
    // signal sent to the session (see below), not the bound.
    let bound = super::settings::STEP_LIMIT;
    let timed_out = matches!(&out, Ok(o) if o.exit.code() == Some(124)
        || (o.exit.code() == Some(137) && sent.elapsed() >= bound));
    // `MARK` ended other than by its own exit (0, 1, 3-6), killed by a
    // signal ([`Exit::killed`]: a host shutting down sends TERM to its
    // sessions), may have set the profile: undone like a lost one. The
    // likely cause of a fault-matrix failure (a host rebooted as it was
    // marked, 1 full run in 6): not undone, the known-good profile stayed
    // on the candidate the run then rolled back. `MARK` now ignores TERM
    // too; `timeout -k 5` still KILLs it 5 s after a signal, long enough
    // for a mark that is not waiting on a Nix lock.
    let lost = match &out {
        Err(_) => true,
        Ok(o) => o.exit == Exit::ConnectionLost || timed_out || o.exit.killed(),
    };
    if lost {
        // It may have run (the script finishes without the session): undo
        // it, so known-good never points at a mark the deploy gave up on.
        let undo = undo_mark(remote, paths, &req, sudo).await;
        let e = match out {
            Err(e) => e,
            Ok(_) if timed_out => anyhow::anyhow!(
                "marking took over {} s and was stopped on the host",
                super::settings::STEP_LIMIT.as_secs()
            ),
            Ok(o) if o.exit.killed() => anyhow::anyhow!(
                "marking was killed on the host ({}: a host shutting down?)",
                o.exit
            ),
            Ok(_) => anyhow::anyhow!("the connection was lost while marking"),
        };
        return Err(undone(e, undo, prof));
    }
    let out = out?;
    let out = match out.exit {
        Exit::Code { code: 4 } => anyhow::bail!(
            "the known-good record could not be written ({}); {prof} was put back where it was",
            out.stderr_str().trim()
        ),
        Exit::Code { code: 5 } => anyhow::bail!(
            "the known-good record could not be written, and putting {prof} back failed too ({}): \
             it points at {} without a record (status flags it; the next mark adopts it)",
            out.stderr_str().trim(),
            req.closure
        ),
        _ => out.check(&format!("marking {} known-good", req.closure))?,
    };
    let text = out.stdout_str();
    if text.lines().any(|l| l == "NixgateBaseline=failed") {
        tracing::warn!("{}: the baseline was not recorded", remote.name());
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let link = field("NixgateNew=");
    let Some(generation) = generation_of(&link) else {
        // Done, yet no generation named: a host shutting down as it was
        // marked (its `/nix` unmounted under the script, which then read
        // the profile as nothing) may have set the profile. Undone like a
        // lost mark: the fault matrix caught "persist x host rebooted"
        // ending rolled back with the known-good left on the candidate.
        let undo = undo_mark(remote, paths, &req, sudo).await;
        let e = anyhow::anyhow!("{prof} points at {link:?}, not a generation link");
        return Err(undone(e, undo, prof));
    };
    record.generation = generation;
    record.replaced = field("NixgateReplaced=").parse().ok();
    record.created = field("NixgateCreated=").parse().ok();
    record.soak_pending = field("NixgateSoak=") == "true";
    Ok(KnownGoodMark {
        generation: record.generation,
        record_path: format!("{dir}/{}.json", record.generation),
        record,
    })
}

fn undone(e: anyhow::Error, undo: anyhow::Result<()>, prof: &str) -> anyhow::Error {
    match undo {
        Ok(()) => e.context(format!("{prof} was put back where it was")),
        Err(u) => e.context(format!("and putting {prof} back failed too: {u:#}")),
    }
}

/// Undo this run's mark if it was made ([`UNDO_MARK`]), trying for as long
/// as the mark itself could.
async fn undo_mark<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    req: &MarkRequest,
    sudo: bool,
) -> anyhow::Result<()> {
    let reselected = if req.reselect.is_some() { "yes" } else { "" };
    Patient::new(remote, req.patience)
        .exec(
            &Command::script(UNDO_MARK)
                .within(super::settings::STEP_LIMIT)
                .args([
                    paths.known_good_profile.as_str(),
                    paths.known_good_records.trim_end_matches('/'),
                    req.run_id.as_str(),
                    reselected,
                ])
                .sudo(sudo),
        )
        .await?
        .check(&format!("putting {} back", paths.known_good_profile))?;
    Ok(())
}

/// The record as the host gets it: JSON without its `generation` (the
/// host splices it in once `nix-env` has made it), ending in a newline.
fn record_body(r: &KnownGoodRecord) -> anyhow::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Body<'a> {
        version: u32,
        host: &'a str,
        closure: &'a StorePath,
        marked_at: &'a str,
        commit: &'a Option<String>,
        run_id: &'a RunId,
        gates: &'a [GateRecord],
        #[serde(skip_serializing_if = "Option::is_none")]
        rolled_back_from: &'a Option<StorePath>,
    }
    let body = Body {
        version: r.version,
        host: &r.host,
        closure: &r.closure,
        marked_at: &r.marked_at,
        commit: &r.commit,
        run_id: &r.run_id,
        gates: &r.gates,
        rolled_back_from: &r.rolled_back_from,
    };
    let mut json = serde_json::to_vec(&body).context("encoding the known-good record")?;
    json.push(b'\n');
    Ok(json)
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
    // Asked again over a lost connection (it is safe to repeat).
    let out = Patient::new(remote, super::settings::STEP_LIMIT)
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
    /// Its tag record; `None` also when the record names another closure
    /// (a stale record of a deleted generation whose number came back),
    /// and when [`history_of`] did not read it.
    pub record: Option<KnownGoodRecord>,
    /// It has a record of its closure, read or not ([`history_of`] reads
    /// only the records of one closure): its mark finished.
    #[serde(skip)]
    pub recorded: bool,
    pub current: bool,
    /// No record, and newer than the generation that a mark cut off
    /// between its `nix-env` and its record says the profile was on (its
    /// `.pending-<run>.replaced` is still on the host): the generation that
    /// mark made, so no proof of anything.
    pub cut_off: bool,
    /// With `cut_off`: the generation that leftover says the profile was on
    /// before that mark (the newest it names before this one), where the
    /// host stood.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stood: Option<u64>,
}

impl KnownGoodGeneration {
    /// Its record says its mark waits for a soak that has not passed (see
    /// [`KnownGoodRecord::soak_pending`]): not proven. Unread records
    /// ([`history_of`]'s of other closures) say nothing.
    pub fn soak_pending(&self) -> bool {
        self.record.as_ref().is_some_and(|r| r.soak_pending)
    }
}

/// The known-good history on the host, oldest first.
pub async fn history<R: Remote>(
    remote: &R,
    paths: &HostPaths,
) -> anyhow::Result<Vec<KnownGoodGeneration>> {
    list(remote, paths, "").await
}

/// [`history`] with the records of `closure`'s generations alone: every
/// other generation's `record` is `None`, its `recorded` says whether it
/// has one (see [`LIST`]).
pub async fn history_of<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    closure: &StorePath,
) -> anyhow::Result<Vec<KnownGoodGeneration>> {
    list(remote, paths, closure.as_str()).await
}

async fn list<R: Remote>(
    remote: &R,
    paths: &HostPaths,
    want: &str,
) -> anyhow::Result<Vec<KnownGoodGeneration>> {
    let out = remote
        .exec(
            &Command::script(LIST)
                .arg(&paths.known_good_profile)
                .arg(paths.known_good_records.trim_end_matches('/'))
                .arg(want),
        )
        .await
        .with_context(|| format!("listing known-good generations on {}", remote.name()))?
        .check("listing known-good generations")?;
    parse_history(&out.stdout_str())
}

/// The history from [`LIST`]'s output, oldest first.
pub fn parse_history(stdout: &str) -> anyhow::Result<Vec<KnownGoodGeneration>> {
    let mut current = None;
    let mut gens: Vec<KnownGoodGeneration> = Vec::new();
    // What the profile was on before each mark cut off before its record
    // (`None`: no profile).
    let mut cut_off_after: Vec<Option<u64>> = Vec::new();
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("NixgateCurrent=") {
            current = generation_of(v.trim());
        } else if let Some(v) = line.strip_prefix("NixgateGen=") {
            gens.push(parse_generation(v)?);
        } else if let Some(v) = line.strip_prefix("NixgateRecord=") {
            let (n, json) = v.split_once('\t').context("malformed record line")?;
            let n: u64 = n.parse().with_context(|| format!("generation {n:?}"))?;
            // A record nixgate cannot read is reported as absent, not fatal;
            // so is one of another closure (an earlier generation's of that
            // number, deleted, the number then used again).
            let record = serde_json::from_str::<KnownGoodRecord>(json).ok();
            if let Some(g) = gens.iter_mut().find(|g| g.generation == n) {
                g.record = record.filter(|r| g.closure.as_ref() == Some(&r.closure));
                g.recorded = g.record.is_some();
            }
        } else if let Some(v) = line.strip_prefix("NixgateRecordOf=") {
            let (n, closure) = v.split_once('\t').context("malformed record line")?;
            let n: u64 = n.parse().with_context(|| format!("generation {n:?}"))?;
            if let Some(g) = gens.iter_mut().find(|g| g.generation == n) {
                g.recorded = g.closure.as_ref().map(StorePath::as_str) == Some(closure.trim());
            }
        } else if let Some(v) = line.strip_prefix("NixgatePending=") {
            match v.trim() {
                "" => cut_off_after.push(None),
                // Anything else is no evidence.
                v => cut_off_after.extend(v.parse::<u64>().ok().map(Some)),
            }
        }
    }
    for g in &mut gens {
        g.current = Some(g.generation) == current;
        g.cut_off = !g.recorded
            && cut_off_after
                .iter()
                .any(|r| r.is_none_or(|r| g.generation > r));
        g.stood = cut_off_after
            .iter()
            .flatten()
            .filter(|&&r| g.cut_off && r < g.generation)
            .max()
            .copied();
    }
    gens.sort_by_key(|g| g.generation);
    Ok(gens)
}

/// A `NixgateGen=` line: `<N>\t<link target>\t<present|missing>`.
fn parse_generation(v: &str) -> anyhow::Result<KnownGoodGeneration> {
    let mut fields = v.split('\t');
    let (Some(n), Some(target)) = (fields.next(), fields.next()) else {
        anyhow::bail!("malformed generation line {v:?}");
    };
    Ok(KnownGoodGeneration {
        generation: n.parse().with_context(|| format!("generation {n:?}"))?,
        closure: StorePath::parse(target.trim()).ok(),
        present: fields.next().map(str::trim) != Some("missing"),
        record: None,
        recorded: false,
        current: false,
        cut_off: false,
        stood: None,
    })
}

#[cfg(test)]
#[path = "known_good_tests.rs"]
mod tests;
