//! Values the store's unit tests share.

use events::{Event, Krw, KrwCommitted, SagaId, UserId};
use rust_decimal::Decimal;

use super::JournalEntry;

pub(super) fn committed(saga: SagaId) -> Event {
    Event::KrwCommitted(KrwCommitted {
        saga_id: saga,
        user_id: UserId::parse("alice").unwrap(),
        krw_amount: Krw::parse("100").unwrap(),
    })
}

pub(super) fn entry(saga: SagaId, op: &str) -> JournalEntry {
    JournalEntry {
        saga_id: saga,
        op: op.into(),
        currency: "KRW".into(),
        debit: "user:alice:held".into(),
        credit: "house".into(),
        amount: Decimal::from(100),
        at_ms: 1,
        actor: None,
    }
}
