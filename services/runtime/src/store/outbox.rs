//! The outbox: events a committed group emitted, waiting for the relay to publish them. They
//! live in the group's log records (see [`super::log`]) and, until published, in memory by
//! log id; the relay reads them in log order, bounded by the watermark [`Store::flush`]
//! raises, and removes a record's events once all are acknowledged. What is published is
//! marked (`meta/published`), so that a restart replays the log without publishing again what
//! already went (a mark lost in a crash only means a duplicate, which the broker drops by its
//! `Nats-Msg-Id`).
//!
//! Stores written by earlier versions kept an `outbox` tree (key: id and entry count; value: a
//! JSON array of entries, or one entry); [`Store::open`] moves what it still holds into the log.

use std::sync::atomic::Ordering;

use events::{Event, SagaId};
use serde::{Deserialize, Serialize};

use super::log::{LogRecord, Writes};
use super::overlay::{Shared, PUBLISHED};
use super::records::decode;
use super::{read_u64, Store};
use crate::Result;

/// An event waiting in the outbox for the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// `fx.<domain>.<event>.<user_id>`.
    pub subject: String,
    /// The deterministic event id (`Nats-Msg-Id`).
    pub event_id: String,
    /// The saga id (`Fx-Saga-Id`, and the trace id).
    pub saga_id: SagaId,
    /// The id of the event that caused this one (`Fx-Causation-Id`).
    pub causation_id: String,
    /// The JSON body, encoded once when the event was decided.
    pub payload: String,
    /// When it was appended (ms since the Unix epoch), for the oldest-entry-age metric.
    pub created_at_ms: u64,
}

/// Builds the outbox entry for an event (shared by the store and the simulation).
pub fn outbox_entry(event: &Event, causation_id: &str, now_ms: u64) -> OutboxEntry {
    OutboxEntry {
        subject: event.subject(),
        event_id: event.id(),
        saga_id: event.saga_id(),
        causation_id: causation_id.to_owned(),
        payload: String::from_utf8(event.to_json()).expect("JSON is UTF-8"),
        created_at_ms: now_ms,
    }
}

impl Store {
    /// The last log id committed: how far the relay could publish once it is flushed.
    pub(super) fn outbox_tail(&self) -> u64 {
        self.shared.committed.load(Ordering::SeqCst)
    }

    /// Entries of the records with id at most `up_to`, in order, whole records, stopping once
    /// at least `max` are gathered.
    pub fn outbox_batch(&self, up_to: u64, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        let outbox = self.shared.lock_outbox();
        let mut out = Vec::new();
        for (id, events) in outbox.records.range(..=up_to) {
            out.extend(events.iter().map(|e| (*id, e.clone())));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Forgets the events of these records (the relay published them all), and marks how far
    /// everything is published.
    pub fn outbox_remove(&self, keys: &[u64]) -> Result<()> {
        self.shared.alive()?;
        let published = {
            let mut outbox = self.shared.lock_outbox();
            for k in keys {
                outbox.records.remove(k);
                outbox.max_removed = outbox.max_removed.max(*k);
            }
            outbox.published_through()
        };
        self.shared
            .meta
            .insert(PUBLISHED, &published.to_be_bytes()[..])?;
        Ok(())
    }

    /// Entries waiting, and the age in ms of the oldest (0 when none).
    pub fn outbox_stats(&self, now_ms: u64) -> Result<(usize, u64)> {
        let outbox = self.shared.lock_outbox();
        let depth = outbox.records.values().map(Vec::len).sum();
        let oldest = outbox
            .records
            .values()
            .next()
            .and_then(|events| events.first())
            .map_or(0, |e| now_ms.saturating_sub(e.created_at_ms));
        Ok((depth, oldest))
    }
}

/// Moves what an earlier version's `outbox` tree still holds into the log, in order, as
/// records without writes, and makes that durable before emptying the tree (a crash between
/// the two publishes those events twice, and the broker drops the duplicates by
/// `Nats-Msg-Id`). Runs at open, before anything else writes.
pub(super) fn migrate_outbox(shared: &Shared, mut flush: impl FnMut() -> Result<()>) -> Result<()> {
    let old = shared.db.open_tree("outbox")?;
    if old.is_empty() {
        return Ok(());
    }
    let mut records = Vec::new();
    for item in old.iter() {
        let (k, v) = item?;
        let events = decode_outbox(read_u64(&k[..k.len().min(8)]), &v)?;
        records.push(LogRecord {
            writes: Writes::default(),
            events,
        });
    }
    shared.append(records)?;
    flush()?;
    old.clear()?;
    flush()
}

/// An earlier version's outbox record: a JSON array of entries, or one entry.
fn decode_outbox(key: u64, v: &[u8]) -> Result<Vec<OutboxEntry>> {
    let name = format!("outbox/{key}");
    if v.first() == Some(&b'[') {
        decode(&name, v)
    } else {
        Ok(vec![decode(&name, v)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::committed;
    use crate::Records;

    #[tokio::test]
    async fn a_large_group_is_cut_into_log_records_in_order() {
        let store = Store::temporary().unwrap();
        // Each event's payload is ~300 bytes: 200 of them make several 32 KiB records.
        let items: Vec<usize> = (0..200).collect();
        store
            .transact_each(&items, |tx, i| {
                tx.emit(&committed(SagaId::new_v7()), &i.to_string(), 1)
            })
            .unwrap();
        let wm = store.flush().await.unwrap();
        let all = store.outbox_batch(wm, usize::MAX).unwrap();
        let causes: Vec<String> = all.iter().map(|(_, e)| e.causation_id.clone()).collect();
        let want: Vec<String> = items.iter().map(|i| i.to_string()).collect();
        assert_eq!(causes, want);
        let mut keys: Vec<u64> = all.iter().map(|(k, _)| *k).collect();
        keys.dedup();
        assert!(keys.len() > 1, "one record of {} events", all.len());
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "in log order");
        // A window stops after the record that reaches `max`: the first record, whole.
        let first = all.iter().filter(|(k, _)| *k == keys[0]).count();
        assert_eq!(store.outbox_batch(wm, 1).unwrap().len(), first);
        assert_eq!(store.outbox_stats(1).unwrap().0, items.len());
    }

    #[tokio::test]
    async fn an_earlier_versions_outbox_moves_into_the_log_in_order_and_goes() {
        let dir = tempfile::tempdir().unwrap();
        let saga = SagaId::new_v7();
        let one = outbox_entry(&committed(saga), "one", 7);
        let two = outbox_entry(&committed(saga), "two", 9);
        {
            // As earlier versions wrote them: one entry under an 8-byte key, then an array
            // under a 12-byte key (id and entry count).
            let db = sled::open(dir.path().join("sled")).unwrap();
            let old = db.open_tree("outbox").unwrap();
            old.insert(1u64.to_be_bytes(), serde_json::to_vec(&one).unwrap())
                .unwrap();
            let mut key = 2u64.to_be_bytes().to_vec();
            key.extend(1u32.to_be_bytes());
            old.insert(key, serde_json::to_vec(&[&two]).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        store
            .transact(|tx| tx.emit(&committed(saga), "new", 8))
            .unwrap();
        let wm = store.flush().await.unwrap();
        let all = store.outbox_batch(wm, 10).unwrap();
        let causes: Vec<&str> = all.iter().map(|(_, e)| e.causation_id.as_str()).collect();
        assert_eq!(causes, ["one", "two", "new"]);
        assert_eq!(all[0].1, one);
        assert_eq!(store.outbox_stats(10).unwrap(), (3, 3));
        store.outbox_remove(&[all[0].0]).unwrap();
        assert_eq!(store.outbox_stats(10).unwrap().0, 2);
        assert!(store.shared.db.open_tree("outbox").unwrap().is_empty());
    }
}
