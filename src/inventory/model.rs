//! The validated inventory: what nixgate knows about the fleet after the file
//! has been read, merged with `[defaults]` and checked.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a host receives its closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyMode {
    /// builder -> controller -> host, only the missing paths.
    Relay,
    /// The builder copies straight to the host.
    Builder,
    /// The host fetches from its own substituters.
    Substitute,
}

impl CopyMode {
    pub const NAMES: &'static [&'static str] = &["relay", "builder", "substitute"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "relay" => Some(CopyMode::Relay),
            "builder" => Some(CopyMode::Builder),
            "substitute" => Some(CopyMode::Substitute),
            _ => None,
        }
    }
}

/// The host's operating system family, which decides how activation runs.
pub use crate::activation::Os;

/// Names `os` accepts in the inventory.
pub const OS_NAMES: &[&str] = &["linux", "darwin"];

pub fn parse_os(s: &str) -> Option<Os> {
    match s {
        "linux" => Some(Os::Linux),
        "darwin" => Some(Os::Darwin),
        _ => None,
    }
}

/// How to reach a machine over SSH (a host or the builder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub address: String,
    /// `None`: not set in the inventory; `~/.ssh/config` may say, else root.
    pub user: Option<String>,
    /// `None`: not set in the inventory; `~/.ssh/config` may say, else 22.
    pub port: Option<u16>,
    /// `None`: ssh-agent (and `~/.ssh/config`'s IdentityFile) only.
    pub identity_file: Option<PathBuf>,
    pub known_hosts: PathBuf,
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
}

impl Connection {
    /// The user as the inventory resolves it (ssh config aside): root by default.
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("root")
    }

    /// The port as the inventory resolves it (ssh config aside): 22 by default.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(22)
    }
}

/// A check run on a host after live activation (and after a wave's soak).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// A shell snippet, run as `sh -c <command>` on the host.
    pub command: String,
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Extra attempts after the first failure.
    pub retries: u32,
}

/// Everything nixgate knows about one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub name: String,
    pub connection: Connection,
    pub tags: Vec<String>,
    #[serde(with = "secs")]
    pub activation_timeout: Duration,
    pub copy: CopyMode,
    pub profile: String,
    pub os: Os,
    /// Run privileged steps through `sudo -n`.
    pub sudo: bool,
    /// Accept only closures signed by a trusted key.
    pub require_signatures: bool,
    pub health_checks: Vec<HealthCheck>,
    /// The attribute that builds this host's system (template resolved).
    pub attribute: String,
    /// Arm a dead-man revert on the host before every live switch
    /// (`magic_rollback`, default true).
    pub magic_rollback: bool,
    /// How long the host waits for the controller's confirmation over a new
    /// connection before it reverts by itself.
    #[serde(with = "secs")]
    pub confirm_timeout: Duration,
    /// Where to confirm, when a deploy moves the host's SSH address or port.
    pub confirm: Option<ConfirmEndpoint>,
    /// How long the host's relay copy may make no progress (take no bytes,
    /// add no path, answer nothing) before it fails and the others go on.
    #[serde(with = "secs")]
    pub copy_stall_timeout: Duration,
    /// With `copy = "substitute"`: the caches the host fetches its closure
    /// from and the keys it trusts, for that one `nix-store --realise`
    /// (see [`Pull`]).
    pub pull: Pull,
    /// Commands run on the host before anything changes on it; one that
    /// fails refuses the host.
    pub pre_checks: Vec<HealthCheck>,
    /// Secrets written on the host, outside the Nix store.
    pub keys: Vec<crate::keys::KeySpec>,
    /// Its stdout is the sudo password (for `sudo = true` hosts whose sudo
    /// asks for one).
    pub sudo_password_command: Option<Vec<String>>,
}

/// `substituters` / `trusted_public_keys` of a host: passed to the host's
/// Nix as options of the one call that fetches the closure, never written to
/// its `nix.conf`. Empty: the host's own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pull {
    /// Store URIs (`http://cache.site:5000`, `s3://...`), exactly these.
    pub substituters: Vec<String>,
    /// `name:base64` Ed25519 public keys, exactly these.
    pub trusted_public_keys: Vec<String>,
}

/// `confirm_address` / `confirm_port` of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfirmEndpoint {
    pub address: Option<String>,
    pub port: Option<u16>,
}

/// The machine that evaluates and builds every closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Builder {
    pub connection: Connection,
    /// The configuration's git repository (local path on the controller).
    pub source: PathBuf,
    pub flake: bool,
    /// Attribute template; `{host}` is replaced by the host's name.
    pub attribute: String,
    /// A secret key file on the builder used to sign built closures.
    pub signing_key: Option<String>,
    /// Nix's distributed builds, as the builder's Nix is told to use them.
    pub remote: RemoteBuilds,
}

/// `remote_builders`, `builders_use_substitutes`, `max_jobs` of `[builder]`:
/// passed to the builder's Nix as options of the build (`--option builders
/// ...`); Nix's build hook sends derivations to those machines and brings
/// the results back to the builder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteBuilds {
    /// Nix machine specifications, one machine each
    /// (`ssh://root@10.0.0.5 x86_64-linux /etc/nix/builder-key 8 1 big-parallel`).
    pub machines: Vec<String>,
    /// Remote builders fetch inputs from their own substituters.
    pub use_substitutes: bool,
    /// Builds the builder runs itself at once (0: every build remote);
    /// `None`: its own `max-jobs`.
    pub max_jobs: Option<u32>,
}

/// `[cache]`: the binary cache the builder pushes every candidate's closure
/// to after the build, before any host is touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cache {
    /// Any store URI the builder's Nix accepts (`nix copy --to`).
    pub push_to: String,
    /// A secret key file on the builder; closures are signed with it first.
    pub signing_key: Option<String>,
}

/// A wave's failure budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxFailures {
    Count(usize),
    Percent(u8),
}

impl MaxFailures {
    /// How many failed hosts a wave of `size` hosts tolerates.
    pub fn allowed(&self, size: usize) -> usize {
        match *self {
            MaxFailures::Count(n) => n,
            MaxFailures::Percent(p) => size * usize::from(p) / 100,
        }
    }
}

/// A group of hosts deployed together; waves run in inventory order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wave {
    pub name: String,
    /// Member hosts in inventory order (names and tags resolved).
    pub hosts: Vec<String>,
    pub max_parallel: usize,
    pub max_failures: MaxFailures,
    #[serde(with = "secs")]
    pub soak: Duration,
    /// True for the implicit `rest` wave of hosts named by no wave.
    pub implicit: bool,
    /// A wave of tags left with no hosts: the hosts its tags match, every
    /// one in another wave that claimed it first (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taken: Vec<Taken>,
}

/// A host a wave's tags match that another wave has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taken {
    pub host: String,
    /// The wave it is in.
    pub wave: String,
}

impl Wave {
    /// Why this wave has no hosts, in words: "wave `web` has no hosts: its
    /// tags match only hosts of other waves (web1 and web2 are in wave
    /// `canary`)".
    pub fn why_empty(&self) -> String {
        let mut by_wave: Vec<(&str, Vec<&str>)> = Vec::new();
        for t in &self.taken {
            match by_wave.iter_mut().find(|(w, _)| *w == t.wave) {
                Some((_, hosts)) => hosts.push(&t.host),
                None => by_wave.push((&t.wave, vec![&t.host])),
            }
        }
        let where_: Vec<String> = by_wave
            .iter()
            .map(|(wave, hosts)| {
                let verb = if hosts.len() == 1 { "is" } else { "are" };
                format!("{} {verb} in wave `{wave}`", listed(hosts))
            })
            .collect();
        if where_.is_empty() {
            return format!("wave `{}` has no hosts", self.name);
        }
        format!(
            "wave `{}` has no hosts: its tags match only hosts of other waves ({})",
            self.name,
            where_.join("; ")
        )
    }
}

/// How many names [`listed`] spells out before "and N more".
const LISTED: usize = 5;

/// "a", "a and b", "a, b and c"; past [`LISTED`], "a, b, c, d, e and 3 more".
pub fn listed(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        _ if names.len() > LISTED => format!(
            "{} and {} more",
            names[..LISTED].join(", "),
            names.len() - LISTED
        ),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Where releases are pushed, if anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Release {
    pub remote: Option<String>,
}

/// `[notify]`: a controller-side command run after every push and
/// rollback with the run's summary (JSON) on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notify {
    /// The argv, run as it is (no shell).
    pub command: Vec<String>,
    /// Killed after this long (a warning, like any failure of it).
    #[serde(skip)]
    pub timeout: std::time::Duration,
}

/// A loaded, validated inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    pub path: PathBuf,
    pub builder: Builder,
    /// Hosts in file order.
    pub hosts: Vec<Host>,
    /// Waves in order, the implicit `rest` last when it has members.
    pub waves: Vec<Wave>,
    pub max_parallel: usize,
    pub release: Release,
    /// `[cache]`, when set.
    pub cache: Option<Cache>,
    pub notify: Option<Notify>,
}

impl Inventory {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn wave(&self, name: &str) -> Option<&Wave> {
        self.waves.iter().find(|w| w.name == name)
    }

    /// The wave a host belongs to.
    pub fn wave_of(&self, host: &str) -> Option<&Wave> {
        self.waves
            .iter()
            .find(|w| w.hosts.iter().any(|h| h == host))
    }

    /// The name of the wave `host` is in, `-` for none (reports).
    pub fn wave_name(&self, host: &str) -> String {
        self.wave_of(host)
            .map_or_else(|| "-".into(), |w| w.name.clone())
    }

    /// Every tag used by some host, sorted.
    pub fn tags(&self) -> Vec<&str> {
        let mut tags: Vec<&str> = self
            .hosts
            .iter()
            .flat_map(|h| h.tags.iter().map(String::as_str))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::super::duration::format(*d))
    }
}
