use super::*;

use serde_json::json;

/// A store-path-like hash for `i` (32 characters, varied).
fn hash(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66;
    (0..32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdfghijklmnpqrsvwxyz"[(x % 32) as usize])
        })
        .collect()
}

/// A diff record like a 300-path change's: shared entries, with the host's
/// own paths at the top and in one entry part-way down.
fn record(host: &str) -> serde_json::Value {
    let mut changes: Vec<_> = (0..300)
        .map(|i| {
            json!({"name": format!("filler-{i}"), "change": {"kind": "added",
                "new": [format!("/nix/store/{}-filler-{i}", hash(i))]}, "selected": false})
        })
        .collect();
    changes[120] = json!({"name": "etc", "change": {"kind": "rebuilt",
        "new": [format!("/nix/store/{}-etc-{host}", hash(host.len() as u64 + 7000))]}});
    json!({"candidate": format!("/nix/store/{}-nixos-system-{host}", hash(host.len() as u64)),
        "packages": {"changes": changes}, "drift": []})
}

/// Bytes of `b`'s pieces that `a` does not share.
fn own_bytes(a: &SharedJson, b: &SharedJson) -> usize {
    let (Repr::Pieces(a), Repr::Pieces(b)) = (&a.0, &b.0) else {
        panic!("not in pieces");
    };
    b.iter()
        .filter(|p| !a.iter().any(|q| Arc::ptr_eq(p, q)))
        .map(|p| p.len())
        .sum()
}

#[test]
fn pieces_join_to_the_compact_json_and_serialise_as_it() {
    let mut store = PieceStore::default();
    let value = record("light1");
    let text = serde_json::to_string(&value).unwrap();
    let shared = store.share(&value);
    assert_eq!(shared.get(), text);
    assert_eq!(serde_json::to_string(&shared).unwrap(), text);
    // Inside another value, exactly as the value itself would be.
    #[derive(Serialize)]
    struct Outer<'a, E: Serialize> {
        gate: &'a str,
        evidence: &'a E,
    }
    fn outer(evidence: &impl Serialize) -> String {
        serde_json::to_string(&Outer {
            gate: "diff",
            evidence,
        })
        .unwrap()
    }
    assert!(outer(&shared) == outer(&value), "{}", outer(&shared).len());
    // And like the same value whole.
    assert_eq!(
        serde_json::to_string(&SharedJson::of(&value)).unwrap(),
        text
    );
}

#[test]
fn records_that_differ_in_a_few_paths_share_almost_all_their_text() {
    let mut store = PieceStore::default();
    let a = store.share(&record("light1"));
    let b = store.share(&record("light2"));
    let len = b.get().len();
    assert!(len > 30_000, "{len}");
    let own = own_bytes(&a, &b);
    // Two paths differ (33 + 6 bytes each): a few pieces around each.
    assert!(own > 0 && own < len / 10, "{own} of {len} bytes not shared");
    // The same value twice: nothing of its own.
    let c = store.share(&record("light2"));
    assert_eq!(own_bytes(&b, &c), 0);
}

#[test]
fn pieces_are_bounded_and_never_split_a_character() {
    let text = "é🦀\"x".repeat(5000);
    let pieces: Vec<&str> = cut(&text).collect();
    assert_eq!(pieces.concat(), text);
    assert!(pieces.len() > 1);
    assert!(
        pieces.iter().all(|p| p.len() <= MAX_PIECE + 3),
        "{}",
        pieces.len()
    );
    assert!(
        pieces[..pieces.len() - 1]
            .iter()
            .all(|p| p.len() >= MIN_PIECE)
    );
    assert_eq!(cut("").count(), 0);
    assert_eq!(cut("1").collect::<Vec<_>>(), ["1"]);
    let mut store = PieceStore::default();
    assert_eq!(
        store.share(&text).get(),
        serde_json::to_string(&text).unwrap()
    );
}
