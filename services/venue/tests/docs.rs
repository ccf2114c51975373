//! Every JSON example of docs/venue.md decodes as what it shows, and the buy example gets the
//! answer the page shows from a real fx-venue (all but the time).

mod common;

use common::{flat, start};
use events::Rate;
use serde_json::Value;
use trade::{Execution, VenueOrder};

fn examples() -> Vec<Value> {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/venue.md"))
        .expect("docs/venue.md");
    let blocks: Vec<Value> = page
        .split("```json\n")
        .skip(1)
        .map(|rest| {
            let block = rest.split("```").next().expect("a closed block");
            serde_json::from_str(block).unwrap_or_else(|e| panic!("{e}: {block}"))
        })
        .collect();
    assert!(blocks.len() >= 8, "found only {} examples", blocks.len());
    blocks
}

fn execution(v: &Value) -> Execution {
    let e: Execution = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    assert_eq!(&serde_json::to_value(&e).unwrap(), v, "re-encodes the same");
    e
}

#[test]
fn every_example_decodes_as_what_it_shows() {
    for v in examples() {
        if v.get("seq").is_some() {
            execution(&v);
        } else if let Some(list) = v.get("executions") {
            list.as_array().unwrap().iter().for_each(|e| {
                execution(e);
            });
            assert!(v["last_seq"].is_u64(), "{v}");
        } else if v.get("status") == Some(&"executed".into()) {
            execution(&v["execution"]);
        } else if v.get("status") == Some(&"limit_not_met".into()) {
            serde_json::from_value::<Rate>(v["rate"].clone()).expect("a rate");
        } else if let Some(reason) = v.get("error") {
            assert!(reason.is_string() && v["message"].is_string(), "{v}");
        } else {
            let order: VenueOrder =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
            assert_eq!(serde_json::to_value(&order).unwrap(), v);
        }
    }
}

#[tokio::test]
async fn the_buy_example_gets_the_answer_the_page_shows() {
    let all = examples();
    let order = all
        .iter()
        .find(|v| v["side"] == "buy" && v.get("seq").is_none())
        .expect("a buy example");
    let shown = all
        .iter()
        .find(|v| v["status"] == "executed")
        .expect("an executed example");
    let dir = tempfile::tempdir().unwrap();
    let v = start(dir.path(), flat()).await;
    let (status, mut answer) = v.order(order).await;
    assert_eq!(status, 200);
    answer["execution"]["executed_at_ms"] = shown["execution"]["executed_at_ms"].clone();
    assert_eq!(&answer, shown);
    let (_, listed) = v.get("/v1/executions").await;
    let page = all.iter().find(|v| v.get("executions").is_some()).unwrap();
    assert_eq!(listed["executions"][0]["seq"], page["executions"][0]["seq"]);
    v.stop().await;
}
