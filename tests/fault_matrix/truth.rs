//! What a host really is, read inside it (no SSH, no nixgate), and the
//! checks that hold it against what `nixgate status` says and against what
//! it was before a cell.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::support::fleet::Fleet;

const READ: &str = r#"p=/nix/var/nix/profiles
echo "current=$(readlink -e /run/current-system)"
echo "profile=$(readlink -e $p/system)"
echo "entry=$(readlink -e /boot/nixgate-test/default)"
echo "kg=$(readlink -e $p/nixgate-known-good)"
echo "kg_link=$(readlink $p/nixgate-known-good 2>/dev/null)"
for l in $p/system-*-link $p/nixgate-known-good-*-link; do [ -L "$l" ] && echo "gen=${l##*/} $(readlink "$l")"; done
for f in /var/lib/nixgate/known-good/*.json; do
  n=${f##*/}; case ${n%.json} in *[!0-9]*) continue ;; esac # not N.revoked.json, N.undone.json
  [ -f "$f" ] && echo "record=$(tr -d '\n' < "$f")"
done
for f in /var/lib/nixgate/deadman/*.json; do [ -f "$f" ] && echo "revert=$(tr -d '\n' < "$f")"; done
systemctl list-units --all --plain --no-legend --no-pager 'nixgate-switch-*' 'nixgate-confirm-*' 'nixgate-reboot-*' |
  while read -r u l a s rest; do echo "unit=$u"; done
if [ -e /run/nixgate/host.lock ] && ! flock -n /run/nixgate/host.lock true; then echo "lock=$(cat /run/nixgate/host.lock.holder 2>/dev/null)"; fi
for e in $p/* /nix/var/nix/gcroots/*; do echo "entry_of=$e"; done
for a in /nix/var/nix/gcroots/auto/*; do [ -L "$a" ] && echo "auto=$(readlink "$a")"; done
exit 0"#;

/// One reading of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    pub current: String,
    /// The system profile (nixgate's "boot default").
    pub profile: String,
    /// The boot loader's default entry (the test configuration's).
    pub entry: String,
    pub kg: String,
    pub kg_gen: Option<u64>,
    /// Generation links: `system-3-link` -> target.
    pub gens: BTreeMap<String, String>,
    /// Known-good records: generation -> (closure, marked_at).
    pub records: BTreeMap<u64, (String, String)>,
    /// Revert records: (run, reverted_at, result).
    pub reverts: Vec<(String, String, String)>,
    pub units: BTreeSet<String>,
    pub lock: Option<String>,
    /// Entries of the profiles and gcroots directories.
    pub entries: BTreeSet<String>,
    /// Where the indirect roots in gcroots/auto point.
    pub autos: BTreeSet<String>,
}

fn gen_of(link: &str) -> Option<u64> {
    link.strip_suffix("-link")?.rsplit('-').next()?.parse().ok()
}

impl Truth {
    pub fn read(fleet: &Fleet, host: &str) -> Truth {
        let text = fleet.in_host_ok(host, READ);
        let mut t = Truth::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().to_owned();
            match k {
                "current" => t.current = v,
                "profile" => t.profile = v,
                "entry" => t.entry = v,
                "kg" => t.kg = v,
                "kg_link" => t.kg_gen = gen_of(&v),
                "gen" => {
                    let (l, target) = v.split_once(' ').unwrap_or((&v, ""));
                    t.gens.insert(l.to_owned(), target.to_owned());
                }
                "record" => {
                    let r: Value = serde_json::from_str(&v).unwrap_or_default();
                    if let Some(g) = r["generation"].as_u64() {
                        let closure = r["closure"].as_str().unwrap_or_default().to_owned();
                        let at = r["marked_at"].as_str().unwrap_or_default().to_owned();
                        t.records.insert(g, (closure, at));
                    }
                }
                "revert" => {
                    let r: Value = serde_json::from_str(&v).unwrap_or_default();
                    let f = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                    t.reverts.push((f("run_id"), f("reverted_at"), f("result")));
                }
                "unit" => {
                    t.units.insert(v);
                }
                "lock" => t.lock = Some(v),
                "entry_of" => {
                    t.entries.insert(v);
                }
                "auto" => {
                    t.autos.insert(v);
                }
                _ => {}
            }
        }
        t
    }

    /// A revert newer than the current known-good mark.
    pub fn reverted(&self) -> bool {
        let marked = self
            .kg_gen
            .and_then(|g| self.records.get(&g))
            .map(|r| r.1.clone())
            .unwrap_or_default();
        self.reverts.iter().any(|r| r.1 > marked)
    }

    fn profile_gens(&self, profile: &str) -> BTreeMap<u64, String> {
        self.gens
            .iter()
            .filter(|(l, _)| {
                l.strip_prefix(profile)
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            })
            .filter_map(|(l, t)| Some((gen_of(l)?, t.clone())))
            .collect()
    }
}

/// `nixgate status` against the host read before and after it: each field
/// must be what one of the two readings says. Returns the differences.
pub fn status_lies(st: &Value, a: &Truth, b: &Truth) -> Vec<String> {
    let mut lies = Vec::new();
    let s = |k: &str| st[k].as_str().unwrap_or_default().to_owned();
    let mut field = |name: &str, said: String, ta: &str, tb: &str| {
        if said != ta && said != tb {
            lies.push(format!("{name}: status says {said:?}, the host {ta:?}"));
        }
    };
    field("current", s("current"), &a.current, &b.current);
    field("boot default", s("boot_default"), &a.profile, &b.profile);
    field("known-good", s("known_good"), &a.kg, &b.kg);
    let gen_str = |g: Option<u64>| g.map(|g| g.to_string()).unwrap_or_default();
    let said_gen = st["known_good_generation"]
        .as_u64()
        .map(|g| g.to_string())
        .unwrap_or_default();
    field(
        "known-good generation",
        said_gen,
        &gen_str(a.kg_gen),
        &gen_str(b.kg_gen),
    );
    let said_units: BTreeSet<String> = st["activity"]["units"]
        .as_array()
        .map(|u| {
            u.iter()
                .filter_map(|x| x.as_str()?.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if said_units != a.units && said_units != b.units {
        lies.push(format!(
            "units: status says {said_units:?}, the host {:?}",
            a.units
        ));
    }
    let held = !st["activity"]["lock_holder"].is_null();
    if held != a.lock.is_some() && held != b.lock.is_some() {
        lies.push(format!(
            "lock: status says {:?}, the host {:?}",
            st["activity"]["lock_holder"], a.lock
        ));
    }
    let unrecorded = st["known_good_unrecorded"] == true;
    let no_record = |t: &Truth| t.kg_gen.is_some_and(|g| !t.records.contains_key(&g));
    if unrecorded != no_record(a) && unrecorded != no_record(b) {
        lies.push(format!(
            "known-good record: status says unrecorded={unrecorded}, the host's records {:?}",
            a.records.keys().collect::<Vec<_>>()
        ));
    }
    let reverted = !st["reverted"].is_null();
    if reverted != a.reverted() && reverted != b.reverted() {
        lies.push(format!(
            "reverted: status says {reverted}, the host's records {:?}",
            a.reverts
        ));
    }
    if !st["error"].is_null() {
        lies.push(format!("status could not read the host: {}", st["error"]));
    }
    lies
}

/// Between `before` a cell and `after` its re-run: no generation of the
/// system or known-good profile lost or re-pointed, none added twice in a
/// row, every known-good generation added has its record, and nothing but
/// profile generations appeared in the profiles and gcroots directories.
pub fn history_problems(before: &Truth, after: &Truth) -> Vec<String> {
    let mut p = Vec::new();
    for profile in ["system", "nixgate-known-good"] {
        let (b, a) = (before.profile_gens(profile), after.profile_gens(profile));
        for (g, t) in &b {
            match a.get(g) {
                None => p.push(format!("{profile} generation {g} was lost")),
                Some(now) if now != t => {
                    p.push(format!("{profile} generation {g} now points at {now}"))
                }
                _ => {}
            }
        }
        let mut last: Option<&String> = None;
        for (g, t) in &a {
            if last == Some(t) {
                p.push(format!(
                    "{profile} generation {g} repeats the one before it"
                ));
            }
            last = Some(t);
            if profile == "nixgate-known-good"
                && !b.contains_key(g)
                && after.records.get(g).map(|r| &r.0) != Some(t)
            {
                p.push(format!(
                    "known-good generation {g} ({t}) has no record of it"
                ));
            }
        }
    }
    let profile_link = |path: &str| {
        // The system the host ran before nixgate's first mark, rooted on
        // purpose so a rollback can reach it (known_good::RECORD_BASELINE).
        if path == "/nix/var/nix/gcroots/auto" || path == "/nix/var/nix/gcroots/nixgate-baseline" {
            return true;
        }
        let Some(name) = path.strip_prefix("/nix/var/nix/profiles/") else {
            return false;
        };
        matches!(name, "system" | "nixgate-known-good")
            || ((name.starts_with("system-") || name.starts_with("nixgate-known-good-"))
                && gen_of(name).is_some())
    };
    for e in after.entries.difference(&before.entries) {
        if !profile_link(e) {
            p.push(format!("left behind: {e}"));
        }
    }
    // Nix 2.8's `nix-env --set` roots each generation link in gcroots/auto.
    for a in after.autos.difference(&before.autos) {
        if !profile_link(a) {
            p.push(format!(
                "a GC root outside the profiles: gcroots/auto -> {a}"
            ));
        }
    }
    p
}

/// The builder's GC roots: every link under gcroots/nixgate resolves to
/// a valid path, and nothing else is there. Returns the problems.
pub fn builder_roots(fleet: &Fleet) -> Vec<String> {
    let out = fleet.in_host_ok(
        "builder",
        "cd /nix/var/nix/gcroots/nixgate 2>/dev/null || exit 0
find . -mindepth 1 | while read -r e; do
  if [ -d \"$e\" ] && [ ! -L \"$e\" ]; then continue; fi
  if [ ! -L \"$e\" ]; then echo \"not a root: $e\"; continue; fi
  t=$(readlink \"$e\")
  nix-store --check-validity \"$t\" 2>/dev/null || echo \"dangling root: $e -> $t\"
done",
    );
    out.lines().map(str::to_owned).collect()
}

/// `nix-store --verify --check-contents` on the host: every valid path is
/// whole. Returns its complaints.
pub fn store_problems(fleet: &Fleet, host: &str) -> Vec<String> {
    let out = fleet.in_host(host, "nix-store --verify --check-contents 2>&1");
    let text = crate::support::cli::text(&out.stdout);
    let bad: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("reading the Nix store") && !l.starts_with("checking "))
        .map(str::to_owned)
        .collect();
    if out.status.success() && bad.is_empty() {
        return Vec::new();
    }
    let mut bad = bad;
    bad.insert(0, format!("nix-store --verify: {}", out.status));
    bad
}
