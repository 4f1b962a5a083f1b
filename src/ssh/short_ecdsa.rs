//! OpenSSH P-256 keys whose private scalar is shorter than 32 bytes.
//!
//! OpenSSH writes an ECDSA private key's scalar as an `mpint`, leading zero
//! bytes stripped: one P-256 key in 256 has a 31-byte scalar (one in 65536
//! a 30-byte one). The `ssh-key` crate russh reads keys with (0.7.0-rc.11,
//! and its upstream as of 2026-12) refuses any scalar shorter than 32 bytes
//! ("length invalid"), so nixgate could not use such a key at all: found by
//! `tests/ssh_connect.rs`'s `user_certificate`, which makes a fresh key
//! each run and failed once (400 keys made by `ssh-keygen -t ecdsa` here:
//! one refused). Such a key (unencrypted; an encrypted one is the agent's)
//! is read here instead, its scalar padded to 32 bytes.

use std::path::Path;

use russh::keys::PrivateKey;
use russh::keys::ssh_encoding::{Base64Reader, Decode, Reader};
use russh::keys::ssh_key::private::{EcdsaKeypair, EcdsaPrivateKey, KeypairData};
use russh::keys::ssh_key::public::EcdsaPublicKey;

const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const MAGIC: &[u8; 15] = b"openssh-key-v1\0";

/// The key in `path` if it is an unencrypted OpenSSH P-256 key with a
/// short scalar; `None` for anything else (which `load_secret_key` judged).
pub fn load(path: &Path) -> Option<PrivateKey> {
    parse(&std::fs::read_to_string(path).ok()?)
}

fn parse(text: &str) -> Option<PrivateKey> {
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != BEGIN)
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let mut r = Base64Reader::new(body.as_bytes()).ok()?;
    let mut magic = [0u8; 15];
    r.read(&mut magic).ok()?;
    let unencrypted = magic == *MAGIC
        && String::decode(&mut r).ok()? == "none"
        && String::decode(&mut r).ok()? == "none";
    let _kdf_options = Vec::<u8>::decode(&mut r).ok()?;
    if !unencrypted || u32::decode(&mut r).ok()? != 1 {
        return None;
    }
    let _public = Vec::<u8>::decode(&mut r).ok()?;
    let private = Vec::<u8>::decode(&mut r).ok()?;
    keypair(&mut private.as_slice())
}

/// The private section: two equal check words, the key, its comment.
fn keypair(p: &mut &[u8]) -> Option<PrivateKey> {
    if u32::decode(p).ok()? != u32::decode(p).ok()? {
        return None;
    }
    if String::decode(p).ok()? != "ecdsa-sha2-nistp256" || String::decode(p).ok()? != "nistp256" {
        return None;
    }
    let point = Vec::<u8>::decode(p).ok()?;
    let scalar = Vec::<u8>::decode(p).ok()?;
    let comment = String::decode(p).ok()?;
    // Short only: a whole scalar is the crate's to read.
    if scalar.len() >= 32 || scalar.first() == Some(&0) {
        return None;
    }
    let mut bytes = [0u8; 32];
    bytes[32 - scalar.len()..].copy_from_slice(&scalar);
    let EcdsaPublicKey::NistP256(public) = EcdsaPublicKey::from_sec1_bytes(&point).ok()? else {
        return None;
    };
    let private = EcdsaPrivateKey::from(bytes);
    PrivateKey::new(
        KeypairData::Ecdsa(EcdsaKeypair::NistP256 { public, private }),
        comment,
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::PublicKey;

    fn data(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    /// The crate refuses the key; read here, it is the key of its `.pub`
    /// (whose login `tests/ssh_connect.rs` proves against a real sshd).
    #[test]
    fn a_short_scalar_is_padded_to_the_key_of_its_public_half() {
        let path = data("p256_short_scalar");
        assert!(
            russh::keys::load_secret_key(&path, None).is_err(),
            "the crate reads it now: drop this module"
        );
        let key = load(&path).expect("read here");
        let text = std::fs::read_to_string(data("p256_short_scalar.pub")).unwrap();
        let public = PublicKey::from_openssh(&text).unwrap();
        assert_eq!(key.public_key().key_data(), public.key_data());
        assert_eq!(key.comment(), public.comment());
    }

    /// Anything else is left to the crate: a whole scalar, another kind of
    /// key, not a key.
    #[test]
    fn other_keys_are_not_read_here() {
        let dir = tempfile::tempdir().unwrap();
        for kind in ["ecdsa", "ed25519"] {
            let path = dir.path().join(kind);
            let made = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(&path)
                .status();
            let Ok(made) = made else {
                eprintln!("skipped: no ssh-keygen");
                return;
            };
            assert!(made.success());
            let whole = russh::keys::load_secret_key(&path, None).is_ok();
            assert_eq!(load(&path).is_some(), !whole, "{kind}");
        }
        assert!(parse("not a key").is_none());
    }
}
