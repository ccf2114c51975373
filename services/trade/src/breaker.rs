//! A circuit breaker around the venue: closed, open, half-open.
//!
//! Time is an argument (`now_ms`), never read from a clock here, so tests and the deterministic
//! simulation drive it exactly. While open, krw.held deliveries are answered from the breaker
//! alone (no venue call), which keeps a dead venue from being hammered by redeliveries.

/// Settings of the breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// `FX_BREAKER_FAILURES` (default 5): consecutive failures that open the breaker.
    pub failures: u32,
    /// `FX_BREAKER_OPEN_MS` (default 5000): how long it stays open before one probe is let
    /// through. Also how long a probe may stay unanswered before another is allowed.
    pub open_ms: u64,
}

impl BreakerConfig {
    /// Default `FX_BREAKER_FAILURES`.
    pub const DEFAULT_FAILURES: u32 = 5;
    /// Default `FX_BREAKER_OPEN_MS`.
    pub const DEFAULT_OPEN_MS: u64 = 5_000;
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: Self::DEFAULT_FAILURES,
            open_ms: Self::DEFAULT_OPEN_MS,
        }
    }
}

/// The breaker's state as reported to metrics and operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// The open period ended: one probe call decides whether to close or reopen.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `fx_trade_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// `closed`, `open` or `half_open`.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker says about one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call the venue.
    Allowed,
    /// Half-open: this call is the one probe; its outcome closes or reopens the breaker.
    Probe,
    /// Open (or a probe is already out): do not call; try again in `retry_in_ms`.
    Rejected {
        /// Time until a probe could be admitted.
        retry_in_ms: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { since_ms: u64 },
    HalfOpen { probe_started_ms: u64 },
}

/// The breaker itself: plain state, no clock and no lock (the service wraps it in a mutex).
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Phase,
    consecutive_failures: u32,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            config,
            phase: Phase::Closed,
            consecutive_failures: 0,
        }
    }

    /// Decides whether a call may go to the venue at `now_ms`. Admitting a probe moves the
    /// breaker to half-open; report the call's outcome with `record_success`/`record_failure`.
    pub fn admit(&mut self, now_ms: u64) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Allowed,
            Phase::Open { since_ms }
            | Phase::HalfOpen {
                probe_started_ms: since_ms,
            } => {
                let ready_at = since_ms.saturating_add(self.config.open_ms);
                if now_ms >= ready_at {
                    // From open: the period is over, probe. From half-open: the last probe
                    // never reported (its future was dropped), so it cannot block forever.
                    self.phase = Phase::HalfOpen {
                        probe_started_ms: now_ms,
                    };
                    Admission::Probe
                } else {
                    Admission::Rejected {
                        retry_in_ms: ready_at - now_ms,
                    }
                }
            }
        }
    }

    /// The venue answered: close (a success proves the venue works, probe or not).
    pub fn record_success(&mut self) {
        self.phase = Phase::Closed;
        self.consecutive_failures = 0;
    }

    /// The venue failed at `now_ms`: a failed probe reopens at once; otherwise the breaker
    /// opens when the consecutive failures reach the threshold.
    pub fn record_failure(&mut self, now_ms: u64) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.phase {
            Phase::HalfOpen { .. } => self.phase = Phase::Open { since_ms: now_ms },
            Phase::Closed if self.consecutive_failures >= self.config.failures => {
                self.phase = Phase::Open { since_ms: now_ms };
            }
            // A call admitted before the breaker opened and failing late changes nothing:
            // the open period already runs.
            Phase::Closed | Phase::Open { .. } => {}
        }
    }

    /// The state at `now_ms`: an open breaker whose period is over reports half-open, since
    /// the next call will be a probe.
    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { since_ms } if now_ms < since_ms.saturating_add(self.config.open_ms) => {
                BreakerState::Open
            }
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How long until a probe could be admitted at `now_ms`: 0 when closed or when the open
    /// period is over.
    pub fn retry_in_ms(&self, now_ms: u64) -> u64 {
        match self.phase {
            Phase::Closed => 0,
            Phase::Open { since_ms }
            | Phase::HalfOpen {
                probe_started_ms: since_ms,
            } => since_ms
                .saturating_add(self.config.open_ms)
                .saturating_sub(now_ms),
        }
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failures: 3,
            open_ms: 1_000,
        })
    }

    #[test]
    fn opens_after_n_consecutive_failures_only() {
        let mut b = breaker();
        b.record_failure(10);
        b.record_failure(20);
        b.record_success();
        b.record_failure(30);
        b.record_failure(40);
        assert_eq!(
            b.state(40),
            BreakerState::Closed,
            "the success reset the count"
        );
        assert_eq!(b.admit(40), Admission::Allowed);
        b.record_failure(50);
        assert_eq!(b.state(50), BreakerState::Open);
        assert_eq!(b.admit(60), Admission::Rejected { retry_in_ms: 990 });
    }

    #[test]
    fn half_open_lets_one_probe_through_and_success_closes() {
        let mut b = breaker();
        for t in 0..3 {
            b.record_failure(t);
        }
        assert_eq!(b.state(1_001), BreakerState::Open);
        assert_eq!(b.state(1_002), BreakerState::HalfOpen);
        assert_eq!(b.admit(1_002), Admission::Probe);
        assert_eq!(
            b.admit(1_003),
            Admission::Rejected { retry_in_ms: 999 },
            "only one probe at a time"
        );
        b.record_success();
        assert_eq!(b.state(1_003), BreakerState::Closed);
        assert_eq!(b.admit(1_003), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_period() {
        let mut b = breaker();
        for t in 0..3 {
            b.record_failure(t);
        }
        assert_eq!(b.admit(5_000), Admission::Probe);
        b.record_failure(5_000);
        assert_eq!(b.state(5_999), BreakerState::Open);
        assert_eq!(b.admit(5_999), Admission::Rejected { retry_in_ms: 1 });
        assert_eq!(b.admit(6_000), Admission::Probe);
    }

    #[test]
    fn a_probe_that_never_reports_does_not_block_forever() {
        let mut b = breaker();
        for t in 0..3 {
            b.record_failure(t);
        }
        assert_eq!(b.admit(2_000), Admission::Probe);
        assert!(matches!(b.admit(2_500), Admission::Rejected { .. }));
        assert_eq!(b.admit(3_000), Admission::Probe);
    }
}
