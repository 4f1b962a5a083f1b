//! Establishing one authenticated connection to one hop: TCP (or a
//! `direct-tcpip` channel through a jump host), SSH handshake with host-key
//! verification, then authentication — all under `connect_timeout`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::client::{self, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, EcdsaCurve, HashAlg};
use russh::{Disconnect, Preferred};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout_at};

use super::auth::{AuthMethod, authenticate};
use super::error::{ConnectError, ConnectStage};
use super::known_hosts::{self, KnownHosts, Offered, Verdict, fingerprint, line_for};
use super::target::{HostKeyPolicy, SshTarget};

/// russh's default ciphers with AES-256-GCM first: with AES-NI (ring's
/// assembly) it moves ~110 MB/s through `cat` on loopback against ~85 for
/// chacha20-poly1305, which matters for closure copies.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Unanswered keepalives after which the connection counts as dead.
const KEEPALIVE_MAX: usize = 3;

/// Host keys seen earlier in this run, by `[host]:port`: a reconnect must
/// meet the same key.
pub(crate) type Pins = Arc<Mutex<HashMap<String, KeyData>>>;

/// How the server's host key was accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostKeyStatus {
    /// Listed in a known_hosts file.
    Known { file: PathBuf, line: usize },
    /// A host certificate signed by an `@cert-authority` key.
    CertAuthority { file: PathBuf, line: usize },
    /// Unknown, learned by appending to this file (accept-new policy).
    LearnedNew { file: PathBuf },
}

/// Facts about an established connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectInfo {
    pub target: String,
    pub host: String,
    pub addr: String,
    pub user: String,
    pub auth: AuthMethod,
    pub host_key: HostKeyStatus,
    /// `SHA256:...` of the server's host key.
    pub fingerprint: String,
    /// The jump host this connection goes through.
    pub via: Option<Box<ConnectInfo>>,
}

/// One live, authenticated connection (and the jump connection under it).
pub(crate) struct Conn {
    pub handle: Handle<Client>,
    pub info: ConnectInfo,
    _jump: Option<Box<Conn>>,
}

impl Conn {
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed() || self._jump.as_ref().is_some_and(|j| j.is_closed())
    }

    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
        if let Some(j) = &self._jump {
            Box::pin(j.disconnect()).await;
        }
    }
}

/// Connect and authenticate to `target` (through its jump hosts).
pub(crate) async fn connect(target: &SshTarget, pins: &Pins) -> Result<Conn, ConnectError> {
    let jump = match &target.proxy_jump {
        Some(j) => Some(Box::new(Box::pin(connect(j, pins)).await.map_err(|e| {
            ConnectError::Jump {
                target: target.name.clone(),
                source: Box::new(e),
            }
        })?)),
        None => None,
    };
    let deadline = Instant::now() + target.connect_timeout;
    let host = target.host.clone();
    let port = target.port();
    let mut addr = format!("{host}:{port}");
    let timeout = |addr: &str, stage| ConnectError::Timeout {
        target: target.name.clone(),
        addr: addr.to_owned(),
        stage,
        timeout: target.connect_timeout,
    };

    let files = target.known_hosts_files();
    let db = KnownHosts::load(&files).map_err(|source| ConnectError::KnownHosts {
        target: target.name.clone(),
        source,
    })?;
    let config = Arc::new(client_config(&db, &host, port, target.keepalive_interval));
    let verdict = Arc::new(Mutex::new(None));
    let client = Client {
        check: Arc::new(HostCheck {
            target: target.name.clone(),
            host: host.clone(),
            port,
            addr: addr.clone(),
            db,
            learn_to: match target.host_key_policy {
                HostKeyPolicy::AcceptNew => files.first().cloned(),
                HostKeyPolicy::Strict => None,
            },
            first_file: files.first().cloned().unwrap_or_default(),
            pins: pins.clone(),
            accepted: Mutex::new(None),
        }),
        verdict: verdict.clone(),
    };

    let handshake = match &jump {
        Some(j) => {
            addr = format!("{addr} via {}", j.info.host);
            let ch = timeout_at(
                deadline,
                j.handle
                    .channel_open_direct_tcpip(host.clone(), u32::from(port), "127.0.0.1", 0),
            )
            .await
            .map_err(|_| timeout(&addr, ConnectStage::Tcp))?
            .map_err(|e| ConnectError::Unreachable {
                target: target.name.clone(),
                addr: addr.clone(),
                source: std::io::Error::other(format!("jump host refused to forward: {e}")),
            })?;
            timeout_at(deadline, handshake(config, ch.into_stream(), client)).await
        }
        None => {
            let tcp = timeout_at(
                deadline,
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| timeout(&addr, ConnectStage::Tcp))?
            .map_err(|source| ConnectError::Unreachable {
                target: target.name.clone(),
                addr: addr.clone(),
                source,
            })?;
            if let Ok(peer) = tcp.peer_addr() {
                addr = peer.to_string();
            }
            let _ = tcp.set_nodelay(true);
            timeout_at(deadline, handshake(config, tcp, client)).await
        }
    };
    let outcome = verdict.lock().ok().and_then(|mut v| v.take());
    let mut handle = match handshake {
        Err(_) => return Err(timeout(&addr, ConnectStage::Handshake)),
        Ok(Ok(h)) => h,
        Ok(Err(source)) => {
            return Err(match outcome {
                Some(Err(rejection)) => rejection,
                _ => ConnectError::Handshake {
                    target: target.name.clone(),
                    addr,
                    source,
                },
            });
        }
    };
    let (host_key, fp) = match outcome {
        Some(Ok(accepted)) => accepted,
        Some(Err(rejection)) => return Err(rejection),
        None => {
            return Err(ConnectError::Handshake {
                target: target.name.clone(),
                addr,
                source: russh::Error::UnknownKey,
            });
        }
    };
    let auth = match timeout_at(deadline, authenticate(&mut handle, target)).await {
        Err(_) => return Err(timeout(&addr, ConnectStage::Auth)),
        Ok(r) => r?,
    };
    Ok(Conn {
        handle,
        info: ConnectInfo {
            target: target.name.clone(),
            host,
            addr,
            user: target.user(),
            auth,
            host_key,
            fingerprint: fp,
            via: jump.as_ref().map(|j| Box::new(j.info.clone())),
        },
        _jump: jump,
    })
}

async fn handshake<R>(
    config: Arc<client::Config>,
    stream: R,
    client: Client,
) -> Result<Handle<Client>, russh::Error>
where
    R: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    client::connect_stream(config, stream, client).await
}

fn client_config(db: &KnownHosts, host: &str, port: u16, keepalive: Duration) -> client::Config {
    // Known key types first (as OpenSSH orders HostKeyAlgorithms), then
    // the defaults; never ssh-rsa with SHA-1.
    let mut keys = db.known_algorithms(host, port);
    for a in Preferred::DEFAULT.key.iter() {
        if !keys.contains(a) && *a != (Algorithm::Rsa { hash: None }) {
            keys.push(a.clone());
        }
    }
    let certs: Vec<Algorithm> = if db.has_cert_authority(host, port) {
        vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]
    } else {
        Vec::new()
    };
    client::Config {
        keepalive_interval: Some(keepalive),
        keepalive_max: KEEPALIVE_MAX,
        inactivity_timeout: None,
        nodelay: true,
        preferred: Preferred {
            key: keys.into(),
            host_key_certificates: certs.into(),
            cipher: Cow::Borrowed(CIPHERS),
            ..Preferred::DEFAULT
        },
        ..Default::default()
    }
}

type Accepted = (HostKeyStatus, String);

/// Everything the handler needs to judge the server's key.
struct HostCheck {
    target: String,
    host: String,
    port: u16,
    addr: String,
    db: KnownHosts,
    learn_to: Option<PathBuf>,
    first_file: PathBuf,
    pins: Pins,
    /// The key accepted on this connection: a rekey re-checks it without
    /// learning it twice.
    accepted: Mutex<Option<(KeyData, Accepted)>>,
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
    check: Arc<HostCheck>,
    verdict: Arc<Mutex<Option<Result<Accepted, ConnectError>>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let result = self.check.verify(key);
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
