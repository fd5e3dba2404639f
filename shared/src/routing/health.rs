//! Deployment health: a circuit breaker per deployment and latency-aware load balancing.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use super::registry::{Deployment, ServedModel};
use crate::config::BreakerConfig;
use crate::telemetry::{METRICS, Metrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// One deployment's circuit breaker. Its state is per process: on Lambda, per container.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    opened_at: Instant,
    probing: bool,
    consecutive_failures: u32,
    outcomes: VecDeque<bool>,
}

impl Breaker {
    fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            opened_at: Instant::now(),
            probing: false,
            consecutive_failures: 0,
            outcomes: VecDeque::with_capacity(config.window as usize),
        }
    }

    fn open_for(&self) -> Duration {
        Duration::from_millis(self.config.open_ms)
    }

    /// Whether a call could go through now (without taking the half-open probe).
    fn available(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => now.duration_since(self.opened_at) >= self.open_for(),
            BreakerState::HalfOpen => !self.probing,
        }
    }

    /// Takes the call slot: an open breaker whose time is up lets this call through as the probe.
    pub(crate) fn acquire(&mut self, now: Instant) -> Option<BreakerState> {
        match self.state {
            BreakerState::Open if now.duration_since(self.opened_at) >= self.open_for() => {
                self.state = BreakerState::HalfOpen;
                self.probing = true;
                Some(BreakerState::HalfOpen)
            }
            BreakerState::HalfOpen => {
                self.probing = true;
                None
            }
            _ => None,
        }
    }

    /// Records a call's outcome; returns the new state if it changed.
    pub(crate) fn record(&mut self, success: bool, now: Instant) -> Option<BreakerState> {
        match self.state {
            BreakerState::HalfOpen => {
                self.probing = false;
                if success {
                    self.reset();
                    Some(BreakerState::Closed)
                } else {
                    self.trip(now)
                }
            }
            // A call that started before the breaker opened.
            BreakerState::Open => None,
            BreakerState::Closed => {
                if self.outcomes.len() == self.config.window as usize {
                    self.outcomes.pop_front();
                }
                self.outcomes.push_back(success);
                if success {
                    self.consecutive_failures = 0;
                    return None;
                }
                self.consecutive_failures += 1;
                let failures = self.outcomes.iter().filter(|ok| !**ok).count();
                let calls = self.outcomes.len();
                let rate_tripped = calls >= self.config.min_requests as usize
                    && failures as f64 >= self.config.failure_rate * calls as f64;
                if self.consecutive_failures >= self.config.consecutive_failures || rate_tripped {
                    self.trip(now)
                } else {
                    None
                }
            }
        }
    }

    fn trip(&mut self, now: Instant) -> Option<BreakerState> {
        self.state = BreakerState::Open;
        self.opened_at = now;
        self.probing = false;
        self.consecutive_failures = 0;
        self.outcomes.clear();
        Some(BreakerState::Open)
    }

    fn reset(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
        self.outcomes.clear();
    }
}

/// What the balancer and the breaker know of a deployment.
#[derive(Debug)]
pub struct DeploymentHealth {
    pub(crate) breaker: Mutex<Breaker>,
    /// Exponentially weighted moving average of time to first byte (stream) or to the whole
    /// answer, in microseconds; 0 until the first success.
    latency_ewma_us: AtomicU64,
    pub(crate) in_flight: AtomicU32,
}

impl DeploymentHealth {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            breaker: Mutex::new(Breaker::new(config)),
            latency_ewma_us: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    pub(crate) fn available(&self, now: Instant) -> bool {
        self.breaker.lock().map_or(true, |b| b.available(now))
    }

    /// Lower is better: expected latency scaled by the calls already waiting on it.
    fn score(&self) -> u64 {
        let latency = self.latency_ewma_us.load(Ordering::Relaxed);
        latency.saturating_mul(u64::from(self.in_flight.load(Ordering::Relaxed)) + 1)
    }

    pub(crate) fn observe_latency(&self, elapsed: Duration) {
        let sample = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 4 + sample) / 5
        };
        self.latency_ewma_us.store(new, Ordering::Relaxed);
    }
}

pub(crate) fn note_transition(deployment: &Deployment, state: Option<BreakerState>) {
    if let Some(state) = state {
        let name = format!("{}/{}", deployment.provider_name, deployment.model);
        tracing::warn!(deployment = %name, state = state.label(), "circuit breaker changed state");
        Metrics::count(
            &METRICS.breaker_transitions,
            &[("deployment", &name), ("state", state.label())],
        );
    }
}

/// Picks a deployment of `model` not in `tried` whose breaker lets calls through: two candidates
/// drawn by weight, the one with the better latency score wins (power of two choices).
pub fn choose(model: &ServedModel, tried: &[usize], now: Instant) -> Option<usize> {
    let open: Vec<(usize, &Deployment)> = model
        .deployments
        .iter()
        .enumerate()
        .filter(|(i, d)| !tried.contains(i) && d.health.available(now))
        .collect();
    let draw = |exclude: Option<usize>| -> Option<(usize, &Deployment)> {
        let pool = || open.iter().filter(move |(i, _)| Some(*i) != exclude);
        // In u64: config validation keeps a model's weights within u32, this keeps the sum exact.
        let total: u64 = pool().map(|(_, d)| u64::from(d.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rand::rng().random_range(0..total);
        for &(i, deployment) in pool() {
            let weight = u64::from(deployment.weight);
            if ticket < weight {
                return Some((i, deployment));
            }
            ticket -= weight;
        }
        None
    };
    let first = draw(None)?;
    match draw(Some(first.0)) {
        Some(second) if second.1.health.score() < first.1.health.score() => Some(second.0),
        _ => Some(first.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: 10,
            min_requests: 6,
            open_ms: 1000,
        })
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_probes_and_closes() {
        let mut b = breaker();
        let t0 = Instant::now();
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), Some(BreakerState::Open));
        assert!(!b.available(t0 + Duration::from_millis(999)));
        let later = t0 + Duration::from_millis(1000);
        assert!(b.available(later));
        assert_eq!(b.acquire(later), Some(BreakerState::HalfOpen));
        assert!(!b.available(later), "one probe at a time");
        assert_eq!(b.record(true, later), Some(BreakerState::Closed));
        assert!(b.available(later));
    }

    #[test]
    fn failed_probe_reopens_and_failure_rate_trips() {
        let mut b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, t0);
        }
        let later = t0 + Duration::from_millis(1000);
        b.acquire(later);
        assert_eq!(b.record(false, later), Some(BreakerState::Open));
        assert!(!b.available(later + Duration::from_millis(500)));

        let mut rate = breaker();
        let outcomes = [true, false, true, false, true, false];
        let transitions: Vec<_> = outcomes.iter().map(|ok| rate.record(*ok, t0)).collect();
        assert_eq!(transitions.last(), Some(&Some(BreakerState::Open)));
    }
}
