//! `keys = [...]` / `[[hosts.X.keys]]`: the keys written to a host. Names
//! are unique per list and are file names (the name rules of hosts);
//! exactly one source; the owner, group and mode become arguments of
//! `chown`/`chmod` on the host, so they are checked here.

use toml::de::DeTable;

use super::super::validate;
use super::super::walk::{At, Val, get};
use super::{KEY_KEYS, Loader};
use crate::keys::{
    DEFAULT_DEST_DIR, DEFAULT_PERMISSIONS, KeySource, KeySpec, Secret, UploadAt, valid_permissions,
};

impl Loader {
    pub(super) fn keys(&mut self, v: &Val<'_>) -> Vec<KeySpec> {
        let Some(items) = self.w.array("keys", v) else {
            // Not a list (one key's table written without its brackets):
            // its `text` is no less secret.
            self.w.secrets.push(v.span());
            return Vec::new();
        };
        let mut out: Vec<KeySpec> = Vec::new();
        for item in items {
            if !matches!(item.get_ref(), toml::de::DeValue::Table(_)) {
                self.w.secrets.push(item.span());
            }
            let Some(t) = self.w.table("keys", item) else {
                continue;
            };
            let Some(key) = self.key(t, item.span()) else {
                continue;
            };
            if out.iter().any(|k| k.name == key.name) {
                self.w
                    .error(format!("key {:?} is listed twice", key.name), item.span());
                continue;
            }
            out.push(key);
        }
        out
    }

    fn key(&mut self, t: &DeTable<'_>, span: std::ops::Range<usize>) -> Option<KeySpec> {
        // What an error excerpt never shows: `text`, and any field a key
        // does not have (a misspelt `text`).
        self.w.secrets.extend(
            t.iter()
                .filter(|(k, _)| {
                    let k: &str = k.get_ref();
                    k == "text" || !KEY_KEYS.contains(&k)
                })
                .map(|(_, v)| v.span()),
        );
        self.w.check_keys(t, KEY_KEYS, "a key");
        let name = match get(t, "name") {
            Some(n) => self
                .w
                .string("name", n)
                .filter(|n| validate::name(&mut self.w, "key", n)),
            None => {
                self.w.error_help(
                    "key has no `name`",
                    span.clone(),
                    "add `name = \"tls.key\"`",
                );
                None
            }
        };
        let source = self.key_source(t, span);
        let dest_dir = match get(t, "dest_dir") {
            Some(d) => self
                .w
                .string("dest_dir", d)
                .filter(|d| validate::absolute(&mut self.w, "dest_dir", d))
                .filter(|d| below_root(&mut self.w, d))
                .map(|d| d.value),
            None => Some(DEFAULT_DEST_DIR.to_owned()),
        };
        let user = self.key_owner(t, "user")?;
        let group = self.key_owner(t, "group")?;
        let permissions = match get(t, "permissions") {
            Some(p) => self.w.string("permissions", p).and_then(|p| {
                if valid_permissions(&p.value) {
                    Some(p.value)
                } else {
                    self.w.error_help(
                        format!("`permissions` {:?} is not an octal mode", p.value),
                        p.span,
                        "write it as a string of 3 or 4 octal digits, e.g. \"0640\" (no setuid, setgid or sticky bit)",
                    );
                    None
                }
            }),
            None => Some(DEFAULT_PERMISSIONS.to_owned()),
        };
        let upload_at = match get(t, "upload_at") {
            Some(u) => self
                .w
                .choice("upload_at", u, UploadAt::NAMES, UploadAt::parse)
                .map(|u| u.value),
            None => Some(UploadAt::PreActivation),
        };
        Some(KeySpec {
            name: name?.value,
            source: source?,
            dest_dir: dest_dir?,
            user: user.unwrap_or_else(|| "root".into()),
            group,
            permissions: permissions?,
            upload_at: upload_at?,
        })
    }

    /// `user` or `group`: `Some(None)` when absent, `None` when invalid.
    fn key_owner(&mut self, t: &DeTable<'_>, key: &str) -> Option<Option<String>> {
        let Some(v) = get(t, key) else {
            return Some(None);
        };
        let s = self.w.string(key, v)?;
        validate::user(&mut self.w, key, &s).then_some(Some(s.value))
    }

    /// Exactly one of `text`, `file`, `command`.
    fn key_source(&mut self, t: &DeTable<'_>, span: std::ops::Range<usize>) -> Option<KeySource> {
        let given: Vec<&str> = ["text", "file", "command"]
            .into_iter()
            .filter(|k| get(t, k).is_some())
            .collect();
        if given.len() != 1 {
            let what = if given.is_empty() {
                "no source".to_owned()
            } else {
                format!("{} sources ({})", given.len(), given.join(", "))
            };
            self.w.error_help(
                format!("key has {what}"),
                span,
                "give exactly one of `text`, `file` (on the controller) or `command` (an argv; its stdout)",
            );
            return None;
        }
        let v = get(t, given[0])?;
        match given[0] {
            "text" => {
                let s: At<String> = self.w.string("text", v)?;
                Some(KeySource::Text {
                    text: Secret::new(s.value.into_bytes()),
                })
            }
            "file" => {
                let s = self
                    .w
                    .string("file", v)
                    .filter(|f| validate::nonempty(&mut self.w, "file", f))?;
                Some(KeySource::File {
                    path: self.paths.resolve(&s.value),
                })
            }
            _ => self.argv("command", v).map(|argv| KeySource::Command {
                argv,
                dir: self.paths.base.clone(),
            }),
        }
    }
}

/// A key's `dest_dir` is a directory of its own, not `/`: the upload makes
/// it (root's, not writable by others) and writes the key into it; `/`
/// made `mkdir -p ""` fail on every push, the host refused at its key gate.
fn below_root(w: &mut super::super::walk::Walker, d: &At<String>) -> bool {
    if d.value.trim_end_matches('/').is_empty() {
        w.error_help(
            "a key's `dest_dir` cannot be `/`",
            d.span.clone(),
            "name a directory of its own, e.g. \"/run/keys\" (the default)",
        );
        return false;
    }
    true
}
