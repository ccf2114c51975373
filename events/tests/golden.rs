//! docs/events.md is the public catalog: every example in it must decode, re-encode to the same
//! JSON, and every event kind must have exactly one example.

use std::collections::BTreeSet;

use events::{DecodeError, Event, EventKind};

fn examples() -> Vec<(String, String)> {
    let doc = include_str!("../../docs/events.md");
    let mut out = Vec::new();
    let mut subject: Option<String> = None;
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(s) = line.strip_prefix("### ") {
            subject = Some(s.trim().to_owned());
        } else if line.trim() == "```json" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let s = subject
                .take()
                .expect("every json block follows a ### subject heading");
            out.push((s, body.join("\n")));
        }
    }
    out
}

#[test]
fn every_golden_example_decodes_and_round_trips() {
    let mut seen = BTreeSet::new();
    for (subject, body) in examples() {
        let event =
            Event::decode(&subject, body.as_bytes()).unwrap_or_else(|e| panic!("{subject}: {e}"));
        assert_eq!(event.subject(), subject);
        let again: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        let original: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(again, original, "{subject} does not round-trip");
        assert!(seen.insert(event.kind()), "{subject} has two examples");
    }
    let all: BTreeSet<EventKind> = EventKind::ALL.into_iter().collect();
    assert_eq!(seen, all, "docs/events.md must show every event kind");
}

#[test]
fn the_design_request_example_decodes() {
    let body = br#"{"saga_id":"0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11","user_id":"alice",
          "krw_amount":"1500000","min_usd_amount":"1000.00"}"#;
    let Event::ExchangeRequested(r) = Event::decode("fx.exchange.requested.alice", body).unwrap()
    else {
        panic!("wrong kind")
    };
    assert_eq!(r.krw_amount.to_string(), "1500000");
    assert_eq!(r.min_usd_amount.unwrap().to_string(), "1000.00");
}

#[test]
fn bad_requests_get_a_typed_error_that_says_what_to_fix() {
    let subject = "fx.exchange.requested.alice";
    let cases: [(&[u8], &str, &str); 7] = [
        (br#"{"saga_id":"0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11","user_id":"alice","krw_amount":1500000}"#, "malformed_body", "JSON string"),
        (br#"{"saga_id":"0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11","user_id":"alice","krw_amount":"-5"}"#, "malformed_body", "negative"),
        (br#"{"saga_id":"0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11","user_id":"alice","krw_amount":"0"}"#, "invalid_field", "greater than zero"),
        (br#"{"saga_id":"0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11","user_id":"bob","krw_amount":"5"}"#, "user_mismatch", "must be equal"),
        (br#"{"saga_id":"nope","user_id":"alice","krw_amount":"5"}"#, "malformed_body", "UUID"),
        (br#"{"saga_id":"0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11","user_id":"alice","krw_amount":"5","min_usd":"1"}"#, "malformed_body", "unknown field"),
        (b"{not json", "malformed_body", "key must be a string"),
    ];
    for (body, reason, words) in cases {
        let err = Event::decode(subject, body).unwrap_err();
        assert_eq!(err.reason(), reason, "{err}");
        assert!(
            err.to_string().contains(words),
            "{err:?} should mention {words:?}"
        );
    }
    let huge = vec![b' '; events::MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        Event::decode(subject, &huge),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn a_rejectable_request_keeps_its_saga_and_subject_user() {
    let body = br#"{"saga_id":"0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11","user_id":"alice","krw_amount":"1.5"}"#;
    let (saga, user) = events::salvage_request_ids("fx.exchange.requested.alice", body).unwrap();
    assert_eq!(saga.to_string(), "0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11");
    assert_eq!(user.as_str(), "alice");
    assert!(events::salvage_request_ids("fx.exchange.requested.alice", b"[1,2]").is_none());
    assert!(events::salvage_request_ids("fx.krw.held.alice", body).is_none());
}
