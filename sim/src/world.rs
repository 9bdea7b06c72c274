//! What every model of a schedule shares: the seeded generator that decides every
//! fault and every choice, the virtual clock, the plan of faults, and the trace.
//!
//! Nothing in a schedule draws a random number or reads a clock except through here,
//! so a seed replays its schedule exactly.

use jobs_core::ports::{Before, Chaos};
use jobs_core::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often each kind of fault strikes a call while faults are on: drawn per
/// schedule, so some schedules are calm and some are stormy.
#[derive(Debug, Clone)]
pub struct Rates {
    /// A call refused whole (throttled, 5xx): nothing took effect.
    pub refuse: f64,
    /// A call that took effect, its answer lost.
    pub lose: f64,
    /// A call slower than the callers' timeout (5 s).
    pub slow: f64,
    /// An invocation crashed at a random moment (its future dropped).
    pub crash: f64,
    /// A message SQS delivers a second time while the first is in flight.
    pub redeliver: f64,
    /// An event EventBridge delivers twice.
    pub eb_twice: f64,
}

/// A service out for a while: every call to it refused.
#[derive(Debug, Clone)]
pub struct Outage {
    /// `dynamodb`, `sns`, or `sqs:<queue>`.
    pub service: &'static str,
    pub from: Timestamp,
    pub until: Timestamp,
}

/// The state every model of one schedule shares.
#[derive(Debug)]
pub struct World {
    rng: Mutex<StdRng>,
    trace: Mutex<Vec<String>>,
    pub start: Timestamp,
    pub rates: Rates,
    pub outages: Vec<Outage>,
    /// Once set, no more faults: the schedule is quiescing.
    calm: AtomicBool,
    /// Once set, the pollers stop.
    stopped: AtomicBool,
    /// Every call whose answer was lost: (service, operation, what it carried).
    pub lost: Mutex<Vec<(String, &'static str)>>,
}

/// Services a schedule may take out.
pub const SERVICES: [&str; 5] = [
    "dynamodb",
    "sns",
    "sqs:jobs-todo",
    "sqs:dead-letter-queue",
    "sqs:ingester-queue",
];

impl World {
    /// A world for `seed`; its fault rates and outages drawn from the seed, within
    /// `faults_for` of virtual time from `start`.
    pub fn new(seed: u64, start: Timestamp, faults_for: Duration) -> Arc<World> {
        let mut rng = StdRng::seed_from_u64(seed);
        let storm = rng.random_range(0.0..1.0_f64);
        let rate = |rng: &mut StdRng, top: f64| rng.random_range(0.0..top) * storm;
        let rates = Rates {
            refuse: rate(&mut rng, 0.15),
            lose: rate(&mut rng, 0.08),
            slow: rate(&mut rng, 0.03),
            crash: rate(&mut rng, 0.15),
            redeliver: rate(&mut rng, 0.05),
            eb_twice: rate(&mut rng, 0.1),
        };
        let window = chrono::TimeDelta::from_std(faults_for).unwrap_or_default();
        let outages = (0..rng.random_range(0..=3))
            .map(|_| {
                let service = SERVICES[rng.random_range(0..SERVICES.len())];
                let from = start + window * rng.random_range(0..100) / 100;
                let minutes = rng.random_range(1..=45);
                Outage {
                    service,
                    from,
                    until: from + chrono::TimeDelta::minutes(minutes),
                }
            })
            .collect();
        Arc::new(World {
            rng: Mutex::new(rng),
            trace: Mutex::new(Vec::new()),
            start,
            rates,
            outages,
            calm: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            lost: Mutex::new(Vec::new()),
        })
    }

    pub fn now(&self) -> Timestamp {
        jobs_core::clock::now()
    }

    /// A draw from the schedule's generator.
    pub fn draw<R>(&self, f: impl FnOnce(&mut StdRng) -> R) -> R {
        f(&mut self.rng.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.draw(|r| r.random_bool(p.clamp(0.0, 1.0)))
    }

    /// Notes what happened, at the virtual time it happened.
    pub fn note(&self, what: impl AsRef<str>) {
        let at = self.now() - self.start;
        let line = format!("{:>8.1}s  {}", at.as_seconds_f64(), what.as_ref());
        self.trace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    pub fn trace(&self) -> Vec<String> {
        self.trace.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn calm(&self) -> bool {
        self.calm.load(Ordering::SeqCst)
    }

    pub fn calm_down(&self) {
        self.note("faults over");
        self.calm.store(true, Ordering::SeqCst);
    }

    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether `service` is out now.
    pub fn out(&self, service: &str) -> bool {
        let now = self.now();
        !self.calm()
            && self
                .outages
                .iter()
                .any(|o| o.service == service && o.from <= now && now < o.until)
    }

    /// The fault for one call of `operation` on `service`.
    pub fn before(&self, service: &'static str, operation: &'static str) -> Before {
        // Every call takes a little time, drawn: the order in which concurrent
        // invocations' calls land is the schedule's.
        let latency = Duration::from_millis(self.draw(|r| r.random_range(1..40)));
        if self.calm() {
            return Before::Slow(latency);
        }
        if self.out(service) {
            self.note(format!("{service} {operation}: refused (out)"));
            return Before::Refuse(format!("ServiceUnavailable: {service} is out (simulated)"));
        }
        let r = &self.rates;
        let roll = self.draw(|rng| rng.random_range(0.0..1.0_f64));
        if roll < r.refuse {
            self.note(format!("{service} {operation}: refused"));
            Before::Refuse("ThrottlingException: slow down (simulated)".into())
        } else if roll < r.refuse + r.slow {
            self.note(format!("{service} {operation}: slow"));
            Before::Slow(Duration::from_secs(7))
        } else {
            Before::Slow(latency)
        }
    }

    /// Whether the answer of a call that took effect is lost.
    pub fn lose_answer(&self, service: &'static str, operation: &'static str) -> bool {
        if self.calm() || !self.chance(self.rates.lose) {
            return false;
        }
        self.note(format!("{service} {operation}: took effect, answer lost"));
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((service.to_owned(), operation));
        true
    }
}

/// The faults of one service, for the in-memory ports' [`jobs_core::ports::Faults`].
#[derive(Debug)]
pub struct ServiceChaos {
    pub world: Arc<World>,
    pub service: &'static str,
}

impl Chaos for ServiceChaos {
    fn before(&self, operation: &'static str) -> Before {
        self.world.before(self.service, operation)
    }

    fn lose_answer(&self, operation: &'static str) -> bool {
        self.world.lose_answer(self.service, operation)
    }
}
