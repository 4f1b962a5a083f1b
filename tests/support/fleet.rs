//! Test support: a local fleet of real hosts for nixgate's end-to-end tests.
//!
//! [`Fleet::start`] runs `scripts/fleet up` in a fresh temporary directory: light
//! hosts (real sshd in their own mount namespace, own Nix store, stand-in
//! systemd tools), an optional builder, and systemd hosts (`systemd-nspawn -b`
//! containers with real systemd). Dropping the [`Fleet`] runs `scripts/fleet down`
//! and removes the directory (set `NIXGATE_KEEP_FLEET=1` to keep it).
//!
//! Which Nix the hosts run is chosen by [`Bases`]: systemd hosts boot Debian
//! bookworm (Nix 2.8, systemd 252) or trixie (Nix 2.26, systemd 257); light
//! hosts and the builder run on this machine's own root (Debian 12, Nix 2.8)
//! or chrooted into one of those images. [`Fleet::start`] reads them from the
//! environment ([`Bases::from_env`]), so any end-to-end test runs on another
//! Nix, or with the builder on one Nix and the hosts on the other, unchanged:
//!
//! ```text
//! NIXGATE_TEST_BASE=trixie cargo test --test push_e2e          # everything on Nix 2.26
//! NIXGATE_TEST_BASE=trixie NIXGATE_TEST_BUILDER_BASE=host ...  # builder 2.8, hosts 2.26
//! NIXGATE_TEST_BUILDER_BASE=trixie ...                         # builder 2.26, hosts 2.8
//! ```
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail, ensure};

/// What to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetSpec {
    /// Light hosts `light1..=light`.
    pub light: usize,
    /// Real-systemd hosts `sys1..=systemd`.
    pub systemd: usize,
    /// One more light host named `builder`, the inventory's `[builder]`.
    pub builder: bool,
}

/// The root a kind of host runs on (`scripts/fleet up --*-base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Base {
    /// This machine's own root (Debian 12, Nix 2.8); light hosts and the builder only.
    #[default]
    Host,
    /// A Debian 12 image: Nix 2.8, systemd 252.
    Bookworm,
    /// A Debian 13 image: Nix 2.26, systemd 257.
    Trixie,
}

impl Base {
    pub fn parse(s: &str) -> anyhow::Result<Base> {
        match s {
            "host" => Ok(Base::Host),
            "bookworm" => Ok(Base::Bookworm),
            "trixie" => Ok(Base::Trixie),
            other => bail!("unknown fleet base {other:?} (host, bookworm or trixie)"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Base::Host => "host",
            Base::Bookworm => "bookworm",
            Base::Trixie => "trixie",
        }
    }

    /// The Nix release series it has (`nix-store --version`).
    pub fn nix(self) -> &'static str {
        match self {
            Base::Host | Base::Bookworm => "2.8",
            Base::Trixie => "2.26",
        }
    }
}

/// What each kind of host runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bases {
    /// Real-systemd hosts (never [`Base::Host`]: they boot an image).
    pub systemd: Base,
    /// Light hosts.
    pub light: Base,
    /// The builder.
    pub builder: Base,
}

impl Default for Bases {
    fn default() -> Self {
        Bases {
            systemd: Base::Bookworm,
            light: Base::Host,
            builder: Base::Host,
        }
    }
}

impl Bases {
    /// From `NIXGATE_TEST_SYSTEMD_BASE`, `NIXGATE_TEST_LIGHT_BASE`,
    /// `NIXGATE_TEST_BUILDER_BASE` (`host`, `bookworm`, `trixie`), each
    /// defaulting to `NIXGATE_TEST_BASE` when set (`host` means bookworm for
    /// systemd hosts), else to [`Bases::default`]; the builder defaults to the
    /// light hosts' base.
    pub fn from_env() -> anyhow::Result<Bases> {
        let var = |name: &str| -> anyhow::Result<Option<Base>> {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => Base::parse(&v).map(Some).context(name.to_owned()),
                _ => Ok(None),
            }
        };
        let all = var("NIXGATE_TEST_BASE")?;
        let d = Bases::default();
        let systemd = match var("NIXGATE_TEST_SYSTEMD_BASE")?.or(all) {
            None | Some(Base::Host) => d.systemd,
            Some(b) => b,
        };
        let light = var("NIXGATE_TEST_LIGHT_BASE")?.or(all).unwrap_or(d.light);
        let builder = var("NIXGATE_TEST_BUILDER_BASE")?.unwrap_or(light);
        Ok(Bases {
            systemd,
            light,
            builder,
        })
    }
}

/// Where a host listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub name: String,
    pub address: String,
    pub port: u16,
}

/// A running fleet; stopped on drop.
pub struct Fleet {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    hosts: Vec<HostInfo>,
    bases: Bases,
    stopped: bool,
}

/// `scripts/fleet` in this repository.
pub fn fleet_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fleet")
}

fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

impl Fleet {
    /// Starts a fleet in a fresh temporary directory (needs root), on the
    /// bases the environment names ([`Bases::from_env`]).
    pub fn start(spec: FleetSpec) -> anyhow::Result<Fleet> {
        Fleet::start_with(spec, Bases::from_env()?)
    }

    /// Starts a fleet on the given bases.
    pub fn start_with(spec: FleetSpec, bases: Bases) -> anyhow::Result<Fleet> {
        Fleet::start_extra(spec, bases, &[])
    }

    /// Starts a fleet on the bases the environment names, with more
    /// arguments to `scripts/fleet up` (e.g. `--small-nix sys5=16`).
    pub fn start_up_args(spec: FleetSpec, extra: &[&str]) -> anyhow::Result<Fleet> {
        Fleet::start_extra(spec, Bases::from_env()?, extra)
    }

    /// Starts a fleet with more `scripts/fleet up` options
    /// (`--remote-builder`, `--cache`, `--small-nix HOST=MIB`).
    pub fn start_extra(spec: FleetSpec, bases: Bases, extra: &[&str]) -> anyhow::Result<Fleet> {
        ensure!(
            bases.systemd != Base::Host,
            "systemd hosts boot an image: bookworm or trixie, not host"
        );
        let dir = tempfile::Builder::new()
            .prefix("nixgate-fleet-")
            .tempdir()
            .context("creating the fleet directory")?;
        let path = dir.path().to_path_buf();
        let mut cmd = Command::new(fleet_script());
        cmd.arg("up")
            .arg("--dir")
            .arg(&path)
            .arg("--light")
            .arg(spec.light.to_string())
            .arg("--systemd")
            .arg(spec.systemd.to_string());
        if spec.builder {
            cmd.arg("--builder");
        }
        cmd.args(["--systemd-base", bases.systemd.as_str()])
            .args(["--light-base", bases.light.as_str()])
            .args(["--builder-base", bases.builder.as_str()])
            .args(extra);
        eprintln!(
            "fleet bases: systemd hosts {} (Nix {}), light hosts {} (Nix {}), builder {} (Nix {})",
            bases.systemd.as_str(),
            bases.systemd.nix(),
            bases.light.as_str(),
            bases.light.nix(),
            bases.builder.as_str(),
            bases.builder.nix()
        );
        let mut fleet = Fleet {
            dir: Some(dir),
            path,
            hosts: Vec::new(),
            bases,
            stopped: false,
        };
        // On failure `fleet` is dropped, which runs `down` on whatever did start.
        let out = run_checked(&mut cmd, "scripts/fleet up")?;
        eprintln!("{}", String::from_utf8_lossy(&out.stderr).trim_end());
        fleet.hosts = fleet.read_hosts()?;
        fleet.check_nix_versions()?;
        Ok(fleet)
    }

    /// Each kind of host runs the Nix its base has (one host of each kind).
    fn check_nix_versions(&self) -> anyhow::Result<()> {
        let kinds = [
            ("builder", self.bases.builder),
            ("light", self.bases.light),
            ("sys", self.bases.systemd),
        ];
        for (prefix, base) in kinds {
            let Some(host) = self.hosts.iter().find(|h| h.name.starts_with(prefix)) else {
                continue;
            };
            let version = self.nix_version(&host.name)?;
            ensure!(
                version.starts_with(&format!("{}.", base.nix())),
                "{} runs Nix {version}, but its base {} has Nix {}",
                host.name,
                base.as_str(),
                base.nix()
            );
        }
        Ok(())
    }

    /// `nix-store --version` of a host, e.g. `2.26.3`.
    pub fn nix_version(&self, host: &str) -> anyhow::Result<String> {
        let out = self.in_host(host, "nix-store --version");
        ensure!(
            out.status.success(),
            "nix-store --version on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        text.trim()
            .strip_prefix("nix-store (Nix) ")
            .map(str::to_owned)
            .with_context(|| format!("{host}: unexpected nix-store --version {text:?}"))
    }

    fn read_hosts(&self) -> anyhow::Result<Vec<HostInfo>> {
        let env = std::fs::read_to_string(self.path.join("fleet.env"))?;
        let port = env
            .lines()
            .find_map(|l| l.strip_prefix("PORT="))
            .context("fleet.env has no PORT")?
            .trim()
            .parse::<u16>()?;
        let list = std::fs::read_to_string(self.path.join("hosts.list"))?;
        list.lines()
            .filter(|l| !l.is_empty())
            .map(|name| {
                let address =
                    std::fs::read_to_string(self.path.join("hosts").join(name).join("address"))?
                        .trim()
                        .to_string();
                Ok(HostInfo {
                    name: name.to_string(),
                    address,
                    port,
                })
            })
            .collect()
    }

    /// What each kind of host runs on.
    pub fn bases(&self) -> Bases {
        self.bases
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.path.join("inventory.toml")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.path.join("known_hosts")
    }

    pub fn identity(&self) -> PathBuf {
        self.path.join("id_ed25519")
    }

    /// The git repository the builder builds from (`[builder] source`).
    pub fn config_repo(&self) -> PathBuf {
        self.path.join("config")
    }

    /// All hosts, builder included.
    pub fn hosts(&self) -> &[HostInfo] {
        &self.hosts
    }

    /// A host by name; panics on an unknown name (a bug in the test).
    pub fn host(&self, name: &str) -> HostInfo {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no host {name} in the fleet at {}", self.path.display()))
    }

    /// The OpenSSH client with the fleet's key and known_hosts, in batch mode.
    pub fn ssh_command(&self, host: &str) -> Command {
        let h = self.host(host);
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(self.identity())
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts().display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=5",
                "-p",
            ])
            .arg(h.port.to_string())
            .arg(format!("root@{}", h.address))
            .arg("--");
        cmd
    }

    /// Runs a shell command on a host over ssh.
    pub fn ssh(&self, host: &str, cmd: &str) -> Output {
        self.ssh_command(host)
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("running ssh")
    }

    /// Runs a shell command directly inside the host's namespaces (no ssh).
    pub fn in_host(&self, name: &str, cmd: &str) -> Output {
        Command::new(fleet_script())
            .arg("exec")
            .arg("--dir")
            .arg(&self.path)
            .arg(name)
            .args(["--", "/bin/sh", "-c", cmd])
            .stdin(Stdio::null())
            .output()
            .expect("running scripts/fleet exec")
    }

    /// `in_host` that must succeed; returns trimmed stdout.
    pub fn in_host_ok(&self, name: &str, cmd: &str) -> String {
        let out = self.in_host(name, cmd);
        assert!(
            out.status.success(),
            "on {name}: `{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Edits `hosts.json` of the configuration repository and commits; returns the commit id.
    pub fn commit_config(
        &self,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> anyhow::Result<String> {
        let file = self.config_repo().join("hosts.json");
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file)?).context("parsing hosts.json")?;
        edit(&mut value);
        std::fs::write(&file, serde_json::to_string_pretty(&value)? + "\n")?;
        let git = |args: &[&str]| {
            let mut cmd = Command::new("git");
            cmd.arg("-C")
                .arg(self.config_repo())
                .args([
                    "-c",
                    "user.name=fleet",
                    "-c",
                    "user.email=fleet@nixgate.test",
                ])
                .args(args);
            cmd
        };
        run_checked(&mut git(&["add", "-A"]), "git add")?;
        run_checked(
            &mut git(&[
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "test edit of hosts.json",
            ]),
            "git commit",
        )?;
        let out = run_checked(&mut git(&["rev-parse", "HEAD"]), "git rev-parse")?;
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Builds a host's toplevel in the builder's store (over ssh, like nixgate does).
    pub fn build_on_builder(&self, host: &str) -> anyhow::Result<String> {
        let out = self
            .ssh_command("builder")
            .args([
                "nix-build",
                &self.config_repo().display().to_string(),
                "--no-out-link",
                "-A",
                &format!("nixosConfigurations.{host}.config.system.build.toplevel"),
            ])
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "building {host} on the builder failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Copies a store path's closure between two hosts through this process
    /// (`nix-store --export | nix-store --import`, both over ssh).
    pub fn copy_closure(&self, from: &str, to: &str, path: &str) -> anyhow::Result<()> {
        let mut export = self
            .ssh_command(from)
            .arg(format!("nix-store --export $(nix-store -qR {path})"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = export.stdout.take().context("export stdout")?;
        let import = self
            .ssh_command(to)
            .arg("nix-store --import >/dev/null")
            .stdin(stdout)
            .output()?;
        let exported = export.wait()?;
        ensure!(exported.success(), "export from {from} failed");
        ensure!(
            import.status.success(),
            "import into {to} failed: {}",
            String::from_utf8_lossy(&import.stderr)
        );
        Ok(())
    }

    /// Live processes of the fleet (empty after `stop`).
    pub fn processes(&self) -> anyhow::Result<Vec<u32>> {
        let out = run_checked(
            Command::new(fleet_script())
                .arg("pids")
                .arg("--dir")
                .arg(&self.path),
            "scripts/fleet pids",
        )?;
        String::from_utf8(out.stdout)?
            .split_whitespace()
            .map(|p| Ok(p.parse::<u32>()?))
            .collect()
    }

    /// Stops every process of the fleet (idempotent; also done on drop).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        run_checked(
            Command::new(fleet_script())
                .arg("down")
                .arg("--dir")
                .arg(&self.path),
            "scripts/fleet down",
        )?;
        self.stopped = true;
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if !self.stopped
            && let Err(e) = self.stop()
        {
            eprintln!(
                "stopping the fleet in {} failed: {e:#}",
                self.path.display()
            );
        }
        if std::env::var_os("NIXGATE_KEEP_FLEET").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("keeping the fleet directory {}", dir.keep().display());
        }
    }
}
