//! Judging the key a server presents during the handshake: known_hosts
//! verdict, `accept-new` learning, and pinning to the key seen earlier in
//! the run; plus the russh handler that asks for the judgement.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use russh::client;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::public::KeyData;

use super::error::ConnectError;
use super::known_hosts::{self, KnownHosts, Offered, Verdict, fingerprint, line_for};

/// Host keys seen earlier in this run, by `[host]:port`: a reconnect must
/// meet the same key.
pub(crate) type Pins = Arc<Mutex<HashMap<String, KeyData>>>;

/// How the server's host key was accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostKeyStatus {
    /// Listed in a known_hosts file.
    Known {
        #[serde(serialize_with = "crate::report::json::lossy_path")]
        file: PathBuf,
        line: usize,
    },
    /// A host certificate signed by an `@cert-authority` key.
    CertAuthority {
        #[serde(serialize_with = "crate::report::json::lossy_path")]
        file: PathBuf,
        line: usize,
    },
    /// Unknown, learned by appending to this file (accept-new policy).
    LearnedNew {
        #[serde(serialize_with = "crate::report::json::lossy_path")]
        file: PathBuf,
    },
    /// Not known under this name (the host's `confirm_address`), but the
    /// key the run's session to the same host verified.
    ProvenThisRun,
}

/// How the key was accepted, its fingerprint, and the key.
pub(crate) type Accepted = (HostKeyStatus, String);
pub(crate) type Verified = (Accepted, KeyData);

/// Everything the handler needs to judge the server's key.
pub(crate) struct HostCheck {
    pub(crate) target: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) addr: String,
    pub(crate) db: std::sync::Arc<KnownHosts>,
    pub(crate) learn_to: Option<PathBuf>,
    pub(crate) first_file: PathBuf,
    pub(crate) pins: Pins,
    /// The host key an earlier connection to the same host verified (the
    /// run's session): accepted here when known_hosts does not know this
    /// name. A key known_hosts says changed, or revoked, is still refused.
    pub(crate) vouched: Option<KeyData>,
    /// The key accepted on this connection: a rekey re-checks it without
    /// learning it twice.
    pub(crate) accepted: Mutex<Option<(KeyData, Accepted)>>,
}

impl HostCheck {
    // A verdict is made once per connection; the large error is its message.
    #[allow(clippy::result_large_err)]
    fn verify(&self, offered: &PublicKeyOrCertificate) -> Result<Accepted, ConnectError> {
        let (offered, key_data) = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => (Offered::Key(key), key.key_data()),
            PublicKeyOrCertificate::Certificate(c) => (Offered::Certificate(c), c.public_key()),
        };
        if let Some((key, accepted)) = self.accepted.lock().ok().and_then(|a| a.clone())
            && &key == key_data
        {
            return Ok(accepted);
        }
        let fp = fingerprint(key_data);
        let pin_name = known_hosts::host_port(&self.host, self.port);
        if let Some(pinned) = self
            .pins
            .lock()
            .ok()
            .and_then(|p| p.get(&pin_name).cloned())
            && &pinned != key_data
        {
            return Err(ConnectError::HostKeyChanged {
                target: self.target.clone(),
                host: self.host.clone(),
                addr: self.addr.clone(),
                expected: vec![format!(
                    "{} (seen earlier in this run)",
                    fingerprint(&pinned)
                )],
                offered: fp,
            });
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let status = match self.db.check(&self.host, self.port, &offered, now) {
            Verdict::Known(r) => HostKeyStatus::Known {
                file: r.file,
                line: r.line,
            },
            Verdict::KnownByCertAuthority(r) => HostKeyStatus::CertAuthority {
                file: r.file,
                line: r.line,
            },
            Verdict::Unknown if self.vouched.as_ref() == Some(key_data) => {
                HostKeyStatus::ProvenThisRun
            }
            Verdict::Unknown => {
                let line = line_for(&self.host, self.port, key_data).map_err(|source| {
                    ConnectError::KnownHosts {
                        target: self.target.clone(),
                        source,
                    }
                })?;
                match &self.learn_to {
                    Some(file) => {
                        known_hosts::append_line(file, &line).map_err(|source| {
                            ConnectError::KnownHosts {
                                target: self.target.clone(),
                                source,
                            }
                        })?;
                        tracing::warn!(target_host = %self.target, file = %file.display(), fingerprint = %fp,
                            "learned new host key (accept-new)");
                        HostKeyStatus::LearnedNew { file: file.clone() }
                    }
                    None => {
                        return Err(ConnectError::HostKeyUnknown {
                            target: self.target.clone(),
                            host: self.host.clone(),
                            addr: self.addr.clone(),
                            fingerprint: fp,
                            line_to_add: line,
                            known_hosts: self.first_file.clone(),
                        });
                    }
                }
            }
            Verdict::Changed { expected } => {
                return Err(ConnectError::HostKeyChanged {
                    target: self.target.clone(),
                    host: self.host.clone(),
                    addr: self.addr.clone(),
                    expected: expected.iter().map(ToString::to_string).collect(),
                    offered: fp,
                });
            }
            Verdict::Revoked(r) => {
                return Err(ConnectError::HostKeyRevoked {
                    target: self.target.clone(),
                    host: self.host.clone(),
                    addr: self.addr.clone(),
                    fingerprint: fp,
                    recorded: format!("{}:{}", r.file.display(), r.line),
                });
            }
            Verdict::CertificateInvalid { reason } => {
                return Err(ConnectError::HostCertificateInvalid {
                    target: self.target.clone(),
                    host: self.host.clone(),
                    addr: self.addr.clone(),
                    reason,
                });
            }
        };
        if let Ok(mut pins) = self.pins.lock() {
            pins.insert(pin_name, key_data.clone());
        }
        if let Ok(mut a) = self.accepted.lock() {
            *a = Some((key_data.clone(), (status.clone(), fp.clone())));
        }
        Ok((status, fp))
    }
}

/// russh event handler: verifies the host key, records the verdict.
pub(crate) struct Client {
    pub(crate) check: Arc<HostCheck>,
    pub(crate) verdict: Arc<Mutex<Option<Result<Verified, ConnectError>>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key_data = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data(),
            PublicKeyOrCertificate::Certificate(c) => c.public_key(),
        };
        let result = self.check.verify(key).map(|a| (a, key_data.clone()));
        let ok = result.is_ok();
        if let Ok(mut slot) = self.verdict.lock() {
            // Keep the first verdict; a rekey re-checks the same key.
            if slot.is_none() {
                *slot = Some(result);
            }
        }
        Ok(ok)
    }
}
