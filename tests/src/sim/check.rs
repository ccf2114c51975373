//! The money invariants of ARCHITECTURE.md (1 to 4, and the dead-letter half of 6), checked from what the
//! services made durable and what they published.
//!
//! - 1, conservation per currency: from the records (Σ balances = Σ deposits) and from a replay
//!   of the journal in commit order; both must agree account by account.
//! - 2, no negative balance: the records' money types cannot hold one, and the replay checks
//!   every prefix of the history.
//! - 3, every saga terminal: the outcome is decided from the events on the stream, the way
//!   fxctl's `SagaFollower` does (COMPLETED on krw.committed, REJECTED on krw.rejected,
//!   COMPENSATED once the release and every final word are seen), plus the contradictions the
//!   tracker flags as INCONSISTENT and amounts that disagree between steps; then each outcome's
//!   money is checked against the journals and the balances.
//! - 4, each effect at most once: one journal entry per (saga, op) is structural (the journal
//!   is keyed by it and refuses a second one); on top, each saga's set of operations must be
//!   one the choreography can produce, and match the events published one for one.
//! - 6 (half): every dead letter is a conflicting request, and every conflicting request was
//!   dead-lettered, never rejected.
//! - The venue: every order the venue executed is booked as that saga's fill, or, when fx-trade
//!   had to say trade.failed(venue_unavailable) without the venue's answer, found by the
//!   verification on krw.released and booked and reversed (ARCHITECTURE.md: a venue order is a side
//!   effect outside every store, made idempotent so it happens once). No record may be left
//!   unverified.

use std::collections::{BTreeMap, BTreeSet};

use events::{
    Event, EventKind, Krw, KrwCommitted, KrwHeld, KrwRejected, KrwReleased, SagaId, TradeCancelled,
    TradeFailed, TradeFilled, TradeReversed, Usd, UsdCreditFailed, UsdCredited, UsdDebited, UserId,
};
use krw::records::{ACCOUNT_PREFIX as KRW_ACCOUNT_PREFIX, HOUSE_KEY as KRW_HOUSE_KEY};
use krw::{RequestFingerprint, SagaRecord, SagaStatus};
use runtime::ledger::{self, Currency, Op};
use runtime::JournalEntry;
use rust_decimal::Decimal;

use super::store::Data;
use super::world::{NodeId, World};

/// Where a saga ended, decided from the events on the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SagaOutcome {
    /// krw.committed: the user paid KRW and got USD.
    Completed,
    /// krw.rejected: nothing moved.
    Rejected,
    /// krw.released and every participant's final word: net zero.
    Compensated,
    /// Not terminal: the tracker state it is stuck in.
    Stuck(&'static str),
}

impl SagaOutcome {
    /// The tracker's name for it.
    pub fn name(self) -> &'static str {
        match self {
            SagaOutcome::Completed => "COMPLETED",
            SagaOutcome::Rejected => "REJECTED",
            SagaOutcome::Compensated => "COMPENSATED",
            SagaOutcome::Stuck(s) => s,
        }
    }
}

/// What the final check found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Broken invariants, each naming the invariant and the saga or account.
    pub violations: Vec<String>,
    /// Each saga's outcome.
    pub outcomes: BTreeMap<SagaId, SagaOutcome>,
}

/// Σ user available + Σ user held + house KRW = totals.deposits = Σ `deposits` (invariant 1,
/// from fx-krw's records).
pub fn krw_conservation<'a>(
    data: &Data,
    deposits: impl IntoIterator<Item = &'a Krw>,
) -> Result<(), String> {
    let made: Decimal = deposits.into_iter().map(|k| k.amount()).sum();
    let accounts: Vec<(String, krw::Account)> = data.scan(KRW_ACCOUNT_PREFIX);
    let house: krw::House = data.get(KRW_HOUSE_KEY).unwrap_or_default();
    let totals: krw::Totals = data.get(krw::records::TOTALS_KEY).unwrap_or_default();
    let sum: Decimal = accounts
        .iter()
        .map(|(_, a)| a.available.amount() + a.held.amount())
        .sum::<Decimal>()
        + house.krw.amount();
    if sum == totals.deposits.amount() && sum == made {
        Ok(())
    } else {
        Err(format!(
            "KRW Σ available + Σ held + house = {sum}, totals.deposits = {}, deposits made = {made}",
            totals.deposits
        ))
    }
}

/// Σ user USD + house USD = totals.deposits = Σ `deposits` (house float included) (invariant 1,
/// from fx-usd's records).
pub fn usd_conservation<'a>(
    data: &Data,
    deposits: impl IntoIterator<Item = &'a Usd>,
) -> Result<(), String> {
    let made: Decimal = deposits.into_iter().map(|u| u.amount()).sum();
    let accounts: Vec<(String, usd::UsdAccount)> = data.scan(usd::model::ACCOUNT_PREFIX);
    let house: usd::HouseAccount = data.get(usd::model::HOUSE_KEY).unwrap_or_default();
    let totals: usd::Totals = data.get(usd::model::TOTALS_KEY).unwrap_or_default();
    let sum: Decimal = accounts
        .iter()
        .map(|(_, a)| a.usd.amount())
        .sum::<Decimal>()
        + house.usd.amount();
    if sum == totals.deposits.amount() && sum == made {
        Ok(())
    } else {
        Err(format!(
            "USD Σ users + house = {sum}, totals.deposits = {}, deposits made = {made}",
            totals.deposits
        ))
    }
}

/// Balances per journal account in `currency` from the services' own replay
/// (`runtime::ledger`) of `log` in commit order: every account that must never be negative
/// (all but the outside world, `external` and `venue`, and fx-trade's KRW P&L accounts) stays
/// at or above zero after every entry, and every entry is well-formed for its op and one of
/// the node's `ops`.
fn replay(
    log: &[JournalEntry],
    ops: &'static [Op],
    currency: Currency,
    node: &str,
    out: &mut Vec<String>,
) -> BTreeMap<String, Decimal> {
    let mut r = ledger::replay(ops, log);
    out.extend(
        r.went_negative()
            .iter()
            .map(|w| format!("invariant 2: {node} {w}")),
    );
    out.extend(r.take_failures().into_iter().map(|w| format!("{node} {w}")));
    r.balances(currency)
        .map(|(a, b)| (a.to_string(), b))
        .collect()
}

/// Compares balances from the records with balances from the journal replay.
fn agree(
    node: &str,
    records: &BTreeMap<String, Decimal>,
    journal: &BTreeMap<String, Decimal>,
    out: &mut Vec<String>,
) {
    let accounts: BTreeSet<&String> = records.keys().chain(journal.keys()).collect();
    for a in accounts {
        let r = records.get(a).copied().unwrap_or_default();
        let j = journal.get(a).copied().unwrap_or_default();
        if r != j {
            out.push(format!(
                "invariant 1: {node} account {a} is {r} in the records but {j} by the journal"
            ));
        }
    }
}

/// The events of one saga on the stream (the first copy of each kind; later copies were
/// checked equal when published).
#[derive(Clone, Debug, Default)]
struct SagaEvents {
    kinds: Vec<EventKind>,
    held: Option<KrwHeld>,
    rejected: Option<KrwRejected>,
    committed: Option<KrwCommitted>,
    released: Option<KrwReleased>,
    filled: Option<TradeFilled>,
    failed: Option<TradeFailed>,
    cancelled: Option<TradeCancelled>,
    reversed: Option<TradeReversed>,
    credited: Option<UsdCredited>,
    credit_failed: Option<UsdCreditFailed>,
    debited: Option<UsdDebited>,
}

impl SagaEvents {
    fn push(&mut self, e: &Event) {
        // Requests are the user's, not the choreography's: krw.held says which one counts.
        // An operator's intervention record is no step of the flow (checked on its own).
        if e.kind() == EventKind::ExchangeRequested
            || e.kind().is_intervention()
            || self.kinds.contains(&e.kind())
        {
            return;
        }
        self.kinds.push(e.kind());
        match e.clone() {
            Event::KrwHeld(x) => self.held = Some(x),
            Event::KrwRejected(x) => self.rejected = Some(x),
            Event::KrwCommitted(x) => self.committed = Some(x),
            Event::KrwReleased(x) => self.released = Some(x),
            Event::TradeFilled(x) => self.filled = Some(x),
            Event::TradeFailed(x) => self.failed = Some(x),
            Event::TradeCancelled(x) => self.cancelled = Some(x),
            Event::TradeReversed(x) => self.reversed = Some(x),
            Event::UsdCredited(x) => self.credited = Some(x),
            Event::UsdCreditFailed(x) => self.credit_failed = Some(x),
            Event::UsdDebited(x) => self.debited = Some(x),
            _ => {}
        }
    }

    /// The outcome, as fxctl's `SagaFollower` decides it; a saga that is not over gets the
    /// tracker state it would show.
    fn outcome(&self) -> SagaOutcome {
        if self.committed.is_some() {
            return SagaOutcome::Completed;
        }
        if self.rejected.is_some() {
            return SagaOutcome::Rejected;
        }
        let filled = self.filled.is_some();
        let trade_done = self.failed.is_some() || (filled && self.cancelled.is_some());
        let usd_done = !filled
            || self.credit_failed.is_some()
            || (self.credited.is_some() && self.debited.is_some());
        if self.released.is_some() && trade_done && usd_done {
            return SagaOutcome::Compensated;
        }
        let failing = self.released.is_some()
            || self.failed.is_some()
            || self.cancelled.is_some()
            || self.credit_failed.is_some();
        SagaOutcome::Stuck(if failing {
            "COMPENSATING"
        } else if self.credited.is_some() {
            "USD_CREDITED"
        } else if filled {
            "ORDER_PLACED"
        } else if self.held.is_some() {
            "KRW_HELD"
        } else {
            "REQUESTED"
        })
    }

    /// Sequences the choreography cannot produce, and amounts that disagree between steps.
    fn inconsistencies(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut flag = |cond: bool, what: &str| {
            if cond {
                out.push(what.to_owned());
            }
        };
        flag(
            self.committed.is_some() && self.released.is_some(),
            "committed and released",
        );
        flag(
            self.rejected.is_some() && self.kinds.len() > 1,
            "rejected beside other events",
        );
        flag(
            self.filled.is_some() && self.failed.is_some(),
            "filled and failed",
        );
        flag(
            self.credited.is_some() && self.credit_failed.is_some(),
            "credited and credit_failed",
        );
        flag(
            self.debited.is_some() && self.credited.is_none(),
            "debit without credit",
        );
        flag(
            self.cancelled.is_some() && self.filled.is_none(),
            "cancel without fill",
        );
        flag(
            self.committed.is_some() && (self.cancelled.is_some() || self.debited.is_some()),
            "committed but the order was reversed",
        );
        flag(
            self.committed.is_some() && self.credited.is_none(),
            "committed without a credit",
        );
        flag(
            self.held.is_none() && self.kinds.iter().any(|k| *k != EventKind::KrwRejected),
            "events without krw.held",
        );
        if let Some(h) = &self.held {
            let k = h.krw_amount;
            let mut same = |what: &str, a: Krw| {
                if a != k {
                    out.push(format!("{what} {a} KRW differs from krw.held {k} KRW"));
                }
            };
            if let Some(f) = &self.filled {
                same("trade.filled", f.krw_amount);
            }
            if let Some(c) = &self.cancelled {
                same("trade.cancelled", c.krw_amount);
            }
            if let Some(c) = &self.committed {
                same("krw.committed", c.krw_amount);
            }
            if let Some(r) = &self.released {
                same("krw.released", r.krw_amount);
            }
        }
        if let Some(f) = &self.filled {
            let at_rate = f.rate.usd_for(f.krw_amount);
            if at_rate != Some(f.usd_amount) {
                out.push(format!(
                    "trade.filled {} USD is not {} KRW at {} ({at_rate:?})",
                    f.usd_amount, f.krw_amount, f.rate
                ));
            }
            if let Some(min) = self.held.as_ref().and_then(|h| h.min_usd_amount) {
                if f.usd_amount < min {
                    out.push(format!(
                        "trade.filled {} USD is below the request's minimum {min} USD",
                        f.usd_amount
                    ));
                }
            }
            let mut same = |what: &str, a: Usd| {
                if a != f.usd_amount {
                    out.push(format!(
                        "{what} {a} USD differs from trade.filled {} USD",
                        f.usd_amount
                    ));
                }
            };
            if let Some(c) = &self.credited {
                same("usd.credited", c.usd_amount);
            }
            if let Some(d) = &self.debited {
                same("usd.debited", d.usd_amount);
            }
            if let Some(c) = &self.cancelled {
                same("trade.cancelled", c.usd_amount);
            }
        }
        out
    }
}

/// Journal operations per saga on one node: op -> amount.
fn ops_by_saga(data: &Data) -> BTreeMap<SagaId, BTreeMap<String, Decimal>> {
    let mut out: BTreeMap<SagaId, BTreeMap<String, Decimal>> = BTreeMap::new();
    for e in data.journal.values() {
        out.entry(e.saga_id)
            .or_default()
            .insert(e.op.to_string(), e.amount);
    }
    out
}

fn ops_text(ops: &BTreeMap<String, Decimal>) -> String {
    if ops.is_empty() {
        return "none".into();
    }
    ops.iter()
        .map(|(op, a)| format!("{op} {a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks every invariant on a quiescent world.
pub fn check(world: &World) -> Report {
    let mut out = Vec::new();
    out.extend(world.violations().iter().cloned());

    let krw_data = world.node(NodeId::Krw).store.durable();
    let trade_data = world.node(NodeId::Trade).store.durable();
    let usd_data = world.node(NodeId::Usd).store.durable();

    // ---- invariant 1 and 2: records, journal replay, and their agreement --------------------
    if let Err(e) = krw_conservation(&krw_data, world.krw_deposits().values()) {
        out.push(format!("invariant 1: {e}"));
    }
    let usd_deposits = world
        .usd_deposits()
        .values()
        .copied()
        .chain([world.house_float()])
        .collect::<Vec<_>>();
    if let Err(e) = usd_conservation(&usd_data, usd_deposits.iter()) {
        out.push(format!("invariant 1: {e}"));
    }
    let krw_accounts: Vec<(String, krw::Account)> = krw_data.scan(KRW_ACCOUNT_PREFIX);
    let krw_house: krw::House = krw_data.get(KRW_HOUSE_KEY).unwrap_or_default();
    let krw_totals: krw::Totals = krw_data.get(krw::records::TOTALS_KEY).unwrap_or_default();
    let mut krw_records: BTreeMap<String, Decimal> = BTreeMap::new();
    for (key, a) in &krw_accounts {
        let user = &key[KRW_ACCOUNT_PREFIX.len()..];
        krw_records.insert(format!("user:{user}:available"), a.available.amount());
        krw_records.insert(format!("user:{user}:held"), a.held.amount());
    }
    krw_records.insert("house".into(), krw_house.krw.amount());
    krw_records.insert("external".into(), -krw_totals.deposits.amount());
    let krw_journal = replay(
        &krw_data.journal_log,
        krw::KRW_OPS,
        Currency::Krw,
        "krw",
        &mut out,
    );
    agree("krw", &krw_records, &krw_journal, &mut out);

    let usd_accounts: Vec<(String, usd::UsdAccount)> = usd_data.scan(usd::model::ACCOUNT_PREFIX);
    let usd_house: usd::HouseAccount = usd_data.get(usd::model::HOUSE_KEY).unwrap_or_default();
    let usd_totals: usd::Totals = usd_data.get(usd::model::TOTALS_KEY).unwrap_or_default();
    let mut usd_records: BTreeMap<String, Decimal> = BTreeMap::new();
    for (key, a) in &usd_accounts {
        let user = &key[usd::model::ACCOUNT_PREFIX.len()..];
        usd_records.insert(format!("user:{user}"), a.usd.amount());
    }
    usd_records.insert("house".into(), usd_house.usd.amount());
    usd_records.insert("external".into(), -usd_totals.deposits.amount());
    let usd_journal = replay(
        &usd_data.journal_log,
        usd::USD_OPS,
        Currency::Usd,
        "usd",
        &mut out,
    );
    agree("usd", &usd_records, &usd_journal, &mut out);
    // fx-trade's own ledger (USD venue <-> house <-> position, KRW P&L): replayed for negative
    // balances of the house and the position.
    replay(
        &trade_data.journal_log,
        trade::TRADE_OPS,
        Currency::Usd,
        "trade",
        &mut out,
    );

    // ---- invariant 3 and 4, per saga ---------------------------------------------------------
    let mut sagas: Vec<SagaId> = Vec::new();
    for r in world.requests() {
        if !sagas.contains(&r.saga_id) {
            sagas.push(r.saga_id);
        }
    }
    let mut seen: BTreeMap<SagaId, SagaEvents> = BTreeMap::new();
    for m in world.stream() {
        if sagas.contains(&m.event.saga_id()) {
            seen.entry(m.event.saga_id()).or_default().push(&m.event);
        }
    }
    let krw_ops = ops_by_saga(&krw_data);
    let trade_ops = ops_by_saga(&trade_data);
    let usd_ops = ops_by_saga(&usd_data);
    let none = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    let mut committed_krw: BTreeMap<UserId, Decimal> = BTreeMap::new();
    let mut completed_usd: BTreeMap<UserId, Decimal> = BTreeMap::new();

    for &saga in &sagas {
        let name = world.saga_name(saga);
        let ev = seen.get(&saga).cloned().unwrap_or_default();
        let outcome = ev.outcome();
        outcomes.insert(saga, outcome);
        let kinds = ev
            .kinds
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for what in ev.inconsistencies() {
            out.push(format!(
                "saga {name}: INCONSISTENT: {what} (events: {kinds})"
            ));
        }
        if let SagaOutcome::Stuck(state) = outcome {
            out.push(format!(
                "invariant 3: saga {name} is not terminal: stuck at {state} (events: {kinds})"
            ));
        }

        let k = krw_ops.get(&saga).unwrap_or(&none);
        let t = trade_ops.get(&saga).unwrap_or(&none);
        // fx-trade's own record: a venue_unavailable said without the venue's word must have
        // been verified by the end, and an execution it then found booked and reversed.
        let order: Option<trade::OrderRecord> = trade_data.get(&trade::order_key(saga));
        if order.as_ref().is_some_and(|o| o.state.unverified()) {
            out.push(format!(
                "saga {name}: fx-trade never verified with the venue its trade.failed(venue_unavailable)"
            ));
        }
        let reversed: Option<trade::Fill> = match order.map(|o| o.state) {
            Some(trade::OrderState::Failed { reversed, .. }) => reversed,
            _ => None,
        };
        let u = usd_ops.get(&saga).unwrap_or(&none);
        let ops_desc = || {
            format!(
                "journals: krw [{}], trade [{}], usd [{}]",
                ops_text(k),
                ops_text(t),
                ops_text(u)
            )
        };

        // Invariant 4: only operations the choreography can produce, each effect once, and
        // one published event per journaled effect (everything durable was published, and
        // nothing was published that is not durable).
        let pairs: [(&BTreeMap<String, Decimal>, &str, bool, &str); 8] = [
            (k, "hold", ev.held.is_some(), "krw.held"),
            (k, "commit", ev.committed.is_some(), "krw.committed"),
            (k, "release", ev.released.is_some(), "krw.released"),
            (t, "fill", ev.filled.is_some(), "trade.filled"),
            (t, "cancel", ev.cancelled.is_some(), "trade.cancelled"),
            (t, "reverse", ev.reversed.is_some(), "trade.reversed"),
            (u, "credit", ev.credited.is_some(), "usd.credited"),
            (u, "debit", ev.debited.is_some(), "usd.debited"),
        ];
        for (ops, op, published, kind) in pairs {
            // An execution found after trade.failed(venue_unavailable) is journaled (fill and
            // cancel) without an event: the user's saga had ended; checked below instead.
            let published = published || (reversed.is_some() && matches!(op, "fill" | "cancel"));
            if ops.contains_key(op) != published {
                out.push(format!(
                    "invariant 4: saga {name}: journal {op} {} but {kind} {} ({})",
                    if ops.contains_key(op) {
                        "written"
                    } else {
                        "absent"
                    },
                    if published {
                        "published"
                    } else {
                        "not published"
                    },
                    ops_desc()
                ));
            }
        }
        let allowed = |ops: &BTreeMap<String, Decimal>, set: &[&str]| {
            ops.keys().all(|op| set.contains(&op.as_str()))
        };
        if !allowed(k, &["hold", "commit", "release"])
            || !allowed(t, &["fill", "cancel", "reverse", "fx_pnl"])
            || !allowed(u, &["credit", "debit"])
            || (k.contains_key("commit") && k.contains_key("release"))
            || ((k.contains_key("commit") || k.contains_key("release")) && !k.contains_key("hold"))
            || (t.contains_key("cancel") && !t.contains_key("fill"))
            || (t.contains_key("reverse") && !t.contains_key("cancel"))
            || (t.contains_key("fx_pnl") && !t.contains_key("reverse"))
            || (u.contains_key("debit") && !u.contains_key("credit"))
        {
            out.push(format!(
                "invariant 4: saga {name}: impossible set of effects ({})",
                ops_desc()
            ));
        }

        // The money of each outcome (invariant 3's second half), journal by journal.
        let held_krw = ev.held.as_ref().map(|h| h.krw_amount.amount());
        let fill_usd = ev.filled.as_ref().map(|f| f.usd_amount.amount());
        if let Some(r) = &reversed {
            let ok = ev.filled.is_none()
                && ev.cancelled.is_none()
                && ev.failed.as_ref().is_some_and(|f| {
                    matches!(
                        f.reason,
                        events::TradeFailReason::VenueUnavailable
                            | events::TradeFailReason::CreditRefused
                    )
                })
                && ev
                    .held
                    .as_ref()
                    .is_some_and(|h| h.krw_amount == r.krw_amount)
                && r.rate.usd_for(r.krw_amount) == Some(r.usd_amount);
            if !ok {
                out.push(format!(
                    "saga {name}: fx-trade reversed an execution of {} USD at {} that does not \
                     follow a trade.failed(venue_unavailable) of krw.held's amount (events: {kinds})",
                    r.usd_amount, r.rate
                ));
            }
        }
        let fill_usd = fill_usd.or(reversed.as_ref().map(|r| r.usd_amount.amount()));
        let expect = |ops: &BTreeMap<String, Decimal>, want: &[(&str, Option<Decimal>)]| {
            ops.len() == want.len()
                && want
                    .iter()
                    .all(|(op, amount)| amount.is_some() && ops.get(*op) == amount.as_ref())
        };
        // A cancelled fill is sold back at the venue by the end (the venue heals): its USD
        // leaves the house's position, and the KRW it brought against the fill's cost is
        // journaled as fx_pnl (none when equal).
        let pnl = ev
            .reversed
            .as_ref()
            .map(|r| r.krw_amount.amount() - r.fill_krw_amount.amount());
        let trade_undone = |t: &BTreeMap<String, Decimal>| {
            let mut want = vec![
                ("fill", fill_usd),
                ("cancel", fill_usd),
                ("reverse", fill_usd),
            ];
            if let Some(p) = pnl.filter(|p| !p.is_zero()) {
                want.push(("fx_pnl", Some(p.abs())));
            }
            expect(t, &want)
        };
        let money_ok = match outcome {
            SagaOutcome::Completed => {
                expect(k, &[("hold", held_krw), ("commit", held_krw)])
                    && expect(t, &[("fill", fill_usd)])
                    && expect(u, &[("credit", fill_usd)])
            }
            SagaOutcome::Rejected => k.is_empty() && t.is_empty() && u.is_empty(),
            SagaOutcome::Compensated => {
                expect(k, &[("hold", held_krw), ("release", held_krw)])
                    && (t.is_empty() || trade_undone(t))
                    && (u.is_empty() || expect(u, &[("credit", fill_usd), ("debit", fill_usd)]))
            }
            SagaOutcome::Stuck(_) => true,
        };
        if !money_ok {
            out.push(format!(
                "invariant 3: saga {name} is {} but its money does not say so ({})",
                outcome.name(),
                ops_desc()
            ));
        }
        // Every execution at the venue is booked as this saga's fill: the venue order is a side
        // effect outside every store (ARCHITECTURE.md: make it idempotent, so it happens once).
        if let Some(rate) = world.venue.executed_rate(saga) {
            let booked = t.contains_key("fill")
                && (ev.filled.as_ref().is_some_and(|f| f.rate == rate)
                    || reversed.as_ref().is_some_and(|r| r.rate == rate));
            if !booked {
                out.push(format!(
                    "saga {name}: the venue executed an order at {rate} that fx-trade never \
                     booked (trade.failed {:?})",
                    ev.failed.as_ref().map(|f| f.reason)
                ));
            }
        }
        // Every reversal at the venue is booked once, as the saga's reverse of its own fill.
        let sale = world.venue.executed(&trade::ClientOrderId::reversal(saga));
        let sale_booked = match (&sale, &ev.reversed) {
            (None, None) => true,
            (Some(e), Some(r)) => {
                t.get("reverse") == Some(&e.usd_amount.amount())
                    && r.krw_amount == e.krw_amount
                    && r.rate == e.rate
                    && Some(r.usd_amount.amount()) == fill_usd
                    && ev.held.as_ref().map(|h| h.krw_amount) == Some(r.fill_krw_amount)
            }
            _ => false,
        };
        if !sale_booked {
            out.push(format!(
                "saga {name}: the venue's reversal {sale:?} and fx-trade's trade.reversed {:?} disagree ({})",
                ev.reversed,
                ops_desc()
            ));
        }
        if let Some(f) = &ev.filled {
            if world.venue.executed_rate(saga) != Some(f.rate) {
                out.push(format!(
                    "saga {name}: filled at {} but the venue executed {:?}",
                    f.rate,
                    world.venue.executed_rate(saga)
                ));
            }
        }

        // An operator's interventions: what they caused ends the usual way, with the money
        // right (checked above for the outcome), and each is recorded with who and why.
        let acts: Vec<(EventKind, events::InterventionAction)> = world
            .stream()
            .iter()
            .filter(|m| m.event.saga_id() == saga)
            .filter_map(|m| m.event.intervention().map(|i| (m.event.kind(), i.action)))
            .collect();
        let recorded =
            |kind: EventKind, action: events::InterventionAction| acts.contains(&(kind, action));
        let mut operator = Vec::new();
        if ev
            .released
            .as_ref()
            .is_some_and(|r| r.reason == events::ReleaseReason::Operator)
        {
            if outcome != SagaOutcome::Compensated {
                operator.push("released by an operator's cancel but not COMPENSATED");
            }
            if !recorded(EventKind::KrwIntervened, events::InterventionAction::Cancel) {
                operator.push("krw.released(operator) without its krw.intervened(cancel)");
            }
        }
        if ev
            .credit_failed
            .as_ref()
            .is_some_and(|f| f.reason == events::CreditFailReason::Operator)
        {
            if outcome != SagaOutcome::Compensated {
                operator.push("credit refused by an operator but not COMPENSATED");
            }
            if u.contains_key("credit") {
                operator.push("credit refused by an operator, yet fx-usd credited");
            }
            if !recorded(
                EventKind::UsdIntervened,
                events::InterventionAction::RefuseCredit,
            ) {
                operator.push("usd.credit_failed(operator) without its usd.intervened");
            }
        }
        if ev
            .failed
            .as_ref()
            .is_some_and(|f| f.reason == events::TradeFailReason::CreditRefused)
            && !ev
                .credit_failed
                .as_ref()
                .is_some_and(|f| f.reason == events::CreditFailReason::Operator)
        {
            operator.push("trade.failed(credit_refused) without an operator's refusal");
        }
        for what in operator {
            out.push(format!(
                "saga {name}: {what} (events: {kinds}; {})",
                ops_desc()
            ));
        }

        // fx-krw's own record of the saga agrees with the outcome and with krw.held.
        let record: Option<SagaRecord> = krw_data.get(&krw::records::saga_key(saga));
        let status = record.as_ref().map(|r| r.status);
        let status_ok = match outcome {
            SagaOutcome::Completed => status == Some(SagaStatus::Committed),
            SagaOutcome::Rejected => matches!(status, Some(SagaStatus::Rejected { .. })),
            SagaOutcome::Compensated => matches!(status, Some(SagaStatus::Released { .. })),
            SagaOutcome::Stuck(_) => true,
        };
        if !status_ok {
            out.push(format!(
                "saga {name}: fx-krw's record says {status:?} but the stream says {}",
                outcome.name()
            ));
        }
        let accepted: Option<&RequestFingerprint> =
            record.as_ref().and_then(|r| r.request.as_ref());
        if let (Some(h), Some(a)) = (&ev.held, accepted) {
            if h.krw_amount != a.krw_amount
                || h.min_usd_amount != a.min_usd_amount
                || h.user_id != a.user
            {
                out.push(format!(
                    "saga {name}: krw.held ({} KRW, min {:?}) is not the accepted request ({} KRW, min {:?})",
                    h.krw_amount, h.min_usd_amount, a.krw_amount, a.min_usd_amount
                ));
            }
        }

        // Invariant 6, the dead-letter half: exactly the requests that differ from the one
        // fx-krw accepted are dead-lettered, as saga_id_conflict, and nothing else is.
        for r in world.requests().iter().filter(|r| r.saga_id == saga) {
            let fp = RequestFingerprint {
                user: r.user_id.clone(),
                krw_amount: r.krw_amount,
                min_usd_amount: r.min_usd_amount,
            };
            let conflicting = accepted.is_some_and(|a| *a != fp);
            let letters: Vec<_> = world
                .dlq()
                .iter()
                .filter(|d| {
                    matches!(&*d.event, Event::ExchangeRequested(x) if x == r)
                        && d.reason == "saga_id_conflict"
                })
                .collect();
            let dead = !letters.is_empty();
            if conflicting && !dead {
                out.push(format!(
                    "invariant 6: saga {name}: the conflicting request for {} KRW was not dead-lettered",
                    r.krw_amount
                ));
            }
            if !conflicting && dead {
                out.push(format!(
                    "invariant 6: saga {name}: the accepted request for {} KRW was dead-lettered",
                    r.krw_amount
                ));
            }
        }

        if let Some(h) = &ev.held {
            if outcome == SagaOutcome::Completed {
                *committed_krw.entry(h.user_id.clone()).or_default() += h.krw_amount.amount();
                if let Some(f) = &ev.filled {
                    *completed_usd.entry(h.user_id.clone()).or_default() += f.usd_amount.amount();
                }
            }
        }
    }
    for d in world.dlq() {
        let ok = d.node == NodeId::Krw
            && d.reason == "saga_id_conflict"
            && d.event.kind() == EventKind::ExchangeRequested;
        if !ok {
            out.push(format!(
                "invariant 6: {} dead-lettered a good event {} ({}: {})",
                d.node.name(),
                world.describe(&d.event),
                d.reason,
                d.message
            ));
        }
    }

    // ---- per user: −krw and +usd for completed sagas, net zero for the rest ------------------
    let mut users: BTreeSet<UserId> = world.krw_deposits().keys().cloned().collect();
    users.extend(world.usd_deposits().keys().cloned());
    users.extend(world.requests().iter().map(|r| r.user_id.clone()));
    for user in &users {
        let account: Option<krw::Account> = krw_data.get(&krw::records::account_key(user));
        let (available, held) = account
            .map(|a| (a.available.amount(), a.held.amount()))
            .unwrap_or_default();
        let deposited = world
            .krw_deposits()
            .get(user)
            .map(|k| k.amount())
            .unwrap_or_default();
        let paid = committed_krw.get(user).copied().unwrap_or_default();
        if available != deposited - paid || !held.is_zero() {
            out.push(format!(
                "invariant 3: {user} has {available} KRW available and {held} held; expected {} \
                 available (deposits {deposited} - completed {paid}) and nothing held",
                deposited - paid
            ));
        }
        let account: Option<usd::UsdAccount> = usd_data.get(&usd::account_key(user));
        let usd_now = account.map(|a| a.usd.amount()).unwrap_or_default();
        let deposited = world
            .usd_deposits()
            .get(user)
            .map(|u| u.amount())
            .unwrap_or_default();
        let got = completed_usd.get(user).copied().unwrap_or_default();
        if usd_now != deposited + got {
            out.push(format!(
                "invariant 3: {user} has {usd_now} USD; expected {} (deposits {deposited} + completed {got})",
                deposited + got
            ));
        }
    }
    let paid: Decimal = committed_krw.values().sum();
    if krw_house.krw.amount() != paid {
        out.push(format!(
            "invariant 3: the KRW house holds {} but completed sagas paid {paid}",
            krw_house.krw
        ));
    }
    let got: Decimal = completed_usd.values().sum();
    if usd_house.usd.amount() != world.house_float().amount() - got {
        out.push(format!(
            "invariant 3: the USD house float is {} but float {} - completed {got} = {}",
            usd_house.usd,
            world.house_float(),
            world.house_float().amount() - got
        ));
    }
    if krw_data.keys(krw::EXPIRY_PREFIX).next().is_some() {
        out.push("invariant 3: fx-krw still has open holds in its expiry index".into());
    }

    Report {
        violations: out,
        outcomes,
    }
}

/// Runs each service's own audit (`krw::audit`, `trade::audit`, `usd::audit`) over its store,
/// so the services' self-checks are held to the same end state as [`check`]. Returns their
/// failures, prefixed with the service.
pub fn service_audits(world: &World) -> Vec<String> {
    let mut out = Vec::new();
    for node in NodeId::ALL {
        let store = world.node(node).store.store();
        let failures = match node {
            NodeId::Krw => krw::audit(store).map(|a| (a.ok, a.failures)),
            NodeId::Trade => trade::audit(store).map(|a| (a.ok, a.failures)),
            NodeId::Usd => usd::audit(store).map(|a| (a.ok, a.failures)),
        };
        match failures {
            Ok((true, _)) => {}
            Ok((false, f)) if f.is_empty() => {
                out.push(format!("{} audit: not ok, without a reason", node.name()))
            }
            Ok((false, f)) => {
                out.extend(f.into_iter().map(|f| format!("{} audit: {f}", node.name())))
            }
            Err(e) => out.push(format!("{} audit failed to run: {e}", node.name())),
        }
    }
    out
}
