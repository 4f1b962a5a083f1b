//! Seeing a rollout, on a real fleet (a builder, four light hosts; canary
//! light1, then light2..4): the HTML report of a run with a host rolled back
//! (light2: its switch fails units) and one deferred to the next boot
//! (light3: systemd changes), opened in headless Chromium (a screenshot is
//! kept under the target directory, the DOM is checked); the metrics file
//! of that run; `runs`, `show` and `report` over the state directory, a
//! killed run among its reports; `--keep`. One fleet for all of it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cli::{nixgate, nixgate_cmd, text};
use support::fleet::{Fleet, FleetSpec};

const HOSTILE: &str = "<script>alert(1)</script>";

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chromium is not installed: scripts/test installs it (apt-get install chromium)")
}

/// Headless Chromium on `page` with `args` (`--dump-dom`, `--screenshot=`):
/// its stdout, and how long it took.
fn headless(page: &Path, args: &[&str]) -> (String, Duration) {
    let profile = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1300,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(out.status.success(), "chromium: {}", text(&out.stderr));
    (text(&out.stdout), took)
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report_e2e");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `<g class="row" ...>...</g>` of `host` in a page or its DOM.
fn row<'a>(dom: &'a str, host: &str) -> &'a str {
    let start = dom
        .find(&format!(r#"<g class="row" data-host="{host}""#))
        .unwrap_or_else(|| panic!("no row for {host}"));
    let len = dom[start..].find("</g>").unwrap();
    &dom[start..start + len]
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `name{labels} value` lines of a metrics file.
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .collect()
}

fn promtool_check(file: &Path) {
    let promtool = match std::env::var_os("NIXGATE_PROMTOOL") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.exists(),
                "NIXGATE_PROMTOOL={} does not exist",
                p.display()
            );
            Some(p)
        }
        None => Some(PathBuf::from("/usr/bin/promtool")).filter(|p| p.exists()),
    };
    let Some(promtool) = promtool else {
        eprintln!(
            "skipped promtool: none installed (scripts/test unpacks Debian's prometheus); the unit tests' parser checks the format"
        );
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn a_rollout_seen_as_a_page_as_metrics_and_as_past_runs() {
    let fleet = Fleet::start(FleetSpec {
        light: 4,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let dir = fleet.dir();
    let (html1, html2, prom) = (
        dir.join("r1.html"),
        dir.join("r2.html"),
        dir.join("nixgate.prom"),
    );
    let outputs = |html: &Path| {
        vec![
            "--html-report".to_owned(),
            html.display().to_string(),
            "--metrics-file".to_owned(),
            prom.display().to_string(),
        ]
    };

    // Run 1: every host known-good (their known-goods are the commit the
    // flake inputs of run 2 are compared with).
    fleet
        .commit_config(|v| v["defaults"]["packages"]["hello"]["version"] = json!("2.12.2"))
        .unwrap();
    let mut args = vec!["push".to_owned(), "--yes".to_owned()];
    args.extend(outputs(&html1));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = nixgate(&fleet, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(html1.exists() && prom.exists());

    // Run 2: light2's switch fails units (rolled back), light3's systemd
    // changes (deferred to the next boot); a flake input with a hostile name.
    std::fs::write(
        fleet.config_repo().join("flake.lock"),
        json!({"nodes": {"root": {"inputs": {HOSTILE: HOSTILE}},
                HOSTILE: {"locked": {"rev": "0123456789abcdef0123456789abcdef01234567",
                                     "narHash": "sha256-x", "lastModified": 1}}},
               "root": "root", "version": 7})
        .to_string(),
    )
    .unwrap();
    fleet
        .commit_config(|v| {
            v["defaults"]["packages"]["nginx"]["version"] = json!("1.25.3");
            v["hosts"]["light2"] = json!({ "misbehaviour": "exit4" });
            v["hosts"]["light3"] = json!({ "systemdVersion": "256.1" });
        })
        .unwrap();
    let mut args = vec!["--json".to_owned(), "push".to_owned(), "--yes".to_owned()];
    args.extend(outputs(&html2));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = nixgate(&fleet, &args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let summary = json_lines(&out).pop().unwrap();
    let outcome = |h: &str| {
        summary["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["host"] == h)
            .unwrap()["outcome"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(outcome("light1"), "known-good");
    assert_eq!(outcome("light2"), "rolled-back");
    assert_eq!(outcome("light3"), "pending-reboot");
    assert_eq!(outcome("light4"), "known-good");
    let run2 = summary["run_id"].as_str().unwrap().to_owned();

    check_page(&html2);
    check_metrics(&prom);
    past_runs(&fleet, &run2);
}

/// The page of run 2 in Chromium: a row per host, light2's failed gate in
/// the failure colour, the hostile flake input escaped; a screenshot kept.
fn check_page(page: &Path) {
    let size = std::fs::metadata(page).unwrap().len();
    let shot = artifacts().join("report.png");
    let (_, took) = headless(page, &[&format!("--screenshot={}", shot.display())]);
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot"
    );
    let (dom, _) = headless(page, &["--dump-dom"]);
    eprintln!(
        "report: {size} bytes; chromium screenshot in {:.2} s: {}",
        took.as_secs_f64(),
        shot.display()
    );
    assert_eq!(
        dom.matches(r#"<g class="row""#).count(),
        4,
        "one row per host"
    );
    for (i, h) in ["light1", "light2", "light3", "light4"].iter().enumerate() {
        assert!(dom.contains(&format!(
            r#"<g class="row" data-host="{h}" data-wave="{}""#,
            if i == 0 { "canary" } else { "main" }
        )));
    }
    let light2 = row(&dom, "light2");
    let failed = light2
        .split("<rect ")
        .find(|r| r.contains(r#"data-result="failed""#))
        .unwrap_or_else(|| panic!("no failed bar: {light2}"));
    assert!(failed.contains(r##"fill="#cf222e""##), "{failed}");
    assert!(
        light2.contains(r#"data-gate="rollback" data-result="rolled-back""#),
        "{light2}"
    );
    assert!(row(&dom, "light3").contains(r#"data-gate="persist" data-result="deferred""#));
    assert!(
        row(&dom, "light1")
            .split("<rect ")
            .filter(|r| r.contains("data-gate"))
            .all(|r| r.contains(r#"data-result="passed""#))
    );
    // The hostile input is text, never an element: the page's own script
    // is the only one.
    assert_eq!(dom.matches("<script").count(), 1, "{dom}");
    assert!(!dom.contains(HOSTILE));
    assert!(
        dom.contains("flake input + &lt;script&gt;alert(1)&lt;/script&gt;"),
        "the diff shows it, escaped"
    );
}

/// The metrics file after run 2: promtool accepts it, one series per host.
fn check_metrics(prom: &Path) {
    promtool_check(prom);
    let m = std::fs::read_to_string(prom).unwrap();
    for name in [
        "nixgate_host_last_outcome",
        "nixgate_host_runs_known_good",
        "nixgate_host_pending_reboot",
        "nixgate_host_known_good_generation",
        "nixgate_host_known_good_timestamp_seconds",
    ] {
        let s = samples(&m, name);
        assert_eq!(s.len(), 4, "{name}: {s:?}");
        for h in ["light1", "light2", "light3", "light4"] {
            assert_eq!(
                s.iter()
                    .filter(|l| l.contains(&format!("host=\"{h}\"")))
                    .count(),
                1
            );
        }
    }
    assert!(
        m.contains(
            r#"nixgate_host_last_outcome{host="light2",wave="main",outcome="rolled-back"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains("nixgate_host_pending_reboot{host=\"light3\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("nixgate_host_runs_known_good{host=\"light2\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("nixgate_run_exit_code 1\n"), "{m}");
    // Generation 2: run 1 marked 1, run 2 marked 2.
    assert!(
        m.contains("nixgate_host_known_good_generation{host=\"light1\"} 2\n"),
        "{m}"
    );
    let gates: Vec<&str> = samples(&m, "nixgate_gate_duration_seconds")
        .into_iter()
        .filter(|l| l.contains("host=\"light1\""))
        .collect();
    assert!(gates.len() >= 7, "{gates:?}");
}

/// `runs`, `show` and `report` with a killed run among the reports; then
/// `--keep`.
fn past_runs(fleet: &Fleet, run2: &str) {
    // Run 3: killed (SIGKILL) while the canary's slow switch runs.
    fleet
        .commit_config(|v| {
            v["hosts"]["light1"] = json!({ "misbehaviour": "slow", "slowSeconds": 20 })
        })
        .unwrap();
    let mut child = nixgate_cmd(fleet, &["push", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while text(
        &fleet
            .in_host(
                "light1",
                "ls /run/fake-systemd 2>/dev/null | grep -c nixgate-switch || true",
            )
            .stdout,
    )
    .trim()
        == "0"
    {
        assert!(
            Instant::now() < deadline,
            "the canary never started switching"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let out = nixgate(fleet, &["runs"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three runs:\n{listed}");
    assert!(
        lines[1].contains("interrupted"),
        "newest first, the killed run interrupted:\n{listed}"
    );
    assert!(
        lines[2].starts_with(run2) && lines[2].contains("1 pending-reboot, 1 rolled-back"),
        "{listed}"
    );
    assert!(
        lines[3].contains("4 known-good") && lines[3].trim_end().ends_with('0'),
        "{listed}"
    );
    let out = nixgate(fleet, &["--json", "runs", "--limit", "2"]);
    let runs = json_lines(&out);
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["state"], "interrupted");
    let killed = runs[0]["run_id"].as_str().unwrap().to_owned();

    // show: the run as push printed it, from its stored events.
    let out = nixgate(fleet, &["show", run2]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("light2: live-activate FAILED"), "{shown}");
    assert!(shown.contains("wave main: 3 host(s)"), "{shown}");
    assert!(
        shown.contains("done: 2 known-good, 1 pending-reboot, 1 rolled-back, exit 1"),
        "{shown}"
    );
    let out = nixgate(fleet, &["--json", "show", &run2[..run2.len() - 2]]);
    let events = json_lines(&out);
    assert_eq!(events.last().unwrap()["event"], "summary");
    assert!(
        events
            .iter()
            .all(|e| e["event"] == "summary" || e["at_ms"].as_u64().is_some())
    );
    // The killed run: its events from the spool it left, no panic.
    for args in [
        vec!["show"],
        vec!["show", killed.as_str()],
        vec!["--json", "show", killed.as_str()],
    ] {
        let out = nixgate(fleet, &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("never finished"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(text(&nixgate(fleet, &["show", &killed]).stdout).contains("light1: copy passed"));
    let page = fleet.dir().join("killed.html");
    let out = nixgate(
        fleet,
        &["report", &killed, "--html", page.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (dom, _) = headless(&page, &["--dump-dom"]);
    assert!(
        row(&dom, "light1").contains(r#"data-result="unfinished""#),
        "{}",
        row(&dom, "light1")
    );
    let out = nixgate(fleet, &["show", "nosuchrun"]);
    assert_eq!(out.status.code(), Some(2));

    // Run 4 (light4 alone, already current) with --keep 3: the oldest goes.
    let out = nixgate(fleet, &["push", "--yes", "--keep", "3", "light4"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = nixgate(fleet, &["--json", "runs"]);
    let ids: Vec<String> = json_lines(&out)
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[1..], [killed, run2.to_owned()]);
}
