//! Deployment health: a circuit breaker per deployment and latency-aware load balancing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use super::registry::{Deployment, ServedModel};
use crate::config::BreakerConfig;
use crate::telemetry::METRICS;

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

/// How fast a latency estimate fades while nothing new is observed: a deployment that lost to a
/// faster one after a slow spell is tried again once its estimate has decayed below the other's
/// (as peak-EWMA balancers do), rather than starved for good by a score nothing updates.
const LATENCY_DECAY_SECS: f64 = 10.0;

/// The origin of the times kept in atomics below.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn micros_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH)
        .as_micros()
        .min(u128::from(u64::MAX)) as u64
}

/// What the balancer and the breaker know of a deployment.
#[derive(Debug)]
pub struct DeploymentHealth {
    pub(crate) breaker: Mutex<Breaker>,
    /// Exponentially weighted moving average of time to first byte (stream) or to the whole
    /// answer, in microseconds; 0 until the first success.
    latency_ewma_us: AtomicU64,
    /// When the average last took a sample, in microseconds since `EPOCH`.
    observed_at_us: AtomicU64,
    pub(crate) in_flight: AtomicU32,
}

impl DeploymentHealth {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            breaker: Mutex::new(Breaker::new(config)),
            latency_ewma_us: AtomicU64::new(0),
            observed_at_us: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    pub(crate) fn available(&self, now: Instant) -> bool {
        self.breaker.lock().map_or(true, |b| b.available(now))
    }

    /// Lower is better: expected latency, faded by the time since it was observed, scaled by the
    /// calls already waiting on it.
    fn score(&self, now: Instant) -> f64 {
        let latency = self.latency_ewma_us.load(Ordering::Relaxed) as f64;
        let observed_at = self.observed_at_us.load(Ordering::Relaxed);
        let unobserved_secs =
            micros_since_epoch(now).saturating_sub(observed_at) as f64 / 1_000_000.0;
        let waiting = f64::from(self.in_flight.load(Ordering::Relaxed)) + 1.0;
        latency * (-unobserved_secs / LATENCY_DECAY_SECS).exp() * waiting
    }

    pub(crate) fn observe_latency(&self, elapsed: Duration, now: Instant) {
        self.observed_at_us
            .store(micros_since_epoch(now), Ordering::Relaxed);
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
        let name = deployment.label();
        tracing::warn!(deployment = %name, state = state.label(), "circuit breaker changed state");
        METRICS.record_breaker_transition(&name, state.label());
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
        Some(second) if second.1.health.score(now) < first.1.health.score(now) => Some(second.0),
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

    /// Two mock deployments of one model, equal weights.
    fn registry_of_two() -> super::super::registry::Registry {
        let config = crate::config::Config::from_toml(
            r#"
[providers.a]
kind = "mock"
[providers.b]
kind = "mock"
[models.m]
deployments = [{ provider = "a", model = "mock" }, { provider = "b", model = "mock" }]
"#,
        )
        .unwrap();
        super::super::registry::Registry::from_config(&config, &|_| None).unwrap()
    }

    #[test]
    fn a_deployment_that_lost_after_a_slow_spell_is_tried_again_once_its_estimate_fades() {
        let registry = registry_of_two();
        let model = registry.served("m").unwrap();
        let deployments = &model.deployments;
        let (slow, fast) = (deployments.get(0).unwrap(), deployments.get(1).unwrap());
        let t0 = Instant::now();
        slow.health
            .observe_latency(Duration::from_millis(1_000), t0);
        fast.health.observe_latency(Duration::from_millis(1), t0);
        // Both drawn every time: the faster estimate wins while the slow one is fresh.
        assert!((0..50).all(|_| choose(model, &[], t0) == Some(1)));
        // A minute and more of traffic on the fast one only: the slow estimate has faded below
        // it, so the slow deployment gets the next call and a new sample.
        let later = t0 + Duration::from_secs(75);
        fast.health.observe_latency(Duration::from_millis(1), later);
        assert_eq!(choose(model, &[], later), Some(0));
    }
}
