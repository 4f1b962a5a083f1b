//! Reading an inventory file: sections, defaults merged into hosts, waves
//! resolved. Every problem is collected with its position; semantic checks
//! that span several sections live in `validate`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use super::diag::{Diagnostic, Diagnostics};
use super::limits;
use super::model::*;
use super::scaleout;
use super::validate;
use super::walk::{At, Val, Walker, get, key_span};
use crate::keys::KeySpec;

mod keys;

const TOP_KEYS: &[&str] = &[
    "defaults", "builder", "hosts", "waves", "release", "cache", "notify",
];
const SETTING_KEYS: &[&str] = &[
    "user",
    "port",
    "identity_file",
    "known_hosts",
    "connect_timeout",
    "activation_timeout",
    "copy",
    "profile",
    "os",
    "sudo",
    "require_signatures",
    "health_checks",
    "magic_rollback",
    "confirm_timeout",
    "copy_stall_timeout",
    "substituters",
    "trusted_public_keys",
    "pre_checks",
    "keys",
    "sudo_password_command",
];
const DEFAULTS_ONLY_KEYS: &[&str] = &["max_parallel"];
const HOST_ONLY_KEYS: &[&str] = &[
    "address",
    "tags",
    "attribute",
    "confirm_address",
    "confirm_port",
];
const BUILDER_KEYS: &[&str] = &[
    "address",
    "user",
    "port",
    "identity_file",
    "known_hosts",
    "connect_timeout",
    "source",
    "flake",
    "attribute",
    "signing_key",
    "remote_builders",
    "builders_use_substitutes",
    "max_jobs",
];
const WAVE_KEYS: &[&str] = &[
    "name",
    "hosts",
    "tags",
    "max_parallel",
    "max_failures",
    "soak",
];
const CHECK_KEYS: &[&str] = &["command", "timeout", "retries"];
const KEY_KEYS: &[&str] = &[
    "name",
    "text",
    "file",
    "command",
    "dest_dir",
    "user",
    "group",
    "permissions",
    "upload_at",
];

/// How long a host waits for the controller to confirm a live switch over
/// a new connection before it reverts (`confirm_timeout`). A minute covers
/// an sshd restart and a fresh handshake over a slow link (measured on the
/// test fleet: confirm in 0.1-0.6 s after the switch settles), and keeps a
/// system that locked SSH out live for about a minute more (refused: at
/// once; dropped, or a handshake with no answer after it: 5 or 10 s
/// later, the first try's bounds, see `activation::pipeline::confirm`).
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a host's relay copy may go without progress (no bytes taken,
/// no path added, no answer) before that host's copy fails and the others
/// go on (`copy_stall_timeout`; with `copy = "builder"`, no byte written
/// by the builder's `nix-copy-closure`). A working host takes each path as it
/// arrives; what it does with none coming in is finish the last one
/// (metadata, `auto-optimise-store` hashing every file again: a 2 GiB path
/// at 20 MB/s is 100 s; `min-free` may run a collection first) or answer
/// what it lacks (2000 paths: 30 ms of CPU). Five minutes of nothing is a
/// store locked by another Nix process or a disk that stopped answering.
pub const DEFAULT_COPY_STALL_TIMEOUT: Duration = Duration::from_secs(300);

pub const DEFAULT_ATTRIBUTE: &str = "nixosConfigurations.{host}.config.system.build.toplevel";

/// Settings that `[defaults]` provides and a host may override.
#[derive(Default, Clone)]
struct Settings {
    user: Option<At<String>>,
    port: Option<At<i64>>,
    identity_file: Option<At<String>>,
    known_hosts: Option<At<String>>,
    connect_timeout: Option<At<Duration>>,
    activation_timeout: Option<At<Duration>>,
    max_parallel: Option<At<i64>>,
    copy: Option<At<CopyMode>>,
    profile: Option<At<String>>,
    os: Option<At<Os>>,
    sudo: Option<At<bool>>,
    require_signatures: Option<At<bool>>,
    health_checks: Option<Vec<HealthCheck>>,
    magic_rollback: Option<At<bool>>,
    confirm_timeout: Option<At<Duration>>,
    copy_stall_timeout: Option<At<Duration>>,
    substituters: Option<Vec<String>>,
    trusted_public_keys: Option<Vec<String>>,
    pre_checks: Option<Vec<HealthCheck>>,
    keys: Option<Vec<KeySpec>>,
    sudo_password_command: Option<Vec<String>>,
}

impl Settings {
    fn overlay(&self, over: &Settings) -> Settings {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            b.clone().or_else(|| a.clone())
        }
        Settings {
            user: pick(&self.user, &over.user),
            port: pick(&self.port, &over.port),
            identity_file: pick(&self.identity_file, &over.identity_file),
            known_hosts: pick(&self.known_hosts, &over.known_hosts),
            connect_timeout: pick(&self.connect_timeout, &over.connect_timeout),
            activation_timeout: pick(&self.activation_timeout, &over.activation_timeout),
            max_parallel: pick(&self.max_parallel, &over.max_parallel),
            copy: pick(&self.copy, &over.copy),
            profile: pick(&self.profile, &over.profile),
            os: pick(&self.os, &over.os),
            sudo: pick(&self.sudo, &over.sudo),
            require_signatures: pick(&self.require_signatures, &over.require_signatures),
            health_checks: pick(&self.health_checks, &over.health_checks),
            magic_rollback: pick(&self.magic_rollback, &over.magic_rollback),
            confirm_timeout: pick(&self.confirm_timeout, &over.confirm_timeout),
            copy_stall_timeout: pick(&self.copy_stall_timeout, &over.copy_stall_timeout),
            substituters: pick(&self.substituters, &over.substituters),
            trusted_public_keys: pick(&self.trusted_public_keys, &over.trusted_public_keys),
            pre_checks: pick(&self.pre_checks, &over.pre_checks),
            keys: merge_keys(&self.keys, &over.keys),
            sudo_password_command: pick(&self.sudo_password_command, &over.sudo_password_command),
        }
    }
}

/// `[defaults]` keys, then the host's own; a host key replaces the
/// default key of the same name.
fn merge_keys(base: &Option<Vec<KeySpec>>, over: &Option<Vec<KeySpec>>) -> Option<Vec<KeySpec>> {
    match (base, over) {
        (None, None) => None,
        (Some(b), None) => Some(b.clone()),
        (None, Some(o)) => Some(o.clone()),
        (Some(b), Some(o)) => {
            let mut out: Vec<KeySpec> = b
                .iter()
                .filter(|k| !o.iter().any(|x| x.name == k.name))
                .cloned()
                .collect();
            out.extend(o.iter().cloned());
            Some(out)
        }
    }
}

/// Resolves `~` and paths relative to the inventory's directory.
struct Paths {
    base: PathBuf,
    home: Option<PathBuf>,
}

impl Paths {
    fn resolve(&self, p: &str) -> PathBuf {
        if let Some(rest) = p.strip_prefix("~/")
            && let Some(home) = &self.home
        {
            return home.join(rest);
        }
        if p == "~"
            && let Some(home) = &self.home
        {
            return home.clone();
        }
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }
}

struct Loader {
    w: Walker,
    paths: Paths,
}

/// Parse and validate an inventory held in memory; `path` is used for
/// messages and to resolve relative paths.
pub fn parse(path: &Path, source: &str) -> Result<Inventory, Diagnostics> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let mut loader = Loader {
        w: Walker::default(),
        paths: Paths {
            base,
            // `HOME=""` is unset, as for ssh_config's `~/`.
            home: crate::ssh::config::home_dir(),
        },
    };
    let (doc, errors) = DeTable::parse_recoverable(source);
    let fail = |items: Vec<Diagnostic>, secrets| Diagnostics {
        path: path.to_path_buf(),
        source: source.to_owned(),
        items,
        secrets,
    };
    if !errors.is_empty() {
        let items = errors
            .iter()
            .map(|e| Diagnostic {
                message: format!("TOML syntax: {}", e.message().trim_end()),
                span: e.span(),
                help: None,
            })
            .collect();
        return Err(fail(items, super::diag::text_assignments(source)));
    }
    let inventory = loader.document(path, doc.get_ref());
    match inventory {
        Some(inv) if loader.w.diags.is_empty() => Ok(inv),
        _ => {
            let mut items = loader.w.diags;
            items.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
            Err(fail(items, loader.w.secrets))
        }
    }
}

impl Loader {
    fn document(&mut self, path: &Path, doc: &DeTable<'_>) -> Option<Inventory> {
        self.w.check_keys(doc, TOP_KEYS, "the inventory");
        let defaults = match get(doc, "defaults") {
            Some(v) => self
                .w
                .table("defaults", v)
                .map(|t| self.settings(t, "[defaults]", false))
                .unwrap_or_default(),
            None => Settings::default(),
        };
        let builder = match get(doc, "builder") {
            Some(v) => self.w.table("builder", v).and_then(|t| {
                // Found by `get`: the key is there.
                let at = key_span(doc, "builder").unwrap_or(0..0);
                self.builder(t, at, &defaults)
            }),
            None => {
                self.w.diags.push(Diagnostic {
                    message: "missing [builder] table: nixgate builds every closure on a builder"
                        .into(),
                    span: Some(0..0),
                    help: Some("add [builder] with at least `address = \"...\"`".into()),
                });
                None
            }
        };
        let hosts = match get(doc, "hosts") {
            Some(v) => self
                .w
                .table("hosts", v)
                .map(|t| self.hosts(t, &defaults, builder.as_ref()))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let max_parallel = defaults
            .max_parallel
            .as_ref()
            .map_or(10, |m| m.value as usize);
        let wave_specs = match get(doc, "waves") {
            Some(v) => self.waves(v, max_parallel),
            None => Vec::new(),
        };
        let release = match get(doc, "release") {
            Some(v) => self
                .w
                .table("release", v)
                .map(|t| self.release(t))
                .unwrap_or_default(),
            None => Release::default(),
        };
        let cache = get(doc, "cache")
            .and_then(|v| self.w.table("cache", v))
            .and_then(|t| scaleout::cache(&mut self.w, t));
        let notify = get(doc, "notify").and_then(|v| {
            let t = self.w.table("notify", v)?;
            self.notify(t, v.span())
        });
        let host_list: Vec<(At<String>, Host)> = hosts;
        let waves = validate::fleet(&mut self.w, &host_list, wave_specs, max_parallel);
        let builder = builder?;
        Some(Inventory {
            path: path.to_path_buf(),
            builder,
            hosts: host_list.into_iter().map(|(_, h)| h).collect(),
            waves,
            max_parallel,
            release,
            cache,
            notify,
        })
    }

    /// `[defaults]` (`host` false) or a host's own settings.
    fn settings(&mut self, t: &DeTable<'_>, section: &str, host: bool) -> Settings {
        let (extra, refused) = if host {
            (HOST_ONLY_KEYS, DEFAULTS_ONLY_KEYS)
        } else {
            (DEFAULTS_ONLY_KEYS, &[][..])
        };
        let allowed: Vec<&str> = SETTING_KEYS.iter().chain(extra).copied().collect();
        self.w.check_keys_but(t, &allowed, refused, section);
        let w = &mut self.w;
        let mut s = Settings::default();
        for (k, v) in t.iter() {
            let key: &str = k.get_ref();
            match key {
                "user" => s.user = w.string(key, v).filter(|u| validate::user(w, key, u)),
                "port" => s.port = w.integer(key, v, 1, 65535),
                "identity_file" => {
                    s.identity_file = w.string(key, v).filter(|u| validate::nonempty(w, key, u))
                }
                "known_hosts" => {
                    s.known_hosts = w.string(key, v).filter(|u| validate::nonempty(w, key, u))
                }
                "connect_timeout" => {
                    s.connect_timeout = w.duration(key, v, limits::CONNECT_TIMEOUT)
                }
                "activation_timeout" => {
                    s.activation_timeout = w.duration(key, v, limits::ACTIVATION_TIMEOUT)
                }
                // A host is one unit of work: a cap on hosts at once means
                // something for the fleet or a wave only.
                "max_parallel" if host => w.error_help(
                    format!("`max_parallel` is not a per-host setting (in {section})"),
                    k.span(),
                    "it caps how many hosts are worked on at once: set it in [defaults] (the whole run) or in a [[waves]] entry (that wave)",
                ),
                "max_parallel" => s.max_parallel = w.integer(key, v, 1, limits::MAX_PARALLEL),
                "copy" => s.copy = w.choice(key, v, CopyMode::NAMES, CopyMode::parse),
                "profile" => s.profile = w.string(key, v).filter(|p| validate::absolute(w, key, p)),
                "os" => s.os = w.choice(key, v, OS_NAMES, parse_os),
                "sudo" => s.sudo = w.boolean(key, v),
                "require_signatures" => s.require_signatures = w.boolean(key, v),
                "magic_rollback" => s.magic_rollback = w.boolean(key, v),
                "confirm_timeout" => {
                    s.confirm_timeout = w.duration(key, v, limits::CONFIRM_TIMEOUT)
                }
                "copy_stall_timeout" => {
                    s.copy_stall_timeout = w.duration(key, v, limits::COPY_STALL_TIMEOUT)
                }
                "substituters" => s.substituters = scaleout::store_uris(w, key, v),
                "trusted_public_keys" => s.trusted_public_keys = scaleout::public_keys(w, v),
                _ => {}
            }
        }
        if let Some(v) = get(t, "health_checks") {
            s.health_checks = Some(self.health_checks("health_checks", v));
        }
        if let Some(v) = get(t, "pre_checks") {
            s.pre_checks = Some(self.health_checks("pre_checks", v));
        }
        if let Some(v) = get(t, "keys") {
            s.keys = Some(self.keys(v));
        }
        if let Some(v) = get(t, "sudo_password_command") {
            s.sudo_password_command = self.argv("sudo_password_command", v);
        }
        s
    }

    /// A command as argv (no shell): a non-empty array of strings.
    fn argv(&mut self, key: &str, v: &Val<'_>) -> Option<Vec<String>> {
        let words = self.w.strings(key, v)?;
        if words.first().is_none_or(|w| w.value.is_empty()) {
            self.w.error_help(
                format!("`{key}` needs a program"),
                v.span(),
                "an argv, e.g. [\"pass\", \"show\", \"fleet/key\"]",
            );
            return None;
        }
        Some(words.into_iter().map(|w| w.value).collect())
    }

    /// `health_checks` or `pre_checks`: an array of commands, each a
    /// string or a table `{ command, timeout, retries }`.
    fn health_checks(&mut self, key: &str, v: &Val<'_>) -> Vec<HealthCheck> {
        let Some(items) = self.w.array(key, v) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            if let toml::de::DeValue::String(c) = item.get_ref() {
                let c = At::new(c.to_string(), item.span());
                if validate::nonempty(&mut self.w, key, &c) {
                    out.push(HealthCheck {
                        command: c.value,
                        timeout: Duration::from_secs(30),
                        retries: 0,
                    });
                }
                continue;
            }
            let Some(t) = self.w.table(key, item) else {
                continue;
            };
            self.w.check_keys(t, CHECK_KEYS, "a check");
            let command = match get(t, "command") {
                Some(c) => self
                    .w
                    .string("command", c)
                    .filter(|c| validate::nonempty(&mut self.w, "command", c)),
                None => {
                    self.w.error("check has no `command`", item.span());
                    None
                }
            };
            let timeout = get(t, "timeout")
                .and_then(|d| self.w.duration("timeout", d, limits::HEALTH_CHECK_TIMEOUT));
            let retries = get(t, "retries").and_then(|r| self.w.integer("retries", r, 0, 100));
            if let Some(command) = command {
                out.push(HealthCheck {
                    command: command.value,
                    timeout: timeout.map_or(Duration::from_secs(30), |t| t.value),
                    retries: retries.map_or(0, |r| r.value as u32),
                });
            }
        }
        out
    }

    fn connection(&self, address: String, s: &Settings) -> Connection {
        Connection {
            address,
            user: s.user.as_ref().map(|u| u.value.clone()),
            port: s.port.as_ref().map(|p| p.value as u16),
            identity_file: s
                .identity_file
                .as_ref()
                .map(|p| self.paths.resolve(&p.value)),
            known_hosts: self.paths.resolve(
                s.known_hosts
                    .as_ref()
                    .map_or("~/.ssh/known_hosts", |k| k.value.as_str()),
            ),
            connect_timeout: s
                .connect_timeout
                .as_ref()
                .map_or(Duration::from_secs(10), |d| d.value),
        }
    }

    /// `confirm_address` / `confirm_port`: where the host answers SSH after
    /// a deploy that moves it.
    fn confirm_endpoint(&mut self, t: &DeTable<'_>) -> Option<ConfirmEndpoint> {
        let address = get(t, "confirm_address").and_then(|v| {
            self.w
                .string("confirm_address", v)
                .filter(|a| validate::address(&mut self.w, a))
                .map(|a| a.value)
        });
        let port = get(t, "confirm_port")
            .and_then(|v| self.w.integer("confirm_port", v, 1, 65535))
            .and_then(|p| u16::try_from(p.value).ok());
        (address.is_some() || port.is_some()).then_some(ConfirmEndpoint { address, port })
    }

    fn address(
        &mut self,
        t: &DeTable<'_>,
        section: &str,
        span: std::ops::Range<usize>,
    ) -> Option<At<String>> {
        match get(t, "address") {
            Some(v) => self
                .w
                .string("address", v)
                .filter(|a| validate::address(&mut self.w, a)),
            None => {
                self.w.error_help(
                    format!("{section} has no `address`"),
                    span,
                    "add `address = \"host.example.org\"` (a name or IP)",
                );
                None
            }
        }
    }

    /// `[builder]`; `at`: its name in the file (where an error about the
    /// table as a whole points, as a host's does).
    fn builder(
        &mut self,
        t: &DeTable<'_>,
        at: std::ops::Range<usize>,
        defaults: &Settings,
    ) -> Option<Builder> {
        self.w.check_keys(t, BUILDER_KEYS, "[builder]");
        let address = self.address(t, "[builder]", at);
        // The builder shares connection settings with [defaults], overridable.
        let mut own = Settings::default();
        for (k, v) in t.iter() {
            let key: &str = k.get_ref();
            let w = &mut self.w;
            match key {
                "user" => own.user = w.string(key, v).filter(|u| validate::user(w, key, u)),
                "port" => own.port = w.integer(key, v, 1, 65535),
                "identity_file" => {
                    own.identity_file = w.string(key, v).filter(|u| validate::nonempty(w, key, u))
                }
                "known_hosts" => {
                    own.known_hosts = w.string(key, v).filter(|u| validate::nonempty(w, key, u))
                }
                "connect_timeout" => {
                    own.connect_timeout = w.duration(key, v, limits::CONNECT_TIMEOUT)
                }
                _ => {}
            }
        }
        let settings = defaults.overlay(&own);
        let source = get(t, "source").and_then(|v| {
            self.w
                .string("source", v)
                .filter(|s| validate::nonempty(&mut self.w, "source", s))
        });
        let flake = get(t, "flake").and_then(|v| self.w.boolean("flake", v));
        let attribute = get(t, "attribute").and_then(|v| {
            self.w
                .string("attribute", v)
                .filter(|a| validate::attribute(&mut self.w, a))
        });
        let signing_key = get(t, "signing_key").and_then(|v| {
            self.w
                .string("signing_key", v)
                .filter(|s| validate::absolute(&mut self.w, "signing_key", s))
        });
        let remote = scaleout::remote_builds(&mut self.w, t);
        let address = address?;
        Some(Builder {
            connection: self.connection(address.value, &settings),
            source: self
                .paths
                .resolve(source.as_ref().map_or(".", |s| s.value.as_str())),
            flake: flake.is_none_or(|f| f.value),
            attribute: attribute.map_or_else(|| DEFAULT_ATTRIBUTE.to_owned(), |a| a.value),
            signing_key: signing_key.map(|s| s.value),
            remote,
        })
    }

    fn hosts(
        &mut self,
        t: &DeTable<'_>,
        defaults: &Settings,
        builder: Option<&Builder>,
    ) -> Vec<(At<String>, Host)> {
        let mut out = Vec::new();
        let mut folded = std::collections::HashMap::<String, String>::new();
        for (k, v) in t.iter() {
            let name = At::new(k.get_ref().to_string(), k.span());
            validate::name(&mut self.w, "host", &name);
            if let Some(other) = folded.insert(name.value.to_ascii_lowercase(), name.value.clone())
            {
                self.w.error_help(
                    format!(
                        "host {:?} differs from host {other:?} only in case",
                        name.value
                    ),
                    name.span.clone(),
                    "a host's name is part of its release refs (release/<host>): on a \
                     case-insensitive file system (a macOS controller) the two would share them",
                );
            }
            let Some(ht) = self.w.table(&name.value, v) else {
                continue;
            };
            let section = format!("[hosts.{}]", name.value);
            let own = self.settings(ht, &section, true);
            let address = self.address(ht, &section, name.span.clone());
            let tags = get(ht, "tags")
                .and_then(|v| self.w.strings("tags", v))
                .unwrap_or_default();
            for tag in &tags {
                validate::name(&mut self.w, "tag", tag);
            }
            let attribute = get(ht, "attribute").and_then(|v| {
                self.w
                    .string("attribute", v)
                    .filter(|a| validate::nonempty(&mut self.w, "attribute", a))
            });
            let confirm = self.confirm_endpoint(ht);
            let s = defaults.overlay(&own);
            let Some(address) = address else { continue };
            validate::zone_reaches(&mut self.w, &address, s.copy.as_ref().map(|c| c.value));
            let template = attribute
                .map(|a| a.value)
                .or_else(|| builder.map(|b| b.attribute.clone()))
                .unwrap_or_else(|| DEFAULT_ATTRIBUTE.to_owned());
            let host = Host {
                name: name.value.clone(),
                connection: self.connection(address.value.clone(), &s),
                tags: tags.into_iter().map(|t| t.value).collect(),
                activation_timeout: s
                    .activation_timeout
                    .as_ref()
                    .map_or(Duration::from_secs(300), |d| d.value),
                copy: s.copy.as_ref().map_or(CopyMode::Relay, |c| c.value),
                profile: s.profile.as_ref().map_or_else(
                    || "/nix/var/nix/profiles/system".into(),
                    |p| p.value.clone(),
                ),
                os: s.os.as_ref().map_or(Os::Linux, |o| o.value),
                sudo: s.sudo.as_ref().is_some_and(|b| b.value),
                require_signatures: s.require_signatures.as_ref().is_some_and(|b| b.value),
                health_checks: s.health_checks.clone().unwrap_or_default(),
                attribute: template.replace("{host}", &name.value),
                magic_rollback: s.magic_rollback.as_ref().is_none_or(|b| b.value),
                confirm_timeout: s
                    .confirm_timeout
                    .as_ref()
                    .map_or(DEFAULT_CONFIRM_TIMEOUT, |d| d.value),
                confirm,
                copy_stall_timeout: s
                    .copy_stall_timeout
                    .as_ref()
                    .map_or(DEFAULT_COPY_STALL_TIMEOUT, |d| d.value),
                pull: Pull {
                    substituters: s.substituters.clone().unwrap_or_default(),
                    trusted_public_keys: s.trusted_public_keys.clone().unwrap_or_default(),
                },
                pre_checks: s.pre_checks.clone().unwrap_or_default(),
                keys: s.keys.clone().unwrap_or_default(),
                sudo_password_command: s.sudo_password_command.clone(),
            };
            out.push((At::new(address.value, address.span), host));
        }
        out
    }

    fn waves(&mut self, v: &Val<'_>, max_parallel: usize) -> Vec<validate::WaveSpec> {
        let Some(items) = self.w.array("waves", v) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            let Some(t) = self.w.table("waves", item) else {
                continue;
            };
            self.w.check_keys(t, WAVE_KEYS, "a [[waves]] entry");
            let name = match get(t, "name") {
                Some(n) => self.w.string("name", n),
                None => {
                    self.w
                        .error_help("wave has no `name`", item.span(), "add `name = \"canary\"`");
                    None
                }
            };
            if let Some(n) = &name {
                validate::name(&mut self.w, "wave", n);
            }
            let hosts = get(t, "hosts")
                .and_then(|v| self.w.strings("hosts", v))
                .unwrap_or_default();
            let tags = get(t, "tags")
                .and_then(|v| self.w.strings("tags", v))
                .unwrap_or_default();
            let wave_parallel = get(t, "max_parallel")
                .and_then(|v| self.w.integer("max_parallel", v, 1, limits::MAX_PARALLEL));
            let max_failures =
                get(t, "max_failures").and_then(|v| validate::max_failures(&mut self.w, v));
            let soak = get(t, "soak").and_then(|v| self.w.duration("soak", v, limits::SOAK));
            let Some(name) = name else { continue };
            out.push(validate::WaveSpec {
                name,
                span: item.span(),
                hosts,
                tags,
                max_parallel: wave_parallel.map_or(max_parallel, |m| m.value as usize),
                max_failures: max_failures.unwrap_or(MaxFailures::Count(0)),
                soak: soak.map_or(Duration::ZERO, |s| s.value),
            });
        }
        out
    }

    fn release(&mut self, t: &DeTable<'_>) -> Release {
        self.w.check_keys(t, &["remote"], "[release]");
        Release {
            remote: get(t, "remote")
                .and_then(|v| {
                    self.w
                        .string("remote", v)
                        .filter(|r| validate::git_remote(&mut self.w, r))
                })
                .map(|r| r.value),
        }
    }

    fn notify(&mut self, t: &DeTable<'_>, span: std::ops::Range<usize>) -> Option<Notify> {
        self.w.check_keys(t, &["command", "timeout"], "[notify]");
        let Some(v) = get(t, "command") else {
            self.w.error(
                "[notify] has no `command` (an argv: [\"program\", \"arg\", ...])",
                span,
            );
            return None;
        };
        let command: Vec<String> = self
            .w
            .strings("command", v)?
            .into_iter()
            .map(|a| a.value)
            .collect();
        if command.first().is_none_or(|p| p.is_empty()) {
            self.w.error(
                "[notify] `command` must name a program: [\"program\", \"arg\", ...]",
                v.span(),
            );
            return None;
        }
        let timeout =
            get(t, "timeout").and_then(|d| self.w.duration("timeout", d, limits::NOTIFY_TIMEOUT));
        Some(Notify {
            command,
            timeout: timeout.map_or(Duration::from_secs(60), |t| t.value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `HOME=""` is no home, as ssh_config's `~/` takes it: `~/.ssh/k`
    /// never becomes `.ssh/k`, relative to wherever the cron job runs.
    #[test]
    fn an_empty_home_is_no_home() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "inventory::load::tests::print_identity_file"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env("HOME", "")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("identity_file: </inv/~/.ssh/k>"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[ignore = "run by an_empty_home_is_no_home"]
    fn print_identity_file() {
        let src = "[builder]\naddress = \"b\"\n\n[hosts.web1]\naddress = \"10.0.0.1\"\nidentity_file = \"~/.ssh/k\"\n";
        let inv = parse(Path::new("/inv/inventory.toml"), src).unwrap();
        let key = inv.host("web1").unwrap().connection.identity_file.clone();
        println!("identity_file: <{}>", key.unwrap_or_default().display());
    }

    /// Two hosts whose names differ only in case are refused: on a
    /// case-insensitive file system (a macOS controller) their release refs
    /// are one file, and one host's release would move the other's branch.
    #[test]
    fn host_names_that_differ_only_in_case_are_refused() {
        let src = "[builder]\naddress = \"b\"\n[hosts.web1]\naddress = \"10.0.0.1\"\n[hosts.Web1]\naddress = \"10.0.0.2\"\n";
        let d = parse(Path::new("inv.toml"), src).expect_err("a clash");
        assert!(
            d.to_string()
                .contains("host \"Web1\" differs from host \"web1\" only in case"),
            "{d}"
        );
    }

    /// A `[builder]` without `address` is pointed at where the table is
    /// named, as a host's is, not at 1:1.
    #[test]
    fn a_builder_without_address_points_at_its_table() {
        let src = "[defaults]\nuser = \"deploy\"\n\n[builder]\nuser = \"root\"\n";
        let d = parse(Path::new("inv.toml"), src).expect_err("no address");
        assert!(d.to_string().contains("[builder] has no `address`"), "{d}");
        assert_eq!(d.positions(), vec![Some((4, 2))], "{d}");
    }
}
