//! Package names and versions from store path names, and Nix's version order.

use std::cmp::Ordering;

/// Output names that, at the end of a store path name, belong to the package
/// name rather than the version (`openssl-3.0.13-dev` is `openssl-dev` 3.0.13).
pub const OUTPUTS: &[&str] = &[
    "bin", "dev", "doc", "info", "lib", "man", "out", "debug", "static", "devdoc", "sbin",
];

/// Split a store path name into package name and version: the version starts
/// at the first dash followed by a digit; a trailing output name moves to the
/// package name.
pub fn split_name(name: &str) -> (String, Option<String>) {
    let (pname, out, version) = split_name_parts(name);
    let pname = match out {
        Some(out) => format!("{pname}-{out}"),
        None => pname.to_owned(),
    };
    (pname, version.map(str::to_owned))
}

/// [`split_name`] without allocating: the name before the version, the
/// output moved to the package name (if any), and the version. The package
/// name is `<pname>-<out>` when there is an output, else `<pname>`.
pub fn split_name_parts(name: &str) -> (&str, Option<&str>, Option<&str>) {
    let bytes = name.as_bytes();
    let at = (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b'-' && bytes[i + 1].is_ascii_digit());
    let Some(at) = at else {
        return (name, None, None);
    };
    let (pname, version) = (&name[..at], &name[at + 1..]);
    if let Some((v, out)) = version.rsplit_once('-')
        && OUTPUTS.contains(&out)
    {
        return (pname, Some(out), Some(v));
    }
    (pname, None, Some(version))
}

/// The package name of a store path name, written into `buf` (reused, so a
/// lookup allocates nothing).
pub fn package_name<'b>(name: &str, buf: &'b mut String) -> &'b str {
    let (pname, out, _) = split_name_parts(name);
    buf.clear();
    buf.push_str(pname);
    if let Some(out) = out {
        buf.push('-');
        buf.push_str(out);
    }
    buf
}

#[derive(PartialEq, Eq)]
enum Part<'a> {
    Num(&'a str),
    Word(&'a str),
}

fn parts(v: &str) -> Vec<Part<'_>> {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' || b[i] == b'-' {
            i += 1;
            continue;
        }
        let start = i;
        let digit = b[i].is_ascii_digit();
        while i < b.len() && b[i] != b'.' && b[i] != b'-' && b[i].is_ascii_digit() == digit {
            i += 1;
        }
        let s = &v[start..i];
        out.push(if digit { Part::Num(s) } else { Part::Word(s) });
    }
    out
}

fn cmp_part(a: &Part<'_>, b: &Part<'_>) -> Ordering {
    match (a, b) {
        (Part::Num(x), Part::Num(y)) => {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        }
        // "pre" sorts before everything but itself; numbers after words
        // otherwise.
        (Part::Word("pre"), Part::Word("pre")) => Ordering::Equal,
        (Part::Word("pre"), _) => Ordering::Less,
        (_, Part::Word("pre")) => Ordering::Greater,
        (Part::Num(_), Part::Word(_)) => Ordering::Greater,
        (Part::Word(_), Part::Num(_)) => Ordering::Less,
        (Part::Word(x), Part::Word(y)) => x.cmp(y),
    }
}

/// Compare versions like `builtins.compareVersions`.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let o = match (pa.get(i), pb.get(i)) {
            (Some(x), Some(y)) => cmp_part(x, y),
            // a missing part sorts before anything but "pre"
            (Some(Part::Word("pre")), None) => Ordering::Less,
            (None, Some(Part::Word("pre"))) => Ordering::Greater,
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits() {
        let s = |n: &str| split_name(n);
        assert_eq!(s("nginx-1.25.3"), ("nginx".into(), Some("1.25.3".into())));
        assert_eq!(
            s("openssl-3.0.13-dev"),
            ("openssl-dev".into(), Some("3.0.13".into()))
        );
        assert_eq!(s("glibc-2.39-5"), ("glibc".into(), Some("2.39-5".into())));
        assert_eq!(
            s("nixos-system-web1-24.05.1"),
            ("nixos-system-web1".into(), Some("24.05.1".into()))
        );
        assert_eq!(
            s("util-linux-2.39.3-lib"),
            ("util-linux-lib".into(), Some("2.39.3".into()))
        );
        assert_eq!(s("etc"), ("etc".into(), None));
        assert_eq!(
            s("python3.11-foo-1.0"),
            ("python3.11-foo".into(), Some("1.0".into()))
        );
    }

    #[test]
    fn versions() {
        use Ordering::*;
        assert_eq!(compare_versions("1.24.0", "1.25.3"), Less);
        assert_eq!(compare_versions("1.10", "1.9"), Greater);
        assert_eq!(compare_versions("2.0pre1", "2.0"), Less);
        // Two pre-releases by their numbers (both "pre" compared Less:
        // 2.0pre2 -> 2.0pre1 was shown as an upgrade).
        assert_eq!(compare_versions("2.0pre2", "2.0pre1"), Greater);
        assert_eq!(compare_versions("2.0pre1", "2.0pre2"), Less);
        assert_eq!(compare_versions("5.2p26", "5.2p21"), Greater);
        assert_eq!(compare_versions("1.0", "1.0"), Equal);
        assert_eq!(compare_versions("1.0", "1.0.1"), Less);
        assert_eq!(compare_versions("1.0a", "1.0"), Greater);
    }
}
