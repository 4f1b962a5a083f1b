//! Host-key verification against OpenSSH `known_hosts` files.
//!
//! Parsing is `russh::keys::ssh_key::known_hosts`; matching is ours, because
//! russh's helper ignores markers and negations. Supported: plain and
//! wildcard/negated pattern lists, hashed names (`|1|salt|hash`,
//! HMAC-SHA1), `[host]:port` for ports other than 22, `@revoked` (refuse),
//! `@cert-authority` (host certificates signed by a listed CA).
//!
//! Verdicts: a host with no plain entry is [`Verdict::Unknown`]; a host with
//! plain entries none of which equals the offered key is
//! [`Verdict::Changed`], whatever the key types (stricter than OpenSSH, on
//! purpose: a deploy tool never learns a second key for a known host).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, Certificate, HashAlg, PublicKey, certificate::CertType};
use sha1::Sha1;

use super::pattern;

/// The system-wide file OpenSSH always consults (read-only for us).
pub const SYSTEM_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";

/// One parsed line, with where it came from.
#[derive(Debug, Clone)]
struct Located {
    file: PathBuf,
    line: usize,
    entry: Entry,
}

/// The entries of one or more known_hosts files.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<Located>,
}

/// A known_hosts line that decided a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub file: PathBuf,
    pub line: usize,
    pub fingerprint: String,
}

impl std::fmt::Display for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}:{})",
            self.fingerprint,
            self.file.display(),
            self.line
        )
    }
}

/// How the offered key relates to what the files say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A plain entry holds exactly this key.
    Known(Recorded),
    /// A host certificate signed by a trusted `@cert-authority`.
    KnownByCertAuthority(Recorded),
    /// No plain entry for this host at all.
    Unknown,
    /// Plain entries exist for this host, none with this key.
    Changed { expected: Vec<Recorded> },
    /// An `@revoked` line lists this key (or the certificate's CA).
    Revoked(Recorded),
    /// A host certificate from a trusted CA that does not hold up.
    CertificateInvalid { reason: String },
}

/// What a server presented during key exchange.
#[derive(Debug, Clone)]
pub enum Offered<'a> {
    Key(&'a PublicKey),
    Certificate(&'a Certificate),
}

/// What a set of known_hosts files looked like when parsed: each file's
/// size and modification time (absent files: `None`).
type Stamp = Vec<Option<(u64, std::time::SystemTime)>>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.len(), m.modified().ok()?))
        })
        .collect()
}

/// Parsed files, shared by every connection of the process.
type Cache = std::sync::Mutex<Vec<(Vec<PathBuf>, Stamp, std::sync::Arc<KnownHosts>)>>;
static SHARED: Cache = std::sync::Mutex::new(Vec::new());

impl KnownHosts {
    /// [`KnownHosts::load`], parsed once per process while the files stay
    /// the same (size and modification time): a run over 500 hosts would
    /// otherwise parse the fleet's known_hosts 500 times and keep 500 copies.
    pub fn load_shared(paths: &[PathBuf]) -> anyhow::Result<std::sync::Arc<Self>> {
        let now = stamp(paths);
        if let Ok(cache) = SHARED.lock()
            && let Some((_, _, db)) = cache.iter().find(|(p, s, _)| p == paths && *s == now)
        {
            return Ok(db.clone());
        }
        let db = std::sync::Arc::new(KnownHosts::load(paths)?);
        if let Ok(mut cache) = SHARED.lock() {
            cache.retain(|(p, _, _)| p != paths);
            cache.push((paths.to_vec(), now, db.clone()));
        }
        Ok(db)
    }

    /// Read every existing file of `paths`; missing files are empty, an
    /// unreadable one is an error, lines that do not parse are skipped.
    pub fn load(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let mut out = KnownHosts::default();
        for path in paths {
            match std::fs::read_to_string(path) {
                Ok(text) => out.add_text(path, &text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading known_hosts {}", path.display()));
                }
            }
        }
        Ok(out)
    }

    /// Parse `text` as if read from `file`.
    pub fn add_text(&mut self, file: &Path, text: &str) {
        for (idx, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.parse::<Entry>() {
                Ok(entry) => self.entries.push(Located {
                    file: file.to_path_buf(),
                    line: idx + 1,
                    entry,
                }),
                Err(e) => tracing::warn!(
                    file = %file.display(),
                    line = idx + 1,
                    error = %e,
                    "skipping known_hosts line that does not parse"
                ),
            }
        }
    }

    fn matching<'a>(&'a self, host: &'a str, port: u16) -> impl Iterator<Item = &'a Located> + 'a {
        let name = host_port(host, port);
        self.entries
            .iter()
            .filter(move |l| patterns_match(l.entry.host_patterns(), &name))
    }

    /// Key algorithms of the plain entries for this host, in file order:
    /// offered first during negotiation so a known key type is chosen.
    pub fn known_algorithms(&self, host: &str, port: u16) -> Vec<Algorithm> {
        // (see `signing_algorithms`)
        let mut out: Vec<Algorithm> = Vec::new();
        for l in self
            .matching(host, port)
            .filter(|l| l.entry.marker().is_none())
        {
            for a in signing_algorithms(l.entry.public_key().algorithm()) {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Whether any `@cert-authority` line covers this host (then host
    /// certificates are worth asking for).
    pub fn has_cert_authority(&self, host: &str, port: u16) -> bool {
        self.matching(host, port)
            .any(|l| l.entry.marker() == Some(&Marker::CertAuthority))
    }

    /// Judge the key or certificate a server offered. `now` is the Unix time
    /// used for certificate validity.
    pub fn check(&self, host: &str, port: u16, offered: &Offered<'_>, now: u64) -> Verdict {
        let entries: Vec<&Located> = self.matching(host, port).collect();
        let offered_key: &KeyData = match offered {
            Offered::Key(k) => k.key_data(),
            Offered::Certificate(c) => c.public_key(),
        };
        for l in entries
            .iter()
            .filter(|l| l.entry.marker() == Some(&Marker::Revoked))
        {
            let revoked = l.entry.public_key().key_data();
            let ca_revoked =
                matches!(offered, Offered::Certificate(c) if c.signature_key() == revoked);
            if revoked == offered_key || ca_revoked {
                return Verdict::Revoked(recorded(l));
            }
        }
        if let Offered::Certificate(cert) = offered {
            let ca = entries.iter().find(|l| {
                l.entry.marker() == Some(&Marker::CertAuthority)
                    && l.entry.public_key().key_data() == cert.signature_key()
            });
            if let Some(ca) = ca {
                return match check_host_certificate(cert, ca.entry.public_key(), host, now) {
                    Ok(()) => Verdict::KnownByCertAuthority(recorded(ca)),
                    Err(reason) => Verdict::CertificateInvalid { reason },
                };
            }
        }
        let plain: Vec<&&Located> = entries
            .iter()
            .filter(|l| l.entry.marker().is_none())
            .collect();
        if let Some(l) = plain
            .iter()
            .find(|l| l.entry.public_key().key_data() == offered_key)
        {
            return Verdict::Known(recorded(l));
        }
        if plain.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Changed {
                expected: plain.iter().map(|l| recorded(l)).collect(),
            }
        }
    }
}

fn recorded(l: &Located) -> Recorded {
    Recorded {
        file: l.file.clone(),
        line: l.line,
        fingerprint: fingerprint(l.entry.public_key().key_data()),
    }
}

fn check_host_certificate(
    cert: &Certificate,
    ca: &PublicKey,
    host: &str,
    now: u64,
) -> Result<(), String> {
    if cert.cert_type() != CertType::Host {
        return Err("it is a user certificate, not a host certificate".into());
    }
    let ca_fp = ca.fingerprint(HashAlg::Sha256);
    cert.validate_at(now, [&ca_fp])
        .map_err(|e| format!("signature or validity period check failed: {e}"))?;
    let host_lc = host.to_ascii_lowercase();
    if !cert
        .valid_principals()
        .iter()
        .any(|p| p.to_ascii_lowercase() == host_lc)
    {
        return Err(format!(
            "its principals {:?} do not include {host}",
            cert.valid_principals()
        ));
    }
    Ok(())
}

/// The host-key algorithms that present a key of `key`'s type, for a
/// client's preference list: an RSA key as rsa-sha2-512 and -256 (never
/// ssh-rsa with SHA-1), any other as itself.
pub fn signing_algorithms(key: Algorithm) -> Vec<Algorithm> {
    match key {
        Algorithm::Rsa { .. } => vec![
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ],
        other => vec![other],
    }
}

/// `SHA256:...` fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The name a known_hosts line uses for this host: `host` on port 22,
/// `[host]:port` otherwise (lowercased, as OpenSSH writes it).
pub fn host_port(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// The exact line that, added to a known_hosts file, makes this key known.
pub fn line_for(host: &str, port: u16, key: &KeyData) -> anyhow::Result<String> {
    let key = PublicKey::new(key.clone(), "")
        .to_openssh()
        .context("encoding host key")?;
    Ok(format!("{} {}", host_port(host, port), key.trim_end()))
}

/// Append `line` to `path` (creating it and its directory), as
/// `StrictHostKeyChecking=accept-new` does.
pub fn append_line(path: &Path, line: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut needs_newline = false;
    if let Ok(existing) = std::fs::read(path) {
        needs_newline = existing.last().is_some_and(|&b| b != b'\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {} to add a host key", path.display()))?;
    let text = format!("{}{line}\n", if needs_newline { "\n" } else { "" });
    f.write_all(text.as_bytes())
        .with_context(|| format!("appending to {}", path.display()))
}

fn patterns_match(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::Patterns(list) => {
            pattern::list_matches(list.iter().map(String::as_str), name)
        }
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(salt) else {
                return false;
            };
            mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok()
        }
    }
}

#[cfg(test)]
#[path = "known_hosts_tests.rs"]
mod tests;
