//! systemd units in the `failed` state, before a deploy and at rollback,
//! with those stuck restarting (`auto-restart`): switch-to-configuration
//! counts a unit in `auto-restart` after a non-zero exit as failed (its
//! exit 4) though systemd does not list it `failed`, and a rollback that
//! left one crash-looping was taken for "back where the host was" when
//! another unit had been failing before. One restarting on schedule after
//! a clean exit is listed too, for the instant it waits (`RestartSec`,
//! 100 ms by default): read then, it fails a rollback's exit 4 that had
//! another cause anyway.
//!
//! `switch-to-configuration` exits 4 when any unit is failed afterwards,
//! including units the bad candidate added and that stay failed (and loaded)
//! after its configuration is gone. Before a rollback, nixgate clears the
//! failed state of the units that failed during this deploy, so the old
//! system's own switch is judged on what it does; units that were failing
//! before the deploy are left as they were.

use std::collections::BTreeSet;

use crate::remote::{Command, Remote};

fn list_command(sudo: bool) -> Command {
    Command::new("systemctl")
        .args([
            "list-units",
            "--all",
            "--state=failed,auto-restart",
            "--plain",
            "--no-legend",
            "--no-pager",
        ])
        .sudo(sudo)
}

/// Parse `systemctl list-units --plain --no-legend` lines: the unit is the
/// first word (older systemd prefixes a `●` marker even with `--plain`).
pub fn parse(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| *w != "●" && *w != "*")
                .map(str::to_owned)
        })
        .collect()
}

/// The units failed on `remote` now.
pub async fn failed_units<R: Remote>(remote: &R, sudo: bool) -> anyhow::Result<BTreeSet<String>> {
    let out = remote
        .exec(&list_command(sudo))
        .await?
        .check("listing failed units")?;
    Ok(parse(&out.stdout_str()))
}

/// Clear the failed state of `units` (best effort is the caller's call).
pub async fn reset_failed<R: Remote>(
    remote: &R,
    sudo: bool,
    units: &BTreeSet<String>,
) -> anyhow::Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    remote
        .exec(
            &Command::new("systemctl")
                .arg("reset-failed")
                .arg("--")
                .args(units.iter().cloned())
                .sudo(sudo),
        )
        .await?
        .check("systemctl reset-failed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::scripted::{ScriptedRemote, ok};

    #[test]
    fn parses_plain_listing() {
        let t = "nixgate-test-broken.service loaded failed failed broken\n\
                 ● old.service loaded failed failed x\n\n";
        let u = parse(t);
        assert_eq!(
            u.into_iter().collect::<Vec<_>>(),
            ["nixgate-test-broken.service", "old.service"]
        );
    }

    #[tokio::test]
    async fn reset_names_units_after_double_dash() {
        let r = ScriptedRemote::new("h", |_| ok(""));
        let units: BTreeSet<String> = ["-x.service".to_string(), "a b.service".to_string()].into();
        reset_failed(&r, false, &units).await.unwrap();
        assert_eq!(
            r.argvs()[0],
            [
                "systemctl",
                "reset-failed",
                "--",
                "-x.service",
                "a b.service"
            ]
        );
        reset_failed(&r, false, &BTreeSet::new()).await.unwrap();
        assert_eq!(r.argvs().len(), 1, "nothing to reset, nothing sent");
    }
}
