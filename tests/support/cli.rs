//! Running the nixgate binary against a test fleet: its inventory, a state
//! directory inside the fleet, no SSH agent or ~/.ssh/config from the
//! machine, and no controlling terminal (`setsid`: a test run from a
//! terminal must never stop at a prompt; a prompt is tested through a pty).

use std::process::{Command, Output, Stdio};

use super::fleet::Fleet;

pub fn nixgate_cmd(fleet: &Fleet, args: &[&str]) -> Command {
    nixgate_cmd_with(fleet, &fleet.inventory_path(), args)
}

/// [`nixgate_cmd`] with another inventory than the fleet's own.
pub fn nixgate_cmd_with(fleet: &Fleet, inventory: &std::path::Path, args: &[&str]) -> Command {
    // setsid(1) execs nixgate in the same process (the child is no group
    // leader), so the child's pid is nixgate's.
    // By its path: some tests run nixgate with a PATH of a few tools only.
    let setsid = ["/usr/bin/setsid", "/bin/setsid"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("setsid");
    let mut c = Command::new(setsid);
    c.arg(env!("CARGO_BIN_EXE_nixgate"))
        .arg("-i")
        .arg(inventory)
        .arg("--state-dir")
        .arg(fleet.dir().join("state"))
        .args(args)
        .env("HOME", fleet.dir())
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null());
    c
}

pub fn nixgate(fleet: &Fleet, args: &[&str]) -> Output {
    nixgate_cmd(fleet, args).output().expect("nixgate runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
