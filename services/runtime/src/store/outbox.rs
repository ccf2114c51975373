//! The outbox: events a committed transaction emitted, waiting for the relay to publish them.
//! Here are the entry, the record format (key: id and entry count; value: a JSON array of
//! entries, or one entry as earlier versions wrote it, which still reads), and the reads and
//! removals the relay makes. Appending happens at the end of [`Store::transact_each`]; what the
//! relay may read is bounded by the watermark [`Store::flush`] raises.

use events::{Event, SagaId};
use serde::{Deserialize, Serialize};

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

/// Most events in one outbox record (about 12 KiB). sled writes a log message over a quarter
/// of its 512 KiB segment as a file of its own, and a full 256-message batch would make a
/// record of about 190 KiB; at 16 the outbox still costs one write per 16 events.
pub(super) const OUTBOX_RECORD_MAX_ENTRIES: usize = 16;

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
    pub(super) fn outbox_tail(&self) -> Result<u64> {
        Ok(self
            .outbox
            .last()?
            .map(|(k, _)| outbox_key_id(&k))
            .unwrap_or(0))
    }

    /// Outbox entries of the records with keys at or below `up_to`, oldest first, each with its
    /// record's key: whole records, until at least `max` entries (at least one record).
    pub fn outbox_batch(&self, up_to: u64, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        let mut out = Vec::new();
        for item in self.outbox.range(..=outbox_key(up_to, u32::MAX as usize)) {
            let (k, v) = item?;
            let key = outbox_key_id(&k);
            out.extend(decode_outbox(key, &v)?.into_iter().map(|e| (key, e)));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Removes published records. Not flushed: if the removal is lost in a crash, the entries
    /// are published again with the same ids and deduplicated downstream.
    pub fn outbox_remove(&self, keys: &[u64]) -> Result<()> {
        let mut wanted: Vec<u64> = keys.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut batch = sled::Batch::default();
        for k in wanted {
            // A record's key carries its entry count; find it by its id.
            if let Some((key, _)) = self
                .outbox
                .range(k.to_be_bytes().to_vec()..=outbox_key(k, u32::MAX as usize).to_vec())
                .next()
                .transpose()?
            {
                batch.remove(key);
            }
        }
        self.outbox.apply_batch(batch)?;
        Ok(())
    }

    /// Entries waiting in the outbox, and the age in ms of the oldest (0 when empty). Counts
    /// from the keys alone, which carry each record's entry count.
    pub fn outbox_stats(&self, now_ms: u64) -> Result<(usize, u64)> {
        let mut depth = 0;
        for k in self.outbox.iter().keys() {
            depth += outbox_key_count(&k?);
        }
        let oldest = match self.outbox.first()? {
            Some((k, v)) => decode_outbox(outbox_key_id(&k), &v)?
                .first()
                .map_or(0, |e| now_ms.saturating_sub(e.created_at_ms)),
            None => 0,
        };
        Ok((depth, oldest))
    }
}

/// An outbox record's key: its id (big-endian, so keys sort by id) and how many entries it
/// holds. Records written before records held several entries have an 8-byte key (one entry).
pub(super) fn outbox_key(id: u64, entries: usize) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&u32::try_from(entries).unwrap_or(u32::MAX).to_be_bytes());
    k
}

fn outbox_key_id(k: &[u8]) -> u64 {
    read_u64(&k[..k.len().min(8)])
}

fn outbox_key_count(k: &[u8]) -> usize {
    match k.get(8..12) {
        Some(n) => read_u64(n) as usize,
        None => 1,
    }
}

/// An outbox record: a JSON array of entries, or (written by earlier versions) one entry.
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
    use sled::transaction::ConflictableTransactionError;

    #[tokio::test]
    async fn a_large_batch_is_split_into_outbox_records_in_order() {
        let store = Store::temporary().unwrap();
        let n = OUTBOX_RECORD_MAX_ENTRIES + 4;
        let items: Vec<usize> = (0..n).collect();
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
        assert_eq!(
            keys.len(),
            2,
            "{OUTBOX_RECORD_MAX_ENTRIES} entries, then the rest"
        );
        // A window stops after the record that reaches `max`.
        assert_eq!(
            store.outbox_batch(wm, 1).unwrap().len(),
            OUTBOX_RECORD_MAX_ENTRIES
        );
        assert_eq!(store.outbox_stats(1).unwrap().0, n);
    }

    #[test]
    fn an_outbox_record_of_an_earlier_version_still_reads_and_goes() {
        let store = Store::temporary().unwrap();
        let saga = SagaId::new_v7();
        let old = outbox_entry(&committed(saga), "old", 7);
        // Before records held several entries: an 8-byte key and one JSON object.
        let id = store
            .outbox
            .transaction(|t| Ok::<_, ConflictableTransactionError<()>>(t.generate_id()?))
            .unwrap()
            + 1;
        store
            .outbox
            .insert(id.to_be_bytes(), serde_json::to_vec(&old).unwrap())
            .unwrap();
        store
            .transact(|tx| tx.emit(&committed(saga), "new", 8))
            .unwrap();
        let all = store.outbox_batch(u64::MAX, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].0, &all[0].1), (id, &old));
        assert_eq!(all[1].1.causation_id, "new");
        assert_eq!(store.outbox_stats(10).unwrap(), (2, 3));
        assert_eq!(store.outbox_tail().unwrap(), all[1].0);
        store.outbox_remove(&[id]).unwrap();
        assert_eq!(store.outbox_stats(10).unwrap().0, 1);
    }
}
