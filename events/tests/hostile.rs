//! Hostile input: arbitrary bytes and arbitrary JSON thrown at every decoder must give a typed
//! error (or a valid event), never a panic. Seeded, so a failure is reproducible.

use events::{Event, EventKind, Krw, Usd, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CASES: usize = 20_000;

fn subjects() -> Vec<String> {
    let alice = UserId::parse("alice").unwrap();
    let mut s: Vec<String> = EventKind::ALL.iter().map(|k| k.subject(&alice)).collect();
    s.extend(
        [
            "fx",
            "fx.krw",
            "fx.krw.held.",
            "fx..held.a",
            "",
            "fx.krw.held.a.b",
            "fx.krw.held.ü",
        ]
        .map(String::from),
    );
    s
}

fn random_json(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    use serde_json::Value;
    let keys = [
        "saga_id",
        "user_id",
        "krw_amount",
        "usd_amount",
        "min_usd_amount",
        "rate",
        "reason",
        "message",
        "hold_expires_at_ms",
        "actor",
        "x",
    ];
    match rng.gen_range(0..if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.gen()),
        2 => Value::from(rng.gen::<i64>()),
        3 => Value::from(rng.gen::<f64>() * 1e30),
        4 => {
            let pool = [
                "0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11",
                "alice",
                "1500000",
                "-1",
                "1e9",
                "0",
                "1.005",
                "99999999999999999999999999999999",
                "",
                "rate_moved",
                "\u{0}",
                "NaN",
            ];
            Value::from(pool[rng.gen_range(0..pool.len())])
        }
        5 => Value::from(
            (0..rng.gen_range(0..40))
                .map(|_| rng.gen::<char>())
                .collect::<String>(),
        ),
        6 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..8) {
                m.insert(
                    keys[rng.gen_range(0..keys.len())].into(),
                    random_json(rng, depth + 1),
                );
            }
            Value::Object(m)
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic_the_decoder() {
    let mut rng = StdRng::seed_from_u64(0xF00D);
    let subjects = subjects();
    for _ in 0..CASES {
        let len = rng.gen_range(0..300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let subject = &subjects[rng.gen_range(0..subjects.len())];
        if let Err(e) = Event::decode(subject, &bytes) {
            assert!(!e.reason().is_empty() && !e.to_string().is_empty());
        }
        let _ = events::salvage_request_ids(subject, &bytes);
    }
}

#[test]
fn arbitrary_json_gives_a_typed_error_or_a_valid_event() {
    let mut rng = StdRng::seed_from_u64(0xBEEF);
    let subjects = subjects();
    let mut decoded = 0;
    for _ in 0..CASES {
        let body = serde_json::to_vec(&random_json(&mut rng, 0)).unwrap();
        let subject = &subjects[rng.gen_range(0..subjects.len())];
        match Event::decode(subject, &body) {
            Ok(e) => {
                decoded += 1;
                // Whatever decodes is valid: it re-encodes and decodes to itself.
                assert_eq!(Event::decode(&e.subject(), &e.to_json()).unwrap(), e);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    // Not a useful property if nothing ever decodes, nor if everything does.
    assert!(decoded < CASES);
}

#[test]
fn arbitrary_money_strings_parse_or_refuse_without_panicking() {
    let mut rng = StdRng::seed_from_u64(7);
    let alphabet = b"0123456789.-+eE ,_";
    for _ in 0..CASES {
        let s: String = (0..rng.gen_range(0..40))
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
            .collect();
        if let Ok(k) = Krw::parse(&s) {
            assert_eq!(Krw::parse(&k.to_string()).unwrap(), k);
        }
        if let Ok(u) = Usd::parse(&s) {
            assert_eq!(Usd::parse(&u.to_string()).unwrap(), u);
        }
    }
}
