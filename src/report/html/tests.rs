use super::*;
use crate::report::stored::fixture::{self, HOSTILE};
use crate::report::timeline;

pub fn page(extra: usize) -> String {
    let run = fixture::run(extra);
    let mut diffs = Diffs::default();
    for s in &run.events {
        if let crate::report::Event::Diff { host, diff } = &s.event {
            diffs.add(host.clone(), diff.clone());
        }
    }
    let t = timeline::of_run(&run.report, run.events);
    render(&run.report, &t, diffs, vec!["a note".into()]).unwrap()
}

#[test]
fn one_row_per_host_and_every_bar_in_its_colour() {
    let html = page(0);
    assert_eq!(html.matches(r#"<g class="row""#).count(), 6);
    // web2 failed its health checks: that bar is red, its rollback amber.
    let row = html
        .split(r#"<g class="row" data-host="web2""#)
        .nth(1)
        .unwrap()
        .split("</g>")
        .next()
        .unwrap();
    assert!(
        row.contains(r##"class="bar failed""##)
            && row.contains(r##"fill="#cf222e" data-gate="health-checks""##),
        "{row}"
    );
    assert!(
        row.contains(r##"fill="#bf8700" data-gate="rollback""##),
        "{row}"
    );
    let web3 = html.split(r#"data-host="web3""#).nth(1).unwrap();
    assert!(web3.contains(r##"fill="#0969da" data-gate="persist""##));
    let web4 = html.split(r#"data-host="web4""#).nth(1).unwrap();
    assert!(web4.contains(r#"data-gate="not started" data-result="not-started""#));
    // Soak and wave starts are marked; the axis has ticks.
    assert!(html.contains(r#"<rect class="soak""#) && html.contains("soak of wave canary: 5 s"));
    assert_eq!(html.matches(r#"<line class="wave-start""#).count(), 2);
    assert!(html.contains(">+20s</text>"));
}

#[test]
fn hostile_text_is_escaped_everywhere() {
    let html = page(0);
    assert_eq!(
        html.matches("<script>").count(),
        1,
        "only the page's own script"
    );
    assert!(!html.contains(HOSTILE));
    // The host name (SVG, table, hosts), the flake input of web2's diff and
    // the health check's output all appear, escaped.
    let escaped = "&lt;script&gt;alert(1)&lt;";
    assert!(
        html.matches(escaped).count() >= 8,
        "{}",
        html.matches(escaped).count()
    );
    assert!(html.contains(&format!("flake input + {escaped}")));
    assert!(html.contains(&format!("curl: (7) {escaped}")));
    assert!(html.contains(&format!(
        r#"<g class="row" data-host="{escaped}/script&gt;""#
    )));
}

#[test]
fn the_page_loads_nothing_from_anywhere() {
    let html = page(0);
    for needle in [
        "src=",
        "url(",
        "@import",
        "<link",
        "href=\"http",
        "href='http",
    ] {
        assert!(!html.contains(needle), "{needle}");
    }
    assert!(html.contains("default-src 'none'"));
    // The only absolute URL is the SVG namespace.
    assert_eq!(
        html.matches("://").count(),
        html.matches("http://www.w3.org/2000/svg").count()
    );
}

#[test]
fn diffs_are_grouped_as_plan_groups_them() {
    let html = page(3);
    // web2's diff names a different flake input: two groups.
    assert_eq!(html.matches(r#"<details class="group""#).count(), 2);
    assert!(html.contains(
        "web1, web3, &lt;script&gt;alert(1)&lt;/script&gt;, db1, node0, node1, node2, web4"
    ));
    for section in [
        "package versions",
        "added",
        "removed",
        "rebuilt at the same version",
        "flake inputs",
        "closure size",
    ] {
        assert!(html.contains(&format!("<h3>{section}</h3>")), "{section}");
    }
    assert!(html.contains("nginx 1.24.0 -&gt; 1.25.3"));
    assert!(html.contains("~ openssl 3.0.13 rebuilt (dependency)"));
}

#[test]
fn header_says_who_when_and_how_it_ended() {
    let html = page(0);
    for s in [
        "ops@controller",
        "3f2a9c1e0b7d44",
        "push (goal gated)",
        "2026-11-22T20:30:00Z",
        r#"<dd class="bad">1</dd>"#,
        "1 rolled-back",
        "1 pending-reboot",
    ] {
        assert!(html.contains(s), "{s}");
    }
}

/// 500 hosts: a row each, and the page's size per host stays what README
/// says (Chromium's time to render it is measured by hand: scripts/bench-report).
#[test]
fn a_page_of_500_hosts_has_a_row_each_and_stays_small() {
    let html = page(494);
    assert_eq!(html.matches(r#"<g class="row""#).count(), 500);
    eprintln!("500 hosts: {} bytes", html.len());
    // 3,413,183 bytes when written (6.8 KB a host).
    assert!(html.len() < 4_000_000, "{} bytes", html.len());
}

/// Write the fixture's page to look at or measure:
/// `NIXGATE_DUMP=FILE NIXGATE_DUMP_HOSTS=500 cargo test --lib dump -- --ignored`.
#[test]
#[ignore]
fn dump() {
    let path = std::env::var("NIXGATE_DUMP").unwrap_or_else(|_| "/tmp/fixture-report.html".into());
    let hosts: usize = std::env::var("NIXGATE_DUMP_HOSTS").map_or(9, |n| n.parse().unwrap());
    std::fs::write(path, page(hosts.saturating_sub(6))).unwrap();
}

/// The page of the fixture's run with `diffs` instead of its own.
fn page_with(diffs: Diffs) -> String {
    let run = fixture::run(0);
    let t = timeline::of_run(&run.report, run.events);
    render(&run.report, &t, diffs, vec![]).unwrap()
}

/// Hosts grouped by the same diff text may go from and to different
/// closures: the group shows each host's, not the first host's as everyone's;
/// one pair shared by all is one line.
#[test]
fn a_group_shows_each_hosts_closures_when_they_differ() {
    let diff = |candidate: char| HostDiff {
        candidate: fixture::sp(candidate, "nixos-system-web"),
        ..fixture::diff("nixpkgs")
    };
    let mut diffs = Diffs::default();
    diffs.add("web1".into(), diff('b'));
    diffs.add("web3".into(), diff('h'));
    let html = page_with(diffs);
    assert_eq!(html.matches(r#"<details class="group""#).count(), 1);
    assert!(html.contains("2 different closures: each host"), "{html}");
    for line in [
        "web1: aaaaaaaa-nixos-system-web -&gt; bbbbbbbb-nixos-system-web",
        "web3: aaaaaaaa-nixos-system-web -&gt; hhhhhhhh-nixos-system-web",
    ] {
        assert!(html.contains(line), "{line}");
    }
    let mut same = Diffs::default();
    same.add("web1".into(), diff('b'));
    same.add("web3".into(), diff('b'));
    let html = page_with(same);
    assert!(html.contains(
        r#"<p class="mono">aaaaaaaa-nixos-system-web -&gt; bbbbbbbb-nixos-system-web</p>"#
    ));
    assert!(!html.contains("different closures"));
}

/// A diff against an unvalidated system says so in the page, as `plan` does.
#[test]
fn an_unvalidated_hosts_diff_says_what_it_is_against() {
    let mut diffs = Diffs::default();
    let unvalidated = HostDiff {
        unvalidated: true,
        ..fixture::diff("nixpkgs")
    };
    diffs.add("web1".into(), unvalidated);
    diffs.add("web3".into(), fixture::diff("nixpkgs"));
    let html = page_with(diffs);
    assert_eq!(html.matches(r#"<details class="group""#).count(), 2);
    assert_eq!(html.matches("<h3>compared with</h3>").count(), 1);
    assert_eq!(
        html.matches("runs a system that is not one of its known-good generations")
            .count(),
        1
    );
}

/// A canary whose soak a Ctrl-C cut short: its `host_finished` said
/// known-good, the run's report that its mark was left soak pending (it
/// fails the run). The page takes the report's word: before, its row read
/// a clean known-good with no reason, in a run that exited 1.
#[test]
fn a_host_whose_soak_was_cut_short_fails_its_row() {
    let mut run = fixture::run(0);
    let web1 = run.report.hosts.iter_mut().find(|h| h.host == "web1");
    let cut = crate::runner::SoakCut::Cancelled;
    web1.unwrap().soak_left = Some(crate::deploy::SoakLeft::CutShort { cut });
    let t = timeline::of_run(&run.report, run.events);
    let row = t.rows.iter().find(|r| r.host == "web1").unwrap();
    assert!(row.end.as_ref().unwrap().soak_left.is_some(), "{row:?}");
    let html = render(&run.report, &t, Diffs::default(), vec![]).unwrap();
    let tr = html
        .split(r##"<tr><td><a href="#host0">web1</a>"##)
        .nth(1)
        .unwrap()
        .split("</tr>")
        .next()
        .unwrap();
    assert!(
        tr.contains("outcome-fail") && tr.contains("its soak was cut short (Ctrl-C or SIGTERM)"),
        "{tr}"
    );
}
