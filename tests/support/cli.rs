//! Running the nixgate binary against a test fleet: its inventory, a state
//! directory inside the fleet, and no SSH agent or ~/.ssh/config from the
//! machine.

use std::process::{Command, Output, Stdio};

use super::fleet::Fleet;

pub fn nixgate_cmd(fleet: &Fleet, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nixgate"));
    c.arg("-i")
        .arg(fleet.inventory_path())
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
