//! Measures what one saga costs the tracker: heap bytes in memory (a counting allocator around
//! the system one) and encoded bytes in sled. The figures are quoted in `SagaRecord`'s docs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};

use events::*;
use tracker::{apply, SagaRecord};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The five events of a completed saga.
fn completed(id: SagaId, user: &UserId) -> Vec<Event> {
    let krw = Krw::parse("1500000").unwrap();
    let usd = Usd::parse("1071.42").unwrap();
    let rate: Rate = serde_json::from_str("\"1400\"").unwrap();
    vec![
        Event::ExchangeRequested(ExchangeRequested {
            saga_id: id,
            user_id: user.clone(),
            krw_amount: krw,
            min_usd_amount: Some(Usd::parse("1000").unwrap()),
        }),
        Event::KrwHeld(KrwHeld {
            saga_id: id,
            user_id: user.clone(),
            krw_amount: krw,
            min_usd_amount: Some(Usd::parse("1000").unwrap()),
            hold_expires_at_ms: 1_795_660_830_000,
        }),
        Event::TradeFilled(TradeFilled {
            saga_id: id,
            user_id: user.clone(),
            krw_amount: krw,
            usd_amount: usd,
            rate,
        }),
        Event::UsdCredited(UsdCredited {
            saga_id: id,
            user_id: user.clone(),
            usd_amount: usd,
        }),
        Event::KrwCommitted(KrwCommitted {
            saga_id: id,
            user_id: user.clone(),
            krw_amount: krw,
        }),
    ]
}

#[test]
fn bytes_per_saga_in_memory_and_in_sled() {
    const SAGAS: usize = 50_000;
    let user = UserId::parse("user_0042").unwrap();
    let events: Vec<(SagaId, Vec<Event>)> = (0..SAGAS)
        .map(|_| {
            let id = SagaId::new_v7();
            (id, completed(id, &user))
        })
        .collect();

    let before = LIVE_BYTES.load(Ordering::Relaxed);
    // The tracker's resident map holds a record per saga plus a few bytes of bookkeeping
    // (persisted state, dirty flag); the map slot is what a HashMap costs.
    let mut map: HashMap<SagaId, SagaRecord> = HashMap::new();
    let mut seq = 0;
    for (id, evs) in &events {
        let mut rec = SagaRecord::new(*id, user.clone());
        for e in evs {
            seq += 1;
            apply(&mut rec, e, seq, 1_795_660_800_000 + seq);
        }
        rec.timeline.shrink_to_fit();
        map.insert(*id, rec);
    }
    let heap = (LIVE_BYTES.load(Ordering::Relaxed) - before) as usize;
    let per_saga_memory = heap / SAGAS;

    let mut encoded = 0;
    let mut buf = Vec::new();
    for rec in map.values() {
        buf.clear();
        tracker::codec::encode(rec, &mut buf);
        encoded += buf.len();
    }
    let per_saga_sled = encoded / SAGAS;
    println!(
        "bytes per completed saga: {per_saga_memory} in memory (record {} + heap + map slot), \
         {per_saga_sled} encoded in sled",
        std::mem::size_of::<SagaRecord>()
    );
    // The figures quoted in the docs; a change that grows them past these bounds should
    // update the docs (and think twice).
    assert!(per_saga_memory <= 700, "{per_saga_memory} bytes in memory");
    assert!(per_saga_sled <= 200, "{per_saga_sled} bytes encoded");
}
