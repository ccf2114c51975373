//! Every page in headless Chromium, against a real broker and tracker: the dashboard updates in
//! place (no reload), a search from the form finds a saga, and a compensated saga's sequence
//! diagram draws its arrows in order. Skipped with a message when Chromium is not installed
//! (scripts/test.sh installs it).
//!
//! `screenshots_for_the_docs` (ignored) writes the README's screenshots into `docs/img/`:
//! `scripts/screenshots.sh` runs it.

mod common;

use common::cdp::{chromium, Browser};
use common::*;
use events::headers;
use serde_json::json;

/// Publishes a dead letter of `saga`'s event at `stream_seq` to `FX_DLQ`, as fx-usd does when
/// it refuses a message.
async fn dead_letter(broker: &Broker, saga: &Saga, stream_seq: u64) {
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::SAGA_ID, saga.id.to_string().as_str());
    let credited = saga.credited();
    runtime::broker::publish_dead_letter(
        &broker.js,
        &runtime::broker::DeadLetter {
            service: "fx-usd",
            reason: "saga_id_conflict",
            message: "another saga already used this id",
            subject: &credited.subject(),
            headers: Some(&h),
            payload: credited.to_json().into(),
            stream_seq,
        },
    )
    .await
    .expect("dead letter stored");
}

/// Chromium, a broker and a tracker on a fresh store.
struct Setup {
    chromium: std::path::PathBuf,
    broker: Broker,
    _dir: tempfile::TempDir,
    t: Running,
}

/// `None` (and a message) when Chromium is not installed.
async fn setup() -> Option<Setup> {
    let Some(chromium) = chromium() else {
        println!("SKIPPED: chromium not installed (apt-get install chromium)");
        return None;
    };
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let t = Running::start(&broker.url(), dir.path(), &TestClock::at_now(), 10_000).await;
    Some(Setup {
        chromium,
        broker,
        _dir: dir,
        t,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_updates_in_place_and_keeps_its_search() {
    let Some(Setup {
        chromium,
        broker,
        _dir,
        t,
    }) = setup().await
    else {
        return;
    };
    let first = Saga::new("alice");
    t.caught_up(broker.publish_all(&first.events(Outcome::Completed)).await)
        .await;

    let mut b = Browser::start(&chromium, 1200, 900).await;
    let url = format!("http://{}/?state=COMPLETED", t.addr);
    b.open(&url).await;
    assert_eq!(
        b.eval("document.querySelector('#search select[name=state]').value")
            .await,
        "COMPLETED"
    );
    // The live stream is open; mark this page, so a reload would show.
    b.wait_for("document.getElementById('live').dataset.live === 'open'")
        .await;
    b.eval("window.__marker = 'this page'; window.scrollTo(0, 200); true")
        .await;
    let scrolled = b.eval("window.scrollY").await;
    let results = "document.getElementById('results').nextElementSibling.innerText";
    assert!(b
        .eval(results)
        .await
        .as_str()
        .unwrap()
        .contains(&first.id.to_string()));

    let completed = Saga::new("bob");
    let rejected = Saga::new("carol");
    let mut events = completed.events(Outcome::Completed);
    events.extend(rejected.events(Outcome::Rejected));
    t.caught_up(broker.publish_all(&events).await).await;
    b.wait_for(&format!(
        "{results}.includes({})",
        json!(completed.id.to_string())
    ))
    .await;

    assert_eq!(
        b.eval("window.__marker").await,
        "this page",
        "updated in place, not reloaded"
    );
    assert_eq!(
        b.eval("performance.getEntriesByType('navigation').length")
            .await,
        1
    );
    assert_eq!(b.eval("window.scrollY").await, scrolled, "scroll kept");
    let text = b.eval(results).await;
    assert!(
        !text.as_str().unwrap().contains(&rejected.id.to_string()),
        "the search still applies: {text}"
    );
    assert!(
        b.eval("Number(document.getElementById('live').dataset.updates)")
            .await
            .as_u64()
            .unwrap()
            >= 1
    );
    // The counts moved too.
    b.wait_for("document.querySelector('#by-state td[data-state=REJECTED]').innerText === '1'")
        .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_from_the_form_finds_a_saga() {
    let Some(Setup {
        chromium,
        broker,
        _dir,
        t,
    }) = setup().await
    else {
        return;
    };
    let frozen = Saga::new("carol");
    let others = [
        (Saga::new("carol"), Outcome::Completed),
        (Saga::new("carol"), Outcome::CompensatedTradeFailed),
        (Saga::new("dave"), Outcome::CompensatedCreditFailed),
    ];
    let mut events = frozen.events(Outcome::CompensatedCreditFailed);
    for (s, o) in &others {
        events.extend(s.events(*o));
    }
    t.caught_up(broker.publish_all(&events).await).await;

    let mut b = Browser::start(&chromium, 1200, 900).await;
    b.open(&format!("http://{}/", t.addr)).await;
    b.eval(
        "const f = document.getElementById('search'); \
         f.querySelector('[name=user]').value = 'carol'; \
         f.querySelector('[name=reason]').value = 'account_frozen'; \
         f.querySelector('button').click(); true",
    )
    .await;
    b.wait_for(
        "location.search.includes('reason=account_frozen') && document.readyState === 'complete' \
         && document.getElementById('results') !== null",
    )
    .await;
    let rows = b
        .eval(
            "[...document.getElementById('results').nextElementSibling.querySelectorAll('tr.saga a')]\
             .map(a => a.innerText)",
        )
        .await;
    assert_eq!(
        rows,
        json!([frozen.id.to_string()]),
        "only carol's frozen one"
    );
    // Its link leads to its page.
    b.eval("document.querySelector('#results + table tr.saga a').click(); true")
        .await;
    b.wait_for(&format!(
        "location.pathname === '/sagas/{}' && document.readyState === 'complete'",
        frozen.id
    ))
    .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_diagram_draws_a_compensated_sagas_arrows_in_order() {
    let Some(Setup {
        chromium,
        broker,
        _dir,
        t,
    }) = setup().await
    else {
        return;
    };
    let saga = Saga::new("bob");
    let events = saga.events(Outcome::CompensatedCreditFailed);
    let mut seqs = Vec::new();
    for e in &events {
        seqs.push(broker.publish(e).await);
    }
    t.caught_up(*seqs.last().unwrap()).await;
    // fx-usd set a message of this saga aside after the fill (stream seq of trade.filled).
    dead_letter(&broker, &saga, seqs[2]).await;

    let mut b = Browser::start(&chromium, 1200, 1400).await;
    b.open(&format!("http://{}/sagas/{}", t.addr, saga.id))
        .await;
    let arrows = b
        .eval(
            "[...document.querySelectorAll('#sequence g.arrow')].map(g => ({\
               type: g.dataset.type, style: g.classList[1], \
               top: g.getBoundingClientRect().top, \
               dashed: [...g.querySelectorAll('line')].every(l => l.getAttribute('stroke-dasharray')), \
               lines: g.querySelectorAll('line').length }))",
        )
        .await;
    let arrows = arrows.as_array().unwrap();
    let types: Vec<&str> = arrows.iter().map(|a| a["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "exchange.requested",
            "krw.held",
            "trade.filled",
            "usd.credit_failed",
            "trade.cancelled",
            "krw.released"
        ]
    );
    let tops: Vec<f64> = arrows.iter().map(|a| a["top"].as_f64().unwrap()).collect();
    assert!(
        tops.windows(2).all(|w| w[0] < w[1]),
        "drawn top to bottom in order: {tops:?}"
    );
    for a in arrows {
        let compensation = matches!(a["type"].as_str(), Some("trade.cancelled" | "krw.released"));
        assert_eq!(a["style"] == "compensation", compensation, "{a}");
        assert_eq!(a["dashed"] == true, compensation, "{a}");
    }
    // trade.filled goes to fx-krw and fx-usd; trade.cancelled too.
    assert_eq!(arrows[2]["lines"], 2);
    assert_eq!(arrows[4]["lines"], 2);
    let legend = b
        .eval("document.getElementById('sequence').textContent")
        .await;
    let legend = legend.as_str().unwrap();
    for word in [
        "compensation",
        "failure",
        "fx-venue",
        "venue: order executed (inferred)",
    ] {
        assert!(legend.contains(word), "{word}: {legend}");
    }
    // The dead letter, after the fill and before the credit failure.
    let dead = b
        .eval(
            "(() => { const d = document.querySelector('#sequence g.dead-letter'); \
             const at = s => document.querySelector(`#sequence g[data-type='${s}']`).getBoundingClientRect().top; \
             return d && { text: d.textContent, top: d.getBoundingClientRect().top, \
               fill: at('trade.filled'), failed: at('usd.credit_failed') }; })()",
        )
        .await;
    assert!(
        dead["text"]
            .as_str()
            .unwrap()
            .contains("dead-lettered by fx-usd: saga_id_conflict"),
        "{dead}"
    );
    assert!(
        dead["fill"].as_f64() < dead["top"].as_f64()
            && dead["top"].as_f64() < dead["failed"].as_f64()
    );
    // The raw bodies stay, folded.
    assert_eq!(
        b.eval("document.querySelectorAll('tr.event details pre').length")
            .await,
        6
    );
    t.stop().await;
}

/// Writes the README's screenshots: the dashboard (with charts), a search, and a compensated
/// saga's page. `FX_SCREENSHOT_DIR` overrides the directory (default: the repository's
/// `docs/img`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/img/*.png; run by scripts/screenshots.sh"]
async fn screenshots_for_the_docs() {
    let chromium = chromium().expect("chromium installed (apt-get install chromium)");
    let out = std::env::var("FX_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/img")
        });
    std::fs::create_dir_all(&out).unwrap();
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let t = Running::start(&broker.url(), dir.path(), &clock, 10_000).await;
    let mut sagas = Vec::new();
    for i in 0..60 {
        let o = match i % 10 {
            0 => Outcome::CompensatedCreditFailed,
            1 => Outcome::CompensatedTradeFailed,
            2 => Outcome::Rejected,
            3 if i == 3 => Outcome::Stalled,
            _ => Outcome::Completed,
        };
        sagas.push((Saga::new(["alice", "bob", "carol", "dave"][i % 4]), o));
    }
    let all = interleave(sagas.iter().map(|(s, o)| s.events(*o)).collect());
    t.caught_up(broker.publish_all(&all).await).await;
    let (compensated, _) = sagas
        .iter()
        .find(|(_, o)| *o == Outcome::CompensatedCreditFailed)
        .unwrap();
    let filled = t.model.get(compensated.id).unwrap().unwrap().timeline[2].seq;
    dead_letter(&broker, compensated, filled).await;

    let mut b = Browser::start(&chromium, 1280, 900).await;
    for (name, path) in [
        ("dashboard", "/".to_owned()),
        (
            "search",
            "/?state=COMPENSATED&reason=account_frozen".to_owned(),
        ),
        ("saga", format!("/sagas/{}", compensated.id)),
    ] {
        b.open(&format!("http://{}{path}", t.addr)).await;
        let png = b.screenshot().await;
        let file = out.join(format!("tracker-{name}.png"));
        std::fs::write(&file, png).unwrap();
        println!("wrote {}", file.display());
    }
    t.stop().await;
}
