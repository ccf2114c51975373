//! fx-krw's decisions as pure functions: `(records, input, now) -> Decision` (the runtime's
//! one decision shape: the records that changed, journal lines, events).
//!
//! No I/O happens here, so the service (through the adapter in `service.rs`), the deterministic
//! simulation and these tests all run the same rules. A decision never half-applies: either it
//! returns the complete new records with the events and journal entries that go with them, or
//! an error and nothing is written.
//!
//! The rules, per saga (ARCHITECTURE.md, "The rules the services keep"):
//! - the first decodable request for a saga is validated and either held or rejected; a
//!   repeat with the same body is a no-op, one with a different body is dead-lettered
//!   (`saga_id_conflict`), and a rejected saga stays rejected;
//! - trade.filled pins the hold (it never expires after that);
//! - usd.credited commits the hold, whether or not trade.filled was seen (the credit can
//!   overtake the fill);
//! - trade.failed / trade.cancelled release an open hold;
//! - the expiry timer releases an open, unpinned hold once `expires_at + grace` is reached;
//! - an event for a saga that has no request yet is remembered (a tombstone) and applied, in
//!   the order the choreography would have produced, right after the request's hold, so every
//!   hold fx-krw takes still ends;
//! - every repeat of an event already seen is a no-op, forever: the seen flags are never purged.

use events::{
    Event, ExchangeRequested, Krw, KrwCommitted, KrwHeld, KrwRejected, KrwReleased, RejectReason,
    ReleaseReason, SagaId, UserId, MAX_MESSAGE_CHARS,
};
use runtime::ledger::{self, Currency, Op};
use runtime::{Handled, JournalEntry, Records, TxResult, Writes};

use crate::records::{
    account_key, available_account, day_of, deposit_key, expiry_due, held_account, saga_key,
    Account, DepositRecord, House, RequestFingerprint, SagaRecord, SagaStatus, Totals, HOUSE_KEY,
    TOTALS_KEY,
};
use crate::{KrwConfig, KrwError};

/// Dead-letter reason for a second request (or unreadable request) on a saga id already used
/// with a different body.
pub const SAGA_ID_CONFLICT: &str = "saga_id_conflict";
/// Dead-letter reason for a trade or USD event whose user differs from the saga's.
pub const SAGA_USER_MISMATCH: &str = "saga_user_mismatch";
/// Refusal reason of a deposit id reused with a different user or amount.
pub const DEPOSIT_ID_CONFLICT: &str = "deposit_id_conflict";
/// Refusal reason of a deposit of zero, or one that would pass the KRW ceiling.
pub const INVALID_DEPOSIT: &str = "invalid_deposit";

/// The records one saga decision reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// `saga:<saga_id>`, if any.
    pub saga: Option<SagaRecord>,
    /// `acct:<user>` of the saga's user (the request's user before the saga exists).
    pub account: Option<Account>,
    /// `house` (default zero).
    pub house: House,
}

/// A request that did not decode but names its saga and user (see
/// `events::salvage_request_ids`): it gets `krw.rejected` instead of a dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidRequest {
    /// The saga id read from the body.
    pub saga_id: SagaId,
    /// The subject's user: who gets the answer.
    pub user: UserId,
    /// `invalid_request`, or `user_mismatch` when the body names another user.
    pub reason: RejectReason,
    /// The decode error's text.
    pub message: String,
    /// A digest of subject and body, to tell a redelivery from a different request.
    pub digest: String,
}

/// What a saga decision reacts to. The trade and USD variants carry the event's `saga_id` and
/// `user_id`; their other fields do not matter to fx-krw (the saga's amounts are its hold's).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// exchange.requested
    Requested(&'a ExchangeRequested),
    /// An exchange.requested that did not decode.
    InvalidRequest(&'a InvalidRequest),
    /// trade.filled
    TradeFilled { saga_id: SagaId, user: &'a UserId },
    /// trade.failed
    TradeFailed { saga_id: SagaId, user: &'a UserId },
    /// trade.cancelled
    TradeCancelled { saga_id: SagaId, user: &'a UserId },
    /// usd.credited
    UsdCredited { saga_id: SagaId, user: &'a UserId },
    /// The hold-expiry timer fired for this saga.
    Expire { saga_id: SagaId },
}

impl Input<'_> {
    /// The saga the input is about.
    pub fn saga_id(&self) -> SagaId {
        match *self {
            Input::Requested(r) => r.saga_id,
            Input::InvalidRequest(r) => r.saga_id,
            Input::TradeFilled { saga_id, .. }
            | Input::TradeFailed { saga_id, .. }
            | Input::TradeCancelled { saga_id, .. }
            | Input::UsdCredited { saga_id, .. }
            | Input::Expire { saga_id } => saga_id,
        }
    }

    /// The user the input names, if it names one (the timer does not).
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Input::Requested(r) => Some(&r.user_id),
            Input::InvalidRequest(r) => Some(&r.user),
            Input::TradeFilled { user, .. }
            | Input::TradeFailed { user, .. }
            | Input::TradeCancelled { user, .. }
            | Input::UsdCredited { user, .. } => Some(user),
            Input::Expire { .. } => None,
        }
    }
}

/// fx-krw's record writes: the records of one saga decision that changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KrwWrites {
    /// `saga:<saga_id>`, with its expiry index entry when that moves.
    pub saga: Option<SagaWrite>,
    /// `acct:<user>` of the saga's user.
    pub account: Option<(UserId, Account)>,
    /// `house`.
    pub house: Option<House>,
}

/// A saga record to write, and the expiry index entries its change drops and adds. The index
/// is derived from the record, so it cannot drift from it: exactly the open, unpinned holds
/// have an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaWrite {
    /// The saga.
    pub saga_id: SagaId,
    /// Its new record.
    pub record: SagaRecord,
    /// The expiry index entry to remove (the hold ended, was pinned, or moved).
    pub unindex: Option<String>,
    /// The expiry index entry to add (a new open hold).
    pub index: Option<String>,
}

impl Writes for KrwWrites {
    fn write<R: Records>(&self, r: &R) -> TxResult<()> {
        if let Some(s) = &self.saga {
            if let Some(k) = &s.unindex {
                r.remove(k)?;
            }
            if let Some(k) = &s.index {
                r.put(k, &s.saga_id)?;
            }
            r.put(&saga_key(s.saga_id), &s.record)?;
        }
        if let Some((user, account)) = &self.account {
            r.put(&account_key(user), account)?;
        }
        if let Some(house) = &self.house {
            r.put(HOUSE_KEY, house)?;
        }
        Ok(())
    }
}

impl State {
    /// The records once `writes` are written: what the saga's next decision reads.
    pub fn after(&self, writes: &KrwWrites) -> State {
        State {
            saga: match &writes.saga {
                Some(s) => Some(s.record.clone()),
                None => self.saga.clone(),
            },
            account: match &writes.account {
                Some((_, a)) => Some(a.clone()),
                None => self.account.clone(),
            },
            house: writes.house.clone().unwrap_or_else(|| self.house.clone()),
        }
    }
}

/// The outcome of a saga decision: the records that changed, what to journal and emit, and
/// what becomes of the input.
pub type Decision = runtime::Decision<KrwWrites>;

/// A decision at work: the complete new records, and what to journal and emit. The rules
/// change the records in place; [`Draft::finish`] keeps those that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Draft {
    /// The records after the decision (equal to the input state when nothing changed).
    pub state: State,
    /// Events to append to the outbox, in order.
    pub events: Vec<Event>,
    /// Journal entries to append, in order.
    pub journal: Vec<JournalEntry>,
    /// What the runtime should do with the consumed message. A `DeadLetter` decision never
    /// changes records.
    pub outcome: Handled,
}

impl Draft {
    pub(crate) fn unchanged(state: &State, outcome: Handled) -> Draft {
        Draft {
            state: state.clone(),
            events: Vec::new(),
            journal: Vec::new(),
            outcome,
        }
    }

    /// The decision: the records of `saga_id` that differ from `before` (a duplicate writes
    /// nothing), with the journal lines and events.
    pub(crate) fn finish(self, before: &State, saga_id: SagaId) -> Decision {
        let after = self.state;
        let saga = match &after.saga {
            Some(record) if after.saga != before.saga => {
                let old = before
                    .saga
                    .as_ref()
                    .and_then(|s| s.expiry_index_key(saga_id));
                let new = record.expiry_index_key(saga_id);
                let moved = old != new;
                Some(SagaWrite {
                    saga_id,
                    record: record.clone(),
                    unindex: old.filter(|_| moved),
                    index: new.filter(|_| moved),
                })
            }
            _ => None,
        };
        // Money of a saga moves on the account of the user who holds it.
        let account = match (&after.account, &after.saga) {
            (Some(account), Some(saga)) if after.account != before.account => {
                Some((saga.user.clone(), account.clone()))
            }
            _ => None,
        };
        Decision {
            handled: self.outcome,
            writes: KrwWrites {
                saga,
                account,
                house: (after.house != before.house).then_some(after.house),
            },
            journal: self.journal,
            events: self.events,
        }
    }
}

/// Decides what one input does to one saga.
///
/// `state.account` must be the account of the saga's user (of the request's user when there is
/// no saga record yet). Errors only when records contradict each other.
pub fn decide(
    state: &State,
    config: &KrwConfig,
    input: &Input<'_>,
    now_ms: u64,
) -> Result<Decision, KrwError> {
    Ok(draft(state, config, input, now_ms)?.finish(state, input.saga_id()))
}

fn draft(
    state: &State,
    config: &KrwConfig,
    input: &Input<'_>,
    now_ms: u64,
) -> Result<Draft, KrwError> {
    match *input {
        Input::Requested(req) => on_request(state, config, req, now_ms),
        Input::InvalidRequest(inv) => Ok(on_invalid_request(state, inv, now_ms)),
        Input::TradeFilled { saga_id, user } => {
            on_other(state, saga_id, user, Other::Filled, now_ms)
        }
        Input::TradeFailed { saga_id, user } => {
            on_other(state, saga_id, user, Other::Failed, now_ms)
        }
        Input::TradeCancelled { saga_id, user } => {
            on_other(state, saga_id, user, Other::Cancelled, now_ms)
        }
        Input::UsdCredited { saga_id, user } => {
            on_other(state, saga_id, user, Other::Credited, now_ms)
        }
        Input::Expire { saga_id } => on_expire(state, config, saga_id, now_ms),
    }
}

fn on_request(
    state: &State,
    config: &KrwConfig,
    req: &ExchangeRequested,
    now_ms: u64,
) -> Result<Draft, KrwError> {
    let fingerprint = RequestFingerprint {
        user: req.user_id.clone(),
        krw_amount: req.krw_amount,
        min_usd_amount: req.min_usd_amount,
    };
    let mut saga = match &state.saga {
        None => SagaRecord::new(req.user_id.clone(), now_ms),
        // Early events of the same user's saga: the request is the one they belong to.
        Some(rec) if rec.status == SagaStatus::NoRequest && rec.user == req.user_id => rec.clone(),
        // Dedup by saga state, not event id: a retry of the accepted (or rejected) body.
        Some(rec) if rec.request.as_ref() == Some(&fingerprint) => {
            return Ok(Draft::unchanged(state, Handled::Ignored))
        }
        // The saga lives on with the body it accepted; a rejection beside it would read as
        // INCONSISTENT, so the conflicting request goes to the dead-letter stream.
        Some(rec) => {
            let message = format!(
                "saga {} already has {}; this request ({}) differs and was not applied. \
                 Use a new saga_id for a new exchange.",
                req.saga_id,
                describe(rec),
                describe_request(&fingerprint)
            );
            return Ok(Draft::unchanged(
                state,
                Handled::DeadLetter {
                    reason: SAGA_ID_CONFLICT,
                    message,
                },
            ));
        }
    };
    saga.request = Some(fingerprint);
    let mut d = Draft::unchanged(state, Handled::Applied);

    if let Err((reason, message)) = check_request(state.account.as_ref(), config, req, now_ms) {
        saga.status = SagaStatus::Rejected { reason };
        d.state.saga = Some(saga);
        d.events.push(Event::KrwRejected(KrwRejected {
            saga_id: req.saga_id,
            user_id: req.user_id.clone(),
            reason,
            message: bounded(message),
        }));
        return Ok(d);
    }

    let seen = saga.seen;
    d.state.saga = Some(saga);
    hold(&mut d, config, req.saga_id, now_ms)?;
    // Replay the tombstones in the order the choreography produces them (fill, then credit or
    // cancel; or failure), so the saga ends exactly as the in-order delivery would have.
    // Without this, a hold taken after its trade.failed would wait for an answer that already
    // came and went.
    if seen.trade_filled {
        if let Some(s) = d.state.saga.as_mut() {
            s.pinned = true;
        }
    }
    if seen.usd_credited {
        commit(&mut d, req.saga_id, now_ms)?;
    } else if seen.trade_failed {
        release(&mut d, req.saga_id, ReleaseReason::TradeFailed, now_ms)?;
    } else if seen.trade_cancelled {
        release(&mut d, req.saga_id, ReleaseReason::TradeCancelled, now_ms)?;
    }
    Ok(d)
}

/// Validates a request against the account and the limits; `Err` carries the rejection.
/// Order: the account first (nothing else can be judged without one), then the request's own
/// size, then the day's total, and funds last, so that a user told to deposit more is not
/// refused for a limit after depositing.
fn check_request(
    account: Option<&Account>,
    config: &KrwConfig,
    req: &ExchangeRequested,
    now_ms: u64,
) -> Result<(), (RejectReason, String)> {
    let user = &req.user_id;
    let amount = req.krw_amount;
    let Some(account) = account else {
        return Err((
            RejectReason::UnknownUser,
            format!(
                "{user} has no KRW account; an operator must deposit KRW for {user} first, \
                 then send a new request with a new saga_id"
            ),
        ));
    };
    if amount < config.min_krw {
        return Err((
            RejectReason::BelowMinimum,
            format!(
                "{amount} KRW is below the minimum of {} KRW per exchange; \
                 request at least {} KRW with a new saga_id",
                config.min_krw, config.min_krw
            ),
        ));
    }
    if amount > config.max_krw_per_tx {
        return Err((
            RejectReason::AboveTransactionLimit,
            format!(
                "{amount} KRW is above the limit of {} KRW per exchange; \
                 split it into requests of at most {} KRW, each with its own saga_id",
                config.max_krw_per_tx, config.max_krw_per_tx
            ),
        ));
    }
    let used = account.total_on(day_of(now_ms));
    let within_day = used
        .checked_add(amount)
        .is_some_and(|total| total <= config.max_krw_per_user_day);
    if !within_day {
        let left = config
            .max_krw_per_user_day
            .checked_sub(used)
            .unwrap_or(Krw::ZERO);
        return Err((
            RejectReason::AboveDailyLimit,
            format!(
                "{user} has already held or exchanged {used} KRW today (UTC); {amount} KRW more \
                 would pass the daily limit of {} KRW; request at most {left} KRW with a new \
                 saga_id, or wait until 00:00 UTC",
                config.max_krw_per_user_day
            ),
        ));
    }
    if account.available < amount {
        return Err((
            RejectReason::InsufficientFunds,
            format!(
                "{user} has {} KRW available, {amount} KRW requested; deposit more or request \
                 less, with a new saga_id",
                account.available
            ),
        ));
    }
    Ok(())
}

fn on_invalid_request(state: &State, inv: &InvalidRequest, now_ms: u64) -> Draft {
    match &state.saga {
        None => {
            let mut saga = SagaRecord::new(inv.user.clone(), now_ms);
            saga.invalid_request_digest = Some(inv.digest.clone());
            saga.status = SagaStatus::Rejected { reason: inv.reason };
            let mut d = Draft::unchanged(state, Handled::Applied);
            d.state.saga = Some(saga);
            d.events.push(Event::KrwRejected(KrwRejected {
                saga_id: inv.saga_id,
                user_id: inv.user.clone(),
                reason: inv.reason,
                message: bounded(inv.message.clone()),
            }));
            d
        }
        // The same bytes again (a redelivery before the ack): answered already.
        Some(rec) if rec.invalid_request_digest.as_deref() == Some(inv.digest.as_str()) => {
            Draft::unchanged(state, Handled::Ignored)
        }
        Some(rec) => Draft::unchanged(
            state,
            Handled::DeadLetter {
                reason: SAGA_ID_CONFLICT,
                message: format!(
                    "saga {} already has {}; this unreadable request ({}) was not applied. \
                     Use a new saga_id for a new exchange.",
                    inv.saga_id,
                    describe(rec),
                    inv.message
                ),
            },
        ),
    }
}

/// The events of other participants that fx-krw reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Other {
    Filled,
    Failed,
    Cancelled,
    Credited,
}

fn on_other(
    state: &State,
    saga_id: SagaId,
    user: &UserId,
    other: Other,
    now_ms: u64,
) -> Result<Draft, KrwError> {
    let mut saga = match &state.saga {
        Some(rec) if &rec.user != user => {
            // Money moves only on the saga's own account; an event naming someone else is a
            // bug upstream, and acting on it silently would hide it.
            return Ok(Draft::unchanged(
                state,
                Handled::DeadLetter {
                    reason: SAGA_USER_MISMATCH,
                    message: format!(
                        "saga {saga_id} belongs to {} at fx-krw, but this event names {user}",
                        rec.user
                    ),
                },
            ));
        }
        Some(rec) => rec.clone(),
        None => SagaRecord::new(user.clone(), now_ms),
    };
    let flag = match other {
        Other::Filled => &mut saga.seen.trade_filled,
        Other::Failed => &mut saga.seen.trade_failed,
        Other::Cancelled => &mut saga.seen.trade_cancelled,
        Other::Credited => &mut saga.seen.usd_credited,
    };
    if *flag {
        return Ok(Draft::unchanged(state, Handled::Ignored));
    }
    *flag = true;

    let status = saga.status;
    let mut d = Draft::unchanged(state, Handled::Ignored);
    if status == SagaStatus::NoRequest {
        // Arrived before the request: a tombstone that on_request replays.
        d.state.saga = Some(saga);
        d.outcome = Handled::Applied;
        return Ok(d);
    }
    if status != SagaStatus::Held {
        // Late: the hold already ended (or never was). Remember it for dedup only. Notably a
        // fill after an expiry release is left alone: trade cancels when it sees krw.released.
        d.state.saga = Some(saga);
        return Ok(d);
    }
    match other {
        Other::Filled => {
            // The pivot: from now on only usd.credited or trade.cancelled ends this hold.
            saga.pinned = true;
            d.state.saga = Some(saga);
            d.outcome = Handled::Applied;
        }
        Other::Credited => {
            d.state.saga = Some(saga);
            commit(&mut d, saga_id, now_ms)?;
        }
        Other::Failed => {
            d.state.saga = Some(saga);
            release(&mut d, saga_id, ReleaseReason::TradeFailed, now_ms)?;
        }
        Other::Cancelled => {
            d.state.saga = Some(saga);
            release(&mut d, saga_id, ReleaseReason::TradeCancelled, now_ms)?;
        }
    }
    Ok(d)
}

fn on_expire(
    state: &State,
    config: &KrwConfig,
    saga_id: SagaId,
    now_ms: u64,
) -> Result<Draft, KrwError> {
    let due = state.saga.as_ref().is_some_and(|s| {
        s.expirable()
            && s.expires_at_ms
                .is_some_and(|at| expiry_due(at, config.hold_grace_ms, now_ms))
    });
    if !due {
        // Pinned, ended, not yet due, or unknown: the timer is a no-op.
        return Ok(Draft::unchanged(state, Handled::Ignored));
    }
    let mut d = Draft::unchanged(state, Handled::Ignored);
    release(&mut d, saga_id, ReleaseReason::Expired, now_ms)?;
    Ok(d)
}

fn inconsistent(saga_id: SagaId, message: String) -> KrwError {
    KrwError::Inconsistent { saga_id, message }
}

/// The saga record and its user's account, both required for moving held money.
fn saga_and_account(
    d: &mut Draft,
    saga_id: SagaId,
) -> Result<(&mut SagaRecord, &mut Account, &mut House), KrwError> {
    let State {
        saga,
        account,
        house,
    } = &mut d.state;
    let saga = saga
        .as_mut()
        .ok_or_else(|| inconsistent(saga_id, "no saga record".into()))?;
    let account = account.as_mut().ok_or_else(|| {
        inconsistent(
            saga_id,
            format!("the hold's account acct:{} is missing", saga.user),
        )
    })?;
    Ok((saga, account, house))
}

fn entry(
    saga_id: SagaId,
    op: Op,
    debit: ledger::Account,
    credit: ledger::Account,
    amount: Krw,
    now_ms: u64,
) -> JournalEntry {
    JournalEntry::new(
        saga_id,
        op,
        Currency::Krw,
        (debit, credit),
        amount.amount(),
        now_ms,
    )
}

/// TCC try: available -> held, counted against today's limit; emits krw.held.
fn hold(d: &mut Draft, config: &KrwConfig, saga_id: SagaId, now_ms: u64) -> Result<(), KrwError> {
    let (saga, account, _) = saga_and_account(d, saga_id)?;
    let req = saga
        .request
        .clone()
        .ok_or_else(|| inconsistent(saga_id, "hold without a request".into()))?;
    let amount = req.krw_amount;
    let today = day_of(now_ms);
    account.available = account.available.checked_sub(amount).ok_or_else(|| {
        inconsistent(
            saga_id,
            format!(
                "available {} KRW is less than the hold's {amount} KRW",
                account.available
            ),
        )
    })?;
    account.held = account
        .held
        .checked_add(amount)
        .ok_or_else(|| inconsistent(saga_id, "held balance would pass the KRW ceiling".into()))?;
    account.day_total = account
        .total_on(today)
        .checked_add(amount)
        .ok_or_else(|| inconsistent(saga_id, "day total would pass the KRW ceiling".into()))?;
    account.day = today;
    let expires_at_ms = now_ms.saturating_add(config.hold_ttl_ms);
    saga.status = SagaStatus::Held;
    saga.expires_at_ms = Some(expires_at_ms);
    saga.hold_day = Some(today);
    let user = saga.user.clone();
    d.journal.push(entry(
        saga_id,
        Op::Hold,
        available_account(&user),
        held_account(&user),
        amount,
        now_ms,
    ));
    d.events.push(Event::KrwHeld(KrwHeld {
        saga_id,
        user_id: user,
        krw_amount: amount,
        min_usd_amount: req.min_usd_amount,
        hold_expires_at_ms: expires_at_ms,
    }));
    d.outcome = Handled::Applied;
    Ok(())
}

fn held_amount(saga: &SagaRecord, account: &Account, saga_id: SagaId) -> Result<Krw, KrwError> {
    let amount = saga
        .request
        .as_ref()
        .map(|r| r.krw_amount)
        .ok_or_else(|| inconsistent(saga_id, "hold without a request".into()))?;
    if account.held < amount {
        return Err(inconsistent(
            saga_id,
            format!(
                "held balance {} KRW is less than the hold's {amount} KRW",
                account.held
            ),
        ));
    }
    Ok(amount)
}

/// TCC confirm: held -> house; emits krw.committed.
fn commit(d: &mut Draft, saga_id: SagaId, now_ms: u64) -> Result<(), KrwError> {
    let (saga, account, house) = saga_and_account(d, saga_id)?;
    let amount = held_amount(saga, account, saga_id)?;
    account.held = account.held.checked_sub(amount).unwrap_or(Krw::ZERO);
    house.krw = house
        .krw
        .checked_add(amount)
        .ok_or_else(|| inconsistent(saga_id, "house balance would pass the KRW ceiling".into()))?;
    saga.status = SagaStatus::Committed;
    let user = saga.user.clone();
    d.journal.push(entry(
        saga_id,
        Op::Commit,
        held_account(&user),
        ledger::Account::House,
        amount,
        now_ms,
    ));
    d.events.push(Event::KrwCommitted(KrwCommitted {
        saga_id,
        user_id: user,
        krw_amount: amount,
    }));
    d.outcome = Handled::Applied;
    Ok(())
}

/// TCC cancel: held -> available, giving the day's limit back if the hold counted today;
/// emits krw.released.
pub(crate) fn release(
    d: &mut Draft,
    saga_id: SagaId,
    reason: ReleaseReason,
    now_ms: u64,
) -> Result<(), KrwError> {
    let (saga, account, _) = saga_and_account(d, saga_id)?;
    let amount = held_amount(saga, account, saga_id)?;
    account.held = account.held.checked_sub(amount).unwrap_or(Krw::ZERO);
    account.available = account.available.checked_add(amount).ok_or_else(|| {
        inconsistent(
            saga_id,
            "available balance would pass the KRW ceiling".into(),
        )
    })?;
    if saga.hold_day == Some(account.day) {
        // Nothing was exchanged, so the amount should not keep counting against today.
        account.day_total = account.day_total.checked_sub(amount).unwrap_or(Krw::ZERO);
    }
    saga.status = SagaStatus::Released { reason };
    let user = saga.user.clone();
    d.journal.push(entry(
        saga_id,
        Op::Release,
        held_account(&user),
        available_account(&user),
        amount,
        now_ms,
    ));
    d.events.push(Event::KrwReleased(KrwReleased {
        saga_id,
        user_id: user,
        krw_amount: amount,
        reason,
    }));
    d.outcome = Handled::Applied;
    Ok(())
}

/// The records a deposit reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositState {
    /// `dep:<deposit_id>`, if this deposit was made before.
    pub deposit: Option<DepositRecord>,
    /// True when `saga:<deposit_id>` exists: the id is an exchange's, not a deposit's.
    pub saga_exists: bool,
    /// `acct:<user>`, if the user has an account.
    pub account: Option<Account>,
    /// `totals`.
    pub totals: Totals,
}

/// A deposit's record writes: the deposit, the user's account and the totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DepositWrites {
    /// `dep:<deposit_id>`.
    pub deposit: Option<(SagaId, DepositRecord)>,
    /// `acct:<user>`.
    pub account: Option<(UserId, Account)>,
    /// `totals`.
    pub totals: Option<Totals>,
}

impl Writes for DepositWrites {
    fn write<R: Records>(&self, r: &R) -> TxResult<()> {
        if let Some((id, deposit)) = &self.deposit {
            r.put(&deposit_key(*id), deposit)?;
        }
        if let Some((user, account)) = &self.account {
            r.put(&account_key(user), account)?;
        }
        if let Some(totals) = &self.totals {
            r.put(TOTALS_KEY, totals)?;
        }
        Ok(())
    }
}

impl DepositState {
    /// The records once `writes` are written.
    pub fn after(&self, writes: &DepositWrites) -> DepositState {
        DepositState {
            deposit: match &writes.deposit {
                Some((_, d)) => Some(d.clone()),
                None => self.deposit.clone(),
            },
            saga_exists: self.saga_exists,
            account: match &writes.account {
                Some((_, a)) => Some(a.clone()),
                None => self.account.clone(),
            },
            totals: writes.totals.clone().unwrap_or_else(|| self.totals.clone()),
        }
    }
}

/// The outcome of a deposit decision: `Applied`, `Ignored` (a repeat), or `DeadLetter`
/// (refused; nothing is written).
pub type DepositDecision = runtime::Decision<DepositWrites>;

/// Decides an admin deposit of `amount` to `user`, idempotent by `deposit_id`.
pub fn decide_deposit(
    state: &DepositState,
    deposit_id: SagaId,
    user: &UserId,
    amount: Krw,
    actor: &str,
    now_ms: u64,
) -> DepositDecision {
    let refuse = DepositDecision::dead_letter;
    if let Some(existing) = &state.deposit {
        if &existing.user == user && existing.krw_amount == amount {
            // A retry of the same deposit (the admin's reply was lost): already done.
            return DepositDecision::ignored();
        }
        return refuse(
            DEPOSIT_ID_CONFLICT,
            format!(
                "deposit {deposit_id} was already made: {} KRW to {} by {}; this one \
                 ({amount} KRW to {user}) differs. Use a new deposit id for a new deposit.",
                existing.krw_amount, existing.user, existing.actor
            ),
        );
    }
    if state.saga_exists {
        return refuse(
            DEPOSIT_ID_CONFLICT,
            format!("{deposit_id} is an exchange saga's id; use a new id for the deposit"),
        );
    }
    if !amount.is_positive() {
        return refuse(INVALID_DEPOSIT, "a deposit must be more than 0 KRW".into());
    }
    let mut account = state.account.clone().unwrap_or_else(Account::empty);
    let (Some(available), Some(deposits)) = (
        account.available.checked_add(amount),
        state.totals.deposits.checked_add(amount),
    ) else {
        return refuse(
            INVALID_DEPOSIT,
            format!(
                "{amount} KRW would take a balance past the largest KRW amount ({})",
                Krw::MAX_TEXT
            ),
        );
    };
    account.available = available;
    let actor = bounded(actor.to_owned());
    DepositDecision {
        handled: Handled::Applied,
        writes: DepositWrites {
            deposit: Some((
                deposit_id,
                DepositRecord {
                    user: user.clone(),
                    krw_amount: amount,
                    actor: actor.clone(),
                    at_ms: now_ms,
                },
            )),
            account: Some((user.clone(), account)),
            totals: Some(Totals { deposits }),
        },
        events: vec![Event::KrwDeposited(events::KrwDeposited {
            saga_id: deposit_id,
            user_id: user.clone(),
            krw_amount: amount,
            actor: actor.clone(),
        })],
        journal: vec![entry(
            deposit_id,
            Op::Deposit,
            ledger::Account::External,
            available_account(user),
            amount,
            now_ms,
        )
        .by(actor)],
    }
}

/// A saga record in words, for conflict messages.
fn describe(rec: &SagaRecord) -> String {
    let what = match &rec.request {
        Some(fp) => format!("a request {}", describe_request(fp)),
        None if rec.invalid_request_digest.is_some() => {
            format!("an unreadable request from {}", rec.user)
        }
        None => format!("events of {} but no request yet", rec.user),
    };
    let status = match rec.status {
        SagaStatus::NoRequest => String::new(),
        SagaStatus::Rejected { reason } => format!(", rejected ({})", snake(&reason)),
        SagaStatus::Held if rec.pinned => ", held and filled".into(),
        SagaStatus::Held => ", held".into(),
        SagaStatus::Committed => ", committed".into(),
        SagaStatus::Released { reason } => format!(", released ({})", snake(&reason)),
    };
    format!("{what}{status}")
}

fn describe_request(fp: &RequestFingerprint) -> String {
    match fp.min_usd_amount {
        Some(min) => format!("by {} for {} KRW, min {min} USD", fp.user, fp.krw_amount),
        None => format!("by {} for {} KRW", fp.user, fp.krw_amount),
    }
}

/// The wire name of a reason enum (its serde form), for messages.
pub(crate) fn snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Cuts a message to what events accept (`MAX_MESSAGE_CHARS`): decode errors can quote a
/// whole hostile input, and an over-long krw.rejected would itself be undecodable downstream.
pub(crate) fn bounded(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let mut cut: String = message.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests;
