//! User authentication: agent keys first, then identity files (each with
//! its `-cert.pub` certificate when one sits next to it). RSA signs with
//! rsa-sha2-512/256 only, never SHA-1. Encrypted keys are never prompted
//! for: they are skipped and reported with the `ssh-add` line that fixes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::{AuthResult, Handle, Handler};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::ssh_key::{Certificate, HashAlg, PrivateKey, PublicKey};
use russh::keys::{
    Error as KeyError, PrivateKeyWithHashAlg, load_openssh_certificate, load_secret_key,
};

use super::error::ConnectError;
use super::known_hosts::fingerprint;
use super::target::SshTarget;

/// How the session authenticated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthMethod {
    /// A key held by the ssh-agent.
    Agent {
        fingerprint: String,
        comment: String,
    },
    /// A certificate held by the ssh-agent.
    AgentCertificate {
        fingerprint: String,
        comment: String,
    },
    /// An unencrypted identity file.
    IdentityFile {
        #[serde(serialize_with = "crate::report::json::lossy_path")]
        path: PathBuf,
    },
    /// An identity file with its `-cert.pub` user certificate.
    Certificate {
        #[serde(serialize_with = "crate::report::json::lossy_path")]
        path: PathBuf,
        #[serde(serialize_with = "crate::report::json::lossy_path")]
        certificate: PathBuf,
    },
}

impl AuthMethod {
    pub fn is_agent(&self) -> bool {
        matches!(
            self,
            AuthMethod::Agent { .. } | AuthMethod::AgentCertificate { .. }
        )
    }
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMethod::Agent {
                fingerprint,
                comment,
            } => write!(f, "agent key {fingerprint} {comment}"),
            AuthMethod::AgentCertificate {
                fingerprint,
                comment,
            } => {
                write!(f, "agent certificate {fingerprint} {comment}")
            }
            AuthMethod::IdentityFile { path } => write!(f, "identity file {}", path.display()),
            AuthMethod::Certificate { certificate, .. } => {
                write!(f, "certificate {}", certificate.display())
            }
        }
    }
}

/// Try every identity in turn until the server accepts one.
pub(crate) async fn authenticate<H>(
    handle: &mut Handle<H>,
    target: &SshTarget,
) -> Result<AuthMethod, ConnectError>
where
    H: Handler<Error = russh::Error>,
{
    let user = target.user();
    let mut tried: Vec<String> = Vec::new();
    let mut agent_keys: Vec<PublicKey> = Vec::new();
    let mut rsa_hash: Option<HashAlg> = None;

    let sock = target.agent_socket();
    if sock.is_none() && target.use_agent {
        tried.push("ssh-agent: none (SSH_AUTH_SOCK is not set)".into());
    }
    if let Some(sock) = sock {
        match AgentClient::connect_uds(&sock).await {
            Err(e) => tried.push(format!("agent at {}: unreachable ({e})", sock.display())),
            Ok(mut agent) => match agent.request_identities().await {
                Err(e) => tried.push(format!("agent at {}: {e}", sock.display())),
                Ok(ids) => {
                    for id in ids {
                        let (key, comment, is_cert) = match &id {
                            AgentIdentity::PublicKey { key, comment } => {
                                (key.clone(), comment.clone(), false)
                            }
                            AgentIdentity::Certificate {
                                certificate,
                                comment,
                            } => (
                                PublicKey::new(certificate.public_key().clone(), ""),
                                comment.clone(),
                                true,
                            ),
                        };
                        let hash = if key.algorithm().is_rsa() {
                            Some(rsa_hash_for(handle, &mut rsa_hash).await)
                        } else {
                            None
                        };
                        let fp = fingerprint(key.key_data());
                        let result = match &id {
                            AgentIdentity::PublicKey { key, .. } => {
                                handle
                                    .authenticate_publickey_with(
                                        &user,
                                        key.clone(),
                                        hash,
                                        &mut agent,
                                    )
                                    .await
                            }
                            AgentIdentity::Certificate { certificate, .. } => {
                                handle
                                    .authenticate_certificate_with(
                                        &user,
                                        certificate.clone(),
                                        hash,
                                        &mut agent,
                                    )
                                    .await
                            }
                        };
                        let label = format!(
                            "agent {} {fp} {comment}",
                            if is_cert { "certificate" } else { "key" }
                        );
                        match result {
                            Ok(AuthResult::Success) => {
                                return Ok(if is_cert {
                                    AuthMethod::AgentCertificate {
                                        fingerprint: fp,
                                        comment,
                                    }
                                } else {
                                    AuthMethod::Agent {
                                        fingerprint: fp,
                                        comment,
                                    }
                                });
                            }
                            Ok(AuthResult::Failure { .. }) => {
                                tried.push(format!("{label}: rejected"))
                            }
                            Err(e) => tried.push(format!("{label}: agent could not sign ({e})")),
                        }
                        if handle.is_closed() {
                            return Err(auth_failed(target, user, tried));
                        }
                        agent_keys.push(key);
                    }
                }
            },
        }
    }

    let mut encrypted: Option<PathBuf> = None;
    for path in target.identity_files() {
        if !path.exists() {
            tried.push(format!("{}: no such file", path.display()));
            continue;
        }
        let key = match load_secret_key(&path, None)
            .or_else(|e| super::short_ecdsa::load(&path).ok_or(e))
        {
            Ok(k) => k,
            Err(KeyError::KeyIsEncrypted) => {
                // The agent already had its chance with this key if it holds it.
                let in_agent = public_half(&path)
                    .is_some_and(|p| agent_keys.iter().any(|a| a.key_data() == p.key_data()));
                if !in_agent {
                    tried.push(format!(
                        "{}: passphrase-protected, not in the agent (skipped)",
                        path.display()
                    ));
                    encrypted.get_or_insert(path.clone());
                }
                continue;
            }
            Err(e) => {
                tried.push(format!("{}: unreadable ({e})", path.display()));
                continue;
            }
        };
        if agent_keys
            .iter()
            .any(|a| a.key_data() == key.public_key().key_data())
        {
            continue; // already offered through the agent
        }
        let key = Arc::new(key);
        let hash = if key.algorithm().is_rsa() {
            Some(rsa_hash_for(handle, &mut rsa_hash).await)
        } else {
            None
        };
        let cert_path = cert_path_for(&path);
        if cert_path.exists() {
            match load_openssh_certificate(&cert_path) {
                Ok(cert) => {
                    let res = try_certificate(handle, &user, key.clone(), cert, hash).await;
                    match res {
                        Ok(true) => {
                            return Ok(AuthMethod::Certificate {
                                path,
                                certificate: cert_path,
                            });
                        }
                        Ok(false) => tried.push(format!("{}: rejected", cert_path.display())),
                        Err(e) => {
                            return Err(ConnectError::AuthTransport {
                                target: target.name.clone(),
                                source: e,
                            });
                        }
                    }
                }
                Err(e) => tried.push(format!(
                    "{}: unreadable certificate ({e})",
                    cert_path.display()
                )),
            }
        }
        let res = handle
            .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(key.clone(), hash))
            .await;
        match res {
            Ok(AuthResult::Success) => return Ok(AuthMethod::IdentityFile { path }),
            Ok(AuthResult::Failure { .. }) => tried.push(format!(
                "{} ({} {}): rejected",
                path.display(),
                key.algorithm(),
                fingerprint(key.public_key().key_data())
            )),
            Err(e) => {
                return Err(ConnectError::AuthTransport {
                    target: target.name.clone(),
                    source: e,
                });
            }
        }
    }

    match encrypted {
        Some(path) => Err(ConnectError::EncryptedKey {
            target: target.name.clone(),
            path,
            tried,
        }),
        None => Err(auth_failed(target, user, tried)),
    }
}

fn auth_failed(target: &SshTarget, user: String, tried: Vec<String>) -> ConnectError {
    ConnectError::AuthFailed {
        target: target.name.clone(),
        user,
        tried,
    }
}

/// `id_x` -> `id_x-cert.pub`, as OpenSSH looks for it.
fn cert_path_for(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-cert.pub");
    PathBuf::from(s)
}

/// The public half of an identity file: `PATH.pub` when present.
fn public_half(path: &Path) -> Option<PublicKey> {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    russh::keys::load_public_key(PathBuf::from(s)).ok()
}

/// The RSA signature hash to use: the best SHA-2 the server announces,
/// SHA-256 when it announces nothing (never SHA-1).
async fn rsa_hash_for<H: Handler>(handle: &Handle<H>, cache: &mut Option<HashAlg>) -> HashAlg {
    if let Some(h) = cache {
        return *h;
    }
    let h = match handle.best_supported_rsa_hash().await {
        Ok(Some(Some(HashAlg::Sha512))) => HashAlg::Sha512,
        _ => HashAlg::Sha256,
    };
    *cache = Some(h);
    h
}

async fn try_certificate<H: Handler>(
    handle: &mut Handle<H>,
    user: &str,
    key: Arc<PrivateKey>,
    cert: Certificate,
    hash: Option<HashAlg>,
) -> Result<bool, russh::Error> {
    if hash.is_none() {
        let res = handle.authenticate_openssh_cert(user, key, cert).await?;
        return Ok(res.success());
    }
    // RSA certificates: sign with the chosen SHA-2 hash ourselves, so the
    // request names rsa-sha2-*-cert-v01 rather than the SHA-1 ssh-rsa-cert.
    let mut signer = FileSigner { key };
    match handle
        .authenticate_certificate_with(user, cert, hash, &mut signer)
        .await
    {
        Ok(res) => Ok(res.success()),
        Err(SignError::Send(_)) => Err(russh::Error::SendError),
        Err(SignError::Sign(_)) => Ok(false),
    }
}

/// Signs authentication requests with a private key loaded from a file.
struct FileSigner {
    key: Arc<PrivateKey>,
}

#[derive(Debug, thiserror::Error)]
enum SignError {
    #[error(transparent)]
    Send(#[from] russh::SendError),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl russh::Signer for FileSigner {
    type Error = SignError;

    async fn auth_sign(
        &mut self,
        _key: &AgentIdentity,
        hash_alg: Option<HashAlg>,
        mut to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, SignError> {
        use russh::keys::signature::Signer;
        use russh::keys::ssh_encoding::Encode;
        use russh::keys::ssh_key::private::KeypairData;
        let sig: russh::keys::ssh_key::Signature = match self.key.key_data() {
            KeypairData::Rsa(pair) => (pair, hash_alg)
                .try_sign(&to_sign)
                .map_err(|e| SignError::Sign(e.to_string()))?,
            _ => self
                .key
                .try_sign(&to_sign)
                .map_err(|e| SignError::Sign(e.to_string()))?,
        };
        let blob = sig
            .encode_vec()
            .map_err(|e| SignError::Sign(e.to_string()))?;
        blob.encode(&mut to_sign)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(to_sign)
    }
}
