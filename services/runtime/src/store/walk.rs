//! Reading the journal back, for audits: in stored key order ([`Store::journal_iter`]), in
//! saga order even when an entry sits under a key not its own ([`Store::journal_iter_by_saga`]),
//! and side by side with the per-saga records, one saga at a time ([`Store::by_saga`]), so an
//! audit's memory grows with accounts, not with sagas.

use events::SagaId;
use serde::de::DeserializeOwned;

use super::log::Space;
use super::records::decode;
use super::{JournalEntry, Store};
use crate::ledger::Line;
use crate::{Result, RuntimeError};

impl Store {
    /// Every journal entry, in key order.
    pub fn journal_entries(&self) -> Result<Vec<JournalEntry>> {
        self.journal_iter().collect()
    }

    /// Every journal entry committed, in key order, decoded one at a time: memory over the
    /// trees, as the records are read (see [`Store::by_saga`]), so that an audit under traffic
    /// reads both from about the same moment.
    pub fn journal_iter(&self) -> impl Iterator<Item = Result<JournalEntry>> + '_ {
        self.merged(Space::Journal, b"").map(|item| {
            let (k, v) = item?;
            decode(&String::from_utf8_lossy(&k), &v)
        })
    }

    /// Every journal entry in the order of its own key `<saga_id>:<op>`, decoded one at a time,
    /// leniently: a [`Line`] says why an entry with a name the ledger does not know is no entry.
    /// Saga ids print at one fixed length, so one saga's entries are adjacent and sagas come in
    /// id order: an audit can walk the journal side by side with its per-saga records, holding
    /// one saga at a time.
    ///
    /// That is the stored order for every entry [`super::Tx`] wrote. An entry stored under a
    /// key that is not its own (only possible behind the store's back) is found by a first
    /// pass, which decodes only what does not start as its key says, and yielded where its own
    /// key sorts, so an audit still sees it next to the entries it may duplicate. Memory: the
    /// misfiled entries, none in a sound store.
    pub fn journal_iter_by_saga(&self) -> Result<impl Iterator<Item = Result<Line>> + '_> {
        let mut misfiled_keys = std::collections::BTreeSet::new();
        let mut misfiled = Vec::new();
        for item in self.merged(Space::Journal, b"") {
            let (k, v) = item?;
            if starts_as_keyed(&k, &v) {
                continue;
            }
            let e: Line = decode(&String::from_utf8_lossy(&k), &v)?;
            if e.key().as_bytes() != &*k {
                misfiled.push((e.key(), e));
                misfiled_keys.insert(k);
            }
        }
        // Stable: entries claiming one key keep their stored order.
        misfiled.sort_by(|a, b| a.0.cmp(&b.0));
        let mut misfiled = misfiled.into_iter().peekable();
        let mut stored = self
            .merged(Space::Journal, b"")
            .filter_map(move |item| match item {
                Ok((k, _)) if misfiled_keys.contains(&k) => None,
                Ok((k, v)) => Some(decode::<Line>(&String::from_utf8_lossy(&k), &v)),
                Err(e) => Some(Err(e)),
            });
        let mut next_stored: Option<Result<Line>> = None;
        Ok(std::iter::from_fn(move || {
            if next_stored.is_none() {
                next_stored = stored.next();
            }
            let misfiled_first = match (&next_stored, misfiled.peek()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(Ok(e)), Some((key, _))) => *key < e.key(),
                // An error ends the walk as soon as it is reached.
                (Some(Err(_)), Some(_)) => false,
            };
            if misfiled_first {
                misfiled.next().map(|(_, e)| Ok(e))
            } else {
                next_stored.take()
            }
        }))
    }

    /// The journal and the per-saga records under `prefixes` (`order:<saga_id>`, ...), walked
    /// side by side and yielded one saga at a time, in saga id order: each saga's journal
    /// entries (as [`Store::journal_iter_by_saga`] yields them) and its record under each
    /// prefix, if any.
    ///
    /// It exists so that audits hold one saga at a time: what they keep across sagas is per
    /// account, so their memory grows with users, not with sagas. `K` says how sagas are
    /// compared and how a record's key names one (see `SagaKey`). A record whose key names
    /// no saga is yielded alone, with `saga: None`, where its key sorts under its prefix.
    /// Read-only. The walk ends at the first error: a journal error before a record error,
    /// and the prefixes' errors in the order given.
    pub fn by_saga<'a, K: SagaKey, V: DeserializeOwned + 'a, const N: usize>(
        &'a self,
        prefixes: [&'a str; N],
    ) -> Result<impl Iterator<Item = Result<SagaGroup<K, V, N>>> + 'a> {
        let mut journal = self.journal_iter_by_saga()?.peekable();
        let mut records = prefixes.map(|p| self.scan_iter::<V>(p).peekable());
        let mut failed = false;
        Ok(std::iter::from_fn(move || {
            if failed {
                return None;
            }
            let step = (|| {
                let next_entry = match journal.peek() {
                    Some(Ok(e)) => Some(K::of_entry(e)),
                    Some(Err(_)) => return Err(take_err(&mut journal)),
                    None => None,
                };
                let mut heads: [Option<K>; N] = std::array::from_fn(|_| None);
                for (i, it) in records.iter_mut().enumerate() {
                    heads[i] = match it.peek() {
                        Some(Ok((key, _))) => match K::of_record(prefixes[i], key) {
                            Some(id) => Some(id),
                            None => {
                                let mut group = SagaGroup {
                                    saga: None,
                                    entries: Vec::new(),
                                    records: std::array::from_fn(|_| None),
                                };
                                group.records[i] = it.next().transpose()?;
                                return Ok(Some(group));
                            }
                        },
                        Some(Err(_)) => return Err(take_err(it)),
                        None => None,
                    };
                }
                let Some(saga) = next_entry
                    .iter()
                    .chain(heads.iter().flatten())
                    .min()
                    .cloned()
                else {
                    return Ok(None);
                };
                let mut entries = Vec::new();
                // An error stays in place, to end the walk on the next call.
                while let Some(Ok(e)) =
                    journal.next_if(|e| matches!(e, Ok(e) if K::of_entry(e) == saga))
                {
                    entries.push(e);
                }
                let mut group = SagaGroup {
                    saga: Some(saga),
                    entries,
                    records: std::array::from_fn(|_| None),
                };
                for (i, it) in records.iter_mut().enumerate() {
                    if heads[i] == group.saga {
                        group.records[i] = it.next().transpose()?;
                    }
                }
                Ok(Some(group))
            })();
            failed = step.is_err();
            step.transpose()
        }))
    }
}

/// One saga's share of a [`Store::by_saga`] walk.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaGroup<K, V, const N: usize> {
    /// The saga; `None` for a record whose key names no saga (then it is the only record).
    pub saga: Option<K>,
    /// The saga's journal entries, in the order of their keys, each read leniently.
    pub entries: Vec<Line>,
    /// Per prefix, in the order given: the saga's record under it (key and value), if any.
    pub records: [Option<(String, V)>; N],
}

/// How [`Store::by_saga`] compares sagas and reads a saga from a record's key.
pub trait SagaKey: Ord + Clone {
    /// A journal entry's saga.
    fn of_entry(entry: &Line) -> Self;
    /// The saga `key`, a key under `prefix`, names; `None` if it names none.
    fn of_record(prefix: &str, key: &str) -> Option<Self>;
}

/// Sagas compared as text: an entry's printed id, a key with every leading `prefix` trimmed.
/// Every key names a saga.
impl SagaKey for String {
    fn of_entry(entry: &Line) -> Self {
        entry.saga_id.to_string()
    }

    fn of_record(prefix: &str, key: &str) -> Option<Self> {
        Some(key.trim_start_matches(prefix).to_owned())
    }
}

/// Sagas compared as ids: a key names a saga if what follows its prefix parses as one.
impl SagaKey for SagaId {
    fn of_entry(entry: &Line) -> Self {
        entry.saga_id
    }

    fn of_record(prefix: &str, key: &str) -> Option<Self> {
        key.strip_prefix(prefix)
            .and_then(|id| SagaId::parse(id).ok())
    }
}

/// The error a peeked `Err` holds.
fn take_err<T>(it: &mut impl Iterator<Item = Result<T>>) -> RuntimeError {
    match it.next() {
        Some(Err(e)) => e,
        _ => unreachable!("called on a peeked error"),
    }
}

/// True when a journal value begins `{"saga_id":"<s>","op":"<o>"` for its key `<s>:<o>`, as
/// every entry [`super::Tx`]'s `journal` writes does (serde writes the fields in declaration
/// order). A cheap test that the entry is stored under its own key; false says only "decode
/// and see".
fn starts_as_keyed(key: &[u8], value: &[u8]) -> bool {
    let Some(colon) = key.iter().position(|&b| b == b':') else {
        return false;
    };
    let (saga, op) = (&key[..colon], &key[colon + 1..]);
    // Bytes that JSON writes as they are and that decode to themselves: a canonical (lowercase
    // hyphenated) saga id, and an op without quotes or escapes.
    if !saga
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b) || *b == b'-')
        || op.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20)
    {
        return false;
    }
    let rest = value.strip_prefix(b"{\"saga_id\":\"".as_slice());
    let rest = rest.and_then(|r| r.strip_prefix(saga));
    let rest = rest.and_then(|r| r.strip_prefix(b"\",\"op\":\"".as_slice()));
    let rest = rest.and_then(|r| r.strip_prefix(op));
    rest.is_some_and(|r| r.first() == Some(&b'"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Op;
    use crate::store::fixtures::entry;
    use crate::Records;

    fn saga(n: u128) -> SagaId {
        SagaId::from(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn the_journal_is_read_as_the_records_are_memory_over_the_trees_without_writing() {
        let store = Store::temporary().unwrap();
        let (a, b) = (saga(1), saga(2));
        store
            .transact(|tx| tx.journal(&entry(a, Op::Hold)))
            .unwrap();
        store.checkpoint().unwrap();
        // The second group is in memory only, as a group committed during an audit is.
        store
            .transact(|tx| {
                tx.put(&format!("order:{b}"), &1u32)?;
                tx.journal(&entry(b, Op::Hold))
            })
            .unwrap();
        let keys: Vec<String> = store
            .journal_entries()
            .unwrap()
            .iter()
            .map(JournalEntry::key)
            .collect();
        assert_eq!(keys, [entry(a, Op::Hold).key(), entry(b, Op::Hold).key()]);
        let groups: Vec<_> = store
            .by_saga::<SagaId, u32, 1>(["order:"])
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].entries.len(), 1, "b's line beside its record");
        assert_eq!(groups[1].records[0].as_ref().map(|(_, v)| *v), Some(1));
        assert_eq!(
            store.shared.sagas.len(),
            1,
            "reading wrote nothing: a's bundle alone"
        );
    }

    #[test]
    fn the_journal_by_saga_puts_an_entry_stored_under_another_key_where_its_own_key_sorts() {
        let store = Store::temporary().unwrap();
        let (a, b, c) = (saga(1), saga(2), saga(3));
        store
            .transact(|tx| {
                tx.journal(&entry(a, Op::Commit))?;
                tx.journal(&entry(b, Op::Commit))?;
                tx.journal(&entry(c, Op::Commit))
            })
            .unwrap();
        // Behind the store's back: a second `a:commit`, stored under c's key space.
        let stray = entry(a, Op::Commit);
        let stray_key = format!("{c}:hold");
        store
            .shared
            .journal
            .insert(stray_key.as_bytes(), serde_json::to_vec(&stray).unwrap())
            .unwrap();
        let keys: Vec<String> = store
            .journal_iter_by_saga()
            .unwrap()
            .map(|e| e.unwrap().key())
            .collect();
        assert_eq!(
            keys,
            [
                format!("{a}:commit"),
                format!("{a}:commit"),
                format!("{b}:commit"),
                format!("{c}:commit"),
            ]
        );
        // A sound journal reads as stored.
        store.shared.journal.remove(stray_key.as_bytes()).unwrap();
        let all: Vec<JournalEntry> = store
            .journal_iter_by_saga()
            .unwrap()
            .map(|line| line.unwrap().entry.unwrap())
            .collect();
        assert_eq!(all, store.journal_entries().unwrap());
    }

    #[test]
    fn an_entry_with_a_name_the_ledger_does_not_know_reaches_the_walk_as_a_line_that_says_so() {
        let store = Store::temporary().unwrap();
        let (a, b) = (saga(1), saga(2));
        store
            .transact(|tx| tx.journal(&entry(b, Op::Hold)))
            .unwrap();
        // Behind the store's back: an op no version ever wrote.
        let mut odd = serde_json::to_value(entry(a, Op::Hold)).unwrap();
        odd["op"] = "bogus".into();
        let key = format!("{a}:bogus");
        store
            .shared
            .journal
            .insert(key.as_bytes(), serde_json::to_vec(&odd).unwrap())
            .unwrap();
        let groups: Vec<SagaGroup<SagaId, u32, 1>> =
            store.by_saga(["r:"]).unwrap().map(Result::unwrap).collect();
        assert_eq!(groups.len(), 2);
        let line = &groups[0].entries[0];
        assert_eq!((line.key(), line.saga_id), (key.clone(), a));
        assert_eq!(
            line.entry,
            Err(format!(
                "journal {key} does not read: op \"bogus\" is not one the ledger knows"
            ))
        );
        assert_eq!(groups[1].entries[0].entry, Ok(entry(b, Op::Hold)));
    }

    #[test]
    fn by_saga_yields_each_saga_with_its_entries_and_records_in_id_order() {
        let store = Store::temporary().unwrap();
        let id = |n: u128| SagaId::from(uuid::Uuid::from_u128(n << 124));
        let (a, b, c, d) = (id(1), id(2), id(3), id(5));
        store
            .transact(|tx| {
                tx.journal(&entry(c, Op::Commit))?;
                tx.journal(&entry(a, Op::Hold))?;
                tx.journal(&entry(a, Op::Commit))?;
                tx.put(&format!("r:{a}"), &1u32)?;
                tx.put(&format!("r:{d}"), &4u32)?;
                tx.put("r:4", &9u32)?; // names no saga id; sorts between a and d
                tx.put(&format!("q:{b}"), &2u32)
            })
            .unwrap();
        let rec = |k: String, v: u32| Some((k, v));

        // Compared as ids: the key that names none comes alone, where it sorts under `r:`.
        let groups: Vec<SagaGroup<SagaId, u32, 2>> = store
            .by_saga(["r:", "q:"])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let summary: Vec<_> = groups
            .iter()
            .map(|g| {
                let ops: Vec<&str> = g.entries.iter().map(|e| e.op.as_str()).collect();
                (g.saga, ops, g.records.clone())
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    Some(a),
                    vec!["commit", "hold"],
                    [rec(format!("r:{a}"), 1), None]
                ),
                (None, vec![], [rec("r:4".into(), 9), None]),
                (Some(b), vec![], [None, rec(format!("q:{b}"), 2)]),
                (Some(c), vec!["commit"], [None, None]),
                (Some(d), vec![], [rec(format!("r:{d}"), 4), None]),
            ]
        );

        // Compared as text: every key names a saga, sorted with the rest.
        let sagas: Vec<String> = store
            .by_saga::<String, u32, 1>(["r:"])
            .unwrap()
            .map(|g| g.unwrap().saga.unwrap())
            .collect();
        assert_eq!(
            sagas,
            [a.to_string(), c.to_string(), "4".into(), d.to_string()]
        );
    }
}
