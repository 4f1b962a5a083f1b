//! Establishing one authenticated connection to one hop: TCP (or a
//! `direct-tcpip` channel through a jump host), SSH handshake with host-key
//! verification, then authentication — all under `connect_timeout`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, EcdsaCurve, HashAlg};
use russh::{Disconnect, Preferred};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout_at};

use super::auth::{AuthMethod, Identity, authenticate};
use super::error::{ConnectError, ConnectStage};
use super::hostkey::{Client, HostCheck, HostKeyStatus, Pins};
use super::known_hosts::KnownHosts;
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
pub const KEEPALIVE_MAX: usize = 3;

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

/// What a connection proved of its host: the key it logged in with and
/// the host key it verified. A later connection to the same host (the
/// run's reconnects, the confirm's and the soak's new ones) is judged by
/// it: a login failing without that key offered is this side's failure
/// ([`authenticate`]), and that host key is the host's at any address
/// ([`super::hostkey::HostCheck`]).
#[derive(Debug, Clone)]
pub(crate) struct Proven {
    pub identity: Identity,
    pub host_key: KeyData,
}

/// One live, authenticated connection (and the jump connection under it).
pub(crate) struct Conn {
    pub handle: Handle<Client>,
    pub info: ConnectInfo,
    /// The keys it proved (`info.auth` says how it logged in).
    pub proven: Proven,
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
/// `proven`: what an earlier connection to this host proved ([`Proven`]);
/// `None` for a host's first connection, judged by known_hosts alone.
pub(crate) async fn connect(
    target: &SshTarget,
    pins: &Pins,
    proven: Option<&Proven>,
) -> Result<Conn, ConnectError> {
    let jump = match &target.proxy_jump {
        Some(j) => Some(Box::new(Box::pin(connect(j, pins, None)).await.map_err(
            |e| ConnectError::Jump {
                target: target.name.clone(),
                source: Box::new(e),
            },
        )?)),
        None => None,
    };
    // Saturating: a timeout no inventory allows must still not panic.
    let deadline = Instant::now()
        .checked_add(target.connect_timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
    let host = target.host.clone();
    let port = target.port();
    let mut addr = target.address();
    let timeout = |addr: &str, stage| ConnectError::Timeout {
        target: target.name.clone(),
        addr: addr.to_owned(),
        stage,
        timeout: target.connect_timeout,
    };

    let files = target.known_hosts_files();
    let db = KnownHosts::load_shared(&files).map_err(|source| ConnectError::KnownHosts {
        target: target.name.clone(),
        source,
    })?;
    let vouched = proven.map(|p| p.host_key.clone());
    let config = client_config(
        &db,
        (&host, port),
        vouched.as_ref(),
        target.keepalive_interval,
    );
    let config = Arc::new(config);
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
            vouched,
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
            let found = timeout_at(deadline, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| timeout(&addr, ConnectStage::Resolve))?
                .map_err(|source| ConnectError::Resolve {
                    target: target.name.clone(),
                    host: host.clone(),
                    source,
                })?;
            let found: Vec<std::net::SocketAddr> = found.collect();
            let tcp = timeout_at(deadline, tokio::net::TcpStream::connect(&found[..]))
                .await
                .map_err(|_| timeout(&addr, ConnectStage::Tcp))?
                .map_err(|source| unreachable(target, &addr, source))?;
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
    let ((host_key, fp), key_data) = match outcome {
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
    let identity = proven.map(|p| &p.identity);
    let identity = match timeout_at(deadline, authenticate(&mut handle, target, identity)).await {
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
            auth: identity.method().clone(),
            host_key,
            fingerprint: fp,
            via: jump.as_ref().map(|j| Box::new(j.info.clone())),
        },
        proven: Proven {
            identity,
            host_key: key_data,
        },
        _jump: jump,
    })
}

/// Why the TCP connection failed: this machine out of a resource (open
/// files, ports, buffers) says nothing of the host; anything else may.
fn unreachable(target: &SshTarget, addr: &str, source: std::io::Error) -> ConnectError {
    use rustix::io::Errno;
    let local = [
        Errno::MFILE,
        Errno::NFILE,
        Errno::NOBUFS,
        Errno::ADDRNOTAVAIL,
    ];
    match Errno::from_io_error(&source) {
        Some(e) if local.contains(&e) => ConnectError::LocalResources {
            target: target.name.clone(),
            addr: addr.to_owned(),
            source,
        },
        _ => ConnectError::Unreachable {
            target: target.name.clone(),
            addr: addr.to_owned(),
            source,
        },
    }
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

fn client_config(
    db: &KnownHosts,
    (host, port): (&str, u16),
    vouched: Option<&KeyData>,
    keepalive: Duration,
) -> client::Config {
    // Known key types first (as OpenSSH orders HostKeyAlgorithms), then
    // the defaults; never ssh-rsa with SHA-1. A name known_hosts does not
    // know (a `confirm_address`) asks first for the type of the key the
    // run's session verified: the server offers its ed25519 key by
    // default, and a run that verified its RSA or ECDSA key could never
    // match it there (every such host reverted, or taken back by the soak).
    let mut keys = db.known_algorithms(host, port);
    if keys.is_empty()
        && let Some(key) = vouched
    {
        keys = super::known_hosts::signing_algorithms(key.algorithm());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A name known_hosts does not know (a `confirm_address`) asks first
    /// for the type of the key the run's session verified: an RSA host
    /// key, verified by the run, was never offered there (the server's
    /// ed25519 came first), and the confirm refused a good host.
    #[test]
    fn an_unknown_name_asks_first_for_the_vouched_keys_type() {
        let rsa = russh::keys::ssh_key::PublicKey::from_openssh("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDQoEPkKTbdBm3GaZgsaR7Zh8tmWhHPeCFn2fUblQK1Gbt53Yp7G6MG/Dm/6rl0k6D7iIibv60nShx+JvCiWy0PAFMNbe0HcAY5EWsoIte5jWBRke0S66AJMUpL4b07Qgcn+CWLHQZqUKSbVGN5K6IGpWPZyGHbGb1IJLG8mwvPeQ==").unwrap();
        let db = KnownHosts::default();
        let config = client_config(
            &db,
            ("10.0.1.11", 2222),
            Some(rsa.key_data()),
            Duration::from_secs(15),
        );
        let rsa_512 = Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        };
        assert_eq!(config.preferred.key.first(), Some(&rsa_512));
        // No vouched key: the defaults (ed25519 first).
        let config = client_config(&db, ("10.0.1.11", 2222), None, Duration::from_secs(15));
        assert_eq!(config.preferred.key.first(), Some(&Algorithm::Ed25519));
    }

    /// A name this machine cannot resolve (a resolver outage during the
    /// soak) is this side's failure: it read as the host unreachable, and
    /// every host of the wave was judged locked out.
    #[tokio::test]
    async fn a_name_not_resolved_here_is_this_sides_failure() {
        let mut target = SshTarget::new("web1", "web1.invalid");
        target.known_hosts = vec![std::path::PathBuf::from("/nonexistent/known_hosts")];
        target.connect_timeout = Duration::from_secs(5);
        let e = connect(&target, &Pins::default(), None)
            .await
            .err()
            .expect("an .invalid name never resolves");
        let resolving = matches!(
            e,
            ConnectError::Resolve { .. }
                | ConnectError::Timeout {
                    stage: ConnectStage::Resolve,
                    ..
                }
        );
        assert!(resolving && e.is_controllers_own(), "{e}");
    }

    /// This machine out of descriptors or ports is its own failure; a
    /// refused connection is the host's.
    #[test]
    fn out_of_descriptors_is_this_sides_failure() {
        use rustix::io::Errno;
        let target = SshTarget::new("web1", "10.0.0.1");
        let errno = |e: Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
        for local in [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::ADDRNOTAVAIL,
        ] {
            let e = unreachable(&target, "10.0.0.1:22", errno(local));
            assert!(e.is_controllers_own() && !e.is_lasting(), "{e}");
        }
        let e = unreachable(&target, "10.0.0.1:22", errno(Errno::CONNREFUSED));
        assert!(!e.is_controllers_own(), "{e}");
    }
}
