//! Where and how to connect: [`SshTarget`], filled from the inventory and
//! completed from `~/.ssh/config` (inventory values win).

use std::path::PathBuf;
use std::time::Duration;

use super::config::{SshConfig, expand_path, home_dir};
use super::known_hosts::SYSTEM_KNOWN_HOSTS;

/// What to do with a host whose key no known_hosts file lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Refuse, printing the exact line to add.
    #[default]
    Strict,
    /// Learn it by appending to the first known_hosts file (like
    /// `StrictHostKeyChecking=accept-new`); a *changed* key is still refused.
    AcceptNew,
}

/// One SSH destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Inventory name, for messages (`web1`, `builder`).
    pub name: String,
    /// Host name or address to connect to (an ssh config alias before
    /// [`SshTarget::apply_ssh_config`]).
    pub host: String,
    /// `None`: from ssh config, else 22.
    pub port: Option<u16>,
    /// `None`: from ssh config, else `$USER`, else `root`.
    pub user: Option<String>,
    /// Empty: from ssh config, else `~/.ssh/id_{ed25519,ecdsa,rsa}`.
    pub identity_files: Vec<PathBuf>,
    /// Empty: `~/.ssh/known_hosts`. `/etc/ssh/ssh_known_hosts` is always
    /// read too. Keys learned under [`HostKeyPolicy::AcceptNew`] go to the
    /// first file.
    pub known_hosts: Vec<PathBuf>,
    /// Bound on TCP connect + SSH handshake + authentication, per hop.
    pub connect_timeout: Duration,
    pub host_key_policy: HostKeyPolicy,
    /// Keepalive probe interval once connected; after 3 unanswered probes
    /// the connection counts as lost (a dead host is noticed in ~45 s by
    /// default, even while a long command is quiet).
    pub keepalive_interval: Duration,
    /// Reach this target through a `direct-tcpip` channel on that one.
    pub proxy_jump: Option<Box<SshTarget>>,
    /// Try the agent's keys first.
    pub use_agent: bool,
    /// The agent's socket; `None`: `$SSH_AUTH_SOCK`.
    pub agent_socket: Option<PathBuf>,
}

/// How often an idle connection is probed; [`super::connect::KEEPALIVE_MAX`]
/// probes unanswered and it counts as dead.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// How deep `ProxyJump` chains from ssh config may go.
const MAX_JUMPS: usize = 8;

impl SshTarget {
    /// A target with defaults: strict host keys, agent on, 10 s timeout.
    pub fn new(name: impl Into<String>, host: impl Into<String>) -> Self {
        SshTarget {
            name: name.into(),
            host: host.into(),
            port: None,
            user: None,
            identity_files: Vec::new(),
            known_hosts: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            host_key_policy: HostKeyPolicy::Strict,
            keepalive_interval: KEEPALIVE_INTERVAL,
            proxy_jump: None,
            use_agent: true,
            agent_socket: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(22)
    }

    /// `host:port` as messages write it, an IPv6 address in brackets
    /// (`[fe80::1]:22`: `fe80::1:22` reads as another address).
    pub fn address(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port()),
            false => format!("{}:{}", self.host, self.port()),
        }
    }

    /// The user to connect as: the inventory's or `ssh_config`'s, else the
    /// account nixgate runs as (as OpenSSH does; a cron job without `$USER`
    /// is still its own user, not root), `root` only when that has no name.
    pub fn user(&self) -> String {
        self.user
            .clone()
            .or_else(crate::account::name)
            .unwrap_or_else(|| "root".to_owned())
    }

    /// The agent socket to use, if any.
    pub fn agent_socket(&self) -> Option<PathBuf> {
        if !self.use_agent {
            return None;
        }
        self.agent_socket.clone().or_else(|| {
            std::env::var_os("SSH_AUTH_SOCK")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
    }

    /// Identity files to try: the configured ones, or OpenSSH's defaults.
    pub fn identity_files(&self) -> Vec<PathBuf> {
        if !self.identity_files.is_empty() {
            return self.identity_files.clone();
        }
        let Some(home) = home_dir() else {
            return Vec::new();
        };
        ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|f| home.join(".ssh").join(f))
            .collect()
    }

    /// The user's files (where new keys are learned) then the system file.
    pub fn known_hosts_files(&self) -> Vec<PathBuf> {
        let mut files = if self.known_hosts.is_empty() {
            home_dir()
                .map(|h| vec![h.join(".ssh").join("known_hosts")])
                .unwrap_or_default()
        } else {
            self.known_hosts.clone()
        };
        files.push(PathBuf::from(SYSTEM_KNOWN_HOSTS));
        files
    }

    /// Fill what the inventory left open from ssh config: `HostName`
    /// (resolves the alias), `Port`, `User`, `IdentityFile`, `ProxyJump`
    /// (each hop gets its own config lookup and inherits known_hosts,
    /// timeout, policy and agent use).
    pub fn apply_ssh_config(self, cfg: &SshConfig) -> Self {
        self.apply_depth(cfg, 0)
    }

    fn apply_depth(mut self, cfg: &SshConfig, depth: usize) -> Self {
        let found = cfg.lookup(&self.host);
        if let Some(hostname) = found.hostname {
            self.host = hostname;
        }
        self.port = self.port.or(found.port);
        self.user = self.user.or(found.user);
        if self.identity_files.is_empty() {
            self.identity_files = found.identity_files;
        }
        if self.proxy_jump.is_none() && depth < MAX_JUMPS {
            let hops: Vec<&str> = found
                .proxy_jump
                .as_deref()
                .filter(|v| !v.eq_ignore_ascii_case("none"))
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            // `ProxyJump a,b`: reach a, then b through a, then us through b.
            let mut previous: Option<Box<SshTarget>> = None;
            for (i, hop) in hops.into_iter().enumerate() {
                let jump = if i == 0 {
                    // The first hop may itself have a ProxyJump in ssh config.
                    self.hop(hop).apply_depth(cfg, depth + 1)
                } else {
                    let mut j = self.hop(hop).apply_depth(cfg, MAX_JUMPS);
                    j.proxy_jump = previous.take();
                    j
                };
                previous = Some(Box::new(jump));
            }
            self.proxy_jump = previous;
        }
        self
    }

    /// A jump host from a `[user@]host[:port]` spec, inheriting our policy.
    fn hop(&self, spec: &str) -> SshTarget {
        let spec = spec.strip_prefix("ssh://").unwrap_or(spec);
        let (user, rest) = match spec.rsplit_once('@') {
            Some((u, r)) => (Some(u.to_owned()), r),
            None => (None, spec),
        };
        let (host, port) = split_host_port(rest);
        SshTarget {
            name: format!("{} (jump host for {})", host, self.name),
            host,
            port,
            user,
            identity_files: Vec::new(),
            known_hosts: self.known_hosts.clone(),
            connect_timeout: self.connect_timeout,
            host_key_policy: self.host_key_policy,
            keepalive_interval: self.keepalive_interval,
            proxy_jump: None,
            use_agent: self.use_agent,
            agent_socket: self.agent_socket.clone(),
        }
    }
}

fn split_host_port(s: &str) -> (String, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host.to_owned(), port);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h.to_owned(), Some(port)),
            Err(_) => (s.to_owned(), None),
        },
        _ => (s.to_owned(), None),
    }
}

/// Expand `~/` in an inventory path.
pub fn expand_inventory_path(path: &str) -> PathBuf {
    expand_path(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cron job's environment, without `$USER` or `$LOGNAME`, as a
    /// non-root account: a host without `user` is reached as that account
    /// (as OpenSSH would), never as root. Needs root to become `nobody`.
    #[test]
    fn without_user_in_the_environment_the_account_is_the_processs() {
        use std::os::unix::process::CommandExt;
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let nobody = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&"65534")).then(|| f[0].to_owned())
        });
        let (Some(nobody), "0") = (nobody, crate::account::uid().as_str()) else {
            eprintln!("skipped: needs root and a uid 65534 in /etc/passwd");
            return;
        };
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "ssh::target::tests::print_default_user"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env_remove("USER")
            .env_remove("LOGNAME")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("default user: <{nobody}>")),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[ignore = "run by without_user_in_the_environment_the_account_is_the_processs"]
    fn print_default_user() {
        println!("default user: <{}>", SshTarget::new("h", "h").user());
    }

    const CFG: &str = "
Host web
    HostName 10.0.0.5
    User deploy
    Port 2222
    IdentityFile /keys/web
    ProxyJump admin@bastion:2200
Host bastion
    HostName 192.0.2.1
    IdentityFile /keys/bastion
Host deep
    ProxyJump one,two:23
";

    #[test]
    fn inventory_wins_over_config() {
        let cfg = SshConfig::parse(CFG).unwrap();
        let mut t = SshTarget::new("web", "web");
        t.user = Some("root".into());
        t.known_hosts = vec!["/kh".into()];
        let t = t.apply_ssh_config(&cfg);
        assert_eq!(t.host, "10.0.0.5");
        assert_eq!(t.user(), "root");
        assert_eq!(t.port(), 2222);
        assert_eq!(t.identity_files, vec![PathBuf::from("/keys/web")]);
        let jump = t.proxy_jump.expect("jump host from ProxyJump");
        assert_eq!(jump.host, "192.0.2.1");
        assert_eq!(jump.port(), 2200);
        assert_eq!(jump.user(), "admin");
        assert_eq!(jump.identity_files, vec![PathBuf::from("/keys/bastion")]);
        assert_eq!(jump.known_hosts, vec![PathBuf::from("/kh")]);
        assert!(jump.proxy_jump.is_none());
    }

    #[test]
    fn jump_chain_order() {
        let cfg = SshConfig::parse(CFG).unwrap();
        let t = SshTarget::new("deep", "deep").apply_ssh_config(&cfg);
        let two = t.proxy_jump.expect("last hop");
        assert_eq!((two.host.as_str(), two.port()), ("two", 23));
        let one = two.proxy_jump.expect("first hop");
        assert_eq!(one.host, "one");
        assert!(one.proxy_jump.is_none());
    }

    #[test]
    fn an_ipv6_address_is_written_in_brackets_before_its_port() {
        let mut t = SshTarget::new("v6", "fe80::1");
        assert_eq!(t.address(), "[fe80::1]:22");
        t.host = "10.0.0.5".into();
        t.port = Some(2222);
        assert_eq!(t.address(), "10.0.0.5:2222");
    }

    #[test]
    fn host_port_specs() {
        assert_eq!(split_host_port("h:22"), ("h".into(), Some(22)));
        assert_eq!(split_host_port("[::1]:2200"), ("::1".into(), Some(2200)));
        assert_eq!(split_host_port("::1"), ("::1".into(), None));
        assert_eq!(split_host_port("h"), ("h".into(), None));
    }
}
