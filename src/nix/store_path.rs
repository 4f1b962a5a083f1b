//! Nix store paths as a validated type, with the name/version split that the
//! diff and the reports use.
//!
//! Names are checked against the union of what Nix versions in use accept,
//! not against the strictest one: a path that a real store holds must parse,
//! or its whole closure cannot be read (and that host never copied). Nix 2.3
//! refused names starting with `.`; 2.4 to 2.18 accept any leading dot
//! (checked with Nix 2.8: `nix-store --add .gitconfig` gives
//! `/nix/store/<hash>-.gitconfig`, and `builtins.toFile` takes `.`, `..`,
//! `.-a`); 2.19 and 2.20 refused them again, 2.21 on refuses only `.`, `..`
//! and names starting `.-` or `..-` (NixOS/nix f1b4663). So `environment.etc`
//! sources like `./.gitconfig` put dot names in closures, and a store filled
//! by 2.8 may even hold `.`. Every version refuses an empty name, a name over
//! 211 characters and characters outside `[0-9a-zA-Z+._?=-]`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The store directory nixgate supports (the default everywhere in practice).
pub const STORE_DIR: &str = "/nix/store";

/// An absolute store path `/nix/store/<32-char hash>-<name>`. Cheap to clone
/// (shared text): closures of many hosts hold the same paths many times.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorePath(std::sync::Arc<str>);

/// A hasher for maps keyed by store paths (or their text): closures of
/// 30,000 paths are indexed several times per diff, and SipHash was a third
/// of parsing two of them. Multiply-rotate over 8-byte words (the Fx
/// scheme); not resistant to chosen keys, which is fine for paths the
/// builder and the hosts report.
#[derive(Debug, Default, Clone, Copy)]
pub struct PathHasher(u64);

impl PathHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl std::hash::Hasher for PathHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `HashMap` with [`PathHasher`].
pub type PathMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<PathHasher>>;
/// `HashSet` with [`PathHasher`].
pub type PathSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<PathHasher>>;

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a Nix store path ({why})")]
pub struct InvalidStorePath {
    pub input: String,
    pub why: &'static str,
}

const HASH_LEN: usize = 32;
/// Nix's `StorePath::MaxPathLen`, the same in every version.
const MAX_NAME_LEN: usize = 211;

fn is_nix_base32(b: u8) -> bool {
    // Nix's base32 alphabet: digits and lowercase letters minus e, o, u, t.
    matches!(b, b'0'..=b'9' | b'a'..=b'd' | b'f'..=b'n' | b'p'..=b's' | b'v'..=b'z')
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
}

impl StorePath {
    pub fn parse(s: &str) -> Result<Self, InvalidStorePath> {
        let err = |why| InvalidStorePath {
            input: s.to_owned(),
            why,
        };
        let rest = s
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| err("does not start with /nix/store/"))?;
        let bytes = rest.as_bytes();
        if bytes.len() < HASH_LEN + 2 || bytes[HASH_LEN] != b'-' {
            return Err(err("no 32-character hash followed by a dash"));
        }
        if !bytes[..HASH_LEN].iter().all(|b| is_nix_base32(*b)) {
            return Err(err("hash is not Nix base32"));
        }
        let name = &bytes[HASH_LEN + 1..];
        if !name.iter().all(|b| is_name_char(*b)) {
            return Err(err("name has characters Nix does not allow"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(err("name is longer than the 211 characters Nix allows"));
        }
        Ok(StorePath(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after `/nix/store/`: `<hash>-<name>`.
    pub fn base_name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..]
    }

    /// The 32-character hash.
    pub fn hash(&self) -> &str {
        &self.base_name()[..HASH_LEN]
    }

    /// The name after the hash, e.g. `nginx-1.25.3` or `nixos-system-web1-24.05`.
    pub fn name(&self) -> &str {
        &self.base_name()[HASH_LEN + 1..]
    }

    /// Is this a derivation (`.drv`)?
    pub fn is_derivation(&self) -> bool {
        self.0.ends_with(".drv")
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StorePath {
    type Error = InvalidStorePath;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        StorePath::parse(&s)
    }
}

impl From<StorePath> for String {
    fn from(p: StorePath) -> String {
        p.0.to_string()
    }
}

impl std::str::FromStr for StorePath {
    type Err = InvalidStorePath;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorePath::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_hasher_tells_similar_paths_apart() {
        use std::hash::BuildHasher;
        let b = std::hash::BuildHasherDefault::<PathHasher>::default();
        // Paths that differ in one character, in the hash or the name, and
        // names that differ only in length (the tail word's padding).
        let mut texts: Vec<String> = (0..20_000)
            .map(|i| {
                format!(
                    "/nix/store/{:0>32}-pkg-{i}",
                    format!("{i:x}").replace('e', "z")
                )
            })
            .collect();
        texts.push("/nix/store/00000000000000000000000000000000-a".into());
        texts.push("/nix/store/00000000000000000000000000000000-a\0".into());
        let hashes: PathSet<u64> = texts.iter().map(|t| b.hash_one(t.as_str())).collect();
        assert_eq!(hashes.len(), texts.len());
        let mut m: PathMap<StorePath, usize> = PathMap::default();
        for (i, t) in texts.iter().take(100).enumerate() {
            m.insert(StorePath::parse(t).unwrap(), i);
        }
        assert_eq!(m.get(&StorePath::parse(&texts[42]).unwrap()), Some(&42));
    }

    #[test]
    fn parses_and_splits() {
        let p =
            StorePath::parse("/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nginx-1.25.3").unwrap();
        assert_eq!(p.hash(), "0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2");
        assert_eq!(p.name(), "nginx-1.25.3");
        assert!(!p.is_derivation());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "/nix/store/",
            "/tmp/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-x",
            "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2",
            "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9au-x",
            "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-a b",
            "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-x/bin/sh",
        ] {
            assert!(StorePath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    const H: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2";

    #[test]
    fn accepts_dot_names_that_nix_stores_hold() {
        // `./.gitconfig` as an `environment.etc` source; `.` to `..-a` are what
        // Nix 2.4 to 2.18 accept (seen with 2.8's builtins.toFile).
        for name in [".bashrc", ".gitconfig", "...", ".", "..", ".-a", "..-a"] {
            let p = StorePath::parse(&format!("{H}-{name}"))
                .unwrap_or_else(|e| panic!("{name:?} refused: {e}"));
            assert_eq!(p.name(), name);
        }
        let longest = "a".repeat(MAX_NAME_LEN);
        assert!(StorePath::parse(&format!("{H}-{longest}")).is_ok());
    }

    #[test]
    fn rejects_names_no_nix_accepts() {
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for (name, why) in [
            ("", "no 32-character hash followed by a dash"),
            (
                too_long.as_str(),
                "name is longer than the 211 characters Nix allows",
            ),
            ("a b", "name has characters Nix does not allow"),
            ("a/b", "name has characters Nix does not allow"),
            ("a*", "name has characters Nix does not allow"),
            ("caf\u{e9}", "name has characters Nix does not allow"),
        ] {
            let e = StorePath::parse(&format!("{H}-{name}")).unwrap_err();
            assert_eq!(e.why, why, "{name:?}");
        }
    }
}
