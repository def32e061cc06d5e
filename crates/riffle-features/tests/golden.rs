//! Golden bytes of the feature vector format 1 (an online store row's
//! value): `tests/fixtures/feature_vector_v1.bin`. Rows written by older
//! builds sit in stores (Redis keeps them across upgrades), so a change of
//! these bytes needs a new format byte and a decoder for the old one.
//! `RIFFLE_BLESS=1 cargo test -p riffle-features --test golden` rewrites the
//! fixture on purpose.

use std::path::Path;

use riffle_features::value::{decode_vector, encode_vector, schema_fingerprint};
use riffle_features::Value;

fn values() -> Vec<Value> {
    vec![
        Value::Null,
        Value::Bool(true),
        Value::Int(-42),
        Value::Float(2.5),
        Value::Str("just_chatting".into()),
        Value::List(vec!["b1".into(), "b22".into()]),
    ]
}

fn schema() -> u64 {
    schema_fingerprint([
        ("a", "last"),
        ("b", "live"),
        ("c", "count"),
        ("d", "avg"),
        ("e", "last"),
        ("f", "recent_k"),
    ])
}

#[test]
fn feature_vector_v1_bytes_are_pinned() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/feature_vector_v1.bin");
    let mut encoded = Vec::new();
    encode_vector(schema(), &values(), &mut encoded);
    if std::env::var("RIFFLE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &encoded).unwrap();
    }
    let fixture = std::fs::read(&path).expect("fixture (RIFFLE_BLESS=1 writes it)");
    assert_eq!(
        fixture, encoded,
        "the encoder writes different bytes than format 1's fixture"
    );
    assert_eq!(decode_vector(schema(), &fixture).unwrap(), values());
}

#[test]
fn bad_vectors_are_refused_naming_what_is_wrong() {
    let mut bytes = Vec::new();
    encode_vector(schema(), &values(), &mut bytes);
    let other = schema_fingerprint([("a", "count")]);
    let error = decode_vector(other, &bytes).unwrap_err().to_string();
    assert!(error.contains("written for feature set"), "{error}");
    let error = decode_vector(schema(), &bytes[..bytes.len() - 3])
        .unwrap_err()
        .to_string();
    assert!(error.contains("truncated"), "{error}");
    let mut flipped = bytes.clone();
    flipped[0] = b'X';
    let error = decode_vector(schema(), &flipped).unwrap_err().to_string();
    assert!(error.contains("bad magic"), "{error}");
    let mut longer = bytes.clone();
    longer.push(0);
    let error = decode_vector(schema(), &longer).unwrap_err().to_string();
    assert!(error.contains("1 trailing bytes"), "{error}");
}
