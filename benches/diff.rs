//! Benchmark of the closure diff from metadata (gate 2 without the SSH round
//! trips and without the structural `.drv` walk, which needs a builder).
//!
//! Two synthetic NixOS-like closures (a toplevel referencing `system-path`,
//! which references most packages; `-lib`/`-dev`/`-man`/`-bin` outputs;
//! references forming a DAG) are generated at 3,000 and 30,000 paths. The new
//! closure has ~2% version bumps, ~1% same-version rebuilds, and some added
//! and removed packages. Each case runs until about a second has passed (at
//! least 10 times) and prints min / median / max.
//!
//! Run with `cargo bench --bench diff`. Targets: diff of two 3,000-path
//! closures well under 50 ms, of two 30,000-path closures under 200 ms.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use nixgate::diff::packages::{self, PackageDiff};
use nixgate::diff::structural::{Cause, Structural};
use nixgate::diff::{HostDiff, drift};
use nixgate::nix::StorePath;
use nixgate::nix::closure::{self, PathInfo};

// ---------------------------------------------------------------- generator

/// splitmix64: small, seeded, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn base32(rng: &mut Rng, len: usize) -> String {
    (0..len)
        .map(|_| NIX_BASE32[(rng.next() & 31) as usize] as char)
        .collect()
}

const REAL: &[&str] = &[
    "glibc",
    "gcc",
    "zlib",
    "openssl",
    "ncurses",
    "readline",
    "bash",
    "coreutils",
    "util-linux",
    "systemd",
    "dbus",
    "libffi",
    "xz",
    "bzip2",
    "zstd",
    "curl",
    "nghttp2",
    "libidn2",
    "pcre2",
    "nginx",
    "openssh",
    "perl",
    "python3",
    "sqlite",
    "libxml2",
    "icu4c",
    "gnugrep",
    "gnused",
    "gawk",
    "findutils",
    "diffutils",
    "shadow",
    "pam",
    "kmod",
    "iproute2",
    "iptables",
    "nftables",
    "e2fsprogs",
    "btrfs-progs",
    "lvm2",
    "cryptsetup",
    "acl",
    "attr",
    "libcap",
    "libseccomp",
    "audit",
    "linux-pam",
    "krb5",
    "keyutils",
    "libssh2",
    "git",
    "vim",
    "htop",
    "tmux",
    "rsync",
    "gnupg",
    "libgcrypt",
    "libgpg-error",
    "gnutls",
    "nettle",
    "p11-kit",
    "libtasn1",
    "expat",
    "fontconfig",
    "freetype",
    "harfbuzz",
    "cairo",
    "pango",
    "glib",
    "gobject-introspection",
    "postgresql",
    "redis",
    "nodejs",
    "go",
    "rustc",
    "jq",
    "ripgrep",
    "fd",
    "less",
    "man-db",
    "groff",
    "texinfo",
    "tzdata",
    "cacert",
    "mailcap",
    "iana-etc",
    "xorg-libX11",
    "xorg-libxcb",
    "mesa",
    "libdrm",
    "wayland",
    "libinput",
    "mtdev",
    "libevdev",
    "alsa-lib",
    "pipewire",
    "libpulseaudio",
    "ffmpeg",
    "x264",
    "libvpx",
];

const WORDS: &[&str] = &[
    "foo", "bar", "requests", "urllib", "certifi", "idna", "six", "attrs", "yaml", "jinja",
    "click", "flask", "django", "numpy", "scipy", "pandas", "pytz", "dateutil", "crypt", "bcrypt",
    "nacl", "asn", "rsa", "jwt", "toml", "pluggy", "pytest", "mock", "tqdm", "rich", "lxml",
    "pillow", "magic", "ldap", "psycopg", "redis", "celery", "kombu", "amqp", "vine", "billiard",
    "gevent",
];

const PERL_WORDS: &[&str] = &[
    "Foo", "Bar", "Net", "HTTP", "Date", "Time", "File", "Path", "Text", "Term", "IO", "Socket",
    "Encode", "Digest", "MD5", "SHA", "Try", "Tiny", "JSON", "XS", "Moo", "Class", "Method",
];

const C_WORDS: &[&str] = &[
    "lib",
    "ev",
    "uv",
    "png",
    "jpeg",
    "tiff",
    "webp",
    "gif",
    "ogg",
    "vorbis",
    "opus",
    "flac",
    "sndfile",
    "samplerate",
    "usb",
    "pci",
    "nl",
    "mnl",
    "nftnl",
    "pcap",
    "xslt",
    "yaml",
    "edit",
    "unistring",
    "gmp",
    "mpfr",
    "mpc",
    "isl",
    "elf",
    "dw",
    "unwind",
    "atomic",
    "bsd",
    "md",
];

/// A package: name, version, outputs, dependencies (lower package indices).
#[derive(Clone)]
struct Pkg {
    pname: String,
    version: String,
    outputs: Vec<&'static str>,
    deps: Vec<usize>,
    self_ref: bool,
    size: u64,
    has_deriver: bool,
}

impl Pkg {
    fn name(&self, output: &str) -> String {
        if output == "out" {
            format!("{}-{}", self.pname, self.version)
        } else {
            format!("{}-{}-{output}", self.pname, self.version)
        }
    }
    /// The output a dependent links against.
    fn link_output(&self) -> usize {
        self.outputs.iter().position(|o| *o == "lib").unwrap_or(0)
    }
}

fn version(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => format!("{}.{}", rng.below(20), rng.below(30)),
        1 => format!("{}", 2015 + rng.below(10)),
        2 => format!(
            "{}.{}.{}-{}",
            rng.below(5),
            rng.below(40),
            rng.below(10),
            rng.below(9) + 1
        ),
        3 => format!("{}.{}pre{}", rng.below(3), rng.below(9), rng.below(9000)),
        _ => format!("{}.{}.{}", rng.below(10), rng.below(40), rng.below(20)),
    }
}

/// Next version: bump the last number.
fn bump(v: &str) -> String {
    let b = v.as_bytes();
    let end = b
        .iter()
        .rposition(|c| c.is_ascii_digit())
        .map_or(b.len(), |i| i + 1);
    let start = b[..end]
        .iter()
        .rposition(|c| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let n: u64 = v[start..end].parse().unwrap_or(0);
    format!("{}{}{}", &v[..start], n + 1, &v[end..])
}

fn new_pkg(rng: &mut Rng, i: usize, existing: usize, used: &mut HashSet<String>) -> Pkg {
    let pname = loop {
        let candidate = if i < REAL.len() {
            REAL[i].to_owned()
        } else {
            match rng.below(6) {
                0 | 1 => format!("python3.11-{}{}", rng.pick(WORDS), rng.below(1000)),
                2 => format!(
                    "perl5.38.2-{}-{}{}",
                    rng.pick(PERL_WORDS),
                    rng.pick(PERL_WORDS),
                    rng.below(100)
                ),
                3 => format!("lib{}{}", rng.pick(C_WORDS), rng.below(1000)),
                4 => format!("{}-{}{}", rng.pick(REAL), rng.pick(C_WORDS), rng.below(100)),
                _ => format!("{}{}", rng.pick(C_WORDS), rng.below(10000)),
            }
        };
        if used.insert(candidate.clone()) {
            break candidate;
        }
    };
    let mut outputs = Vec::with_capacity(4);
    if rng.chance(0.2) {
        outputs.push("lib");
    }
    outputs.push("out");
    if rng.chance(0.1) {
        outputs.push("bin");
    }
    if rng.chance(0.3) {
        outputs.push("dev");
    }
    if rng.chance(0.25) {
        outputs.push("man");
    }
    let want = (5 + rng.below(6)).min(existing);
    let mut deps = Vec::with_capacity(want);
    while deps.len() < want {
        // Skewed toward low indices: the base libraries everything uses.
        let r = rng.below(existing);
        let d = if rng.chance(0.4) {
            r % existing.min(40)
        } else {
            r
        };
        if !deps.contains(&d) {
            deps.push(d);
        }
    }
    Pkg {
        pname,
        version: version(rng),
        outputs,
        deps,
        self_ref: rng.chance(0.3),
        size: 10_000 + rng.next() % 40_000_000,
        has_deriver: !rng.chance(0.01),
    }
}

/// One generation of the system: packages (some removed), which are in `sw`,
/// and the hashes of every output.
struct Generation {
    pkgs: Vec<Option<Pkg>>,
    hashes: Vec<Vec<String>>,
    drv_hashes: Vec<String>,
    selected: Vec<bool>,
    /// Hashes of the glue: toplevel, system-path, etc, system-units, units...
    glue_hashes: Vec<String>,
    units: usize,
}

struct Pair {
    old_text: String,
    new_text: String,
    old_root: StorePath,
    new_root: StorePath,
    /// Derivation names of changed packages, for a synthetic structural diff.
    bumped: Vec<String>,
    rebuilt: Vec<String>,
    /// `--expect`
    expect: Vec<String>,
}

fn glue_names(units: usize) -> Vec<String> {
    let mut v: Vec<String> = [
        "nixos-system-web1-24.05.20240612.abc1234",
        "system-path",
        "etc",
        "system-units",
        "user-units",
        "initrd-linux-6.6.32",
        "linux-6.6.32",
        "linux-6.6.32-modules",
        "firmware",
        "etc-os-release",
        "etc-hosts",
        "etc-fstab",
        "boot.json",
        "activate",
        "dbus-1",
        "X-Restart-Triggers-sshd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend((0..units).map(|i| format!("unit-svc{i}.service")));
    v
}

fn store(hash: &str, name: &str) -> String {
    format!("/nix/store/{hash}-{name}")
}

/// The `nix-store --dump-db` text of a generation, dependencies first.
fn dump(g: &Generation, rng: &mut Rng) -> (String, String) {
    let path = |i: usize, o: usize| -> String {
        let p = g.pkgs[i].as_ref().expect("live package");
        store(&g.hashes[i][o], &p.name(p.outputs[o]))
    };
    let mut text = String::new();
    let mut emit = |text: &mut String, p: &str, size: u64, deriver: &str, mut refs: Vec<String>| {
        refs.sort();
        refs.dedup();
        let _ = write!(
            text,
            "{p}\nsha256:{}\n{size}\n{deriver}\n{}\n",
            base32(rng, 52),
            refs.len()
        );
        for r in refs {
            text.push_str(&r);
            text.push('\n');
        }
    };
    for (i, p) in g.pkgs.iter().enumerate() {
        let Some(p) = p else { continue };
        let deriver = if p.has_deriver {
            store(&g.drv_hashes[i], &format!("{}.drv", p.name("out")))
        } else {
            String::new()
        };
        let live_deps: Vec<usize> = p
            .deps
            .iter()
            .copied()
            .filter(|d| g.pkgs[*d].is_some())
            .collect();
        let lib = p.link_output();
        for (o, out) in p.outputs.iter().enumerate() {
            let me = path(i, o);
            let mut refs = Vec::new();
            match *out {
                "man" => {}
                "dev" => {
                    refs.push(path(i, lib));
                    for &d in live_deps.iter().take(3) {
                        let dp = g.pkgs[d].as_ref().unwrap();
                        let o = dp.outputs.iter().position(|x| *x == "dev").unwrap_or(0);
                        refs.push(path(d, o));
                    }
                }
                _ => {
                    if *out != "lib" && o != lib {
                        refs.push(path(i, lib));
                    }
                    for &d in &live_deps {
                        refs.push(path(d, g.pkgs[d].as_ref().unwrap().link_output()));
                    }
                    if p.self_ref {
                        refs.push(me.clone());
                    }
                }
            }
            let size = if *out == "out" {
                p.size
            } else {
                p.size / 4 + 1
            };
            emit(&mut text, &me, size, &deriver, refs);
        }
    }
    // Glue: units -> packages; system-units -> units; etc -> system-units, etc files;
    // system-path -> selected packages; toplevel -> everything glue.
    let names = glue_names(g.units);
    let glue = |k: usize| store(&g.glue_hashes[k], &names[k]);
    let live: Vec<usize> = (0..g.pkgs.len()).filter(|i| g.pkgs[*i].is_some()).collect();
    for u in 0..g.units {
        let k = 16 + u;
        let target = live[(u * 7919) % live.len()];
        emit(
            &mut text,
            &glue(k),
            1_200,
            "",
            vec![path(target, 0), path(live[6 % live.len()], 0)],
        );
    }
    for k in [9, 10, 11, 12, 15, 8, 7, 6] {
        let refs = if k == 7 { vec![glue(6)] } else { vec![] };
        emit(&mut text, &glue(k), 4_000 + k as u64, "", refs);
    }
    emit(&mut text, &glue(5), 12_000_000, "", vec![glue(7), glue(8)]);
    emit(&mut text, &glue(4), 2_000, "", vec![]);
    emit(
        &mut text,
        &glue(3),
        9_000,
        "",
        (16..16 + g.units).map(glue).collect(),
    );
    emit(&mut text, &glue(14), 3_000, "", vec![]);
    emit(
        &mut text,
        &glue(2),
        40_000,
        "",
        vec![glue(3), glue(4), glue(9), glue(10), glue(11), glue(14)],
    );
    let sw: Vec<String> = live
        .iter()
        .filter(|i| g.selected[**i])
        .flat_map(|&i| {
            let p = g.pkgs[i].as_ref().unwrap();
            (0..p.outputs.len())
                .filter(|o| p.outputs[*o] != "dev")
                .map(move |o| (i, o))
        })
        .map(|(i, o)| path(i, o))
        .collect();
    emit(&mut text, &glue(1), 100_000, "", sw);
    let root = glue(0);
    emit(
        &mut text,
        &root,
        30_000,
        "",
        vec![
            glue(1),
            glue(2),
            glue(5),
            glue(6),
            glue(12),
            glue(13),
            glue(15),
        ],
    );
    (text, root)
}

fn generate(paths: usize, seed: u64) -> Pair {
    let mut rng = Rng(seed);
    let units = (paths / 60).max(10);
    let glue = 16 + units;
    let mut used = HashSet::new();
    let mut pkgs: Vec<Option<Pkg>> = Vec::new();
    let mut count = glue;
    while count < paths {
        let p = new_pkg(&mut rng, pkgs.len(), pkgs.len(), &mut used);
        count += p.outputs.len();
        pkgs.push(Some(p));
    }
    let n = pkgs.len();
    let hashes: Vec<Vec<String>> = pkgs
        .iter()
        .map(|p| {
            let p = p.as_ref().unwrap();
            (0..p.outputs.len()).map(|_| base32(&mut rng, 32)).collect()
        })
        .collect();
    let drv_hashes: Vec<String> = (0..n).map(|_| base32(&mut rng, 32)).collect();
    // Most leaf-ish packages are in the system's `sw`.
    let selected: Vec<bool> = (0..n).map(|i| i >= n / 5 && rng.chance(0.7)).collect();
    let glue_hashes: Vec<String> = (0..glue).map(|_| base32(&mut rng, 32)).collect();
    let old = Generation {
        pkgs,
        hashes,
        drv_hashes,
        selected,
        glue_hashes,
        units,
    };

    // The new generation: 2% bumps, 1% rebuilds, 0.5% removed, 0.5% added.
    let mut pkgs = old.pkgs.clone();
    let mut hashes = old.hashes.clone();
    let mut drv_hashes = old.drv_hashes.clone();
    let mut selected = old.selected.clone();
    let (mut bumped, mut rebuilt) = (Vec::new(), Vec::new());
    for i in REAL.len().min(n)..n {
        let r = rng.next() % 1000;
        if r < 20 {
            let p = pkgs[i].as_mut().unwrap();
            p.version = bump(&p.version);
            bumped.push(p.name("out"));
        } else if r < 30 {
            rebuilt.push(pkgs[i].as_ref().unwrap().name("out"));
        } else if r < 35 && i >= n / 2 {
            pkgs[i] = None;
            continue;
        } else {
            continue;
        }
        for h in hashes[i].iter_mut() {
            *h = base32(&mut rng, 32);
        }
        drv_hashes[i] = base32(&mut rng, 32);
    }
    // Two well-known ones too, so `--expect` has something to name.
    for i in [19, 21] {
        if i < n {
            let p = pkgs[i].as_mut().unwrap();
            p.version = bump(&p.version);
            bumped.push(p.name("out"));
            for h in hashes[i].iter_mut() {
                *h = base32(&mut rng, 32);
            }
            drv_hashes[i] = base32(&mut rng, 32);
        }
    }
    for _ in 0..n / 200 {
        let p = new_pkg(&mut rng, usize::MAX, n, &mut used);
        hashes.push((0..p.outputs.len()).map(|_| base32(&mut rng, 32)).collect());
        drv_hashes.push(base32(&mut rng, 32));
        selected.push(true);
        pkgs.push(Some(p));
    }
    let mut glue_hashes = old.glue_hashes.clone();
    for k in [0, 1, 2, 3] {
        glue_hashes[k] = base32(&mut rng, 32);
    }
    let new = Generation {
        pkgs,
        hashes,
        drv_hashes,
        selected,
        glue_hashes,
        units,
    };
    let (old_text, old_root) = dump(&old, &mut rng);
    let (new_text, new_root) = dump(&new, &mut rng);
    Pair {
        old_text,
        new_text,
        old_root: StorePath::parse(&old_root).unwrap(),
        new_root: StorePath::parse(&new_root).unwrap(),
        bumped,
        rebuilt,
        expect: vec!["nginx".into(), "perl".into()],
    }
}

/// What the structural walk would have found: the bumped packages with a
/// local cause, the rebuilt ones only through a dependency.
fn synthetic_structural(pair: &Pair) -> Structural {
    let drv = |name: &str| format!("/nix/store/{}-{name}.drv", "0".repeat(32));
    let mut inner = Vec::new();
    for n in &pair.bumped {
        inner.push(Cause::Input {
            name: n.clone(),
            old: drv(n),
            new: drv(n),
            causes: vec![Cause::Env {
                key: "version".into(),
                old: None,
                new: Some(n.clone()),
            }],
        });
    }
    for n in &pair.rebuilt {
        inner.push(Cause::Input {
            name: n.clone(),
            old: drv(n),
            new: drv(n),
            causes: vec![Cause::Input {
                name: "glibc-2.39-52".into(),
                old: drv("glibc-2.39-52"),
                new: drv("glibc-2.39-52"),
                causes: vec![],
            }],
        });
    }
    Structural::Explained {
        old_drv: StorePath::parse(&drv("nixos-system-web1-24.05")).unwrap(),
        new_drv: StorePath::parse(&drv("nixos-system-web1-24.05")).unwrap(),
        causes: vec![Cause::Input {
            name: "system-path".into(),
            old: drv("system-path"),
            new: drv("system-path"),
            causes: inner,
        }],
    }
}

// ---------------------------------------------------------------- the code path

/// `closure::closure` without the SSH round trip.
fn closure_from_text(text: &str, root: &StorePath) -> Vec<PathInfo> {
    let infos = closure::parse_dump_db(text).unwrap();
    assert!(infos.iter().any(|p| p.path == *root));
    closure::topo_sort(infos).unwrap()
}

/// `diff::diff_host` from closures in memory, the structural diff given.
fn diff_metadata(
    old: &[PathInfo],
    cur: &StorePath,
    new: &[PathInfo],
    candidate: &StorePath,
    structural: &Structural,
    expect: &[String],
) -> HostDiff {
    let _deriver = old
        .iter()
        .find(|p| p.path == *cur)
        .and_then(|p| p.deriver.clone());
    let packages: PackageDiff = packages::package_diff(old, cur, new, candidate);
    let drift = drift::drift(&packages, structural, expect);
    HostDiff {
        current: Some(cur.clone()),
        candidate: candidate.clone(),
        packages: Some(packages),
        structural: structural.clone(),
        drift,
        flake_inputs: None,
        flake_inputs_unknown: None,
        unvalidated: false,
        rolled_back: None,
        candidate_closure: None,
    }
}

// ---------------------------------------------------------------- timing

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench<T>(filter: &[String], label: &str, mut f: impl FnMut() -> T) {
    if !filter.is_empty() && !filter.iter().any(|w| label.contains(w.as_str())) {
        return;
    }
    black_box(f()); // warm-up
    let budget = Duration::from_millis(1000);
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 10 || (start.elapsed() < budget && times.len() < 1000) {
        let t = Instant::now();
        black_box(f());
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "  {label:<44} {:>9.3} {:>9.3} {:>9.3}  ({} runs)",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len()
    );
}

/// FNV-1a of the diff as JSON: a change to the diff code that keeps the
/// digest keeps the result.
fn digest(d: &HostDiff) -> u64 {
    serde_json::to_string(d)
        .unwrap()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
}

fn main() {
    // `cargo bench --bench diff -- [SIZE]... [CASE]...`: numbers pick the
    // sizes, other words the cases whose label contains them (e.g. `(b)`).
    // Cargo itself passes `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let filter: Vec<String> = args
        .iter()
        .filter(|a| a.parse::<usize>().is_err())
        .cloned()
        .collect();
    let sizes = if sizes.is_empty() {
        vec![3_000, 30_000]
    } else {
        sizes
    };
    for paths in sizes {
        let t = Instant::now();
        let pair = generate(paths, 0x006e_6978_6761_7465 ^ paths as u64);
        let gen_ms = ms(t.elapsed());
        let old = closure_from_text(&pair.old_text, &pair.old_root);
        let new = closure_from_text(&pair.new_text, &pair.new_root);
        let structural = synthetic_structural(&pair);
        let d = diff_metadata(
            &old,
            &pair.old_root,
            &new,
            &pair.new_root,
            &structural,
            &pair.expect,
        );
        let p = d.packages.as_ref().unwrap();
        println!(
            "\n{paths} paths: old {} / new {} paths, dump-db {:.1} / {:.1} MiB; {} changes, {} drift, +{} -{} paths; generated in {gen_ms:.0} ms; result digest {:016x}",
            old.len(),
            new.len(),
            pair.old_text.len() as f64 / 1048576.0,
            pair.new_text.len() as f64 / 1048576.0,
            p.changes.len(),
            d.drift.len(),
            p.size.paths_added,
            p.size.paths_removed,
            digest(&d),
        );
        println!(
            "  {:<44} {:>9} {:>9} {:>9}",
            "case (ms)", "min", "median", "max"
        );
        bench(&filter, "(a) parse dump-db (one closure)", || {
            closure::parse_dump_db(&pair.old_text).unwrap()
        });
        bench(&filter, "(a') parse + topo_sort (one closure)", || {
            closure_from_text(&pair.old_text, &pair.old_root)
        });
        bench(&filter, "(b) package_diff", || {
            packages::package_diff(&old, &pair.old_root, &new, &pair.new_root)
        });
        bench(&filter, "(c) metadata diff, closures in memory", || {
            diff_metadata(
                &old,
                &pair.old_root,
                &new,
                &pair.new_root,
                &structural,
                &pair.expect,
            )
        });
        bench(&filter, "(c') metadata diff from dump-db text (x2)", || {
            let old = closure_from_text(&pair.old_text, &pair.old_root);
            let new = closure_from_text(&pair.new_text, &pair.new_root);
            diff_metadata(
                &old,
                &pair.old_root,
                &new,
                &pair.new_root,
                &structural,
                &pair.expect,
            )
        });
        bench(&filter, "(d) render (text lines)", || d.render());
        bench(&filter, "(d') render (JSON event)", || {
            serde_json::to_string(&d).unwrap()
        });
    }
}
