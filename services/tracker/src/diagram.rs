//! A saga as a sequence diagram: inline SVG, one lane per party, one row per step.
//!
//! Each event is an arrow from the service that emitted it to the services that consume it
//! (ARCHITECTURE.md, "The events"), with the time since the previous step on the left.
//! Failures are red, compensations orange and dashed, operator interventions purple (from an
//! operator lane), dead letters a red cross on the lane of the service that set the message
//! aside, in the row after the event it refused. An event no service consumes (krw.committed,
//! krw.rejected, usd.debited) goes back to the requester when it ends the saga for the user,
//! else it is a note on its emitter's lane.
//!
//! fx-venue: the stream has no venue event. fx-trade's trade.filled and trade.reversed say that
//! the venue executed an order, and trade.failed `venue_unavailable` that fx-trade asked and got
//! no answer; those rows are preceded by a dotted round trip fx-trade → fx-venue (inferred,
//! and labelled so). Other trade.failed reasons are fx-trade's own decision and draw none.

use std::fmt::Write;

use events::EventKind;

use crate::html::esc;
use crate::projection::{human_ms, SagaRecord};

/// A dead letter of the saga, as read back from `FX_DLQ`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The service that set the message aside (`Fx-Dlq-Service`).
    pub service: String,
    /// Its reason code (`Fx-Dlq-Reason`).
    pub reason: String,
    /// The `FX` sequence of the message it refused (`Fx-Dlq-Stream-Seq`).
    pub stream_seq: Option<u64>,
}

/// The parties, left to right.
const LANES: [&str; 6] = [
    "requester",
    "fx-krw",
    "fx-trade",
    "fx-venue",
    "fx-usd",
    "operator",
];
const REQUESTER: usize = 0;
const KRW: usize = 1;
const TRADE: usize = 2;
const VENUE: usize = 3;
const USD: usize = 4;
const OPERATOR: usize = 5;

/// Geometry, in SVG user units.
const LANE_W: f64 = 150.0;
const LEFT: f64 = 70.0;
const HEAD: f64 = 56.0;
const ROW: f64 = 44.0;

/// Colours: a step, a failure, a compensation, an intervention, a dead letter, the venue.
const STEP: &str = "#333";
const FAILURE: &str = "#b00";
const COMPENSATION: &str = "#d46a00";
const INTERVENTION: &str = "#7b3fa0";
const VENUE_TRIP: &str = "#888";

/// What kind of arrow an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// The saga going forward.
    Step,
    /// A participant says no (krw.rejected, trade.failed, usd.credit_failed).
    Failure,
    /// Undoing what was done (trade.cancelled, usd.debited, krw.released, trade.reversed).
    Compensation,
    /// An operator's action on the saga (`<domain>.intervened`).
    Intervention,
}

impl Style {
    fn class(self) -> &'static str {
        match self {
            Style::Step => "step",
            Style::Failure => "failure",
            Style::Compensation => "compensation",
            Style::Intervention => "intervention",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Style::Step => STEP,
            Style::Failure => FAILURE,
            Style::Compensation => COMPENSATION,
            Style::Intervention => INTERVENTION,
        }
    }
}

/// Who emits `kind`, who consumes it, and how it is drawn.
pub fn route(kind: EventKind) -> (usize, Vec<usize>, Style) {
    use EventKind::*;
    match kind {
        ExchangeRequested => (REQUESTER, vec![KRW], Style::Step),
        KrwHeld => (KRW, vec![TRADE], Style::Step),
        KrwRejected => (KRW, vec![REQUESTER], Style::Failure),
        KrwCommitted => (KRW, vec![REQUESTER], Style::Step),
        KrwReleased => (KRW, vec![TRADE, REQUESTER], Style::Compensation),
        TradeFilled => (TRADE, vec![KRW, USD], Style::Step),
        TradeFailed => (TRADE, vec![KRW], Style::Failure),
        TradeCancelled => (TRADE, vec![KRW, USD], Style::Compensation),
        TradeReversed => (TRADE, vec![], Style::Compensation),
        UsdCredited => (USD, vec![KRW], Style::Step),
        UsdCreditFailed => (USD, vec![TRADE], Style::Failure),
        UsdDebited => (USD, vec![], Style::Compensation),
        KrwIntervened => (OPERATOR, vec![KRW], Style::Intervention),
        TradeIntervened => (OPERATOR, vec![TRADE], Style::Intervention),
        UsdIntervened => (OPERATOR, vec![USD], Style::Intervention),
        // Admin events are never in a saga's timeline.
        KrwDeposited | UsdDeposited | UsdFrozen | UsdUnfrozen => (OPERATOR, vec![], Style::Step),
    }
}

fn lane_x(lane: usize) -> f64 {
    LEFT + LANE_W * (lane as f64 + 0.5)
}

fn lane_of_service(service: &str) -> usize {
    if service.contains("krw") {
        KRW
    } else if service.contains("trade") {
        TRADE
    } else if service.contains("usd") {
        USD
    } else if service.contains("venue") {
        VENUE
    } else {
        OPERATOR
    }
}

fn arrow(s: &mut String, from: usize, to: usize, y: f64, colour: &str, class: &str, dash: &str) {
    let (x1, x2) = (lane_x(from), lane_x(to));
    let dir = if x2 > x1 { -1.0 } else { 1.0 };
    let dash = if dash.is_empty() {
        String::new()
    } else {
        format!(" stroke-dasharray=\"{dash}\"")
    };
    let _ = write!(
        s,
        "<line class=\"{class}\" x1=\"{x1:.1}\" y1=\"{y:.1}\" x2=\"{x2:.1}\" y2=\"{y:.1}\" \
stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\
<polygon points=\"{x2:.1},{y:.1} {:.1},{:.1} {:.1},{:.1}\" fill=\"{colour}\"/>",
        x2 + dir * 9.0,
        y - 4.5,
        x2 + dir * 9.0,
        y + 4.5
    );
}

/// The sequence diagram of `rec`, with its dead letters. `reasons[i]` is the `reason` field of
/// `rec.timeline[i]`'s body when the stream still has it (for trade.failed: did the venue not
/// answer?).
pub fn sequence(rec: &SagaRecord, reasons: &[Option<String>], dead: &[DeadLetter]) -> String {
    let venue_unavailable = |i: usize| {
        reasons
            .get(i)
            .and_then(|r| r.as_deref())
            .is_some_and(|r| r == "venue_unavailable")
    };
    // Rows: a venue round trip before the events that imply one, then the event, then the dead
    // letters of that event.
    enum Row<'a> {
        Venue(&'static str),
        Event(usize),
        Dead(&'a DeadLetter),
    }
    let mut rows = Vec::new();
    for (i, e) in rec.timeline.iter().enumerate() {
        match e.kind {
            EventKind::TradeFilled => rows.push(Row::Venue("order executed")),
            EventKind::TradeReversed => rows.push(Row::Venue("sale executed")),
            EventKind::TradeFailed if venue_unavailable(i) => rows.push(Row::Venue("no answer")),
            _ => {}
        }
        rows.push(Row::Event(i));
        rows.extend(
            dead.iter()
                .filter(|d| d.stream_seq == Some(e.seq))
                .map(Row::Dead),
        );
    }
    let in_timeline = |d: &DeadLetter| {
        d.stream_seq
            .is_some_and(|s| rec.timeline.iter().any(|e| e.seq == s))
    };
    rows.extend(dead.iter().filter(|d| !in_timeline(d)).map(Row::Dead));

    let width = LEFT + LANE_W * LANES.len() as f64 + 10.0;
    let height = HEAD + ROW * (rows.len() as f64 + 0.5) + 10.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"sequence\" class=\"sequence\" viewBox=\"0 0 {width:.0} {height:.0}\" \
role=\"img\" aria-label=\"the saga as a sequence diagram\" xmlns=\"http://www.w3.org/2000/svg\">\
<title>saga {} as a sequence diagram</title>",
        rec.saga_id
    );
    // The legend, then the lanes.
    let mut x = LEFT;
    for (label, colour, dash) in [
        ("step", STEP, ""),
        ("failure", FAILURE, ""),
        ("compensation", COMPENSATION, "6 4"),
        ("operator", INTERVENTION, ""),
        ("venue (inferred)", VENUE_TRIP, "2 3"),
        ("dead letter", FAILURE, "x"),
    ] {
        if dash == "x" {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"14\" class=\"dl\" fill=\"{colour}\">✕</text>",
                x + 8.0
            );
        } else {
            let dash = if dash.is_empty() {
                String::new()
            } else {
                format!(" stroke-dasharray=\"{dash}\"")
            };
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" y1=\"10\" x2=\"{:.1}\" y2=\"10\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
                x + 24.0
            );
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"14\" class=\"lg\">{label}</text>",
            x + 28.0
        );
        x += 40.0 + 7.0 * label.len() as f64;
    }
    for (lane, name) in LANES.iter().enumerate() {
        let x = lane_x(lane);
        let _ = write!(
            s,
            "<text x=\"{x:.1}\" y=\"{:.1}\" class=\"lane\" text-anchor=\"middle\">{name}</text>\
<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#bbb\" stroke-dasharray=\"3 3\"/>",
            HEAD - 16.0,
            HEAD - 8.0,
            height - 6.0
        );
    }
    let mut previous_at: Option<u64> = None;
    for (r, row) in rows.iter().enumerate() {
        let y = HEAD + ROW * (r as f64 + 0.75);
        match row {
            Row::Venue(what) => {
                let _ = write!(s, "<g class=\"venue\">");
                arrow(
                    &mut s,
                    TRADE,
                    VENUE,
                    y - 8.0,
                    VENUE_TRIP,
                    "venue-trip",
                    "2 3",
                );
                if *what != "no answer" {
                    arrow(
                        &mut s,
                        VENUE,
                        TRADE,
                        y + 4.0,
                        VENUE_TRIP,
                        "venue-trip",
                        "2 3",
                    );
                }
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" class=\"lb\">venue: {what} (inferred)</text></g>",
                    lane_x(VENUE) + 8.0,
                    y - 12.0
                );
            }
            Row::Event(i) => {
                let e = &rec.timeline[*i];
                let (from, to, style) = route(e.kind);
                let name = e.kind.type_name();
                let since = previous_at.map(|p| e.at_ms.saturating_sub(p));
                previous_at = Some(e.at_ms);
                let dash = if style == Style::Compensation {
                    "6 4"
                } else {
                    ""
                };
                let _ = write!(
                    s,
                    "<g class=\"arrow {}\" data-type=\"{}\" data-seq=\"{}\"><title>{} (stream seq {})</title>",
                    style.class(),
                    esc(&name),
                    e.seq,
                    esc(&name),
                    e.seq
                );
                let _ = write!(
                    s,
                    "<text x=\"4\" y=\"{:.1}\" class=\"since\">{}</text>",
                    y + 4.0,
                    since.map_or_else(|| "start".to_owned(), |d| format!("+{}", human_ms(d)))
                );
                if to.is_empty() {
                    let _ = write!(
                        s,
                        "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{}\"/>",
                        lane_x(from),
                        style.colour()
                    );
                }
                for t in &to {
                    arrow(&mut s, from, *t, y, style.colour(), style.class(), dash);
                }
                let label_lane = to.iter().copied().chain([from]).min().unwrap_or(from);
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" class=\"lb\" fill=\"{}\">{}</text></g>",
                    lane_x(label_lane) + 8.0,
                    y - 6.0,
                    style.colour(),
                    esc(&name)
                );
            }
            Row::Dead(d) => {
                let x = lane_x(lane_of_service(&d.service));
                let _ = write!(
                    s,
                    "<g class=\"dead-letter\"><text x=\"{x:.1}\" y=\"{:.1}\" class=\"dl\" \
fill=\"{FAILURE}\" text-anchor=\"middle\">✕</text><text x=\"{:.1}\" y=\"{:.1}\" class=\"lb\" \
fill=\"{FAILURE}\">dead-lettered by {}: {}</text></g>",
                    y + 6.0,
                    x + 10.0,
                    y + 4.0,
                    esc(&d.service),
                    esc(&d.reason)
                );
            }
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::TimelineEntry;
    use events::{SagaId, UserId};

    fn saga(kinds: &[EventKind]) -> SagaRecord {
        let mut rec = SagaRecord::new(SagaId::new_v7(), UserId::parse("bob").unwrap());
        rec.timeline = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| TimelineEntry {
                seq: 10 + i as u64,
                at_ms: 1_000 + 100 * i as u64,
                kind: *k,
                foreign_user: false,
            })
            .collect();
        rec
    }

    #[test]
    fn a_compensated_saga_draws_its_arrows_in_order_with_compensations_dashed() {
        use EventKind::*;
        let rec = saga(&[
            ExchangeRequested,
            KrwHeld,
            TradeFilled,
            UsdCreditFailed,
            TradeCancelled,
            KrwReleased,
            TradeReversed,
        ]);
        let dead = [DeadLetter {
            service: "fx-usd".into(),
            reason: "saga_id_conflict".into(),
            stream_seq: Some(12),
        }];
        let svg = sequence(&rec, &[], &dead);
        let order: Vec<&str> = svg
            .split("data-type=\"")
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .collect();
        assert_eq!(
            order,
            [
                "exchange.requested",
                "krw.held",
                "trade.filled",
                "usd.credit_failed",
                "trade.cancelled",
                "krw.released",
                "trade.reversed"
            ]
        );
        assert_eq!(svg.matches("<g class=\"arrow compensation\"").count(), 3);
        assert_eq!(svg.matches("<g class=\"arrow failure\"").count(), 1);
        // trade.cancelled fans out to fx-krw and fx-usd, dashed.
        let cancelled = &svg[svg.find("data-type=\"trade.cancelled\"").unwrap()..];
        let cancelled = &cancelled[..cancelled.find("</g>").unwrap()];
        assert_eq!(cancelled.matches("stroke-dasharray=\"6 4\"").count(), 2);
        assert!(cancelled.contains("+100ms"));
        // The fill and the reversal went through the venue; the dead letter follows the fill.
        assert_eq!(svg.matches("<g class=\"venue\">").count(), 2);
        let fill = svg.find("data-type=\"trade.filled\"").unwrap();
        let dead_at = svg
            .find("dead-lettered by fx-usd: saga_id_conflict")
            .unwrap();
        let failed = svg.find("data-type=\"usd.credit_failed\"").unwrap();
        assert!(fill < dead_at && dead_at < failed);
    }

    #[test]
    fn an_intervention_comes_from_the_operator_lane() {
        use EventKind::*;
        let rec = saga(&[ExchangeRequested, KrwHeld, TradeIntervened, TradeFailed]);
        let reasons = [None, None, None, Some("venue_unavailable".to_owned())];
        let svg = sequence(&rec, &reasons, &[]);
        assert_eq!(svg.matches("<g class=\"arrow intervention\"").count(), 1);
        assert!(svg.contains("venue: no answer (inferred)"));
    }
}
