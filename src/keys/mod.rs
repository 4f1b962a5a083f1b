//! Keys: secrets a host needs (TLS keys, tokens) that must never enter the
//! Nix store, where every local user could read them. The inventory names
//! each key's source on the controller (`text`, `file` or `command`) and its
//! place on the host; nixgate reads the source on the controller
//! ([`source`]), and writes it on the host through the stdin of one remote
//! command per key ([`upload`]): the content is never an argument (not in
//! `ps` on either side, not in sudo's log), never logged, never in an event
//! or a report. What is reported is a [`KeyReceipt`]: the name, the
//! destination and the SHA-256 of the content, so a changed key shows as
//! changed. In memory the content is a [`Secret`], wiped when dropped.

pub mod source;
pub mod standalone;
pub mod upload;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use zeroize::Zeroizing;

pub use source::{KeySourceError, ResolvedKey, resolve, resolve_all};
pub use upload::{KeyUploadError, upload, upload_all};

/// Bytes that must not be shown: `Debug` prints only their length, there is
/// no `Display` or `Serialize`, and they are zeroed when dropped.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes, redacted>)", self.0.len())
    }
}

/// When a key is written, in the order of the gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UploadAt {
    /// Before dry-activate: the new system finds it when it starts.
    PreActivation,
    /// After the live switch proved good (for a service that creates the
    /// user or group owning it).
    PostActivation,
}

impl UploadAt {
    pub const NAMES: &'static [&'static str] = &["pre-activation", "post-activation"];

    pub fn parse(s: &str) -> Option<UploadAt> {
        match s {
            "pre-activation" => Some(UploadAt::PreActivation),
            "post-activation" => Some(UploadAt::PostActivation),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UploadAt::PreActivation => "pre-activation",
            UploadAt::PostActivation => "post-activation",
        }
    }
}

/// Where a key's content comes from, on the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeySource {
    /// Written in the inventory (never serialized).
    Text {
        #[serde(skip)]
        text: Secret,
    },
    /// A file on the controller.
    File { path: PathBuf },
    /// A command run on the controller (argv, no shell); its stdout. It
    /// runs in `dir`, the inventory's directory, as relative paths there
    /// are read (a cron run from `/` found no `secrets/ca.sh`).
    Command {
        argv: Vec<String>,
        #[serde(skip)]
        dir: std::path::PathBuf,
    },
}

/// The default directory keys are written to.
pub const DEFAULT_DEST_DIR: &str = "/run/keys";
/// The default mode of a key file.
pub const DEFAULT_PERMISSIONS: &str = "0600";

/// One key of a host, from the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeySpec {
    /// The file name under `dest_dir`.
    pub name: String,
    pub source: KeySource,
    pub dest_dir: String,
    /// Owner of the file.
    pub user: String,
    /// Group of the file; `None`: the owner's login group.
    pub group: Option<String>,
    /// Octal mode, e.g. `0600`.
    pub permissions: String,
    pub upload_at: UploadAt,
}

impl KeySpec {
    /// The key's path on the host.
    pub fn dest(&self) -> String {
        format!("{}/{}", self.dest_dir.trim_end_matches('/'), self.name)
    }

    /// `user` or `user:group`, for `chown`.
    pub fn owner(&self) -> String {
        match &self.group {
            Some(g) => format!("{}:{g}", self.user),
            None => self.user.clone(),
        }
    }
}

/// What the reports say about a written key: never its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KeyReceipt {
    pub name: String,
    pub dest: String,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// Is `mode` an octal file mode nixgate accepts (`600`, `0640`)? No
/// setuid, setgid or sticky bit: a key file is created with its mode (see
/// [`upload`]), which a umask cannot give those.
pub fn valid_permissions(mode: &str) -> bool {
    (3..=4).contains(&mode.len())
        && mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
        && (mode.len() == 3 || mode.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<7 bytes, redacted>)");
        let spec = KeySpec {
            name: "k".into(),
            source: KeySource::Text { text: s },
            dest_dir: "/run/keys/".into(),
            user: "root".into(),
            group: None,
            permissions: "0600".into(),
            upload_at: UploadAt::PreActivation,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(!format!("{spec:?}").contains("hunter2"));
        assert_eq!(spec.dest(), "/run/keys/k");
        assert_eq!(spec.owner(), "root");
    }

    #[test]
    fn permissions() {
        for ok in ["600", "0600", "0440", "0777"] {
            assert!(valid_permissions(ok), "{ok}");
        }
        for bad in ["", "60", "0800", "06000", "rw", "0x600", "4755", "1640"] {
            assert!(!valid_permissions(bad), "{bad}");
        }
    }
}
