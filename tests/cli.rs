//! The CLI contract, run as a user would: the real binary, real files, exit
//! codes and messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn nixgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixgate"))
        .args(args)
        .env_remove("NIXGATE_INVENTORY")
        .env_remove("NIXGATE_STATE_DIR")
        .output()
        .expect("nixgate runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_inventory(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let out = nixgate(&["--help"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    for cmd in ["check", "hosts", "completions"] {
        assert!(s.contains(&format!("  {cmd} ")), "{cmd} missing from:\n{s}");
    }
    assert!(s.contains("3  another nixgate run holds the lock"), "{s}");
    for cmd in ["check", "hosts", "completions"] {
        assert!(nixgate(&[cmd, "--help"]).status.success(), "{cmd} --help");
    }
}

#[test]
fn check_offline_accepts_the_example() {
    let out = nixgate(&["check", "--offline", "-i", "inventory.example.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("valid: 5 hosts in 3 waves"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn broken_inventories_exit_2_naming_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "[builder]\naddress = \"b\"\n[hosts.web1]\nadress = \"1.2.3.4\"\n",
            ":4:1",
            "unknown key `adress`",
        ),
        (
            "[builder]\naddress = \"b\"\n[hosts.\"web 1\"]\naddress = \"1.2.3.4\"\n",
            ":3:8",
            "invalid host name \"web 1\"",
        ),
        (
            "[builder]\naddress = \"b\"\n[defaults]\nactivation_timeout = \"5 min\"\n",
            ":4:22",
            "invalid duration for `activation_timeout`",
        ),
        (
            "[builder]\naddress = \"b\"\n[hosts.a]\naddress = \"x\"\n[[waves]]\nname = \"w\"\nhosts = [\"b\"]\n",
            ":7:10",
            "wave `w` names unknown host `b`",
        ),
        (
            "[builder]\naddress = \"b\"\n[hosts.a]\naddress = \"x\"\n[hosts.c]\naddress = \"x\"\n",
            ":6:11",
            "duplicate address x:22",
        ),
    ];
    for (i, (body, pos, msg)) in cases.iter().enumerate() {
        let p = write_inventory(dir.path(), &format!("bad{i}.toml"), body);
        let out = nixgate(&["check", "--offline", "-i", p.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert!(
            err.contains(&format!("bad{i}.toml{pos}")),
            "case {i}: want {pos} in:\n{err}"
        );
        assert!(err.contains(msg), "case {i}: want {msg:?} in:\n{err}");
        assert!(err.contains('^'), "case {i}: no caret in:\n{err}");
    }
}

#[test]
fn json_errors_are_events() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_inventory(
        dir.path(),
        "bad.toml",
        "[builder]\naddress = \"b\"\nflake = \"yes\"\n",
    );
    let out = nixgate(&["--json", "check", "--offline", "-i", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "the error and the summary: {lines:?}");
    let v = &lines[0];
    assert_eq!(v["event"], "inventory_error");
    assert_eq!(v["line"], 3);
    assert_eq!(v["column"], 9);
    assert_eq!(lines[1]["event"], "summary");
    assert_eq!(lines[1]["exit_code"], 2);
    assert_eq!(lines[1]["ending"], "invalid");
}

/// `exec --parallel` out of 1..=10000 is a usage error (exit 2), never a
/// panic (`usize::MAX` crashed the runner's semaphore: exit 101).
#[test]
fn exec_parallel_out_of_range_is_a_usage_error() {
    for n in ["0", "10001", "18446744073709551615", "x"] {
        let out = nixgate(&["exec", "--parallel", n, "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{n}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("from 1 to 10000"),
            "{n}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn missing_inventory_is_a_usage_error() {
    let out = nixgate(&["hosts", "-i", "/nonexistent/inventory.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read inventory /nonexistent/inventory.toml"));
}

#[test]
fn hosts_by_wave_tag_and_name() {
    let out = nixgate(&["hosts", "--wave", "canary", "-i", "inventory.example.toml"]);
    assert!(out.status.success());
    let rows: Vec<String> = text(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].starts_with("canary  web1  10.0.0.11"), "{rows:?}");

    let out = nixgate(&[
        "hosts",
        "--tag",
        "us",
        "db1",
        "-i",
        "inventory.example.toml",
    ]);
    let hosts: Vec<String> = text(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(hosts, ["web3", "db1"]);

    let out = nixgate(&["--json", "hosts", "-i", "inventory.example.toml"]);
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "five hosts and the summary");
    assert_eq!(lines[4]["wave"], "rest");
    assert_eq!(lines[4]["host"], "mac1");
    assert_eq!(lines[5]["event"], "summary");
    assert_eq!(lines[5]["ok"], 5);

    let out = nixgate(&["hosts", "--wave", "canry", "-i", "inventory.example.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("did you mean `canary`?"));

    // An empty `--on` (an unset variable) is a usage error, never the
    // whole fleet (it listed every host, exit 0).
    for on in ["", " , "] {
        let out = nixgate(&["hosts", "--on", on, "-i", "inventory.example.toml"]);
        assert_eq!(out.status.code(), Some(2), "{on:?}");
        assert!(text(&out.stderr).contains("names no host or tag"), "{on:?}");
        assert!(out.stdout.is_empty(), "{on:?}");
    }
}

/// What bash offers for the words typed so far, through the script
/// `nixgate completions bash` prints (a real bash, its completion function
/// called as bash calls it on Tab).
fn bash_offers(words: &[&str]) -> Vec<String> {
    let bin = Path::new(env!("CARGO_BIN_EXE_nixgate")).parent().unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source <(nixgate completions bash) || exit 9
COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; COMP_TYPE=9
_clap_complete_nixgate nixgate \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"
printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = quoted.join(" ")
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env_remove("NIXGATE_INVENTORY")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_in_bash_know_the_inventory() {
    let inv = "inventory.example.toml";
    assert_eq!(
        bash_offers(&["nixgate", "-i", inv, "push", "--host", "web"]),
        ["web1", "web2", "web3"]
    );
    assert_eq!(bash_offers(&["nixgate", "-i", inv, "status", "d"]), ["db1"]);
    assert_eq!(
        bash_offers(&["nixgate", "-i", inv, "push", "--wave", ""]),
        ["canary", "web", "rest"]
    );
    assert!(bash_offers(&["nixgate", "-i", inv, "plan", "--tag", ""]).contains(&"us".to_owned()));
    assert_eq!(
        bash_offers(&["nixgate", "push", "--goal", ""]),
        ["copy", "dry-activate", "test", "boot", "switch", "gated"]
    );
    // Without -i: $NIXGATE_INVENTORY, else ./inventory.toml (none here).
    assert!(bash_offers(&["nixgate", "push", "--host", "web"]).is_empty());
    assert_eq!(bash_offers(&["nixgate", "pu"]), ["push"]);
}

#[test]
fn output_through_a_pipe_has_no_control_characters() {
    let out = nixgate(&["hosts", "-i", "inventory.example.toml"]);
    assert!(!out.stdout.contains(&0x1b), "escape codes in piped output");
}

#[test]
fn hostile_inventories_exit_2_naming_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = "[builder]\naddress = \"b\"\n";
    let cases: &[(String, &str, &str)] = &[
        (
            format!("{b}connect_timeout = \"10000000000000000000s\"\n"),
            ":3:19",
            "`connect_timeout` = \"10000000000000000000s\" is longer than its maximum, 10m",
        ),
        (
            format!(
                "{b}[defaults]\nhealth_checks = [{{ command = \"true\", timeout = \"99999d\" }}]\n"
            ),
            ":4:48",
            "`timeout` = \"99999d\" is longer than its maximum, 1h",
        ),
        (
            format!(
                "{b}[hosts.a]\naddress = \"10.0.0.1\"\nuser = \"-oProxyCommand=touch /tmp/x\"\n"
            ),
            ":5:8",
            "invalid `user` \"-oProxyCommand=touch /tmp/x\": it starts with '-'",
        ),
        (
            format!("{b}[release]\nremote = \"--receive-pack=touch /tmp/x\"\n"),
            ":4:10",
            "invalid `remote` \"--receive-pack=touch /tmp/x\": it starts with '-'",
        ),
        (
            format!("{b}[hosts.a]\naddress = \"[127.0.0.2]:22\"\n"),
            ":4:11",
            "invalid address \"[127.0.0.2]:22\": it has brackets",
        ),
        (
            format!("{b}[hosts.a]\naddress = \"10.0.0.1\"\nmax_parallel = 4\n"),
            ":5:1",
            "`max_parallel` is not a per-host setting",
        ),
    ];
    for (i, (body, pos, msg)) in cases.iter().enumerate() {
        let p = write_inventory(dir.path(), &format!("hostile{i}.toml"), body);
        let out = nixgate(&["check", "--offline", "-i", p.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert!(
            err.contains(&format!("hostile{i}.toml{pos}")),
            "case {i}: want {pos} in:\n{err}"
        );
        assert!(err.contains(msg), "case {i}: want {msg:?} in:\n{err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
    }
}

#[test]
fn an_endless_or_huge_inventory_is_refused_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    // A sparse file: 17 MiB of zeros that take no disk.
    let big = dir.path().join("big.toml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(17 * 1024 * 1024)
        .unwrap();
    for path in ["/dev/zero", big.to_str().unwrap()] {
        let out = nixgate(&["check", "--offline", "-i", path]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {err}");
        assert!(
            err.contains(&format!(
                "cannot read inventory {path}: it is larger than 16 MiB, the most nixgate reads"
            )),
            "{path}: {err}"
        );
    }
}

#[test]
fn thousands_of_errors_print_the_first_hundred_then_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = String::from("[builder]\naddress = \"b\"\n");
    for i in 0..8000 {
        body.push_str(&format!("[hosts.h{i}]\nzz = 1\n"));
    }
    let p = write_inventory(dir.path(), "many.toml", &body);
    let out = nixgate(&["check", "--offline", "-i", p.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.matches("error: ").count(), 100, "{err}");
    assert!(err.contains("... and 15900 more errors"), "{err}");
    assert!(
        err.trim_end()
            .ends_with(&format!("16000 errors in {}", p.display())),
        "{err}"
    );
    // --json still reports every one, each with its position.
    let out = nixgate(&["--json", "check", "--offline", "-i", p.to_str().unwrap()]);
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 16000 + 1, "every error, then the summary");
    assert_eq!(lines[16000]["event"], "summary");
    assert_eq!(lines[15998]["line"], 2 + 2 * 7999 + 1);
    assert_eq!(lines[15999]["line"], 2 + 2 * 7999 + 2);
}

#[test]
fn a_state_dir_that_is_a_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_inventory(dir.path(), "not-a-dir", "x");
    let under = file.join("state");
    for state in [&file, &under] {
        let out = nixgate(&[
            "--yes",
            "rollback",
            "-i",
            "inventory.example.toml",
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", state.display());
        assert!(
            err.contains(&format!("the state directory {}", state.display())),
            "{err}"
        );
        assert!(err.contains("not a directory"), "{err}");
    }
}

/// README's "JSON events" shows one line of every event nixgate writes,
/// each valid for a strict parser.
#[test]
fn the_documented_event_schema_is_every_event_and_strict_json() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("### JSON events").expect("the section")..];
    let block = &section[section.find("```json\n").expect("a json block") + 8..];
    let block = &block[..block.find("```").unwrap()];
    let mut names = Vec::new();
    for line in block.lines() {
        nixgate::report::json::check_strict(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        names.push(v["event"].as_str().expect("an event name").to_owned());
    }
    let mut documented = names.clone();
    documented.sort();
    documented.dedup();
    assert_eq!(documented.len(), names.len(), "one line per event");
    let mut known: Vec<String> = nixgate::report::event::EVENT_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    known.sort();
    assert_eq!(documented, known);
}

/// A wave of tags only whose tagged hosts are all in an earlier wave has
/// no hosts: `check` warns about it, and `--wave` naming it is a usage
/// error naming the hosts and where they are, not a run that does nothing.
#[test]
fn a_wave_left_with_no_hosts_is_a_usage_error_and_check_warns() {
    let dir = tempfile::tempdir().unwrap();
    let inv = write_inventory(
        dir.path(),
        "inv.toml",
        "[builder]\naddress = \"b.invalid\"\n\
         [hosts.web1]\naddress = \"10.0.0.1\"\ntags = [\"web\"]\n\
         [hosts.web2]\naddress = \"10.0.0.2\"\ntags = [\"web\"]\n\
         [hosts.db1]\naddress = \"10.0.0.3\"\n\
         [[waves]]\nname = \"canary\"\nhosts = [\"web1\", \"web2\"]\n\
         [[waves]]\nname = \"web\"\ntags = [\"web\"]\n",
    );
    let inv = inv.to_str().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    for args in [
        &["hosts", "--wave", "web", "-i", inv][..],
        &[
            "push",
            "--yes",
            "--wave",
            "web",
            "-i",
            inv,
            "--state-dir",
            state,
        ][..],
    ] {
        let out = nixgate(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("wave `web` has no hosts"), "{err}");
        assert!(err.contains("web1 and web2 are in wave `canary`"), "{err}");
    }
    // Other waves still select as before.
    let out = nixgate(&["hosts", "--wave", "canary", "-i", inv]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = nixgate(&["check", "--offline", "-i", inv]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("wave `web` has no hosts"), "{all}");
}

/// A repository with one commit and a release of it for `web1`, and an
/// inventory of web1 and web2 shipping from it (the builder refuses
/// connections: nothing gets that far).
fn released_fleet(dir: &Path) -> PathBuf {
    let repo = dir.join("config");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.org")
            .env("GIT_COMMITTER_NAME", "Author")
            .env("GIT_COMMITTER_EMAIL", "author@example.org")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        text(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("flake.nix"), "{}\n").unwrap();
    git(&["add", "flake.nix"]);
    git(&["commit", "-q", "-m", "initial"]);
    let req = nixgate::release::ReleaseRequest {
        target: "web1".into(),
        commit: git(&["rev-parse", "HEAD"]),
        dirty: false,
        closure: nixgate::nix::StorePath::parse(
            "/nix/store/0123456789abcdfghijklmnpqrsvwxya-nixos-system-web1-25.05",
        )
        .unwrap(),
        builder: "builder1".into(),
        run_id: "20261122T202900Z-3f9a".into(),
        evidence: nixgate::release::Evidence { gates: vec![] },
        force: false,
        at: None,
    };
    nixgate::release::create(&repo, &req).unwrap();
    write_inventory(
        dir,
        "inv.toml",
        &format!(
            "[builder]\naddress = \"127.0.0.1\"\nport = 1\nconnect_timeout = \"2s\"\nsource = {:?}\n\
             [hosts.web1]\naddress = \"127.0.0.2\"\nport = 1\n\
             [hosts.web2]\naddress = \"127.0.0.3\"\nport = 1\n",
            repo.to_str().unwrap()
        ),
    )
}

/// `push --release` deploys the release's host only: a selector naming
/// other hosts, or `--expect`, would be dropped without a word, so both are
/// usage errors saying what to do.
#[test]
fn push_release_with_other_hosts_or_expect_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let inv = released_fleet(dir.path());
    let inv = inv.to_str().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let base = ["push", "--yes", "--release", "release/web1", "-i", inv];
    let cases: &[(&[&str], &str)] = &[
        (&["web2"], "the selection picks web2"),
        (&["--host", "web*"], "the selection picks web1 and web2"),
        (&["--expect", "nginx"], "--expect"),
    ];
    for (extra, says) in cases {
        let args: Vec<&str> = base
            .iter()
            .chain(*extra)
            .chain(&["--state-dir", state])
            .copied()
            .collect();
        let out = nixgate(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(err.contains("release/web1"), "{extra:?}: {err}");
        assert!(!dir.path().join("state").join("runs").exists(), "{err}");
    }
    // Naming the release's host alone is what --release does anyway: it
    // goes on (to find web1 unreachable, exit 1).
    let args: Vec<&str> = base
        .iter()
        .chain(&["web1", "--state-dir", state])
        .copied()
        .collect();
    let out = nixgate(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// A stored run report: `ending` as given (`None`: a report written before
/// nixgate stored it).
fn run_report(state: &Path, id: &str, ending: Option<&str>, exit_code: u8, hosts: &str) {
    let ending = ending.map_or(String::new(), |e| format!("\"ending\":\"{e}\","));
    let body = format!(
        r#"{{"run_id":"{id}","command":"push","goal":"gated","commit":null,"dirty":false,"user":null,"started":"2026-11-22T20:30:00Z","finished":"2026-11-22T20:30:05Z",{ending}"exit_code":{exit_code},"selected":["web1"],"hosts":{hosts},"events":[]}}"#
    );
    std::fs::create_dir_all(state.join("runs")).unwrap();
    std::fs::write(state.join("runs").join(format!("{id}.json")), body).unwrap();
}

/// `show --json` ends with the summary the run ended with: its stored
/// ending (a declined run is `declined`), and for a report older than the
/// stored ending what can be told from it, else `unknown`.
#[test]
fn show_json_writes_the_runs_own_ending() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let not_started = r#"[{"host":"web1","wave":"rest","closure":null,"end":"not_started","why":{"reason":"cancelled"},"seconds":0.0,"pending_reboot_allowed":false}]"#;
    run_report(state, "20261122T203000Z-0001", Some("declined"), 4, "[]");
    run_report(state, "20261122T203000Z-0002", None, 4, "[]");
    run_report(state, "20261122T203000Z-0003", None, 1, not_started);
    run_report(
        state,
        "20261122T203000Z-0004",
        Some("cancelled-before-run"),
        1,
        not_started,
    );
    for (id, ending) in [
        ("20261122T203000Z-0001", "declined"),
        ("20261122T203000Z-0002", "declined"),
        ("20261122T203000Z-0003", "unknown"),
        ("20261122T203000Z-0004", "cancelled-before-run"),
    ] {
        let out = nixgate(&["--json", "show", id, "--state-dir", state.to_str().unwrap()]);
        let s = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
        let last = s
            .lines()
            .last()
            .unwrap_or_else(|| panic!("{id}: no output"));
        nixgate::report::json::check_strict(last).unwrap();
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["event"], "summary", "{id}: {last}");
        assert_eq!(v["ending"], ending, "{id}: {last}");
    }
}

/// README's exit-code table names, in exit 1's row, every outcome that
/// makes a run exit 1 (`not-persisted`, `moved-by-other` and `aborted` did,
/// but the row did not say so), and none that does not.
#[test]
fn the_exit_code_table_names_every_outcome_that_exits_1() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("### Exit codes").expect("the section")..];
    let row = section
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .expect("exit 1's row");
    for kind in nixgate::deploy::OutcomeKind::all() {
        let named = row.contains(&format!("`{}`", kind.as_str()));
        let pending = kind.as_str() == "pending-reboot";
        assert!(
            named == (kind.fails_run() || pending),
            "exit 1's row and `{}` disagree: {row}",
            kind.as_str()
        );
    }
}

/// An inventory with no hosts (only `[builder]`, emptied by mistake): a
/// cron `push --yes` printed "nothing to do" and exited 0. Commands that
/// build or deploy refuse it (exit 2, saying so); `check` still runs.
#[test]
fn an_inventory_with_no_hosts_is_a_usage_error_for_deploying_commands() {
    let dir = tempfile::tempdir().unwrap();
    let inv = write_inventory(
        dir.path(),
        "inv.toml",
        "[builder]\naddress = \"b.invalid\"\n",
    );
    let inv = inv.to_str().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    for cmd in ["push", "rollback", "plan", "build"] {
        let mut args = vec![cmd, "-i", inv, "--state-dir", state];
        if matches!(cmd, "push" | "rollback") {
            args.push("--yes");
        }
        let out = nixgate(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("has no hosts"), "{cmd}: {err}");
    }
    let out = nixgate(&["check", "--offline", "-i", inv]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
