//! The projection: what one saga looks like after the events seen so far.
//!
//! [`apply`] is a pure function of `(record, event, stream sequence, stream time)`: no IO, no
//! clock, no randomness, so the live tracker, a tracker rebuilt from the stream and the
//! deterministic simulation compute the same records. The state is derived from the *set* of
//! event kinds seen (not from their order), so a late or reordered event cannot leave a record
//! that a rebuild would not reproduce. STUCK is the one time-dependent flag; it is evaluated
//! at read time against an injected clock ([`SagaRecord::stuck_reason`]) and never stored.

use std::fmt;

use events::{
    CancelReason, CreditFailReason, Event, EventKind, Krw, Rate, RejectReason, ReleaseReason,
    SagaId, TradeFailReason, Usd, UserId,
};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};

/// Most timeline entries kept per saga. A saga has at most 11 distinct event kinds; the rest
/// of the room is for duplicates. Past it entries are counted, not kept, so a publisher that
/// repeats one event forever cannot grow a record without bound.
pub const MAX_TIMELINE_ENTRIES: usize = 32;

/// Most inconsistency notes kept per saga (same reason: a bound on a hostile stream).
pub const MAX_NOTES: usize = 8;

/// Where a saga is in the flow (README.md, the states a saga goes through).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SagaState {
    /// exchange.requested seen, nothing from fx-krw yet.
    Requested,
    /// krw.held: the user's KRW is on hold.
    KrwHeld,
    /// trade.filled: the pivot; the saga now completes or compensates through USD.
    OrderPlaced,
    /// usd.credited: waiting for fx-krw to commit the hold.
    UsdCredited,
    /// krw.committed (terminal).
    Completed,
    /// krw.rejected (terminal): nothing moved.
    Rejected,
    /// A failure after the hold; not every compensation has been seen yet.
    Compensating,
    /// Every participant said its final word and the hold is released (terminal).
    Compensated,
}

impl SagaState {
    /// Every state, in flow order (the order of dashboards and `by_state` maps).
    pub const ALL: [SagaState; 8] = [
        SagaState::Requested,
        SagaState::KrwHeld,
        SagaState::OrderPlaced,
        SagaState::UsdCredited,
        SagaState::Completed,
        SagaState::Rejected,
        SagaState::Compensating,
        SagaState::Compensated,
    ];

    /// The upper-case name used in the API, the dashboard and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Requested => "REQUESTED",
            SagaState::KrwHeld => "KRW_HELD",
            SagaState::OrderPlaced => "ORDER_PLACED",
            SagaState::UsdCredited => "USD_CREDITED",
            SagaState::Completed => "COMPLETED",
            SagaState::Rejected => "REJECTED",
            SagaState::Compensating => "COMPENSATING",
            SagaState::Compensated => "COMPENSATED",
        }
    }

    /// Parses a state name, case-insensitively (`completed` and `COMPLETED` both work).
    pub fn parse(s: &str) -> Option<SagaState> {
        SagaState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// COMPLETED, REJECTED and COMPENSATED: the saga is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Rejected | SagaState::Compensated
        )
    }

    /// Position in [`SagaState::ALL`]; the stored code.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The state at `index` of [`SagaState::ALL`].
    pub fn from_index(index: usize) -> Option<SagaState> {
        SagaState::ALL.get(index).copied()
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SagaState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A set of event kinds, one bit per position in `EventKind::ALL` (a `u32`: room for 32 kinds;
/// codec version 3 stores all four bytes, versions 1 and 2 stored the 16 bits of a `u16`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KindSet(pub u32);

// A kind past the 32nd would not fit the set, nor the one-byte kind codes of the codec (whose
// top bit marks a foreign user): the build stops here first.
const _: () = assert!(EventKind::ALL.len() <= 32, "KindSet holds 32 kinds");

impl KindSet {
    fn bit(kind: EventKind) -> u32 {
        1 << kind_index(kind)
    }

    /// True when `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    /// Adds `kind`.
    pub fn insert(&mut self, kind: EventKind) {
        self.0 |= Self::bit(kind);
    }

    /// True when no kind is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Position of `kind` in `EventKind::ALL`: the compact code stored in timelines.
pub fn kind_index(kind: EventKind) -> usize {
    match kind {
        EventKind::ExchangeRequested => 0,
        EventKind::KrwHeld => 1,
        EventKind::KrwRejected => 2,
        EventKind::KrwCommitted => 3,
        EventKind::KrwReleased => 4,
        EventKind::KrwDeposited => 5,
        EventKind::TradeFilled => 6,
        EventKind::TradeFailed => 7,
        EventKind::TradeCancelled => 8,
        EventKind::UsdCredited => 9,
        EventKind::UsdCreditFailed => 10,
        EventKind::UsdDebited => 11,
        EventKind::UsdDeposited => 12,
        EventKind::UsdFrozen => 13,
        EventKind::UsdUnfrozen => 14,
        EventKind::TradeReversed => 15,
        EventKind::KrwIntervened => 16,
        EventKind::TradeIntervened => 17,
        EventKind::UsdIntervened => 18,
    }
}

/// True for the admin events (deposits, freezes): they are counted, never made into sagas.
pub fn is_admin(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::KrwDeposited
            | EventKind::UsdDeposited
            | EventKind::UsdFrozen
            | EventKind::UsdUnfrozen
    )
}

/// One step of a saga's timeline, kept compactly: the body stays in the stream and is read by
/// sequence (JetStream direct get) only when a timeline page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    /// The event's stream sequence in `FX` (the key to fetch its body).
    pub seq: u64,
    /// When the stream stored it, ms since the Unix epoch.
    pub at_ms: u64,
    /// Which event it was; with the user it gives the subject.
    pub kind: EventKind,
    /// The event named another user than the saga's (then its subject is in
    /// [`SagaRecord::foreign_users`]); always an inconsistency.
    pub foreign_user: bool,
}

/// The reason code carried by a failure event, kept so lists can say why without a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureReason {
    /// The event that carried it (krw.rejected, trade.failed, ...).
    pub kind: EventKind,
    /// Its snake_case reason code, e.g. `insufficient_funds`.
    pub code: &'static str,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.code)
    }
}

/// Every reason code of the contract, so a stored index maps back to a `&'static str`.
pub(crate) const REASON_CODES: [&str; 21] = [
    "invalid_request",
    "user_mismatch",
    "unknown_user",
    "insufficient_funds",
    "below_minimum",
    "above_transaction_limit",
    "above_daily_limit",
    "trade_failed",
    "trade_cancelled",
    "expired",
    "rate_moved",
    "venue_unavailable",
    "hold_expiring",
    "hold_released",
    "credit_failed",
    "account_frozen",
    "insufficient_liquidity",
    "order_cancelled",
    // Index 18 was a spare ("unknown") that no record ever stored: encode falls back to the
    // last index for a code it does not know.
    "operator",
    "unknown",
    // Codes added later go after the fallback, so stored indices never move.
    "credit_refused",
];

/// Index of `"unknown"` in [`REASON_CODES`]: what a code not in the table is stored as.
pub(crate) const UNKNOWN_REASON: usize = 19;

/// The position of a reason code in the stored table (the key of the store's reason index).
pub fn reason_index(code: &str) -> u8 {
    REASON_CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(UNKNOWN_REASON) as u8
}

/// The reason code `s` names (as `/api/sagas?reason=` takes it), if it is one.
pub fn reason_code(s: &str) -> Option<&'static str> {
    REASON_CODES
        .iter()
        .copied()
        .find(|c| c.eq_ignore_ascii_case(s.trim()))
}

/// Every reason code, for messages and the search form.
pub fn reason_codes() -> &'static [&'static str] {
    &REASON_CODES
}

fn reject_code(r: RejectReason) -> &'static str {
    match r {
        RejectReason::InvalidRequest => "invalid_request",
        RejectReason::UserMismatch => "user_mismatch",
        RejectReason::UnknownUser => "unknown_user",
        RejectReason::InsufficientFunds => "insufficient_funds",
        RejectReason::BelowMinimum => "below_minimum",
        RejectReason::AboveTransactionLimit => "above_transaction_limit",
        RejectReason::AboveDailyLimit => "above_daily_limit",
    }
}

fn release_code(r: ReleaseReason) -> &'static str {
    match r {
        ReleaseReason::TradeFailed => "trade_failed",
        ReleaseReason::TradeCancelled => "trade_cancelled",
        ReleaseReason::Expired => "expired",
        ReleaseReason::Operator => "operator",
    }
}

fn trade_fail_code(r: TradeFailReason) -> &'static str {
    match r {
        TradeFailReason::RateMoved => "rate_moved",
        TradeFailReason::VenueUnavailable => "venue_unavailable",
        TradeFailReason::HoldExpiring => "hold_expiring",
        TradeFailReason::HoldReleased => "hold_released",
        TradeFailReason::CreditRefused => "credit_refused",
    }
}

fn cancel_code(r: CancelReason) -> &'static str {
    match r {
        CancelReason::CreditFailed => "credit_failed",
        CancelReason::HoldReleased => "hold_released",
    }
}

fn credit_fail_code(r: CreditFailReason) -> &'static str {
    match r {
        CreditFailReason::AccountFrozen => "account_frozen",
        CreditFailReason::InsufficientLiquidity => "insufficient_liquidity",
        CreditFailReason::OrderCancelled => "order_cancelled",
        CreditFailReason::Operator => "operator",
    }
}

/// The house's sale of a fill's USD back at the venue (trade.reversed), as the stream said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reversal {
    /// USD sold back (the fill's USD).
    pub usd_amount: Usd,
    /// KRW the sale brought.
    pub krw_amount: Krw,
    /// The sale's rate, KRW per USD.
    pub rate: Rate,
    /// KRW the original fill cost.
    pub fill_krw_amount: Krw,
}

impl Reversal {
    /// The house's FX gain (positive) or loss (negative) on the saga, in KRW:
    /// `krw_amount - fill_krw_amount`.
    pub fn pnl_krw(&self) -> Decimal {
        self.krw_amount.amount() - self.fill_krw_amount.amount()
    }
}

/// Where a saga's reversal at the venue is: a pure function of the record, so counts kept
/// incrementally agree with a rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReversalStatus {
    /// No trade.cancelled and no trade.reversed: nothing to reverse.
    None,
    /// trade.cancelled and no trade.reversed yet: the house holds the fill's USD until fx-trade
    /// has sold it back at the venue.
    Pending,
    /// trade.reversed seen (after trade.cancelled, or after trade.failed when an execution
    /// was found later). `pnl_krw` is `None` only for a record stored by a tracker that did not
    /// keep the reversal's amounts.
    Done {
        /// The house's FX gain or loss, KRW.
        pnl_krw: Option<Decimal>,
    },
}

/// The read model of one saga.
///
/// Measured by `tests/memory.rs` (a counting allocator over 50,000 completed five-event
/// sagas): about 625 bytes per saga in memory (360 bytes inline, the timeline's 5 x 24 bytes,
/// the user id, and the hash-map slot), and about 127 bytes encoded in sled (before sled's own
/// overhead and the index entries of about 30 bytes each: five, six for a failed saga).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaRecord {
    /// The saga's id (every event of the saga carries it).
    pub saga_id: SagaId,
    /// The user of the saga's first event; an event naming another user is an inconsistency.
    pub user_id: UserId,
    /// Where the saga is, derived from [`SagaRecord::seen`].
    pub state: SagaState,
    /// Which event kinds have been seen (duplicates collapse here).
    pub seen: KindSet,
    /// KRW of the first exchange.requested seen: shown until krw.held says otherwise.
    pub requested_krw: Option<Krw>,
    /// The slippage guard, from krw.held (or the request before the hold).
    pub min_usd_amount: Option<Usd>,
    /// KRW of krw.held: the saga's amount (ARCHITECTURE.md: the amounts are those of krw.held).
    pub held_krw: Option<Krw>,
    /// USD of trade.filled.
    pub filled_usd: Option<Usd>,
    /// KRW per USD of trade.filled.
    pub rate: Option<Rate>,
    /// The first KRW amount seen on a post-request event, and which event said it: every later
    /// KRW amount of the saga must equal it.
    pub krw_witness: Option<(Krw, EventKind)>,
    /// The same for USD amounts (trade.filled, trade.cancelled, usd.credited, usd.debited).
    pub usd_witness: Option<(Usd, EventKind)>,
    /// Why the saga failed or was rejected: the first failure's reason code.
    pub failure: Option<FailureReason>,
    /// Stream time of the first event, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// Stream time of the latest event: what STUCK is measured from.
    pub last_event_at_ms: u64,
    /// Stream time of the event that made the saga terminal; `None` while it is not.
    pub finished_at_ms: Option<u64>,
    /// Stream time of the first event that started a compensation (failure after the hold).
    pub compensation_started_at_ms: Option<u64>,
    /// Stream sequence of the first event: the saga's place in "newest first" listings.
    pub first_seq: u64,
    /// Stream sequence of the latest event.
    pub last_seq: u64,
    /// Events applied, duplicates included.
    pub event_count: u32,
    /// Inconsistencies that the seen-set cannot express (amounts that disagree, a foreign
    /// user); sticky, at most [`MAX_NOTES`].
    pub notes: Vec<String>,
    /// The timeline, in stream order, at most [`MAX_TIMELINE_ENTRIES`].
    pub timeline: Vec<TimelineEntry>,
    /// `(seq, user)` of timeline entries whose event named another user (normally empty).
    pub foreign_users: Vec<(u64, UserId)>,
    /// Entries past [`MAX_TIMELINE_ENTRIES`] that were applied but not kept.
    pub timeline_dropped: u32,
    /// The first trade.reversed seen (boxed: few sagas have one).
    pub reversal: Option<Box<Reversal>>,
}

/// What one [`apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The state before, or `None` for the saga's first event.
    pub previous: Option<SagaState>,
    /// The state after.
    pub state: SagaState,
    /// The kind had been seen before in this saga (a duplicate on the stream).
    pub duplicate: bool,
}

impl Applied {
    /// True when the saga entered a terminal state with this event.
    pub fn became_terminal(&self) -> bool {
        self.state.is_terminal() && self.previous.is_none_or(|p| !p.is_terminal())
    }

    /// True when a terminal saga became non-terminal again (only an impossible stream does this).
    pub fn left_terminal(&self) -> bool {
        !self.state.is_terminal() && self.previous.is_some_and(|p| p.is_terminal())
    }
}

impl SagaRecord {
    /// An empty record for a saga about to receive its first event.
    pub fn new(saga_id: SagaId, user_id: UserId) -> SagaRecord {
        SagaRecord {
            saga_id,
            user_id,
            state: SagaState::Requested,
            seen: KindSet::default(),
            requested_krw: None,
            min_usd_amount: None,
            held_krw: None,
            filled_usd: None,
            rate: None,
            krw_witness: None,
            usd_witness: None,
            failure: None,
            started_at_ms: 0,
            last_event_at_ms: 0,
            finished_at_ms: None,
            compensation_started_at_ms: None,
            first_seq: 0,
            last_seq: 0,
            event_count: 0,
            notes: Vec::new(),
            timeline: Vec::new(),
            foreign_users: Vec::new(),
            timeline_dropped: 0,
            reversal: None,
        }
    }

    /// A record from its first event (the usual way to start one).
    pub fn from_event(event: &Event, seq: u64, at_ms: u64) -> SagaRecord {
        let mut rec = SagaRecord::new(event.saga_id(), event.user_id().clone());
        apply(&mut rec, event, seq, at_ms);
        rec
    }

    /// The saga's KRW: krw.held's, else the request's.
    pub fn krw_amount(&self) -> Option<Krw> {
        self.held_krw.or(self.requested_krw)
    }

    /// The saga's USD: trade.filled's, else the first USD amount seen.
    pub fn usd_amount(&self) -> Option<Usd> {
        self.filled_usd.or(self.usd_witness.map(|(u, _)| u))
    }

    /// `finished - started` for a terminal saga.
    pub fn duration_ms(&self) -> Option<u64> {
        self.finished_at_ms
            .map(|f| f.saturating_sub(self.started_at_ms))
    }

    /// Where the house's reversal of the fill is (see [`ReversalStatus`]). Independent of
    /// the state: a COMPENSATED saga is over for the user while its reversal is pending.
    pub fn reversal_status(&self) -> ReversalStatus {
        if self.seen.contains(EventKind::TradeReversed) {
            ReversalStatus::Done {
                pnl_krw: self.reversal.as_ref().map(|r| r.pnl_krw()),
            }
        } else if self.seen.contains(EventKind::TradeCancelled) {
            ReversalStatus::Pending
        } else {
            ReversalStatus::None
        }
    }

    /// trade.cancelled seen and trade.reversed not yet.
    pub fn is_reversal_pending(&self) -> bool {
        self.reversal_status() == ReversalStatus::Pending
    }

    /// True in COMPLETED, REJECTED and COMPENSATED.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// True when the events seen so far are a sequence the choreography cannot produce.
    pub fn is_inconsistent(&self) -> bool {
        violations(self.seen) != 0 || !self.notes.is_empty()
    }

    /// Why the saga is INCONSISTENT, one sentence each (empty when it is not).
    pub fn inconsistencies(&self) -> Vec<String> {
        let mask = violations(self.seen);
        let mut out: Vec<String> = VIOLATIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, v)| v.text.to_owned())
            .collect();
        out.extend(self.notes.iter().cloned());
        out
    }

    /// Why the saga is STUCK at `now_ms`: not terminal and no event for more than
    /// `stuck_after_ms`. `None` when it is not stuck.
    pub fn stuck_reason(&self, now_ms: u64, stuck_after_ms: u64) -> Option<String> {
        if self.is_terminal() {
            return None;
        }
        let idle_ms = now_ms.saturating_sub(self.last_event_at_ms);
        if idle_ms <= stuck_after_ms {
            return None;
        }
        Some(format!(
            "no event for {} (threshold {}) in {}; waiting for {}",
            human_ms(idle_ms),
            human_ms(stuck_after_ms),
            self.state,
            self.awaiting()
        ))
    }

    /// True when [`SagaRecord::stuck_reason`] is `Some`.
    pub fn is_stuck(&self, now_ms: u64, stuck_after_ms: u64) -> bool {
        !self.is_terminal() && now_ms.saturating_sub(self.last_event_at_ms) > stuck_after_ms
    }

    /// Which events would move the saga on, for people reading a STUCK alert.
    pub fn awaiting(&self) -> String {
        let s = self.seen;
        match self.state {
            SagaState::Requested => "krw.held or krw.rejected from fx-krw".into(),
            SagaState::KrwHeld => "trade.filled or trade.failed from fx-trade".into(),
            SagaState::OrderPlaced => "usd.credited or usd.credit_failed from fx-usd".into(),
            SagaState::UsdCredited => "krw.committed from fx-krw".into(),
            SagaState::Compensating => {
                let mut missing = Vec::new();
                if !s.contains(EventKind::KrwReleased) {
                    missing.push("krw.released from fx-krw");
                }
                if !trade_final(s) {
                    missing.push(if s.contains(EventKind::TradeFilled) {
                        "trade.cancelled from fx-trade"
                    } else {
                        "trade.failed or trade.cancelled from fx-trade"
                    });
                }
                if s.contains(EventKind::TradeFilled) && !usd_final(s) {
                    missing.push(if s.contains(EventKind::UsdCredited) {
                        "usd.debited from fx-usd"
                    } else {
                        "usd.credit_failed or usd.debited from fx-usd"
                    });
                }
                if missing.is_empty() {
                    "nothing (an inconsistent sequence)".into()
                } else {
                    missing.join(", ")
                }
            }
            SagaState::Completed | SagaState::Rejected | SagaState::Compensated => {
                "nothing (terminal)".into()
            }
        }
    }

    /// The subject of a timeline entry: `fx.<domain>.<event>.<user>`.
    pub fn subject_of(&self, entry: &TimelineEntry) -> String {
        let user = if entry.foreign_user {
            self.foreign_users
                .iter()
                .find(|(seq, _)| *seq == entry.seq)
                .map(|(_, u)| u)
                .unwrap_or(&self.user_id)
        } else {
            &self.user_id
        };
        entry.kind.subject(user)
    }

    fn note(&mut self, text: String) {
        if self.notes.len() < MAX_NOTES && !self.notes.contains(&text) {
            self.notes.push(text);
        }
    }

    fn witness_krw(&mut self, kind: EventKind, amount: Krw) {
        match self.krw_witness {
            None => self.krw_witness = Some((amount, kind)),
            Some((w, wk)) if w != amount => self.note(format!(
                "KRW amounts disagree: {kind} says {amount}, {wk} said {w}"
            )),
            Some(_) => {}
        }
    }

    fn witness_usd(&mut self, kind: EventKind, amount: Usd) {
        match self.usd_witness {
            None => self.usd_witness = Some((amount, kind)),
            Some((w, wk)) if w != amount => self.note(format!(
                "USD amounts disagree: {kind} says {amount}, {wk} said {w}"
            )),
            Some(_) => {}
        }
    }

    fn check_min_usd(&mut self) {
        if let (Some(min), Some(usd)) = (self.min_usd_amount, self.filled_usd) {
            if self.held_krw.is_some() && usd < min {
                self.note(format!(
                    "trade.filled gave {usd} USD, below the hold's min_usd_amount {min}"
                ));
            }
        }
    }
}

/// One impossible combination of event kinds.
struct Violation {
    text: &'static str,
    test: fn(KindSet) -> bool,
}

use EventKind as K;

/// Combinations the choreography cannot produce. Each is a fact about the *set* of events, so a
/// rebuilt tracker agrees with the live one whatever order it applied them in.
const VIOLATIONS: [Violation; 11] = [
    Violation {
        text: "committed and released: krw.committed and krw.released are both on the stream",
        test: |s| s.contains(K::KrwCommitted) && s.contains(K::KrwReleased),
    },
    Violation {
        text: "debit without credit: usd.debited with no usd.credited",
        test: |s| s.contains(K::UsdDebited) && !s.contains(K::UsdCredited),
    },
    Violation {
        text: "committed without credit: krw.committed with no usd.credited",
        test: |s| s.contains(K::KrwCommitted) && !s.contains(K::UsdCredited),
    },
    Violation {
        text: "rejected beside a hold: krw.rejected and krw.held are both on the stream",
        test: |s| s.contains(K::KrwRejected) && s.contains(K::KrwHeld),
    },
    Violation {
        text:
            "credited and credit failed: usd.credited and usd.credit_failed are both on the stream",
        test: |s| s.contains(K::UsdCredited) && s.contains(K::UsdCreditFailed),
    },
    Violation {
        text: "filled and failed: trade.filled and trade.failed are both on the stream",
        test: |s| s.contains(K::TradeFilled) && s.contains(K::TradeFailed),
    },
    Violation {
        text: "cancelled without fill: trade.cancelled with no trade.filled",
        test: |s| s.contains(K::TradeCancelled) && !s.contains(K::TradeFilled),
    },
    Violation {
        text: "filled without hold: trade.filled with no krw.held",
        test: |s| s.contains(K::TradeFilled) && !s.contains(K::KrwHeld),
    },
    Violation {
        text: "credited without fill: usd.credited with no trade.filled",
        test: |s| s.contains(K::UsdCredited) && !s.contains(K::TradeFilled),
    },
    Violation {
        text: "released without hold: krw.released with no krw.held",
        test: |s| s.contains(K::KrwReleased) && !s.contains(K::KrwHeld),
    },
    Violation {
        text: "committed and cancelled: krw.committed and trade.cancelled are both on the stream",
        test: |s| s.contains(K::KrwCommitted) && s.contains(K::TradeCancelled),
    },
];

/// A bit per violated rule of [`VIOLATIONS`].
fn violations(seen: KindSet) -> u16 {
    VIOLATIONS
        .iter()
        .enumerate()
        .fold(0, |m, (i, v)| if (v.test)(seen) { m | (1 << i) } else { m })
}

/// Trade's final word: trade.failed, or trade.cancelled after a fill.
fn trade_final(s: KindSet) -> bool {
    s.contains(K::TradeFailed) || (s.contains(K::TradeCancelled) && s.contains(K::TradeFilled))
}

/// USD's final word on a fill: usd.credit_failed, or usd.debited after a credit.
fn usd_final(s: KindSet) -> bool {
    s.contains(K::UsdCreditFailed) || (s.contains(K::UsdDebited) && s.contains(K::UsdCredited))
}

/// Events that mean "a step after the hold failed": a compensation is under way.
fn is_failure_after_hold(kind: EventKind) -> bool {
    matches!(
        kind,
        K::TradeFailed | K::TradeCancelled | K::UsdCreditFailed | K::UsdDebited | K::KrwReleased
    )
}

/// The state a set of seen event kinds means. Priority, highest first: a commit completes;
/// all compensations seen compensates; any failure after the hold compensates; a rejection
/// rejects; otherwise the furthest step of the happy path.
pub fn derive_state(s: KindSet) -> SagaState {
    if s.contains(K::KrwCommitted) {
        return SagaState::Completed;
    }
    let failed = [
        K::TradeFailed,
        K::TradeCancelled,
        K::UsdCreditFailed,
        K::UsdDebited,
        K::KrwReleased,
    ]
    .into_iter()
    .any(|k| s.contains(k));
    if failed {
        let compensated = s.contains(K::KrwReleased)
            && trade_final(s)
            && (!s.contains(K::TradeFilled) || usd_final(s));
        return if compensated {
            SagaState::Compensated
        } else {
            SagaState::Compensating
        };
    }
    if s.contains(K::KrwRejected) {
        SagaState::Rejected
    } else if s.contains(K::UsdCredited) {
        SagaState::UsdCredited
    } else if s.contains(K::TradeFilled) {
        SagaState::OrderPlaced
    } else if s.contains(K::KrwHeld) {
        SagaState::KrwHeld
    } else {
        SagaState::Requested
    }
}

/// Applies one event to a saga's record. Pure: the same record, event, sequence and time give
/// the same result everywhere (live, rebuild, simulation).
///
/// `seq` is the event's stream sequence and `at_ms` the stream's timestamp of it. Admin events
/// (deposits) are not part of any saga: they leave the record untouched and report `duplicate`
/// false with the state unchanged; callers count them instead.
pub fn apply(rec: &mut SagaRecord, event: &Event, seq: u64, at_ms: u64) -> Applied {
    let kind = event.kind();
    let previous = (rec.event_count > 0).then_some(rec.state);
    if is_admin(kind) {
        return Applied {
            previous,
            state: rec.state,
            duplicate: false,
        };
    }
    debug_assert_eq!(
        event.saga_id(),
        rec.saga_id,
        "event applied to another saga"
    );
    let duplicate = rec.seen.contains(kind);

    if rec.event_count == 0 {
        rec.first_seq = seq;
        rec.started_at_ms = at_ms;
    }
    rec.event_count = rec.event_count.saturating_add(1);
    rec.last_seq = rec.last_seq.max(seq);
    rec.last_event_at_ms = rec.last_event_at_ms.max(at_ms);

    let foreign_user = event.user_id() != &rec.user_id;
    if foreign_user {
        let text = format!(
            "{kind} at seq {seq} names user {}, the saga's user is {}",
            event.user_id(),
            rec.user_id
        );
        rec.note(text);
    }
    if rec.timeline.len() < MAX_TIMELINE_ENTRIES {
        rec.timeline.push(TimelineEntry {
            seq,
            at_ms,
            kind,
            foreign_user,
        });
        if foreign_user {
            rec.foreign_users.push((seq, event.user_id().clone()));
        }
    } else {
        rec.timeline_dropped = rec.timeline_dropped.saturating_add(1);
    }

    let fail = |rec: &mut SagaRecord, code: &'static str| {
        if rec.failure.is_none() {
            rec.failure = Some(FailureReason { kind, code });
        }
    };
    match event {
        Event::ExchangeRequested(e) => {
            // The first request is shown until krw.held names the accepted one; a second,
            // conflicting request is dead-lettered by fx-krw and changes nothing here.
            if rec.requested_krw.is_none() {
                rec.requested_krw = Some(e.krw_amount);
                if rec.held_krw.is_none() {
                    rec.min_usd_amount = e.min_usd_amount;
                }
            }
        }
        Event::KrwHeld(e) => {
            if rec.held_krw.is_none() {
                rec.held_krw = Some(e.krw_amount);
                rec.min_usd_amount = e.min_usd_amount;
            }
            rec.witness_krw(kind, e.krw_amount);
            rec.check_min_usd();
        }
        Event::KrwRejected(e) => fail(rec, reject_code(e.reason)),
        Event::KrwCommitted(e) => rec.witness_krw(kind, e.krw_amount),
        Event::KrwReleased(e) => {
            rec.witness_krw(kind, e.krw_amount);
            fail(rec, release_code(e.reason));
        }
        Event::TradeFilled(e) => {
            if rec.filled_usd.is_none() {
                rec.filled_usd = Some(e.usd_amount);
                rec.rate = Some(e.rate);
            }
            rec.witness_krw(kind, e.krw_amount);
            rec.witness_usd(kind, e.usd_amount);
            if e.rate.usd_for(e.krw_amount) != Some(e.usd_amount) {
                rec.note(format!(
                    "trade.filled says {} USD for {} KRW at {}, but round_down(krw / rate, 2) is {}",
                    e.usd_amount,
                    e.krw_amount,
                    e.rate,
                    e.rate
                        .usd_for(e.krw_amount)
                        .map_or_else(|| "out of range".to_owned(), |u| u.to_string())
                ));
            }
            rec.check_min_usd();
        }
        Event::TradeFailed(e) => fail(rec, trade_fail_code(e.reason)),
        Event::TradeCancelled(e) => {
            rec.witness_krw(kind, e.krw_amount);
            rec.witness_usd(kind, e.usd_amount);
            fail(rec, cancel_code(e.reason));
        }
        // The house's own business with the venue after the user was made whole: the amounts
        // must match the fill it reverses; the P&L is the stream's to tell, not a failure.
        Event::TradeReversed(e) => {
            rec.witness_krw(K::TradeFilled, e.fill_krw_amount);
            rec.witness_usd(kind, e.usd_amount);
            if e.rate.krw_for(e.usd_amount) != Some(e.krw_amount) {
                rec.note(format!(
                    "trade.reversed says {} KRW for {} USD at {}, but round_down(usd * rate, 0) is {}",
                    e.krw_amount,
                    e.usd_amount,
                    e.rate,
                    e.rate
                        .krw_for(e.usd_amount)
                        .map_or_else(|| "out of range".to_owned(), |k| k.to_string())
                ));
            }
            let reversal = Reversal {
                usd_amount: e.usd_amount,
                krw_amount: e.krw_amount,
                rate: e.rate,
                fill_krw_amount: e.fill_krw_amount,
            };
            match rec.reversal.as_deref() {
                None => rec.reversal = Some(Box::new(reversal)),
                Some(first) if *first != reversal => rec.note(format!(
                    "trade.reversed said twice with different terms: {} KRW at {}, then {} KRW at {}",
                    first.krw_amount, first.rate, reversal.krw_amount, reversal.rate
                )),
                Some(_) => {}
            }
        }
        Event::UsdCredited(e) => rec.witness_usd(kind, e.usd_amount),
        Event::UsdCreditFailed(e) => fail(rec, credit_fail_code(e.reason)),
        Event::UsdDebited(e) => rec.witness_usd(kind, e.usd_amount),
        // The operator's record of an intervention: on the timeline (its body, with the
        // reason, is read back from the stream), never a step of the flow. What the action
        // caused (krw.released, usd.credit_failed) is applied as its own event.
        Event::KrwIntervened(_) | Event::TradeIntervened(_) | Event::UsdIntervened(_) => {}
        Event::KrwDeposited(_)
        | Event::UsdDeposited(_)
        | Event::UsdFrozen(_)
        | Event::UsdUnfrozen(_) => unreachable!("handled above"),
    }
    if is_failure_after_hold(kind) && rec.compensation_started_at_ms.is_none() {
        rec.compensation_started_at_ms = Some(at_ms);
    }

    rec.seen.insert(kind);
    let state = derive_state(rec.seen);
    if state != rec.state || previous.is_none() {
        if state.is_terminal() {
            // A terminal saga that moves to another terminal state (only an inconsistent
            // stream does that) keeps its first finish time.
            if rec.finished_at_ms.is_none() {
                rec.finished_at_ms = Some(at_ms);
            }
        } else {
            rec.finished_at_ms = None;
        }
    }
    rec.state = state;
    Applied {
        previous,
        state,
        duplicate,
    }
}

/// `1.5s`, `2m05s`, `3h10m`: durations for people.
pub fn human_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_failure_code_the_projection_emits_is_in_the_stored_table() {
        use events::RejectReason as R;
        for r in [
            R::InvalidRequest,
            R::UserMismatch,
            R::UnknownUser,
            R::InsufficientFunds,
            R::BelowMinimum,
            R::AboveTransactionLimit,
            R::AboveDailyLimit,
        ] {
            let code = super::reject_code(r);
            assert_ne!(
                super::reason_index(code) as usize,
                super::UNKNOWN_REASON,
                "{code} is missing from REASON_CODES"
            );
        }
    }

    use super::*;
    use events::*;

    fn saga() -> SagaId {
        SagaId::parse("0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11").unwrap()
    }
    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }
    fn krw(s: &str) -> Krw {
        Krw::parse(s).unwrap()
    }
    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }
    fn rate(s: &str) -> Rate {
        serde_json::from_str(&format!("\"{s}\"")).unwrap()
    }

    fn requested(amount: &str) -> Event {
        Event::ExchangeRequested(ExchangeRequested {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: krw(amount),
            min_usd_amount: None,
        })
    }
    fn held(amount: &str) -> Event {
        Event::KrwHeld(KrwHeld {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: krw(amount),
            min_usd_amount: None,
            hold_expires_at_ms: 10_000,
        })
    }
    fn filled(k: &str, u: &str, r: &str) -> Event {
        Event::TradeFilled(TradeFilled {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: krw(k),
            usd_amount: usd(u),
            rate: rate(r),
        })
    }
    fn credited(u: &str) -> Event {
        Event::UsdCredited(UsdCredited {
            saga_id: saga(),
            user_id: alice(),
            usd_amount: usd(u),
        })
    }
    fn committed(k: &str) -> Event {
        Event::KrwCommitted(KrwCommitted {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: krw(k),
        })
    }
    fn released(k: &str) -> Event {
        Event::KrwReleased(KrwReleased {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: krw(k),
            reason: ReleaseReason::TradeFailed,
        })
    }
    fn trade_failed() -> Event {
        Event::TradeFailed(TradeFailed {
            saga_id: saga(),
            user_id: alice(),
            reason: TradeFailReason::RateMoved,
            message: "rate moved".into(),
        })
    }
    fn cancelled(k: &str, u: &str) -> Event {
        Event::TradeCancelled(TradeCancelled {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: krw(k),
            usd_amount: usd(u),
            reason: CancelReason::CreditFailed,
        })
    }
    fn reversed(krw_received: &str, u: &str, r: &str, fill_krw: &str) -> Event {
        Event::TradeReversed(TradeReversed {
            saga_id: saga(),
            user_id: alice(),
            usd_amount: usd(u),
            krw_amount: krw(krw_received),
            rate: rate(r),
            fill_krw_amount: krw(fill_krw),
        })
    }
    fn credit_failed() -> Event {
        Event::UsdCreditFailed(UsdCreditFailed {
            saga_id: saga(),
            user_id: alice(),
            reason: CreditFailReason::AccountFrozen,
            message: "frozen".into(),
        })
    }
    fn debited(u: &str) -> Event {
        Event::UsdDebited(UsdDebited {
            saga_id: saga(),
            user_id: alice(),
            usd_amount: usd(u),
        })
    }

    /// Applies events with seq 1.. and at 1000, 1100, ...
    fn run(events: &[Event]) -> (SagaRecord, Vec<SagaState>) {
        let mut rec = SagaRecord::new(saga(), alice());
        let mut states = Vec::new();
        for (i, e) in events.iter().enumerate() {
            states.push(apply(&mut rec, e, i as u64 + 1, 1000 + 100 * i as u64).state);
        }
        (rec, states)
    }

    #[test]
    fn every_kind_has_its_position_in_all_as_its_code_and_fits_the_set() {
        for (i, kind) in EventKind::ALL.into_iter().enumerate() {
            assert_eq!(kind_index(kind), i, "{kind}");
        }
        assert!(EventKind::ALL.len() <= 32, "KindSet holds 32 kinds");
    }

    #[test]
    fn happy_path_walks_every_state_and_completes() {
        let (rec, states) = run(&[
            requested("1500000"),
            held("1500000"),
            filled("1500000", "1071.42", "1400"),
            credited("1071.42"),
            committed("1500000"),
        ]);
        use SagaState::*;
        assert_eq!(
            states,
            [Requested, KrwHeld, OrderPlaced, UsdCredited, Completed]
        );
        assert!(!rec.is_inconsistent(), "{:?}", rec.inconsistencies());
        assert_eq!(rec.krw_amount(), Some(krw("1500000")));
        assert_eq!(rec.usd_amount(), Some(usd("1071.42")));
        assert_eq!(rec.rate, Some(rate("1400")));
        assert_eq!(rec.started_at_ms, 1000);
        assert_eq!(rec.finished_at_ms, Some(1400));
        assert_eq!(rec.duration_ms(), Some(400));
        assert_eq!(rec.timeline.len(), 5);
        assert_eq!(rec.subject_of(&rec.timeline[1]), "fx.krw.held.alice");
    }

    #[test]
    fn trade_failure_compensates_once_krw_is_released() {
        let (rec, states) = run(&[
            requested("1500000"),
            held("1500000"),
            trade_failed(),
            released("1500000"),
        ]);
        assert_eq!(states[2], SagaState::Compensating);
        assert_eq!(rec.state, SagaState::Compensated);
        assert_eq!(rec.compensation_started_at_ms, Some(1200));
        assert_eq!(rec.failure.unwrap().to_string(), "trade.failed: rate_moved");
        assert!(!rec.is_inconsistent(), "{:?}", rec.inconsistencies());
    }

    #[test]
    fn credit_failure_compensates_after_cancel_and_release() {
        let (rec, states) = run(&[
            requested("1500000"),
            held("1500000"),
            filled("1500000", "1071.42", "1400"),
            credit_failed(),
            cancelled("1500000", "1071.42"),
            released("1500000"),
        ]);
        assert_eq!(states[3..5], [SagaState::Compensating; 2]);
        assert_eq!(rec.state, SagaState::Compensated);
        assert!(!rec.is_inconsistent(), "{:?}", rec.inconsistencies());
    }

    #[test]
    fn expiry_after_a_fill_waits_for_usd_final_word() {
        // Hold expired while the fill was in flight: released, then trade cancels, USD
        // (which credited) debits. Not compensated until usd.debited.
        let (rec, states) = run(&[
            held("1500000"),
            filled("1500000", "1071.42", "1400"),
            credited("1071.42"),
            released("1500000"),
            cancelled("1500000", "1071.42"),
            debited("1071.42"),
        ]);
        assert_eq!(states[3], SagaState::Compensating);
        assert_eq!(states[4], SagaState::Compensating);
        assert_eq!(rec.state, SagaState::Compensated);
        assert!(!rec.is_inconsistent(), "{:?}", rec.inconsistencies());
    }

    /// A credit failure after the fill: the user is made whole at once.
    fn cancelled_saga() -> Vec<Event> {
        vec![
            requested("1500000"),
            held("1500000"),
            filled("1500000", "1071.42", "1400"),
            credit_failed(),
            cancelled("1500000", "1071.42"),
            released("1500000"),
        ]
    }

    /// Reversed with this P&L, and a consistent record.
    fn assert_reversed(rec: &SagaRecord, pnl_krw: i64) {
        assert_eq!(
            rec.reversal_status(),
            ReversalStatus::Done {
                pnl_krw: Some(Decimal::from(pnl_krw))
            }
        );
        assert!(!rec.is_reversal_pending());
        assert!(!rec.is_inconsistent(), "{:?}", rec.inconsistencies());
    }

    #[test]
    fn a_cancelled_fill_is_pending_reversal_until_trade_reversed_and_stays_compensated() {
        let (rec, _) = run(&cancelled_saga());
        assert_eq!(rec.state, SagaState::Compensated, "the user's saga is over");
        assert_eq!(rec.reversal_status(), ReversalStatus::Pending);
        assert!(rec.is_reversal_pending());
        assert_eq!(rec.reversal, None);

        // Sold back at 1450: 1071.42 USD bring 1553559 KRW for a fill that cost 1500000.
        let mut events = cancelled_saga();
        events.push(reversed("1553559", "1071.42", "1450", "1500000"));
        let (rec, states) = run(&events);
        assert_eq!(states[6], SagaState::Compensated);
        assert_eq!(
            rec.finished_at_ms,
            Some(1500),
            "the reversal does not move the finish"
        );
        assert!(!rec.is_reversal_pending());
        assert_reversed(&rec, 53_559);
        let r = rec.reversal.as_deref().unwrap();
        assert_eq!(
            (r.usd_amount, r.krw_amount, r.rate),
            (usd("1071.42"), krw("1553559"), rate("1450"))
        );
    }

    #[test]
    fn a_reversal_below_the_fill_rate_is_a_loss() {
        let mut events = cancelled_saga();
        events.push(reversed("1446417", "1071.42", "1350", "1500000"));
        let (rec, _) = run(&events);
        assert_reversed(&rec, -53_583);
    }

    #[test]
    fn a_reversal_after_venue_unavailable_has_no_pending_phase() {
        let failed = Event::TradeFailed(TradeFailed {
            saga_id: saga(),
            user_id: alice(),
            reason: TradeFailReason::VenueUnavailable,
            message: "venue down".into(),
        });
        let mut rec = SagaRecord::new(saga(), alice());
        let mut statuses = Vec::new();
        for (i, e) in [
            requested("1500000"),
            held("1500000"),
            failed,
            released("1500000"),
            // Sold back at the fill's own rate: the rounding of both legs costs 12 KRW.
            reversed("1499988", "1071.42", "1400", "1500000"),
        ]
        .iter()
        .enumerate()
        {
            apply(&mut rec, e, i as u64 + 1, 1000 + i as u64);
            statuses.push(rec.reversal_status());
        }
        assert!(!statuses.contains(&ReversalStatus::Pending), "{statuses:?}");
        assert_reversed(&rec, -12);
        assert_eq!(rec.state, SagaState::Compensated);
    }

    #[test]
    fn a_reversal_with_wrong_arithmetic_or_changed_terms_is_inconsistent() {
        let mut events = cancelled_saga();
        events.push(reversed("1553560", "1071.42", "1450", "1500000"));
        let (rec, _) = run(&events);
        assert!(rec.inconsistencies()[0].contains("round_down(usd * rate, 0)"));

        let mut events = cancelled_saga();
        events.push(reversed("1553559", "1071.42", "1450", "1500000"));
        events.push(reversed("1446417", "1071.42", "1350", "1500000"));
        let (rec, _) = run(&events);
        assert!(rec.inconsistencies()[0].contains("said twice"));
        assert_eq!(
            rec.reversal.as_deref().unwrap().pnl_krw(),
            Decimal::from(53_559),
            "the first word stands"
        );
    }

    #[test]
    fn rejection_is_terminal() {
        let mut rec = SagaRecord::new(saga(), alice());
        apply(&mut rec, &requested("1500000"), 1, 1);
        apply(
            &mut rec,
            &Event::KrwRejected(KrwRejected {
                saga_id: saga(),
                user_id: alice(),
                reason: RejectReason::InsufficientFunds,
                message: "poor".into(),
            }),
            2,
            5,
        );
        assert_eq!(rec.state, SagaState::Rejected);
        assert_eq!(rec.duration_ms(), Some(4));
        assert_eq!(rec.krw_amount(), Some(krw("1500000")));
        assert!(!rec.is_inconsistent());
    }

    #[test]
    fn amounts_are_those_of_the_hold_not_the_first_request() {
        let (rec, _) = run(&[requested("1000000"), held("2000000")]);
        assert_eq!(rec.krw_amount(), Some(krw("2000000")));
        assert_eq!(rec.requested_krw, Some(krw("1000000")));
        assert!(
            !rec.is_inconsistent(),
            "a conflicting request is not a violation"
        );
    }

    #[test]
    fn impossible_sequences_are_inconsistent_with_reasons() {
        let (rec, _) = run(&[
            held("1500000"),
            filled("1500000", "1071.42", "1400"),
            credited("1071.42"),
            committed("1500000"),
            released("1500000"),
        ]);
        assert!(rec.is_inconsistent());
        assert!(rec.inconsistencies()[0].starts_with("committed and released"));

        let (rec, _) = run(&[held("1500000"), debited("10.00")]);
        assert!(rec
            .inconsistencies()
            .iter()
            .any(|r| r.starts_with("debit without credit")));

        let (rec, _) = run(&[
            held("1500000"),
            filled("1400000", "1000.00", "1400"),
            credited("999.00"),
        ]);
        let reasons = rec.inconsistencies();
        assert!(reasons
            .iter()
            .any(|r| r.starts_with("KRW amounts disagree")));
        assert!(reasons
            .iter()
            .any(|r| r.starts_with("USD amounts disagree")));
    }

    #[test]
    fn bad_fill_arithmetic_is_inconsistent() {
        let (rec, _) = run(&[held("1500000"), filled("1500000", "1071.43", "1400")]);
        assert!(rec.is_inconsistent());
        assert!(rec.inconsistencies()[0].contains("round_down"));
    }

    #[test]
    fn state_does_not_depend_on_arrival_order_of_final_words() {
        let events = [
            held("1500000"),
            filled("1500000", "1071.42", "1400"),
            credit_failed(),
            cancelled("1500000", "1071.42"),
            released("1500000"),
        ];
        let (forward, _) = run(&events);
        let mut reversed = events.to_vec();
        reversed.reverse();
        let (backward, _) = run(&reversed);
        assert_eq!(forward.state, backward.state);
        assert_eq!(forward.is_inconsistent(), backward.is_inconsistent());
    }

    #[test]
    fn duplicates_are_recorded_but_change_nothing() {
        let mut rec = SagaRecord::new(saga(), alice());
        apply(&mut rec, &held("1500000"), 1, 1);
        let a = apply(&mut rec, &held("1500000"), 2, 2);
        assert!(a.duplicate);
        assert_eq!(rec.state, SagaState::KrwHeld);
        assert_eq!(rec.timeline.len(), 2);
        for i in 0..100 {
            apply(&mut rec, &held("1500000"), 3 + i, 3 + i);
        }
        assert_eq!(rec.timeline.len(), MAX_TIMELINE_ENTRIES);
        assert_eq!(rec.timeline_dropped, 102 - MAX_TIMELINE_ENTRIES as u32);
    }

    #[test]
    fn stuck_is_measured_from_the_last_event() {
        let (rec, _) = run(&[requested("1500000"), held("1500000")]);
        assert_eq!(rec.last_event_at_ms, 1100);
        assert!(!rec.is_stuck(1100 + 60_000, 60_000));
        assert!(rec.is_stuck(1101 + 60_000, 60_000));
        let reason = rec.stuck_reason(1101 + 60_000, 60_000).unwrap();
        assert!(reason.contains("trade.filled or trade.failed"), "{reason}");
    }

    #[test]
    fn a_foreign_user_is_inconsistent_and_keeps_its_subject() {
        let mut rec = SagaRecord::new(saga(), alice());
        apply(&mut rec, &held("1500000"), 1, 1);
        let bob_fill = Event::TradeFilled(TradeFilled {
            saga_id: saga(),
            user_id: UserId::parse("bob").unwrap(),
            krw_amount: krw("1500000"),
            usd_amount: usd("1071.42"),
            rate: rate("1400"),
        });
        apply(&mut rec, &bob_fill, 2, 2);
        assert!(rec.is_inconsistent());
        assert_eq!(rec.subject_of(&rec.timeline[1]), "fx.trade.filled.bob");
    }
}
