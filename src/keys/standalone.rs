//! `nixgate upload-keys`: write a host's keys without deploying (after a
//! reboot emptied `/run/keys`, or to rotate a secret). Every key of the host
//! is written, whatever its `upload_at`: the system is already running.
//! The same order as in a deploy: every key is read on the controller
//! first, so a failing source leaves the host untouched.

use serde::Serialize;

use super::{KeyReceipt, KeySourceError, KeyUploadError, ResolvedKey, resolve_all, upload_all};
use crate::activation::privilege::{self, SudoCheck};
use crate::inventory::Host;
use crate::remote::Remote;

/// Why a host's keys were not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum KeysFailure {
    /// A key's content could not be read: nothing was written.
    Source(KeySourceError),
    /// The host could not be reached.
    Unreachable { error: String },
    /// sudo did not work on the host (`sudo = true`).
    Sudo(SudoCheck),
    /// A key could not be written; keys before it in the list were (its
    /// `written`).
    Upload(KeyUploadError),
}

/// Read every key of `host` on the controller.
pub async fn read(host: &Host) -> Result<Vec<ResolvedKey>, KeysFailure> {
    resolve_all(&host.keys).await.map_err(KeysFailure::Source)
}

/// Write `keys` on the host (through sudo when the host says so, after
/// checking it works).
pub async fn write<R: Remote>(
    remote: &R,
    host: &Host,
    keys: &[ResolvedKey],
) -> Result<Vec<KeyReceipt>, KeysFailure> {
    if host.sudo {
        match privilege::sudo_preflight(remote).await {
            Ok(SudoCheck::Ready) => {}
            Ok(check) => return Err(KeysFailure::Sudo(check)),
            Err(e) => {
                return Err(KeysFailure::Unreachable {
                    error: format!("{e:#}"),
                });
            }
        }
    }
    let all: Vec<&ResolvedKey> = keys.iter().collect();
    upload_all(remote, &all, host.sudo)
        .await
        .map_err(KeysFailure::Upload)
}
