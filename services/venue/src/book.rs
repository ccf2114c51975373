//! The order book in sled: the [`trade::Book`] the market executes against.
//!
//! Two trees, written together in one sled transaction per execution:
//! - `executions`: the sequence number as 8 big-endian bytes -> the [`Execution`] as JSON, so
//!   a range scan lists executions in sequence order (the reconciliation cursor);
//! - `by_id`: the client order id -> the sequence number (8 big-endian bytes).
//!
//! Nothing else is kept: the market's rate after an execution is that execution's rate, so the
//! last execution also says where the random walk continues after a restart.

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use trade::{Book, ClientOrderId, Execution};

use crate::error::{Result, VenueServerError};

/// Read access to the book, usable without the market's lock (sled reads are consistent with
/// its transactions: a reader sees an execution in both trees or in neither).
#[derive(Clone)]
pub struct BookReader {
    executions: sled::Tree,
    by_id: sled::Tree,
}

impl BookReader {
    /// The execution of the order with this client order id.
    pub fn get(&self, id: &ClientOrderId) -> Result<Option<Execution>> {
        let Some(seq) = self.by_id.get(id.as_str().as_bytes())? else {
            return Ok(None);
        };
        let seq = decode_seq(id.as_str(), &seq)?;
        match self.executions.get(seq.to_be_bytes())? {
            Some(bytes) => decode_execution(seq, &bytes).map(Some),
            None => Err(VenueServerError::Corrupt {
                key: id.to_string(),
                message: format!("points at execution {seq}, which is missing"),
            }),
        }
    }

    /// Up to `limit` executions with `after < seq <= up_to`, in sequence order.
    pub fn since(&self, after: u64, up_to: u64, limit: usize) -> Result<Vec<Execution>> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        let from = after.saturating_add(1).to_be_bytes();
        let to = up_to.to_be_bytes();
        self.executions
            .range(from..=to)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                decode_execution(decode_seq("executions", &key)?, &value)
            })
            .collect()
    }

    /// The last execution, if any.
    pub fn last(&self) -> Result<Option<Execution>> {
        match self.executions.last()? {
            Some((key, value)) => {
                decode_execution(decode_seq("executions", &key)?, &value).map(Some)
            }
            None => Ok(None),
        }
    }
}

/// The market's book: a [`BookReader`] plus the writer's knowledge of the last sequence number.
pub struct SledBook {
    reader: BookReader,
    last_seq: u64,
}

impl SledBook {
    /// The book in `db` (its trees are created if missing).
    pub fn open(db: &sled::Db) -> Result<SledBook> {
        let reader = BookReader {
            executions: db.open_tree("executions")?,
            by_id: db.open_tree("by_id")?,
        };
        let last_seq = reader.last()?.map_or(0, |e| e.seq);
        Ok(SledBook { reader, last_seq })
    }

    /// A reader for requests that do not execute.
    pub fn reader(&self) -> BookReader {
        self.reader.clone()
    }
}

impl Book for SledBook {
    type Error = VenueServerError;

    fn get(&self, id: &ClientOrderId) -> Result<Option<Execution>> {
        self.reader.get(id)
    }

    fn last_seq(&self) -> Result<u64> {
        Ok(self.last_seq)
    }

    fn insert(&mut self, execution: &Execution) -> Result<()> {
        let seq = execution.seq.to_be_bytes();
        let value = serde_json::to_vec(execution).map_err(|e| VenueServerError::Corrupt {
            key: execution.seq.to_string(),
            message: format!("cannot encode: {e}"),
        })?;
        let id = execution.client_order_id.as_str().as_bytes();
        (&self.reader.executions, &self.reader.by_id)
            .transaction(|(executions, by_id)| {
                executions.insert(&seq, value.as_slice())?;
                by_id.insert(id, &seq)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => VenueServerError::Store(e),
                TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
            })?;
        self.last_seq = execution.seq;
        Ok(())
    }
}

fn decode_seq(key: &str, bytes: &[u8]) -> Result<u64> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| VenueServerError::Corrupt {
        key: key.to_owned(),
        message: format!("a sequence number of {} bytes, not 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

fn decode_execution(seq: u64, bytes: &[u8]) -> Result<Execution> {
    let execution: Execution =
        serde_json::from_slice(bytes).map_err(|e| VenueServerError::Corrupt {
            key: seq.to_string(),
            message: e.to_string(),
        })?;
    if execution.seq != seq {
        return Err(VenueServerError::Corrupt {
            key: seq.to_string(),
            message: format!("holds execution {}", execution.seq),
        });
    }
    Ok(execution)
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::{Krw, Rate, Usd, UserId};
    use rust_decimal::Decimal;
    use trade::Side;

    fn execution(seq: u64, id: &str) -> Execution {
        Execution {
            seq,
            client_order_id: ClientOrderId::parse(id).unwrap(),
            user_id: UserId::parse("alice").unwrap(),
            side: Side::Buy,
            rate: Rate::new(Decimal::from(1400)).unwrap(),
            krw_amount: Krw::parse("1400000").unwrap(),
            usd_amount: Usd::parse("1000.00").unwrap(),
            executed_at_ms: 7,
        }
    }

    #[test]
    fn executions_are_found_by_id_and_listed_in_sequence_order_across_a_reopen() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut book = SledBook::open(&db).unwrap();
        assert_eq!(book.last_seq().unwrap(), 0);
        // 256 and 1 in big-endian sort correctly, unlike their decimal text.
        for seq in 1..=300 {
            book.insert(&execution(seq, &format!("o{seq}"))).unwrap();
        }
        let again = SledBook::open(&db).unwrap();
        assert_eq!(again.last_seq().unwrap(), 300);
        let reader = again.reader();
        assert_eq!(
            reader.get(&ClientOrderId::parse("o256").unwrap()).unwrap(),
            Some(execution(256, "o256"))
        );
        assert_eq!(
            reader.get(&ClientOrderId::parse("nope").unwrap()).unwrap(),
            None
        );
        let page: Vec<u64> = reader
            .since(250, 300, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(page, (251..=260).collect::<Vec<_>>());
        assert_eq!(
            reader.since(295, 297, 10).unwrap().len(),
            2,
            "capped at up_to"
        );
        assert!(reader.since(300, 300, 10).unwrap().is_empty());
    }
}
