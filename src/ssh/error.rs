//! Why a connection could not be made, in words that say what to do next.

use std::path::PathBuf;
use std::time::Duration;

/// The step a connection attempt was at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStage {
    /// Resolving the host's name (on this machine).
    Resolve,
    /// Opening the TCP connection.
    Tcp,
    /// SSH banner, key exchange and host-key verification.
    Handshake,
    /// User authentication.
    Auth,
}

impl std::fmt::Display for ConnectStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectStage::Resolve => "resolving the host's name",
            ConnectStage::Tcp => "opening the TCP connection",
            ConnectStage::Handshake => "waiting for the SSH handshake",
            ConnectStage::Auth => "authenticating",
        })
    }
}

/// A connection that could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "{target}: cannot reach {addr}: {source}; check the address and port, and that sshd runs there"
    )]
    Unreachable {
        target: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// This machine could not resolve the host's name: its resolver (or
    /// the name's record), not the host.
    #[error(
        "{target}: cannot resolve {host} on this machine: {source}; check the resolver (or use an \
         address in the inventory)"
    )]
    Resolve {
        target: String,
        host: String,
        #[source]
        source: std::io::Error,
    },

    /// This machine ran out of what a connection needs: open files
    /// (EMFILE, ENFILE), local ports (EADDRNOTAVAIL), buffers (ENOBUFS).
    #[error(
        "{target}: this machine could not open a connection to {addr}: {source}; raise the \
         open-file limit (`ulimit -n`) or lower max_parallel"
    )]
    LocalResources {
        target: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{target}: no progress within {timeout:?} while {stage} ({addr}); the host may be down, \
         overloaded, or not speaking SSH on that port"
    )]
    Timeout {
        target: String,
        addr: String,
        stage: ConnectStage,
        timeout: Duration,
    },

    #[error(
        "{target}: host key of {host} ({addr}) is not known, refusing to connect.\n  offered key: {fingerprint}\n  \
         after checking that fingerprint out of band (e.g. `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the host), \
         add this line to {}:\n{line_to_add}\n  or pass --accept-new to learn it (a changed key is still refused)",
        known_hosts.display()
    )]
    HostKeyUnknown {
        target: String,
        host: String,
        addr: String,
        fingerprint: String,
        line_to_add: String,
        known_hosts: PathBuf,
    },

    #[error(
        "{target}: HOST KEY CHANGED for {host} ({addr}), refusing to connect: this may be a \
         man-in-the-middle attack, or the host was reinstalled.\n  offered:  {offered}\n  expected: {}\n  \
         if the change is legitimate, remove the old entries (`ssh-keygen -R {host}` or edit the lines above) \
         and add the new key",
        expected.join("\n            ")
    )]
    HostKeyChanged {
        target: String,
        host: String,
        addr: String,
        /// Recorded fingerprints, each followed by `(file:line)`.
        expected: Vec<String>,
        offered: String,
    },

    #[error(
        "{target}: host key of {host} ({addr}) is REVOKED ({recorded}), refusing to connect; \
         the host needs a new key\n  offered: {fingerprint}"
    )]
    HostKeyRevoked {
        target: String,
        host: String,
        addr: String,
        fingerprint: String,
        recorded: String,
    },

    #[error(
        "{target}: host certificate of {host} ({addr}) is signed by a trusted CA but invalid: {reason}; \
         re-issue it with `ssh-keygen -s CA -h -n {host} ...`"
    )]
    HostCertificateInvalid {
        target: String,
        host: String,
        addr: String,
        reason: String,
    },

    #[error("{target}: cannot read known_hosts: {source:#}")]
    KnownHosts {
        target: String,
        #[source]
        source: anyhow::Error,
    },

    #[error("{target}: SSH handshake with {addr} failed: {source}")]
    Handshake {
        target: String,
        addr: String,
        #[source]
        source: russh::Error,
    },

    #[error(
        "{target}: identity file {} is passphrase-protected and no agent key was accepted; \
         nixgate never prompts: load it into your agent with `ssh-add {}` (and make sure SSH_AUTH_SOCK is set){}",
        path.display(),
        path.display(),
        tried_suffix(tried)
    )]
    EncryptedKey {
        target: String,
        path: PathBuf,
        tried: Vec<String>,
    },

    #[error(
        "{target}: authentication as {user} failed{}{}",
        tried_suffix(tried),
        auth_hint(user, tried)
    )]
    AuthFailed {
        target: String,
        user: String,
        tried: Vec<String>,
    },

    /// The key the run's session logged in with was not offered this time:
    /// the failure is this side's, whatever other key the host rejected.
    /// The cause goes on the first line: reports show only that one.
    #[error(
        "{target}: the key this run logged in with ({identity}) was not offered ({why}): a failure \
         on this side, not the host's; reload the key (`ssh-add`) or restore the agent{}",
        tried_suffix(tried)
    )]
    IdentityNotOffered {
        target: String,
        identity: String,
        why: String,
        tried: Vec<String>,
    },

    #[error("{target}: connection lost during authentication: {source}")]
    AuthTransport {
        target: String,
        #[source]
        source: russh::Error,
    },

    #[error("{target}: cannot connect through jump host: {source}")]
    Jump {
        target: String,
        #[source]
        source: Box<ConnectError>,
    },
}

impl ConnectError {
    /// A refusal (a host key not trusted, credentials refused, a
    /// known_hosts file unreadable), as against no answer. Not all last: a
    /// login refused with a key offered may pass ([`Self::is_lasting`],
    /// which a patient command stops at).
    pub fn is_refusal(&self) -> bool {
        match self {
            ConnectError::HostKeyUnknown { .. }
            | ConnectError::HostKeyChanged { .. }
            | ConnectError::HostKeyRevoked { .. }
            | ConnectError::HostCertificateInvalid { .. }
            | ConnectError::KnownHosts { .. }
            | ConnectError::EncryptedKey { .. }
            | ConnectError::IdentityNotOffered { .. }
            | ConnectError::AuthFailed { .. } => true,
            ConnectError::Jump { source, .. } => source.is_refusal(),
            ConnectError::Unreachable { .. }
            | ConnectError::Resolve { .. }
            | ConnectError::LocalResources { .. }
            | ConnectError::Timeout { .. }
            | ConnectError::Handshake { .. }
            | ConnectError::AuthTransport { .. } => false,
        }
    }
}

impl ConnectError {
    /// A refusal that waiting cannot change: a host key not trusted, a
    /// known_hosts file unreadable, no key to offer (or only one that needs
    /// its passphrase). Not a login refused with a key offered: sshd
    /// refuses logins while `/run/nologin` exists (a host booting or going
    /// down), and takes them again after.
    pub fn is_lasting(&self) -> bool {
        match self {
            ConnectError::AuthFailed { .. } | ConnectError::EncryptedKey { .. } => {
                self.nothing_rejected()
            }
            ConnectError::Jump { source, .. } => source.is_lasting(),
            other => other.is_refusal(),
        }
    }

    /// A failure that says nothing of the host: its name not resolved here,
    /// this machine out of open files or ports, no key to offer (an agent
    /// gone, a key's lifetime over) or only a passphrase-protected one, the
    /// key the run logged in with not offered (whatever else was rejected),
    /// an unreadable known_hosts file, or any failure to reach a jump host
    /// (it never got as far as the host). A host that locked logins out
    /// rejects the keys offered: a key rejected makes it the host's when
    /// no earlier login proved which key works.
    pub fn is_controllers_own(&self) -> bool {
        match self {
            ConnectError::KnownHosts { .. }
            | ConnectError::Jump { .. }
            | ConnectError::IdentityNotOffered { .. }
            | ConnectError::Resolve { .. }
            | ConnectError::LocalResources { .. }
            | ConnectError::Timeout {
                stage: ConnectStage::Resolve,
                ..
            } => true,
            ConnectError::AuthFailed { .. } | ConnectError::EncryptedKey { .. } => {
                self.nothing_rejected()
            }
            _ => false,
        }
    }

    /// Did it wait out a timeout (nothing answered), here or at a jump host?
    pub fn is_timeout(&self) -> bool {
        match self {
            ConnectError::Timeout { .. } => true,
            ConnectError::Jump { source, .. } => source.is_timeout(),
            _ => false,
        }
    }

    /// A login sshd answered and refused: a key offered was rejected (by
    /// the host, or by a jump host on the way). Each one counts against
    /// this machine's address there (OpenSSH's PerSourcePenalties,
    /// fail2ban): a caller trying new connections stops after a few (see
    /// [`crate::remote::patient::MAX_REJECTED_LOGINS`]).
    pub fn is_login_rejected(&self) -> bool {
        match self {
            ConnectError::AuthFailed { tried, .. }
            | ConnectError::EncryptedKey { tried, .. }
            | ConnectError::IdentityNotOffered { tried, .. } => any_rejected(tried),
            ConnectError::Jump { source, .. } => source.is_login_rejected(),
            _ => false,
        }
    }

    /// An authentication failure in which the host rejected no key offered.
    fn nothing_rejected(&self) -> bool {
        let tried = match self {
            ConnectError::AuthFailed { tried, .. } | ConnectError::EncryptedKey { tried, .. } => {
                tried
            }
            _ => return false,
        };
        !any_rejected(tried)
    }
}

/// Did the host reject a key offered (`tried`'s `...: rejected` entries)?
fn any_rejected(tried: &[String]) -> bool {
    tried.iter().any(|t| t.ends_with(": rejected"))
}

/// What to do: a key was offered and refused, or there was none to offer.
fn auth_hint(user: &str, tried: &[String]) -> String {
    if any_rejected(tried) {
        format!(
            "; check that one of these keys is in ~{user}/.ssh/authorized_keys on the host, \
             or set identity files in the inventory or ~/.ssh/config"
        )
    } else {
        format!(
            "; no key was offered: set `identity_file` in the inventory (or IdentityFile in \
             ~/.ssh/config), or load a key into ssh-agent, and put its public half in \
             ~{user}/.ssh/authorized_keys on the host"
        )
    }
}

fn tried_suffix(tried: &[String]) -> String {
    if tried.is_empty() {
        "; no identity was available (no agent keys, no identity files found)".to_owned()
    } else {
        format!("; tried:\n  - {}\n ", tried.join("\n  - "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(tried: &[&str]) -> ConnectError {
        ConnectError::AuthFailed {
            target: "web1".into(),
            user: "root".into(),
            tried: tried.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// A host that locked logins out rejects the keys offered: that is the
    /// host's doing, and may pass (sshd refuses logins while a host boots);
    /// no key to offer, or only one needing its passphrase, is the
    /// controller's, and lasts; a jump host's failure is never the host's,
    /// and lasts as its own error does.
    #[test]
    fn whose_failure_and_whether_it_lasts() {
        let rejected = auth(&["agent key ed25519 (SHA256:x): rejected"]);
        let none = auth(&[]);
        let encrypted_and_rejected = ConnectError::EncryptedKey {
            target: "web1".into(),
            path: "/root/.ssh/id_rsa".into(),
            tried: vec!["agent key ed25519 (SHA256:x): rejected".into()],
        };
        assert!(!rejected.is_controllers_own() && !rejected.is_lasting());
        assert!(none.is_controllers_own() && none.is_lasting());
        let e = &encrypted_and_rejected;
        assert!(!e.is_controllers_own() && !e.is_lasting());
        let jump = |source| ConnectError::Jump {
            target: "web1".into(),
            source: Box::new(source),
        };
        let timeout = ConnectError::Timeout {
            target: "bastion".into(),
            addr: "10.0.0.9:22".into(),
            stage: ConnectStage::Tcp,
            timeout: std::time::Duration::from_secs(10),
        };
        // Not the host's, and may pass: tried again, then not a lockout.
        let j = jump(timeout);
        assert!(j.is_controllers_own() && !j.is_lasting());
        assert!(jump(auth(&[])).is_lasting());
    }
}
