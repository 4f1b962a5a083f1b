//! Reading a key's content on the controller: inline text, a file, or a
//! command's stdout (`pass show ...`, `vault kv get ...`). A source that
//! cannot be read is a typed [`KeySourceError`] that names the key and the
//! source, never the content; the host it belongs to is refused before
//! anything on it changes.

use std::time::Duration;

use serde::Serialize;
use sha2::Digest;

use super::{KeyReceipt, KeySource, KeySpec, Secret};

/// How long a key's command may run (a password manager may ask a
/// hardware token: generous, but a hung command must not hang the run).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// A key with its content, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedKey {
    pub spec: KeySpec,
    pub content: Secret,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

impl ResolvedKey {
    pub fn new(spec: KeySpec, content: Secret) -> ResolvedKey {
        let sha256 = sha2::Sha256::digest(content.expose())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ResolvedKey {
            spec,
            content,
            sha256,
        }
    }

    pub fn receipt(&self) -> KeyReceipt {
        KeyReceipt {
            name: self.spec.name.clone(),
            dest: self.spec.dest(),
            sha256: self.sha256.clone(),
        }
    }
}

/// Why a key's content could not be read on the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeySourceError {
    #[error("key {key}: cannot read {path}: {error}")]
    FileUnreadable {
        key: String,
        path: String,
        error: String,
    },
    #[error("key {key}: cannot run `{program}`: {error}")]
    CommandNotStarted {
        key: String,
        program: String,
        error: String,
    },
    /// The command exited non-zero (or by a signal: no `code`). Only its
    /// stderr is shown: its stdout would be the key.
    #[error("key {key}: `{program}` failed ({}){}", exit_text(*.code), stderr_text(.stderr))]
    CommandFailed {
        key: String,
        program: String,
        code: Option<i32>,
        stderr: Vec<String>,
    },
    /// A `file` or `command` gave nothing: an empty key would replace the
    /// one on the host (a password store that prints nothing and exits 0,
    /// a file truncated by a failed write) and the services using it fail.
    #[error(
        "key {key}: {from} gave no content; an empty key would replace the one on the host (for a key meant to be empty, write `text = \"\"`)"
    )]
    Empty { key: String, from: String },
    #[error("key {key}: `{program}` did not finish within {}s", .after.as_secs())]
    CommandTimedOut {
        key: String,
        program: String,
        after: Duration,
    },
}

fn exit_text(code: Option<i32>) -> String {
    code.map_or_else(|| "killed by a signal".into(), |c| format!("exit code {c}"))
}

fn stderr_text(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" / "))
    }
}

/// Read one key's content.
pub async fn resolve(spec: &KeySpec) -> Result<ResolvedKey, KeySourceError> {
    let content = match &spec.source {
        KeySource::Text { text } => text.clone(),
        KeySource::File { path } => {
            let bytes =
                tokio::fs::read(path)
                    .await
                    .map_err(|e| KeySourceError::FileUnreadable {
                        key: spec.name.clone(),
                        path: path.display().to_string(),
                        error: e.to_string(),
                    })?;
            Secret::new(bytes)
        }
        KeySource::Command { argv, dir } => run(&spec.name, argv, dir).await?,
    };
    let from = match &spec.source {
        KeySource::Text { .. } => None,
        KeySource::File { path } => Some(format!("file {}", path.display())),
        KeySource::Command { argv, .. } => Some(format!(
            "command `{}`",
            argv.first().map(String::as_str).unwrap_or_default()
        )),
    };
    if let (true, Some(from)) = (content.expose().is_empty(), from) {
        return Err(KeySourceError::Empty {
            key: spec.name.clone(),
            from,
        });
    }
    Ok(ResolvedKey::new(spec.clone(), content))
}

/// Read every key of a host, in order; the first that fails stops it.
pub async fn resolve_all(specs: &[KeySpec]) -> Result<Vec<ResolvedKey>, KeySourceError> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        out.push(resolve(spec).await?);
    }
    Ok(out)
}

/// Run a key's command: no stdin, stdout is the content, stderr kept for
/// the error.
async fn run(key: &str, argv: &[String], dir: &std::path::Path) -> Result<Secret, KeySourceError> {
    let program = argv.first().cloned().unwrap_or_default();
    let child = tokio::process::Command::new(&program)
        .args(&argv[1..])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| KeySourceError::CommandNotStarted {
            key: key.to_owned(),
            program: program.clone(),
            error: e.to_string(),
        })?;
    let out = match tokio::time::timeout(COMMAND_LIMIT, child.wait_with_output()).await {
        Err(_) => {
            return Err(KeySourceError::CommandTimedOut {
                key: key.to_owned(),
                program,
                after: COMMAND_LIMIT,
            });
        }
        Ok(Err(e)) => {
            return Err(KeySourceError::CommandNotStarted {
                key: key.to_owned(),
                program,
                error: e.to_string(),
            });
        }
        Ok(Ok(out)) => out,
    };
    // Wiped whatever happens next.
    let stdout = Secret::new(out.stdout);
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        let tail = lines[lines.len().saturating_sub(5)..].to_vec();
        return Err(KeySourceError::CommandFailed {
            key: key.to_owned(),
            program,
            code: out.status.code(),
            stderr: tail,
        });
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::UploadAt;

    fn spec(source: KeySource) -> KeySpec {
        KeySpec {
            name: "tls".into(),
            source,
            dest_dir: "/run/keys".into(),
            user: "root".into(),
            group: None,
            permissions: "0600".into(),
            upload_at: UploadAt::PreActivation,
        }
    }

    #[tokio::test]
    async fn sources() {
        let k = resolve(&spec(KeySource::Text {
            text: Secret::new(b"abc".to_vec()),
        }))
        .await
        .unwrap();
        assert_eq!(
            k.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let cmd = |argv: &[&str]| {
            spec(KeySource::Command {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                dir: ".".into(),
            })
        };
        let k = resolve(&cmd(&["printf", "abc"])).await.unwrap();
        assert_eq!(k.content.expose(), b"abc");
        let e = resolve(&cmd(&[
            "sh",
            "-c",
            "echo secret-out; echo no vault >&2; exit 3",
        ]))
        .await
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("exit code 3") && text.contains("no vault"),
            "{text}"
        );
        assert!(
            !text.contains("secret-out"),
            "stdout is never shown: {text}"
        );
        let e = resolve(&cmd(&["/nonexistent/pass"])).await.unwrap_err();
        assert!(matches!(e, KeySourceError::CommandNotStarted { .. }), "{e}");
        let e = resolve(&spec(KeySource::File {
            path: "/nonexistent/key".into(),
        }))
        .await
        .unwrap_err();
        assert!(matches!(e, KeySourceError::FileUnreadable { .. }), "{e}");
    }

    /// A key's command runs in the inventory's directory: `cat
    /// secrets/ca.pem` there, from a cron run whose directory is `/`.
    #[tokio::test]
    async fn a_keys_command_runs_in_the_inventorys_directory() {
        let inv = tempfile::tempdir().unwrap();
        std::fs::create_dir(inv.path().join("secrets")).unwrap();
        std::fs::write(inv.path().join("secrets/ca.pem"), "pem").unwrap();
        let k = spec(KeySource::Command {
            argv: vec!["cat".into(), "secrets/ca.pem".into()],
            dir: inv.path().into(),
        });
        assert_eq!(resolve(&k).await.unwrap().content.expose(), b"pem");
    }

    /// A command that prints nothing and exits 0, or an empty file, is no
    /// key: it replaced the good one on the host. An empty `text` is meant.
    #[tokio::test]
    async fn an_empty_key_from_a_file_or_a_command_is_refused() {
        let e = resolve(&spec(KeySource::Command {
            argv: vec!["true".into()],
            dir: ".".into(),
        }))
        .await
        .unwrap_err();
        assert!(
            matches!(&e, KeySourceError::Empty { from, .. } if from == "command `true`"),
            "{e}"
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = resolve(&spec(KeySource::File {
            path: f.path().into(),
        }))
        .await
        .unwrap_err();
        assert!(matches!(e, KeySourceError::Empty { .. }), "{e}");
        let empty = spec(KeySource::Text {
            text: Secret::new(Vec::new()),
        });
        assert!(resolve(&empty).await.unwrap().content.expose().is_empty());
    }
}
