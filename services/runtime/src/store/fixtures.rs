//! Values the store's unit tests share.

use events::{Event, Krw, KrwCommitted, SagaId, UserId};
use rust_decimal::Decimal;

use super::JournalEntry;
use crate::ledger::{Account, Currency, Op};

pub(super) fn committed(saga: SagaId) -> Event {
    Event::KrwCommitted(KrwCommitted {
        saga_id: saga,
        user_id: UserId::parse("alice").unwrap(),
        krw_amount: Krw::parse("100").unwrap(),
    })
}

pub(super) fn entry(saga: SagaId, op: Op) -> JournalEntry {
    let alice = UserId::parse("alice").unwrap();
    JournalEntry::new(
        saga,
        op,
        Currency::Krw,
        (Account::Held(alice), Account::House),
        Decimal::from(100),
        1,
    )
}
