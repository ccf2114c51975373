//! A saga's bundle: everything a checkpoint writes for one saga, as one entry of the `sagas`
//! tree. A saga leaves a record (or two), two journal lines and two inbox marks in a service's
//! store; as separate tree entries a checkpoint made five or six sled inserts of them, each
//! about 20,000 instructions (callgrind, `store_bench`). As one bundle it makes one insert,
//! and a get when the saga spans two checkpoints.
//!
//! Which keys go into a bundle is a rule on the key's shape, the shape every key built from a
//! saga id has ([`events::SagaId::between`], always the lowercase hyphenated form):
//!
//! - a journal line or an inbox mark whose key is `<saga_id>:<rest>` (`<saga_id>:hold`,
//!   `<saga_id>:trade.filled`);
//! - a state record whose key is `<kind>:<saga_id>` and nothing after it (`saga:<saga_id>`,
//!   `order:<saga_id>`).
//!
//! Any other key (`acct:<user>`, `exp:<at>:<saga_id>`, `house`) keeps its own entry in its
//! space's tree. A bundle holds each of its entries under the key without the saga id (the
//! `rest` above, or the state record's `<kind>:`), so the id is stored once.
//!
//! The bundle is a store-internal layout: reads, scans and the audits' walks see full keys, as
//! before; [`super::overlay`] reads and writes bundles, and [`Shared::migrate_to_bundles`]
//! moves a store written before bundles into them when it opens.
//!
//! [`Shared::migrate_to_bundles`]: super::overlay::Shared::migrate_to_bundles

use std::collections::BTreeMap;

use bincode::Options;
use serde_bytes::Bytes;
use uuid::Uuid;

use super::log::Space;
use crate::{Result, RuntimeError};

/// A bundle's key in the `sagas` tree: the saga id's 16 bytes (their order is the order of the
/// ids' lowercase hyphenated text, so bundles come in the order of the keys they hold).
pub(super) type BundleId = [u8; 16];

/// The length of a hyphenated saga id (what a bundled key holds beside its `rest`).
pub(super) const ID_LEN: usize = 36;

/// The saga id `text` spells, when it spells one as keys do (lowercase, hyphenated): only
/// then does the key rebuilt from the id's bytes equal the key written.
fn saga_id(text: &[u8]) -> Option<BundleId> {
    if text.len() != ID_LEN || text.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    Uuid::try_parse_ascii(text).ok().map(|u| u.into_bytes())
}

/// Where `key` of `space` is kept once checkpointed: `Some((saga, rest))` in that saga's
/// bundle under `rest`, `None` under its own key in its space's tree.
pub(super) fn bundled(space: Space, key: &[u8]) -> Option<(BundleId, &[u8])> {
    match space {
        Space::Journal | Space::Inbox => {
            let rest = key.get(ID_LEN..)?;
            if rest.first() != Some(&b':') {
                return None;
            }
            Some((saga_id(&key[..ID_LEN])?, rest))
        }
        Space::State => {
            let colon = key.iter().position(|&b| b == b':')?;
            let (kind, id) = key.split_at(colon + 1);
            Some((saga_id(id)?, kind))
        }
    }
}

/// The key [`bundled`] took apart.
pub(super) fn full_key(space: Space, id: &BundleId, rest: &[u8]) -> Vec<u8> {
    let mut buf = Uuid::encode_buffer();
    let id = Uuid::from_bytes(*id).hyphenated().encode_lower(&mut buf);
    match space {
        Space::State => [rest, id.as_bytes()].concat(),
        Space::Journal | Space::Inbox => [id.as_bytes(), rest].concat(),
    }
}

/// One entry as a bundle stores it: space, key without the saga id, value. Entries are kept
/// in (space, rest) order, so that each space's come in key order.
type Entry<'a> = (Space, &'a Bytes, &'a Bytes);

/// bincode with variable-length integers: a space is one byte, a short length one byte.
fn codec() -> impl Options {
    bincode::DefaultOptions::new()
}

/// A bundle's entries, borrowed from its bytes.
pub(super) fn decode<'a>(id: &BundleId, bytes: &'a [u8]) -> Result<Vec<Entry<'a>>> {
    codec()
        .deserialize(bytes)
        .map_err(|e| RuntimeError::Corrupt {
            key: format!("sagas/{}", Uuid::from_bytes(*id)),
            message: e.to_string(),
        })
}

/// The value a bundle holds under (`space`, `rest`).
pub(super) fn lookup(
    id: &BundleId,
    bytes: &[u8],
    space: Space,
    rest: &[u8],
) -> Result<Option<Vec<u8>>> {
    Ok(decode(id, bytes)?
        .into_iter()
        .find(|(s, r, _)| *s == space && &r[..] == rest)
        .map(|(_, _, v)| v.to_vec()))
}

/// A write into a bundle: space, key without the saga id, the value (`None` removes).
pub(super) type BundleWrite<'a> = (Space, &'a [u8], Option<&'a [u8]>);

/// The bundle `old` with `writes` over it, in order; `None` when nothing is left (the bundle
/// is removed).
pub(super) fn merge(
    id: &BundleId,
    old: Option<&[u8]>,
    writes: &[BundleWrite<'_>],
) -> Result<Option<Vec<u8>>> {
    let mut entries: BTreeMap<(Space, &[u8]), &[u8]> = BTreeMap::new();
    if let Some(old) = old {
        for (space, rest, value) in decode(id, old)? {
            entries.insert((space, rest), value);
        }
    }
    for (space, rest, value) in writes {
        match value {
            Some(v) => entries.insert((*space, rest), v),
            None => entries.remove(&(*space, *rest)),
        };
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let list: Vec<Entry<'_>> = entries
        .into_iter()
        .map(|((space, rest), value)| (space, Bytes::new(rest), Bytes::new(value)))
        .collect();
    Ok(Some(codec().serialize(&list).expect("bundles encode")))
}

/// The entries of `space` a bundle holds whose full key starts with `prefix`, as (full key,
/// value), in key order.
pub(super) fn entries(
    id: &BundleId,
    bytes: &[u8],
    space: Space,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    Ok(decode(id, bytes)?
        .into_iter()
        .filter(|(s, _, _)| *s == space)
        .map(|(_, rest, value)| (full_key(space, id, rest), value.to_vec()))
        .filter(|(k, _)| k.starts_with(prefix))
        .collect())
}

/// The part of a state key before its saga id, `<kind>:`, that a scan under `prefix` can match
/// only if the kind is `head`: a prefix that runs past the kind's colon names that kind alone.
pub(super) fn head_of(prefix: &[u8]) -> Option<&[u8]> {
    prefix
        .iter()
        .position(|&b| b == b':')
        .map(|colon| &prefix[..=colon])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11";

    #[test]
    fn keys_built_from_a_saga_id_go_into_its_bundle_and_come_back_whole() {
        let id = *Uuid::parse_str(ID).unwrap().as_bytes();
        for (space, key, rest) in [
            (Space::Journal, format!("{ID}:hold"), ":hold"),
            (Space::Inbox, format!("{ID}:trade.filled"), ":trade.filled"),
            (Space::State, format!("saga:{ID}"), "saga:"),
            (Space::State, format!("order:{ID}"), "order:"),
        ] {
            assert_eq!(
                bundled(space, key.as_bytes()),
                Some((id, rest.as_bytes())),
                "{key}"
            );
            assert_eq!(full_key(space, &id, rest.as_bytes()), key.as_bytes());
        }
        let upper = ID.to_uppercase();
        for (space, key) in [
            (Space::State, "acct:alice".to_string()),
            (Space::State, "house".to_string()),
            (Space::State, format!("exp:00000000000000009000:{ID}")),
            (Space::State, format!("saga:{ID}:more")),
            (Space::State, format!("saga:{upper}")),
            (Space::State, format!(":{}", &ID[1..])),
            (Space::Journal, ID.to_string()),
            (Space::Journal, format!("{upper}:hold")),
            (Space::Journal, format!("{ID}-hold")),
            (Space::Inbox, "e1".to_string()),
            (Space::Journal, format!("x{ID}:hold")),
        ] {
            assert_eq!(bundled(space, key.as_bytes()), None, "{key}");
        }
    }

    #[test]
    fn a_bundle_takes_writes_in_order_and_goes_when_it_is_empty() {
        let id = [7; 16];
        let one = merge(
            &id,
            None,
            &[
                (Space::State, b"saga:", Some(b"1")),
                (Space::Journal, b":hold", Some(b"h")),
                (Space::Inbox, b":a.b", Some(b"t")),
                (Space::State, b"saga:", Some(b"2")),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            lookup(&id, &one, Space::State, b"saga:").unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(lookup(&id, &one, Space::State, b":hold").unwrap(), None);
        let two = merge(
            &id,
            Some(&one),
            &[
                (Space::Journal, b":commit", Some(b"c")),
                (Space::Inbox, b":a.b", None),
            ],
        )
        .unwrap()
        .unwrap();
        let journal = entries(&id, &two, Space::Journal, b"").unwrap();
        let keys: Vec<Vec<u8>> = journal.into_iter().map(|(k, _)| k).collect();
        let uuid = Uuid::from_bytes(id).to_string();
        assert_eq!(
            keys,
            [
                format!("{uuid}:commit").into_bytes(),
                format!("{uuid}:hold").into_bytes()
            ]
        );
        assert!(entries(&id, &two, Space::Inbox, b"").unwrap().is_empty());
        assert_eq!(
            entries(&id, &two, Space::State, b"sag").unwrap().len(),
            1,
            "a prefix of the full key"
        );
        let gone = merge(
            &id,
            Some(&two),
            &[
                (Space::State, b"saga:", None),
                (Space::Journal, b":hold", None),
                (Space::Journal, b":commit", None),
            ],
        )
        .unwrap();
        assert_eq!(gone, None);
        assert!(matches!(
            decode(&id, b"\xff\xff"),
            Err(RuntimeError::Corrupt { key, .. }) if key == format!("sagas/{uuid}")
        ));
    }

    #[test]
    fn a_scan_prefix_names_a_record_kind_once_it_reaches_the_colon() {
        assert_eq!(head_of(b"saga:"), Some(&b"saga:"[..]));
        assert_eq!(head_of(b"saga:0193"), Some(&b"saga:"[..]));
        assert_eq!(head_of(b"sag"), None);
        assert_eq!(head_of(b""), None);
    }
}
