//! User authentication: the agent's keys that are configured identity
//! files, the identity files (each with its `-cert.pub` certificate when
//! one sits next to it), then the agent's other keys. RSA signs with
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

/// The key a connection logged in with: a later connection to the same
/// host that fails without offering it failed on this side, whatever else
/// the host rejected ([`authenticate`]).
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    key: PublicKey,
    certificate: bool,
    /// How it was offered, as the run's session reported it.
    method: AuthMethod,
}

impl Identity {
    pub(crate) fn method(&self) -> &AuthMethod {
        &self.method
    }
}

/// What one connection's attempts have tried and offered so far.
#[derive(Default)]
struct Attempts {
    tried: Vec<String>,
    /// Keys already offered (through the agent, or from a file), each
    /// with whether as a certificate: a key and its certificate are two
    /// identities (a server trusting only the CA takes the certificate
    /// after refusing the plain key).
    offered: Vec<(PublicKey, bool)>,
    /// Keys the server answered "no" to, each with whether as a certificate.
    rejected: Vec<(PublicKey, bool)>,
    /// The server closed the connection before every key was offered.
    closed: bool,
    /// The keys there were to offer (the agent's, the identity files').
    available: Vec<PublicKey>,
    rsa_hash: Option<HashAlg>,
    /// The first encrypted identity file the agent does not hold.
    encrypted: Option<PathBuf>,
}

/// The result of one pass: `Some` ends the authentication (accepted, or
/// failed for good), `None` goes on to the next pass.
type Pass = Option<Result<Identity, ConnectError>>;

/// Try identities until the server accepts one, in OpenSSH's order: the
/// agent's keys that are configured identity files (an encrypted file's
/// key signs there), the identity files, then the agent's other keys. The
/// agent's keys all first spent sshd's `MaxAuthTries` (6) before the
/// inventory's key was offered, for anyone with six keys in the agent.
///
/// `proven`: the key an earlier connection to this host logged in with
/// (the run's session). Failing without offering it is this side's doing
/// (the agent died or was emptied, `ssh-add -t` ran out, the file became
/// unreadable), whatever other key the host rejected: a default
/// `~/.ssh/id_ed25519` the fleet never authorized, rejected after the
/// agent went, read as the host locking logins out, and the soak took
/// every good host of its wave back.
pub(crate) async fn authenticate<H>(
    handle: &mut Handle<H>,
    target: &SshTarget,
    proven: Option<&Identity>,
) -> Result<Identity, ConnectError>
where
    H: Handler<Error = russh::Error>,
{
    let mut at = Attempts::default();
    let result = offer_all(handle, target, &mut at).await;
    at.judged(target, result, proven)
}

/// Every identity in turn ([`authenticate`]'s order).
async fn offer_all<H>(
    handle: &mut Handle<H>,
    target: &SshTarget,
    at: &mut Attempts,
) -> Result<Identity, ConnectError>
where
    H: Handler<Error = russh::Error>,
{
    let user = target.user();
    let files = target.identity_files();
    let wanted: Vec<PublicKey> = files.iter().filter_map(|p| public_half(p)).collect();
    let (mut agent, ids) = match open_agent(target, &mut at.tried).await {
        Some((agent, ids)) => (Some(agent), ids),
        None => (None, Vec::new()),
    };
    at.available = (wanted.iter().cloned())
        .chain(ids.iter().map(|id| id_key(id).clone()))
        .collect();
    let (mine, others): (Vec<AgentIdentity>, Vec<AgentIdentity>) = ids
        .into_iter()
        .partition(|id| wanted.iter().any(|w| w.key_data() == id_key(id).key_data()));
    if let Some(agent) = agent.as_mut()
        && let Some(end) = try_agent(handle, target, &user, agent, mine, at).await
    {
        return end;
    }
    if let Some(end) = try_files(handle, target, &user, &files, at).await {
        return end;
    }
    if let Some(agent) = agent.as_mut()
        && let Some(end) = try_agent(handle, target, &user, agent, others, at).await
    {
        return end;
    }
    match at.encrypted.take() {
        Some(path) => Err(ConnectError::EncryptedKey {
            target: target.name.clone(),
            path,
            tried: at.tried.clone(),
        }),
        None => Err(auth_failed(target, user, at.tried.clone())),
    }
}

/// The agent and its identities, when one is set and answers (else why
/// not, in `tried`).
async fn open_agent(
    target: &SshTarget,
    tried: &mut Vec<String>,
) -> Option<(AgentClient<tokio::net::UnixStream>, Vec<AgentIdentity>)> {
    let sock = target.agent_socket();
    if sock.is_none() && target.use_agent {
        tried.push("ssh-agent: none (SSH_AUTH_SOCK is not set)".into());
    }
    let sock = sock?;
    match AgentClient::connect_uds(&sock).await {
        Err(e) => {
            tried.push(format!("agent at {}: unreachable ({e})", sock.display()));
            None
        }
        Ok(mut agent) => match agent.request_identities().await {
            Err(e) => {
                tried.push(format!("agent at {}: {e}", sock.display()));
                None
            }
            Ok(ids) => Some((agent, ids)),
        },
    }
}

/// An agent identity's public key (a certificate's key).
fn id_key(id: &AgentIdentity) -> PublicKey {
    match id {
        AgentIdentity::PublicKey { key, .. } => key.clone(),
        AgentIdentity::Certificate { certificate, .. } => {
            PublicKey::new(certificate.public_key().clone(), "")
        }
    }
}

/// The server closed the connection while keys were offered: said, with
/// the likely cause (the next offer would fail as a lost connection).
fn closed_by_server<H: Handler>(handle: &Handle<H>, at: &mut Attempts) -> bool {
    if !handle.is_closed() {
        return false;
    }
    at.closed = true;
    at.tried.push(
        "the server closed the connection (too many keys offered? sshd allows MaxAuthTries, 6 by \
         default: set identity_file for the host, or remove keys from the agent)"
            .into(),
    );
    true
}

/// Offer `ids` through the agent, one by one.
async fn try_agent<H>(
    handle: &mut Handle<H>,
    target: &SshTarget,
    user: &str,
    agent: &mut AgentClient<tokio::net::UnixStream>,
    ids: Vec<AgentIdentity>,
    at: &mut Attempts,
) -> Pass
where
    H: Handler<Error = russh::Error>,
{
    for id in ids {
        let key = id_key(&id);
        let is_cert = matches!(id, AgentIdentity::Certificate { .. });
        // Offered already, from its file (a file without its `.pub`).
        if at.was_offered(&key, is_cert) {
            continue;
        }
        let comment = match &id {
            AgentIdentity::PublicKey { comment, .. }
            | AgentIdentity::Certificate { comment, .. } => comment.clone(),
        };
        let hash = if key.algorithm().is_rsa() {
            Some(rsa_hash_for(handle, &mut at.rsa_hash).await)
        } else {
            None
        };
        let fp = fingerprint(key.key_data());
        let result = match &id {
            AgentIdentity::PublicKey { key, .. } => {
                handle
                    .authenticate_publickey_with(user, key.clone(), hash, agent)
                    .await
            }
            AgentIdentity::Certificate { certificate, .. } => {
                handle
                    .authenticate_certificate_with(user, certificate.clone(), hash, agent)
                    .await
            }
        };
        let label = format!(
            "agent {} {fp} {comment}",
            if is_cert { "certificate" } else { "key" }
        );
        match result {
            Ok(AuthResult::Success) => {
                let method = if is_cert {
                    AuthMethod::AgentCertificate {
                        fingerprint: fp,
                        comment,
                    }
                } else {
                    AuthMethod::Agent {
                        fingerprint: fp,
                        comment,
                    }
                };
                return Some(Ok(Identity {
                    key,
                    certificate: is_cert,
                    method,
                }));
            }
            Ok(AuthResult::Failure { .. }) => {
                at.tried.push(format!("{label}: rejected"));
                at.rejected.push((key.clone(), is_cert));
            }
            Err(e) => match agent_failure(&label, e) {
                Ok(said) => at.tried.push(said),
                Err(source) => {
                    return Some(Err(ConnectError::AuthTransport {
                        target: target.name.clone(),
                        source,
                    }));
                }
            },
        }
        if closed_by_server(handle, at) {
            return Some(Err(auth_failed(target, user.to_owned(), at.tried.clone())));
        }
        at.offered.push((key, is_cert));
    }
    None
}

/// An agent offer that failed: the agent could not sign (said in
/// `tried`, and the next key is offered), or the session had already
/// ended (`Err`: a lost connection, as [`try_files`] says it). russh
/// answers `Send` when the session's task is gone; that read as "agent
/// could not sign", an authentication failure with nothing rejected: the
/// controller's own and lasting, so the soak kept a host that had dropped
/// the connection.
fn agent_failure(label: &str, e: russh::AgentAuthError) -> Result<String, russh::Error> {
    match e {
        russh::AgentAuthError::Send(_) => Err(russh::Error::SendError),
        russh::AgentAuthError::Key(e) => Ok(format!("{label}: agent could not sign ({e})")),
    }
}

/// Offer each identity file (with its certificate when one sits next to
/// it), but what was offered already (through the agent).
async fn try_files<H>(
    handle: &mut Handle<H>,
    target: &SshTarget,
    user: &str,
    files: &[PathBuf],
    at: &mut Attempts,
) -> Pass
where
    H: Handler<Error = russh::Error>,
{
    for path in files {
        let Some(key) = load_identity(path, at) else {
            continue;
        };
        let key = Arc::new(key);
        let hash = if key.algorithm().is_rsa() {
            Some(rsa_hash_for(handle, &mut at.rsa_hash).await)
        } else {
            None
        };
        let lost = |source| {
            Some(Err(ConnectError::AuthTransport {
                target: target.name.clone(),
                source,
            }))
        };
        let cert_path = cert_path_for(path);
        if cert_path.exists() && !at.was_offered(key.public_key(), true) {
            match load_openssh_certificate(&cert_path) {
                Ok(cert) => {
                    // Offered once it is (one that does not load is not:
                    // the agent's may still be).
                    at.offered.push((key.public_key().clone(), true));
                    match try_certificate(handle, user, key.clone(), cert, hash).await {
                        Ok(true) => {
                            return Some(Ok(Identity {
                                key: key.public_key().clone(),
                                certificate: true,
                                method: AuthMethod::Certificate {
                                    path: path.clone(),
                                    certificate: cert_path,
                                },
                            }));
                        }
                        Ok(false) => {
                            at.tried.push(format!("{}: rejected", cert_path.display()));
                            at.rejected.push((key.public_key().clone(), true));
                            if closed_by_server(handle, at) {
                                return Some(Err(auth_failed(
                                    target,
                                    user.to_owned(),
                                    at.tried.clone(),
                                )));
                            }
                        }
                        Err(e) => return lost(e),
                    }
                }
                Err(e) => at.tried.push(format!(
                    "{}: unreadable certificate ({e})",
                    cert_path.display()
                )),
            }
        }
        if at.was_offered(key.public_key(), false) {
            continue;
        }
        at.offered.push((key.public_key().clone(), false));
        let res = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), hash))
            .await;
        match res {
            Ok(AuthResult::Success) => {
                return Some(Ok(Identity {
                    key: key.public_key().clone(),
                    certificate: false,
                    method: AuthMethod::IdentityFile { path: path.clone() },
                }));
            }
            Ok(AuthResult::Failure { .. }) => {
                at.tried.push(format!(
                    "{} ({} {}): rejected",
                    path.display(),
                    key.algorithm(),
                    fingerprint(key.public_key().key_data())
                ));
                at.rejected.push((key.public_key().clone(), false));
            }
            Err(e) => return lost(e),
        }
        if closed_by_server(handle, at) {
            return Some(Err(auth_failed(target, user.to_owned(), at.tried.clone())));
        }
    }
    None
}

/// An identity file's key to offer: `None` when it is missing, unreadable,
/// or encrypted (noted unless the agent holds it).
fn load_identity(path: &Path, at: &mut Attempts) -> Option<PrivateKey> {
    if !path.exists() {
        at.tried.push(format!("{}: no such file", path.display()));
        return None;
    }
    let key = match load_secret_key(path, None).or_else(|e| super::short_ecdsa::load(path).ok_or(e))
    {
        Ok(k) => k,
        Err(KeyError::KeyIsEncrypted) => {
            // The agent already had its chance with this key if it holds it.
            let in_agent = public_half(path)
                .is_some_and(|p| at.offered.iter().any(|(a, _)| a.key_data() == p.key_data()));
            if !in_agent {
                at.tried.push(format!(
                    "{}: passphrase-protected, not in the agent (skipped)",
                    path.display()
                ));
                at.encrypted.get_or_insert(path.to_path_buf());
            }
            return None;
        }
        Err(e) => {
            at.tried
                .push(format!("{}: unreadable ({e})", path.display()));
            return None;
        }
    };
    Some(key)
}

impl Attempts {
    /// `result`, an authentication failure made this side's when the
    /// `proven` key was not among the keys the host rejected: it was not
    /// offered at all (no agent, the agent without it, its file
    /// unreadable), or the server hung up before its turn. A lost
    /// connection stays one.
    // Once per connection; the large error is its message.
    #[allow(clippy::result_large_err)]
    fn judged(
        &self,
        target: &SshTarget,
        result: Result<Identity, ConnectError>,
        proven: Option<&Identity>,
    ) -> Result<Identity, ConnectError> {
        let failed_auth = matches!(
            result,
            Err(ConnectError::AuthFailed { .. } | ConnectError::EncryptedKey { .. })
        );
        match proven {
            // A server that hung up after rejecting other keys, before the
            // proven key's turn (it was there to offer), is the host's
            // doing: a candidate that lowered `MaxAuthTries` locks this
            // run's key out as surely as one that rejects it (read as this
            // side's, the soak kept such a host known-good). Not there to
            // offer (the agent lost it), the hang-up says nothing.
            Some(p) if failed_auth && !self.was_rejected(p) && !self.cut_before(p) => {
                Err(ConnectError::IdentityNotOffered {
                    target: target.name.clone(),
                    identity: p.method.to_string(),
                    why: self.why_not_offered(p),
                    tried: self.tried.clone(),
                })
            }
            _ => result,
        }
    }

    /// Did the server hang up before `id`'s key, there to offer, had its
    /// turn?
    fn cut_before(&self, id: &Identity) -> bool {
        self.closed && (self.available.iter()).any(|k| k.key_data() == id.key.key_data())
    }

    /// Did the server answer "no" to `id`'s key (offered the same way)?
    fn was_rejected(&self, id: &Identity) -> bool {
        self.rejected
            .iter()
            .any(|(k, c)| *c == id.certificate && k.key_data() == id.key.key_data())
    }

    /// What kept `id` from being offered, as far as the attempts tell: the
    /// agent's trouble when it had any, else where it was looked for.
    fn why_not_offered(&self, id: &Identity) -> String {
        let agent_trouble = self
            .tried
            .iter()
            .find(|t| t.starts_with("agent at ") || t.starts_with("ssh-agent: "));
        let file = match &id.method {
            AuthMethod::IdentityFile { path } | AuthMethod::Certificate { path, .. } => Some(path),
            AuthMethod::Agent { .. } | AuthMethod::AgentCertificate { .. } => None,
        };
        let file_trouble = file.and_then(|p| {
            self.tried
                .iter()
                .find(|t| t.starts_with(&*p.to_string_lossy()))
        });
        let trouble = match file {
            Some(_) => file_trouble.or(agent_trouble),
            None => agent_trouble,
        };
        match (trouble, file) {
            (Some(t), _) => t.clone(),
            (None, None) => "the agent no longer holds it (its lifetime over, or removed)".into(),
            (None, Some(_)) => "the server closed the connection before its turn".into(),
        }
    }

    /// Whether `key` was offered already, as a certificate or plain.
    fn was_offered(&self, key: &PublicKey, cert: bool) -> bool {
        self.offered
            .iter()
            .any(|(k, c)| *c == cert && k.key_data() == key.key_data())
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

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPY3xDoOMGDLSqqHUbaDsOiLRPvA2zGTT+rNS8Biguus deploy";
    const STRAY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBH4eCH+c3kX+45SLeQBhF7+Nn2VO8dwQ72omiHm+6LJ stray";

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).expect("a valid test key")
    }

    /// The run logged in with the agent's deploy key.
    fn proven() -> Identity {
        Identity {
            key: key(DEPLOY),
            certificate: false,
            method: AuthMethod::Agent {
                fingerprint: fingerprint(key(DEPLOY).key_data()),
                comment: "deploy".into(),
            },
        }
    }

    #[allow(clippy::result_large_err)]
    fn failed(tried: &[String]) -> Result<Identity, ConnectError> {
        Err(ConnectError::AuthFailed {
            target: "web1".into(),
            user: "root".into(),
            tried: tried.to_vec(),
        })
    }

    /// A session that ended under an agent offer is a lost connection, not
    /// an agent that could not sign; an agent's own failure is said and the
    /// next key tried.
    #[test]
    fn a_session_ended_under_an_agent_offer_is_a_lost_connection() {
        let label = "agent key SHA256:x deploy";
        let lost = agent_failure(label, russh::AgentAuthError::Send(russh::SendError {}));
        assert!(matches!(lost, Err(russh::Error::SendError)), "{lost:?}");
        let refused = russh::keys::Error::AgentFailure;
        let said = agent_failure(label, russh::AgentAuthError::Key(refused));
        assert!(said.is_ok_and(|s| s.contains("agent could not sign")));
    }

    /// The agent died mid-run; `~/.ssh/id_ed25519`, which the fleet never
    /// authorized, is still offered and rejected. That said "host locked
    /// out"; the key that works was never offered, so it is this side's,
    /// and the first line says why. The deploy key itself rejected is the
    /// host's, as before.
    #[test]
    fn a_failure_without_the_proven_key_is_this_sides_whatever_was_rejected() {
        let target = SshTarget::new("web1", "10.0.0.1");
        let mut at = Attempts {
            tried: vec![
                "agent at /tmp/agent.sock: unreachable (Connection refused)".into(),
                "/root/.ssh/id_ed25519 (ed25519 SHA256:x): rejected".into(),
            ],
            rejected: vec![(key(STRAY), false)],
            ..Attempts::default()
        };
        let e = at
            .judged(&target, failed(&at.tried), Some(&proven()))
            .unwrap_err();
        assert!(matches!(e, ConnectError::IdentityNotOffered { .. }), "{e}");
        assert!(e.is_controllers_own() && e.is_lasting());
        let first = e.to_string().lines().next().unwrap_or_default().to_owned();
        assert!(
            first.contains("unreachable (Connection refused)"),
            "{first}"
        );

        // The host's first login (nothing proven yet): the host's, as before.
        let e = at.judged(&target, failed(&at.tried), None).unwrap_err();
        assert!(!e.is_controllers_own(), "{e}");

        // The server hung up (MaxAuthTries) with the deploy key not there
        // to offer (the agent lost it): this side's still.
        at.closed = true;
        let e = at
            .judged(&target, failed(&at.tried), Some(&proven()))
            .unwrap_err();
        assert!(matches!(e, ConnectError::IdentityNotOffered { .. }), "{e}");
        // It was there, and the server hung up before its turn (a
        // candidate that lowered MaxAuthTries): the host's.
        at.available.push(key(DEPLOY));
        let e = at
            .judged(&target, failed(&at.tried), Some(&proven()))
            .unwrap_err();
        assert!(matches!(e, ConnectError::AuthFailed { .. }), "{e}");
        assert!(!e.is_controllers_own());
        at.closed = false;

        // The deploy key offered and rejected: the host's.
        at.rejected.push((key(DEPLOY), false));
        let e = at
            .judged(&target, failed(&at.tried), Some(&proven()))
            .unwrap_err();
        assert!(matches!(e, ConnectError::AuthFailed { .. }), "{e}");
        assert!(!e.is_controllers_own());
    }
}
