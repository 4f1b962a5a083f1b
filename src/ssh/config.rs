//! A small `~/.ssh/config` reader: `Host` blocks (patterns with `*`, `?`,
//! `!`) and the keywords nixgate honours — `HostName`, `User`, `Port`,
//! `IdentityFile`, `ProxyJump`. First match wins per keyword, as in OpenSSH;
//! `IdentityFile` accumulates. `Match` blocks are skipped (never applied),
//! `Include` and other keywords are ignored.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::pattern;

/// A parsed ssh config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshConfig {
    blocks: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    /// `None` for a `Match` block (never applies).
    patterns: Option<Vec<String>>,
    settings: Vec<(Keyword, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    HostName,
    User,
    Port,
    IdentityFile,
    ProxyJump,
}

/// What the ssh config says about one host alias.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<PathBuf>,
    /// The raw `ProxyJump` value (`none` disables jumping).
    pub proxy_jump: Option<String>,
}

impl SshConfig {
    /// An empty config (applies nothing).
    pub fn empty() -> Self {
        SshConfig::default()
    }

    /// `~/.ssh/config` when it exists, otherwise an empty config.
    pub fn load_default() -> anyhow::Result<Self> {
        match home_dir() {
            Some(home) => {
                let path = home.join(".ssh").join("config");
                if path.exists() {
                    Self::load(&path)
                } else {
                    Ok(Self::empty())
                }
            }
            None => Ok(Self::empty()),
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading ssh config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in ssh config {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // Lines before the first Host apply to every host.
        let mut blocks = vec![Block {
            patterns: Some(vec!["*".to_owned()]),
            settings: Vec::new(),
        }];
        for (idx, raw) in text.lines().enumerate() {
            let line = strip_comment(raw).trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = split_keyword(line);
            let lineno = idx + 1;
            match key.to_ascii_lowercase().as_str() {
                "host" => blocks.push(Block {
                    patterns: Some(value.split_whitespace().map(unquote).collect()),
                    settings: Vec::new(),
                }),
                "match" => blocks.push(Block {
                    patterns: None,
                    settings: Vec::new(),
                }),
                other => {
                    let keyword = match other {
                        "hostname" => Keyword::HostName,
                        "user" => Keyword::User,
                        "port" => Keyword::Port,
                        "identityfile" => Keyword::IdentityFile,
                        "proxyjump" => Keyword::ProxyJump,
                        _ => continue,
                    };
                    let value = unquote(value);
                    if value.is_empty() {
                        anyhow::bail!("line {lineno}: `{key}` needs a value");
                    }
                    if keyword == Keyword::Port && value.parse::<u16>().is_err() {
                        anyhow::bail!("line {lineno}: Port `{value}` is not a port number");
                    }
                    if let Some(block) = blocks.last_mut() {
                        block.settings.push((keyword, value));
                    }
                }
            }
        }
        Ok(SshConfig { blocks })
    }

    /// Resolve the settings for `host` (the alias as written in the
    /// inventory): for each keyword the first value from a matching block.
    pub fn lookup(&self, host: &str) -> HostConfig {
        let mut out = HostConfig::default();
        let mut port: Option<String> = None;
        for block in &self.blocks {
            let Some(patterns) = &block.patterns else {
                continue;
            };
            if !pattern::list_matches(patterns.iter().map(String::as_str), host) {
                continue;
            }
            for (keyword, value) in &block.settings {
                match keyword {
                    Keyword::HostName => set_once(&mut out.hostname, value),
                    Keyword::User => set_once(&mut out.user, value),
                    Keyword::Port => set_once(&mut port, value),
                    Keyword::ProxyJump => set_once(&mut out.proxy_jump, value),
                    Keyword::IdentityFile => out.identity_files.push(PathBuf::from(value)),
                }
            }
        }
        out.port = port.and_then(|p| p.parse().ok());
        if let Some(h) = &out.hostname {
            out.hostname = Some(expand_tokens(h, host, None));
        }
        let user = out.user.clone();
        out.identity_files = out
            .identity_files
            .iter()
            .map(|p| expand_path(&expand_tokens(&p.to_string_lossy(), host, user.as_deref())))
            .collect();
        out
    }
}

fn set_once(slot: &mut Option<String>, value: &str) {
    if slot.is_none() {
        *slot = Some(value.to_owned());
    }
}

fn split_keyword(line: &str) -> (&str, &str) {
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let (key, rest) = line.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    (key, rest)
}

/// `line` without a trailing comment: a `#` starting a word, outside
/// quotes, ends it, as OpenSSH reads it (`Port 2222 # ssh` was the port
/// `2222 # ssh`, refused with the whole file; `Host web1 # prod` also
/// matched a host named `prod`).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let mut word_start = true;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted && word_start => return &line[..i],
            _ => {}
        }
        word_start = c.is_whitespace() || c == '=';
    }
    line
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
        .to_owned()
}

/// `%h` (host alias), `%r` (remote user), `%d` (home), `%%`.
fn expand_tokens(value: &str, host: &str, user: Option<&str>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('r') => out.push_str(user.unwrap_or("")),
            Some('d') => out.push_str(&home_dir().unwrap_or_default().to_string_lossy()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Expand a leading `~/` to the home directory.
pub fn expand_path(value: &str) -> PathBuf {
    match (value.strip_prefix("~/"), home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(value),
    }
}

pub(crate) fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
# global defaults come first only if written first
User default-user

Host web-* !web-legacy
    HostName %h.internal.example
    Port 2222
    IdentityFile ~/.ssh/web_key

Host web-1
    # never reached for HostName: first match wins
    HostName other
    User web1-user
    IdentityFile=/etc/keys/web1

Host bastion
    HostName 10.1.2.3
    User jump

Host db?
    ProxyJump bastion
    Port = "2200"

Match host web-1
    User never-applied

Host *
    Port 22
    User fallback
    ProxyJump none
"#;

    #[test]
    fn first_match_wins_per_keyword() {
        let cfg = SshConfig::parse(CONFIG).unwrap();
        let web1 = cfg.lookup("web-1");
        assert_eq!(web1.hostname.as_deref(), Some("web-1.internal.example"));
        assert_eq!(web1.port, Some(2222));
        // `User default-user` precedes every Host block.
        assert_eq!(web1.user.as_deref(), Some("default-user"));
        let home = home_dir().unwrap();
        assert_eq!(
            web1.identity_files,
            vec![home.join(".ssh/web_key"), PathBuf::from("/etc/keys/web1")]
        );
        assert_eq!(web1.proxy_jump.as_deref(), Some("none"));
    }

    /// Trailing comments end a line, as OpenSSH reads them; a `#` inside
    /// quotes or a word is kept.
    #[test]
    fn trailing_comments_are_not_values() {
        let cfg = SshConfig::parse(
            "Host web1 # prod\n  Port 2222 # ssh\n  HostName \"a#b.example\" # q\nHost x#y\n  User u\n",
        )
        .unwrap();
        let web1 = cfg.lookup("web1");
        assert_eq!(web1.port, Some(2222));
        assert_eq!(web1.hostname.as_deref(), Some("a#b.example"));
        assert_eq!(cfg.lookup("prod").port, None, "the comment is no pattern");
        assert_eq!(cfg.lookup("x#y").user.as_deref(), Some("u"));
    }

    #[test]
    fn negation_excludes_host() {
        let cfg = SshConfig::parse(CONFIG).unwrap();
        let legacy = cfg.lookup("web-legacy");
        assert_eq!(legacy.hostname, None);
        assert_eq!(legacy.port, Some(22));
    }

    #[test]
    fn question_mark_and_quotes() {
        let cfg = SshConfig::parse(CONFIG).unwrap();
        let db = cfg.lookup("db1");
        assert_eq!(db.proxy_jump.as_deref(), Some("bastion"));
        assert_eq!(db.port, Some(2200));
        let no = cfg.lookup("db10");
        assert_eq!(no.proxy_jump.as_deref(), Some("none"));
    }

    #[test]
    fn unknown_host_gets_only_star_and_globals() {
        let cfg = SshConfig::parse("Host a\n User x\n").unwrap();
        assert_eq!(cfg.lookup("b"), HostConfig::default());
        assert_eq!(cfg.lookup("A").user.as_deref(), Some("x"));
    }

    #[test]
    fn bad_port_is_an_error_with_line() {
        let err = SshConfig::parse("Host a\n  Port twenty\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }
}
