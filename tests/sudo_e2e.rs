//! sudo with a password on a real-systemd host: a non-root user `deploy`
//! whose sudo asks for a password (PAM, `deploy ALL=(ALL:ALL) ALL`), its
//! Nix through a nix-daemon that trusts it. `--ask-sudo-password`, answered
//! through a pseudo-terminal (`script(1)`), deploys the host through every
//! gate, the password in no argument (`ps`), output, state file or journal;
//! a wrong password from `sudo_password_command` refuses the host cleanly,
//! before anything on it changed.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cli::{check_json_lines, text};
use support::fleet::{Fleet, FleetSpec, fleet_script};

const PASSWORD: &str = "correct-horse-5e1f";
const WRONG: &str = "wrong-battery-0d9c";

/// Run a shell command in a host, with `stdin` on its stdin.
fn in_host_with(fleet: &Fleet, host: &str, cmd: &str, stdin: Stdio) {
    let out = Command::new(fleet_script())
        .arg("exec")
        .arg("--dir")
        .arg(fleet.dir())
        .arg(host)
        .args(["--", "/bin/sh", "-c", cmd])
        .stdin(stdin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "on {host}: `{cmd}`: {}",
        text(&out.stderr)
    );
}

/// The sudo package from this machine's apt (same Debian as the host's
/// base), downloaded once into the fleet directory.
fn sudo_deb(fleet: &Fleet) -> std::path::PathBuf {
    let dir = fleet.dir().join("debs");
    std::fs::create_dir_all(&dir).unwrap();
    let download = || {
        Command::new("apt-get")
            .args(["download", "-qq", "sudo"])
            .current_dir(&dir)
            .status()
            .unwrap()
            .success()
    };
    if !download() {
        assert!(
            Command::new("apt-get")
                .args(["update", "-qq"])
                .status()
                .unwrap()
                .success()
        );
        assert!(download(), "apt-get download sudo failed");
    }
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a sudo .deb")
}

/// sys1: sudo installed, user `deploy` (password [`PASSWORD`], sudo for
/// everything with a password), logging in with the fleet's key; a
/// nix-daemon that trusts it.
fn prepare(fleet: &Fleet) {
    let deb = std::fs::File::open(sudo_deb(fleet)).unwrap();
    in_host_with(
        fleet,
        "sys1",
        "cat >/tmp/sudo.deb && DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/sudo.deb >/dev/null",
        Stdio::from(deb),
    );
    fleet.in_host_ok(
        "sys1",
        &format!(
            "set -e
             useradd -m -s /bin/sh deploy
             echo 'deploy:{PASSWORD}' | chpasswd
             echo 'deploy ALL=(ALL:ALL) ALL' >/etc/sudoers.d/deploy
             chmod 0440 /etc/sudoers.d/deploy
             install -d -o deploy -m 0700 /home/deploy/.ssh
             install -o deploy -m 0600 /etc/ssh/nixgate_authorized_keys /home/deploy/.ssh/authorized_keys
             echo 'AuthorizedKeysFile /etc/ssh/nixgate_authorized_keys .ssh/authorized_keys' \
               >/etc/ssh/sshd_config.d/00-deploy.conf
             systemctl reload ssh
             echo 'trusted-users = root deploy' >>/etc/nix/nix.conf
             systemd-run --unit=nix-daemon-test /usr/bin/nix-daemon
             for i in $(seq 50); do [ -S /nix/var/nix/daemon-socket/socket ] && break; sleep 0.1; done"
        ),
    );
    // As deploy: sudo asks for a password, Nix works through the daemon.
    let no_pw = fleet.in_host("sys1", "su deploy -c 'sudo -n true' 2>&1; echo exit=$?");
    assert!(
        text(&no_pw.stdout).contains("password is required"),
        "{}",
        text(&no_pw.stdout)
    );
    fleet.in_host_ok(
        "sys1",
        "su deploy -c 'nix-store --verify-path $(readlink -e /run/current-system)'",
    );
}

/// The inventory with sys1 reached as `deploy` through sudo, plus `extra`.
fn as_deploy(fleet: &Fleet, extra: &str) {
    let inv = fleet.inventory_path();
    let src = std::fs::read_to_string(&inv).unwrap();
    let src = src.replace(
        "[hosts.sys1]\n",
        &format!("[hosts.sys1]\nuser = \"deploy\"\nsudo = true\n{extra}"),
    );
    std::fs::write(&inv, src).unwrap();
}

/// nixgate under `script(1)` (its own pseudo-terminal, nixgate's
/// controlling terminal): waits for the password prompt, types `answer`,
/// samples `ps` for the password until nixgate ends.
fn run_in_pty(fleet: &Fleet, args: &[&str], answer: &str) -> (i32, String, Vec<String>) {
    let mut words = vec![
        env!("CARGO_BIN_EXE_nixgate").to_string(),
        "-i".into(),
        fleet.inventory_path().display().to_string(),
        "--state-dir".into(),
        fleet.dir().join("state").display().to_string(),
    ];
    words.extend(args.iter().map(|s| s.to_string()));
    let line = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("HOME", fleet.dir())
        .env("TERM", "dumb")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&seen).contains("sudo password") {
        assert!(Instant::now() < deadline, "no prompt: {}", text(&seen));
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend(chunk);
        }
    }
    stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    let mut in_ps = Vec::new();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        let ps = Command::new("ps")
            .args(["-eo", "pid,args"])
            .output()
            .unwrap();
        in_ps.extend(
            text(&ps.stdout)
                .lines()
                .filter(|l| l.contains(answer))
                .map(str::to_owned),
        );
        while let Ok(chunk) = rx.try_recv() {
            seen.extend(chunk);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    reader.join().unwrap();
    while let Ok(chunk) = rx.try_recv() {
        seen.extend(chunk);
    }
    (status.code().unwrap_or(-1), text(&seen), in_ps)
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn a_sudo_password_asked_once_deploys_and_a_wrong_one_is_refused() {
    let fleet = Fleet::start(FleetSpec {
        light: 0,
        systemd: 1,
        builder: true,
    })
    .unwrap();
    prepare(&fleet);
    let before = fleet.in_host_ok("sys1", "readlink -e /run/current-system");
    fleet
        .commit_config(|v| v["defaults"]["generation"] = json!(1))
        .unwrap();

    // A wrong password (from sudo_password_command): refused in the plan,
    // one clear error, nothing on the host changed.
    let pw_file = fleet.dir().join("sudo-password");
    std::fs::write(&pw_file, format!("{WRONG}\n")).unwrap();
    as_deploy(
        &fleet,
        &format!(
            "sudo_password_command = [\"cat\", \"{}\"]\n",
            pw_file.display()
        ),
    );
    let out = support::cli::nixgate(&fleet, &["--json", "push", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let plan = lines.iter().find(|l| l["event"] == "plan_ready").unwrap();
    let sys1 = &plan["waves"][0]["planned"][0];
    assert_eq!(sys1["verdict"], "refused", "{sys1}");
    assert_eq!(sys1["refusal"]["cause"], "sudo");
    assert_eq!(sys1["refusal"]["check"]["kind"], "wrong_password");
    assert_eq!(
        fleet.in_host_ok("sys1", "readlink -e /run/current-system"),
        before
    );
    assert!(!text(&out.stdout).contains(WRONG) && !text(&out.stderr).contains(WRONG));
    let human = support::cli::nixgate(&fleet, &["push", "--yes"]);
    let err = text(&human.stderr);
    assert_eq!(human.status.code(), Some(1), "{err}");
    assert!(err.contains("sudo refused the password"), "{err}");
    assert!(!err.contains(WRONG), "{err}");

    // The right one, asked on the terminal: deployed through every gate.
    let inv = fleet.inventory_path();
    let src = std::fs::read_to_string(&inv).unwrap();
    let line = format!(
        "sudo_password_command = [\"cat\", \"{}\"]\n",
        pw_file.display()
    );
    std::fs::write(&inv, src.replace(&line, "")).unwrap();
    let (code, output, in_ps) = run_in_pty(
        &fleet,
        &["--json", "--ask-sudo-password", "push", "--yes"],
        PASSWORD,
    );
    assert!(in_ps.is_empty(), "the password in ps: {in_ps:#?}");
    assert!(
        !output.contains(PASSWORD),
        "the password was shown: {output}"
    );
    let json_part: String = output
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| l.trim().to_owned() + "\n")
        .collect();
    check_json_lines(&json_part);
    assert_eq!(code, 0, "{output}");
    let summary: Value = serde_json::from_str(json_part.lines().last().unwrap()).unwrap();
    assert_eq!(summary["hosts"][0]["outcome"], "known-good", "{summary}");
    let now = fleet.in_host_ok("sys1", "readlink -e /run/current-system");
    assert_ne!(now, before);

    // Nowhere in nixgate's files, nor in the host's journal.
    for entry in walk(&fleet.dir().join("state")) {
        let body = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned();
        assert!(
            !body.contains(PASSWORD) && !body.contains(WRONG),
            "{}",
            entry.display()
        );
    }
    let journal = fleet.in_host_ok("sys1", "journalctl --no-pager -o cat | tail -n 20000");
    assert!(journal.contains("sudo"), "the journal has sudo's lines");
    assert!(!journal.contains(PASSWORD) && !journal.contains(WRONG));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
