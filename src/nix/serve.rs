//! The legacy serve protocol (`nix-store --serve`), as far as nixgate speaks
//! it: the greeting, `DumpStorePath` (the builder sends one path's NAR) and
//! `AddToStoreNar` (a host adds one path, checking the NAR's size and SHA-256
//! against what it is told, as `nix-copy-closure` has it do). Every Nix
//! since 2.3 and every Lix speaks protocol 2.5; the two commands are older.
//!
//! Words are little-endian `u64`s; strings are a length, the bytes and zero
//! padding to 8 ([`super::nar::wire_string`]).

use super::closure::PathInfo;
use super::nar::wire_string;

pub const MAGIC_CLIENT: u64 = 0x390c_9deb;
pub const MAGIC_SERVER: u64 = 0x5452_eecb;
/// The version nixgate announces: 2.5.
pub const VERSION: u64 = 0x205;
const CMD_DUMP_STORE_PATH: u64 = 3;
const CMD_ADD_TO_STORE_NAR: u64 = 9;

fn word(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// What a client sends first.
pub fn greeting() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    word(&mut out, MAGIC_CLIENT);
    word(&mut out, VERSION);
    out
}

/// Check a server's greeting (its magic word, then its version); returns
/// the version.
pub fn check_greeting(magic: u64, version: u64, who: &str) -> anyhow::Result<u64> {
    anyhow::ensure!(
        magic == MAGIC_SERVER,
        "nix-store --serve on {who} answered {magic:#x}: not the serve protocol \
         (does a login script print to stdout?)"
    );
    anyhow::ensure!(
        version >> 8 == 2 && version & 0xff >= 5,
        "nix-store --serve on {who} speaks protocol {}.{}; nixgate needs 2.5 or later (Nix 2.3+, Lix)",
        version >> 8,
        version & 0xff
    );
    Ok(version)
}

/// Ask for the NAR of `path`.
pub fn dump_store_path(out: &mut Vec<u8>, path: &PathInfo) {
    word(out, CMD_DUMP_STORE_PATH);
    out.extend_from_slice(&wire_string(path.path.as_str().as_bytes()));
}

/// What precedes a path's NAR when adding it to a host's store: its
/// registration (the host checks the NAR against `nar_size` and `nar_hash`).
pub fn add_to_store_nar(p: &PathInfo) -> anyhow::Result<Vec<u8>> {
    let hash = p.nar_hash.ok_or_else(|| {
        anyhow::anyhow!(
            "the builder's database gives no SHA-256 NAR hash for {}",
            p.path
        )
    })?;
    anyhow::ensure!(
        p.nar_size > 0,
        "the builder's database gives no NAR size for {} (registered by a very old Nix?)",
        p.path
    );
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = Vec::with_capacity(256 + 64 * p.references.len());
    word(&mut out, CMD_ADD_TO_STORE_NAR);
    out.extend_from_slice(&wire_string(p.path.as_str().as_bytes()));
    let deriver = p.deriver.as_ref().map_or("", |d| d.as_str());
    out.extend_from_slice(&wire_string(deriver.as_bytes()));
    out.extend_from_slice(&wire_string(format!("sha256:{hex}").as_bytes()));
    word(&mut out, p.references.len() as u64);
    for r in &p.references {
        out.extend_from_slice(&wire_string(r.as_str().as_bytes()));
    }
    word(&mut out, 0); // registration time: now
    word(&mut out, p.nar_size);
    word(&mut out, 0); // not ultimately trusted
    word(&mut out, 0); // no signatures
    out.extend_from_slice(&wire_string(b"")); // not content-addressed
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::StorePath;

    fn sp(s: &str) -> StorePath {
        StorePath::parse(s).unwrap()
    }

    #[test]
    fn add_to_store_nar_fields_in_order() {
        let p = PathInfo {
            path: sp("/nix/store/05d8ydqjy1d7zdkb5qrllv22k6m2f9dn-filler-299-1.0"),
            nar_size: 65984,
            nar_hash: Some([0xab; 32]),
            references: vec![sp("/nix/store/07yxrasyi0r0k2sy9086b99yj41vw4x1-dep")],
            deriver: None,
        };
        let b = add_to_store_nar(&p).unwrap();
        let word_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        assert_eq!(word_at(0), 9);
        let path = p.path.as_str().as_bytes();
        assert_eq!(word_at(8), path.len() as u64);
        assert_eq!(&b[16..16 + path.len()], path);
        let mut at = 16 + path.len().div_ceil(8) * 8;
        assert_eq!(word_at(at), 0, "empty deriver");
        at += 8;
        assert_eq!(word_at(at), 71, "sha256: and 64 hex digits");
        assert_eq!(&b[at + 8..at + 8 + 9], b"sha256:ab");
        at += 8 + 72;
        assert_eq!(word_at(at), 1, "one reference");
        // The tail: registration time, size, ultimate, no sigs, empty ca.
        let n = b.len();
        assert_eq!(u64::from_le_bytes(b[n - 40..n - 32].try_into().unwrap()), 0);
        assert_eq!(
            u64::from_le_bytes(b[n - 32..n - 24].try_into().unwrap()),
            65984
        );
        assert_eq!(&b[n - 24..], &[0u8; 24]);

        let unhashed = PathInfo {
            nar_hash: None,
            ..p.clone()
        };
        assert!(add_to_store_nar(&unhashed).is_err());
        let sizeless = PathInfo { nar_size: 0, ..p };
        assert!(add_to_store_nar(&sizeless).is_err());
    }

    #[test]
    fn greeting_is_checked() {
        assert_eq!(check_greeting(MAGIC_SERVER, 0x207, "b").unwrap(), 0x207);
        assert!(check_greeting(0x1234, 0x207, "b").is_err());
        assert!(
            check_greeting(MAGIC_SERVER, 0x204, "b")
                .unwrap_err()
                .to_string()
                .contains("2.5")
        );
    }
}
