//! known_hosts matcher cases against files and keys made by OpenSSH's own
//! `ssh-keygen`.

use std::path::{Path, PathBuf};
use std::process::Command;

use russh::keys::ssh_key::{Certificate, PublicKey};

use super::*;

fn keygen(dir: &Path, name: &str, kind: &str) -> (PathBuf, PublicKey) {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-t", kind, "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen must be installed (openssh-client)");
    assert!(status.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.parse().unwrap())
}

fn openssh(key: &PublicKey) -> String {
    key.to_openssh().unwrap()
}

fn load(path: &Path) -> KnownHosts {
    KnownHosts::load(&[path.to_path_buf()]).unwrap()
}

const NOW: u64 = 1_900_000_000;

#[test]
fn plain_port_and_unknown_vs_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ed) = keygen(dir.path(), "ed", "ed25519");
    let (_, other) = keygen(dir.path(), "other", "ed25519");
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "# comment\nweb1,10.0.0.1 {}\n[web2]:2222 {}\n",
            openssh(&ed),
            openssh(&ed)
        ),
    )
    .unwrap();
    let db = load(&kh);
    assert!(
        matches!(db.check("web1", 22, &Offered::Key(&ed), NOW), Verdict::Known(r) if r.line == 2)
    );
    assert!(matches!(
        db.check("WEB1", 22, &Offered::Key(&ed), NOW),
        Verdict::Known(_)
    ));
    assert!(matches!(
        db.check("10.0.0.1", 22, &Offered::Key(&ed), NOW),
        Verdict::Known(_)
    ));
    // A non-22 port is a different name.
    assert_eq!(
        db.check("web1", 2222, &Offered::Key(&ed), NOW),
        Verdict::Unknown
    );
    assert!(
        matches!(db.check("web2", 2222, &Offered::Key(&ed), NOW), Verdict::Known(r) if r.line == 3)
    );
    assert_eq!(
        db.check("web2", 22, &Offered::Key(&ed), NOW),
        Verdict::Unknown
    );
    match db.check("web1", 22, &Offered::Key(&other), NOW) {
        Verdict::Changed { expected } => {
            assert_eq!(expected.len(), 1);
            assert_eq!(expected[0].fingerprint, fingerprint(ed.key_data()));
            assert!(expected[0].fingerprint.starts_with("SHA256:"));
            assert_eq!(expected[0].file, kh);
        }
        v => panic!("expected Changed, got {v:?}"),
    }
}

#[test]
fn hashed_entries_written_by_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ed) = keygen(dir.path(), "ed", "ed25519");
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "box.example {}\n[box.example]:2200 {}\n",
            openssh(&ed),
            openssh(&ed)
        ),
    )
    .unwrap();
    let status = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&kh)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(
        text.lines().all(|l| l.starts_with("|1|")),
        "not hashed: {text}"
    );
    assert!(!text.contains("box.example"));
    let db = load(&kh);
    assert!(matches!(
        db.check("box.example", 22, &Offered::Key(&ed), NOW),
        Verdict::Known(_)
    ));
    assert!(matches!(
        db.check("box.example", 2200, &Offered::Key(&ed), NOW),
        Verdict::Known(_)
    ));
    assert_eq!(
        db.check("box.example", 2201, &Offered::Key(&ed), NOW),
        Verdict::Unknown
    );
    assert_eq!(
        db.check("other.example", 22, &Offered::Key(&ed), NOW),
        Verdict::Unknown
    );
}

#[test]
fn wildcards_and_negation() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ed) = keygen(dir.path(), "ed", "ed25519");
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "*.lan,!db.lan {}\n[10.9.*]:2222 {}\n",
            openssh(&ed),
            openssh(&ed)
        ),
    )
    .unwrap();
    let db = load(&kh);
    assert!(matches!(
        db.check("web.lan", 22, &Offered::Key(&ed), NOW),
        Verdict::Known(_)
    ));
    assert_eq!(
        db.check("db.lan", 22, &Offered::Key(&ed), NOW),
        Verdict::Unknown
    );
    assert!(matches!(
        db.check("10.9.1.1", 2222, &Offered::Key(&ed), NOW),
        Verdict::Known(_)
    ));
    assert_eq!(
        db.check("10.9.1.1", 22, &Offered::Key(&ed), NOW),
        Verdict::Unknown
    );
}

#[test]
fn several_key_types_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ed) = keygen(dir.path(), "ed", "ed25519");
    let (_, ec) = keygen(dir.path(), "ec", "ecdsa");
    let (_, rsa) = keygen(dir.path(), "rsa", "rsa");
    let (_, stranger) = keygen(dir.path(), "stranger", "rsa");
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "h {}\nh {}\nh {}\n",
            openssh(&ec),
            openssh(&rsa),
            openssh(&ed)
        ),
    )
    .unwrap();
    let db = load(&kh);
    for key in [&ed, &ec, &rsa] {
        assert!(matches!(
            db.check("h", 22, &Offered::Key(key), NOW),
            Verdict::Known(_)
        ));
    }
    match db.check("h", 22, &Offered::Key(&stranger), NOW) {
        Verdict::Changed { expected } => assert_eq!(expected.len(), 3),
        v => panic!("expected Changed, got {v:?}"),
    }
    let algs = db.known_algorithms("h", 22);
    assert_eq!(algs[0], ec.algorithm());
    assert!(algs.contains(&Algorithm::Rsa {
        hash: Some(HashAlg::Sha512)
    }));
    assert!(
        !algs.contains(&Algorithm::Rsa { hash: None }),
        "never ssh-rsa (SHA-1)"
    );
    assert_eq!(algs.last(), Some(&ed.algorithm()));
}

#[test]
fn revoked_wins_over_known() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ed) = keygen(dir.path(), "ed", "ed25519");
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!("h {}\n@revoked * {}\n", openssh(&ed), openssh(&ed)),
    )
    .unwrap();
    let db = load(&kh);
    assert!(
        matches!(db.check("h", 22, &Offered::Key(&ed), NOW), Verdict::Revoked(r) if r.line == 2)
    );
}

#[test]
fn unparseable_lines_are_skipped_and_missing_files_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ed) = keygen(dir.path(), "ed", "ed25519");
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("garbage line\nh {}\n", openssh(&ed))).unwrap();
    let db = KnownHosts::load(&[dir.path().join("missing"), kh]).unwrap();
    assert!(matches!(db.check("h", 22, &Offered::Key(&ed), NOW), Verdict::Known(r) if r.line == 2));
}

#[test]
fn line_to_add_round_trips_and_append_learns() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ed) = keygen(dir.path(), "ed", "ed25519");
    let kh = dir.path().join("sub/known_hosts");
    let line = line_for("Web.Example", 2222, ed.key_data()).unwrap();
    assert!(
        line.starts_with("[web.example]:2222 ssh-ed25519 "),
        "{line}"
    );
    assert_eq!(
        load(&kh).check("web.example", 2222, &Offered::Key(&ed), NOW),
        Verdict::Unknown
    );
    append_line(&kh, &line).unwrap();
    assert!(matches!(
        load(&kh).check("web.example", 2222, &Offered::Key(&ed), NOW),
        Verdict::Known(_)
    ));
}

#[test]
fn shared_parse_is_reused_until_a_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ed) = keygen(dir.path(), "ed", "ed25519");
    let kh = dir.path().join("known_hosts");
    let files = [kh.clone()];
    std::fs::write(&kh, format!("a.example {}\n", openssh(&ed))).unwrap();
    let one = KnownHosts::load_shared(&files).unwrap();
    let two = KnownHosts::load_shared(&files).unwrap();
    assert!(std::sync::Arc::ptr_eq(&one, &two), "parsed once");
    assert_eq!(
        two.check("b.example", 22, &Offered::Key(&ed), NOW),
        Verdict::Unknown
    );
    // --accept-new appends: the next connection sees the new line.
    append_line(&kh, &line_for("b.example", 22, ed.key_data()).unwrap()).unwrap();
    let three = KnownHosts::load_shared(&files).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&one, &three));
    assert!(matches!(
        three.check("b.example", 22, &Offered::Key(&ed), NOW),
        Verdict::Known(_)
    ));
}

fn host_cert(
    dir: &Path,
    ca: &Path,
    host_key: &Path,
    principals: &str,
    validity: &str,
) -> Certificate {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", "host-id", "-h", "-n", principals, "-V", validity])
        .arg(host_key.with_extension("pub"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cert_path = PathBuf::from(format!("{}-cert.pub", host_key.display()));
    let text = std::fs::read_to_string(cert_path).unwrap();
    Certificate::from_openssh(text.trim()).unwrap()
}

#[test]
fn cert_authority_host_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, ca) = keygen(dir.path(), "ca", "ed25519");
    let (_, other_ca) = keygen(dir.path(), "other_ca", "ed25519");
    let (host_key, _) = keygen(dir.path(), "hostkey", "ecdsa");
    let cert = host_cert(
        dir.path(),
        &ca_path,
        &host_key,
        "web.lan,web",
        "always:forever",
    );
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("@cert-authority *.lan {}\n", openssh(&ca))).unwrap();
    let db = load(&kh);
    assert!(db.has_cert_authority("web.lan", 22));
    assert!(!db.has_cert_authority("web.com", 22));
    assert!(matches!(
        db.check("web.lan", 22, &Offered::Certificate(&cert), NOW),
        Verdict::KnownByCertAuthority(r) if r.line == 1
    ));
    // CA trusted for *.lan, but the certificate does not name this host.
    assert!(matches!(
        db.check("db.lan", 22, &Offered::Certificate(&cert), NOW),
        Verdict::CertificateInvalid { .. }
    ));
    // Expired certificate.
    let old = host_cert(
        dir.path(),
        &ca_path,
        &host_key,
        "web.lan",
        "20000101:20010101",
    );
    assert!(matches!(
        db.check("web.lan", 22, &Offered::Certificate(&old), NOW),
        Verdict::CertificateInvalid { .. }
    ));
    // A CA we do not trust: the certificate's bare key is not known either.
    std::fs::write(
        &kh,
        format!("@cert-authority *.lan {}\n", openssh(&other_ca)),
    )
    .unwrap();
    assert_eq!(
        load(&kh).check("web.lan", 22, &Offered::Certificate(&cert), NOW),
        Verdict::Unknown
    );
    // A revoked CA refuses every certificate it signed.
    std::fs::write(
        &kh,
        format!(
            "@cert-authority *.lan {}\n@revoked * {}\n",
            openssh(&ca),
            openssh(&ca)
        ),
    )
    .unwrap();
    assert!(matches!(
        load(&kh).check("web.lan", 22, &Offered::Certificate(&cert), NOW),
        Verdict::Revoked(_)
    ));
}
