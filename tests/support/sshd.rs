//! Real OpenSSH servers and agents for integration tests: each [`Sshd`] is
//! `/usr/sbin/sshd -D -e` on its own random loopback address with a host
//! key, authorized_keys and config in a temp dir; each [`Agent`] is a real
//! `ssh-agent`. Drop kills them (and every process they forked), also on
//! panic.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nixgate::ssh::{HostKeyPolicy, SshTarget};

/// A running sshd.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub ip: Ipv4Addr,
    pub port: u16,
    extra: String,
    child: Option<Child>,
}

/// Generate a key with ssh-keygen; returns the private key path.
pub fn keygen(dir: &Path, name: &str, kind: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", name, "-f"])
        .arg(&path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    let out = cmd
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(out.status.success(), "ssh-keygen failed: {out:?}");
    path
}

pub fn pub_path(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.display()))
}

/// A free random address in 127.0.0.0/8 and port.
fn free_addr() -> (Ipv4Addr, u16) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().rotate_left(16);
    for i in 0..200u32 {
        let x = seed
            .wrapping_mul(2654435761)
            .wrapping_add(i.wrapping_mul(40503));
        let ip = Ipv4Addr::new(
            127,
            10 + (x % 200) as u8,
            ((x >> 8) % 250) as u8 + 1,
            ((x >> 16) % 250) as u8 + 1,
        );
        if let Ok(l) = TcpListener::bind((ip, 0)) {
            let port = l.local_addr().unwrap().port();
            return (ip, port);
        }
    }
    panic!("no free loopback address");
}

impl Sshd {
    pub fn start() -> Sshd {
        Self::start_with("")
    }

    /// Start with extra sshd_config lines (`%DIR%` is replaced by the temp dir).
    pub fn start_with(extra: &str) -> Sshd {
        std::fs::create_dir_all("/run/sshd")
            .expect("creating /run/sshd (privilege separation dir)");
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), "host_ed25519", "ed25519", "");
        std::fs::write(dir.path().join("authorized_keys"), "").unwrap();
        let (ip, port) = free_addr();
        let mut sshd = Sshd {
            extra: extra.replace("%DIR%", &dir.path().display().to_string()),
            dir,
            ip,
            port,
            child: None,
        };
        sshd.launch();
        sshd
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sshd_config")
    }

    fn launch(&mut self) {
        let d = self.dir.path().display();
        let config = format!(
            "ListenAddress {ip}:{port}\n\
             HostKey {d}/host_ed25519\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             AllowTcpForwarding yes\n\
             MaxStartups 100\n\
             LogLevel VERBOSE\n\
             {extra}\n",
            ip = self.ip,
            port = self.port,
            extra = self.extra,
        );
        std::fs::write(self.config_path(), config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sshd.log"))
            .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting /usr/sbin/sshd (openssh-server must be installed)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("sshd exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Allow this key (private key path; its `.pub` is read) to log in.
    pub fn authorize(&self, key: &Path) {
        let public = std::fs::read_to_string(pub_path(key)).unwrap();
        let mut existing =
            std::fs::read_to_string(self.dir.path().join("authorized_keys")).unwrap();
        existing.push_str(&public);
        std::fs::write(self.dir.path().join("authorized_keys"), existing).unwrap();
    }

    /// The host's public key in OpenSSH format.
    pub fn host_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// `[ip]:port <key>` (port is never 22 here).
    pub fn known_hosts_line(&self) -> String {
        let mut parts = self
            .host_key()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        parts.truncate(2);
        format!("[{}]:{} {}", self.ip, self.port, parts.join(" "))
    }

    /// A known_hosts file in the temp dir that trusts this server.
    pub fn known_hosts_file(&self) -> PathBuf {
        let path = self.dir.path().join("known_hosts");
        std::fs::write(&path, format!("{}\n", self.known_hosts_line())).unwrap();
        path
    }

    /// A target for this server: user root, the given key, known_hosts
    /// trusting it, no agent, 5 s timeout.
    pub fn target(&self, key: &Path) -> SshTarget {
        let mut t = SshTarget::new(format!("sshd-{}", self.port), self.ip.to_string());
        t.port = Some(self.port);
        t.user = Some("root".into());
        t.identity_files = vec![key.to_path_buf()];
        t.known_hosts = vec![self.known_hosts_file()];
        t.connect_timeout = Duration::from_secs(5);
        t.host_key_policy = HostKeyPolicy::Strict;
        t.use_agent = false;
        t
    }

    /// Kill sshd and every process it forked (connections, sessions): as
    /// if the host died.
    pub fn kill(&mut self) {
        self.thaw();
        if let Some(mut child) = self.child.take() {
            let mut pids = descendants(child.id());
            pids.push(child.id());
            for pid in &pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = child.wait();
        }
    }

    /// SIGSTOP sshd and everything it forked: connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// SIGCONT after [`Sshd::freeze`].
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, sig: &str) {
        if let Some(child) = &self.child {
            let mut pids = descendants(child.id());
            pids.push(child.id());
            for pid in pids {
                let _ = Command::new("kill")
                    .args([sig, &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// Start again on the same address, port and host key.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every process below `root`, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the `(comm)`: state ppid ...
            let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
                continue;
            };
            if let Some(ppid) = after
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// A real ssh-agent on a socket in a temp dir.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    child: Child,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client) must be installed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "ssh-agent did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent { dir, sock, child }
    }

    /// `ssh-add KEY` (a passphrase-protected key is unlocked through SSH_ASKPASS).
    pub fn add(&self, key: &Path, passphrase: &str) {
        let askpass = self.dir.path().join("askpass.sh");
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{passphrase}'\n")).unwrap();
        let _ = Command::new("chmod").arg("700").arg(&askpass).status();
        let out = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.sock)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-add failed: {out:?}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener that accepts connections and never says a word (a host
/// whose sshd hangs), alive until dropped.
pub struct SilentListener {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentListener {
    pub fn start() -> SilentListener {
        let (ip, port) = free_addr();
        let listener = TcpListener::bind((ip, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok((s, _)) = listener.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        SilentListener {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An address on loopback with nothing listening.
pub fn closed_addr() -> SocketAddr {
    let (ip, port) = free_addr();
    SocketAddr::from((ip, port))
}
