//! A deterministic simulation of the whole pipeline.
//!
//! One schedule runs the real handlers ([`Ingester`], [`Processor`] on `jobs-todo` and
//! `jobs-todo.fifo`, [`Relay`]) and the real operator code (`dlq redrive`, replay
//! orders) over in-memory models with AWS's semantics (SQS in [`sqs`], the job state
//! table in `MemoryStore`, the topic in `MemoryTopic`), in tokio's paused time, so an
//! hour of leases and visibility timeouts costs milliseconds. A seeded generator
//! ([`world`]) decides every fault, every latency (and so the interleaving of
//! concurrent invocations), every crash and every operator action. Once the faults are
//! over and the queues drained, [`check`] compares what the topic and the dead-letter
//! queue received with what the producers sent.
//!
//! The same seed gives the same schedule: replay a failure with `make sim SEED=N`.

pub mod check;
pub mod operator;
pub mod producer;
pub mod sqs;
pub mod world;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use jobs_core::batching::Batching;
use jobs_core::guard::{GuardConfig, Guarded};
use jobs_core::ingester::{Ingester, IngesterConfig};
use jobs_core::kinds::Registry;
use jobs_core::processor::{Processor, ProcessorConfig};
use jobs_core::relay::{Relay, RelayConfig};
use jobs_core::retry::RetryPolicy;
use jobs_core::store::MemoryStore;
use jobs_core::telemetry::{Instruments, Invocation};
use jobs_core::testing::{MemoryTopic, Shared};
use jobs_core::Timestamp;
use rand::Rng;
use sqs::{QueuePort, Sqs};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use world::{ServiceChaos, World};

/// What one schedule is made of.
#[derive(Debug, Clone)]
pub struct Options {
    /// Jobs the producers send (re-sends and replays come on top).
    pub jobs: usize,
    /// Virtual time during which faults, producers and operators act.
    pub faults_for: Duration,
    /// Bugs put back on purpose, to show the simulator finds them (`--mutation`).
    pub mutation: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: 40,
            faults_for: Duration::from_secs(3 * 3600),
            mutation: None,
        }
    }
}

/// What one schedule found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    /// Job lives checked: each accepted job once, plus each reopen an operator made.
    pub lives: usize,
    /// Notifications that repeat an end under its `notification_id`, same content.
    pub copies: usize,
    /// Dead letters stored again after a lost answer (window 6).
    pub letter_copies: usize,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
}

/// The longest `long_running_job` an ingester accepts, and what an operator lowers it
/// to in some schedules.
pub const MAX_JOB_TIMEOUT: u64 = 879;
pub const STRICT_JOB_TIMEOUT: u64 = 300;

type Queue = Batching<Guarded<QueuePort>>;
type Topic<'a> = Batching<Guarded<Shared<'a, MemoryTopic>>>;
type Store<'a> = Batching<Guarded<Shared<'a, MemoryStore>>>;

/// The ports of one function's sandbox: each sandbox has its own batching and
/// breakers, as each Lambda execution environment has.
struct Sandbox<'a> {
    sqs: &'a Arc<Sqs>,
    topic: &'a MemoryTopic,
    store: &'a MemoryStore,
}

impl<'a> Sandbox<'a> {
    fn queue(&self, name: &'static str) -> Queue {
        Batching::new(Guarded::new(
            QueuePort::new(self.sqs, name),
            name,
            GuardConfig::default(),
        ))
    }

    fn topic(&self) -> Topic<'a> {
        Batching::new(Guarded::new(
            Shared(self.topic),
            "job-end-state-topic",
            GuardConfig::default(),
        ))
    }

    fn store(&self) -> Store<'a> {
        Batching::new(Guarded::new(
            Shared(self.store),
            "job state table",
            GuardConfig::default(),
        ))
    }

    fn ingester(&self, max_job_timeout_secs: u64) -> Ingester<Queue, Topic<'a>, Store<'a>> {
        Ingester {
            source: self.queue("ingester-queue"),
            jobs_todo: self.queue("jobs-todo"),
            jobs_todo_fifo: self.queue("jobs-todo.fifo"),
            dead_letters: self.queue("dead-letter-queue"),
            topic: self.topic(),
            store: self.store(),
            config: IngesterConfig {
                max_receive_count: 5,
                max_job_timeout_secs,
                kinds: Registry::builtin(),
            },
            telemetry: Instruments::default(),
        }
    }

    fn processor(&self) -> Processor<Queue, Topic<'a>, Store<'a>> {
        Processor {
            jobs_todo: self.queue("jobs-todo"),
            jobs_todo_fifo: self.queue("jobs-todo.fifo"),
            dead_letters: self.queue("dead-letter-queue"),
            topic: self.topic(),
            store: self.store(),
            config: ProcessorConfig {
                deadline_margin: Duration::from_secs(21),
                retry: RetryPolicy::default(),
                fault_injection: true,
                kinds: Registry::builtin(),
            },
            telemetry: Instruments::default(),
        }
    }

    fn relay(&self) -> Relay<Queue, Topic<'a>, Store<'a>> {
        Relay {
            dead_letters: self.queue("dead-letter-queue"),
            topic: self.topic(),
            store: self.store(),
            config: RelayConfig::for_calls(GuardConfig::default().call_timeout),
            telemetry: Instruments::default(),
        }
    }
}

/// Runs schedule `seed` to its end and checks it.
pub fn run(seed: u64, options: &Options) -> Outcome {
    jobs_core::fault::simulate_crashes(true);
    quiet_simulated_crashes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    runtime.block_on(schedule(seed, options))
}

/// Keeps the panic hook from printing the unwinds of simulated crashes.
fn quiet_simulated_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .payload()
                .downcast_ref::<jobs_core::fault::SimulatedCrash>()
                .is_none()
            {
                default(info);
            }
        }));
    });
}

async fn schedule(seed: u64, options: &Options) -> Outcome {
    let start = Timestamp::from_timestamp(1_800_000_000, 0).expect("a time");
    jobs_core::clock::run_virtual(Some(start));
    let world = World::new(seed, start, options.faults_for);
    let sqs = Sqs::new(Arc::clone(&world));
    let topic = MemoryTopic::default();
    let store = MemoryStore::default();
    let chaos = |service| {
        Arc::new(ServiceChaos {
            world: Arc::clone(&world),
            service,
        })
    };
    topic.faults.set_chaos(chaos("sns"));
    store.faults.set_chaos(chaos("dynamodb"));
    // DynamoDB does not promise how the statements of one batch see each other; the
    // emulator judged each against the table as it was before the batch.
    let snapshot = world.draw(|r| r.random_bool(0.5));
    store
        .snapshot_batches
        .store(snapshot, std::sync::atomic::Ordering::SeqCst);
    for o in &world.outages {
        world.note(format!(
            "plan: {} out from {:.0}s for {:.0} min",
            o.service,
            (o.from - start).as_seconds_f64(),
            (o.until - o.from).as_seconds_f64() / 60.0
        ));
    }
    world.note(format!(
        "plan: rates {:?}, snapshot batches {snapshot}",
        world.rates
    ));

    let sandbox = Sandbox {
        sqs: &sqs,
        topic: &topic,
        store: &store,
    };
    let strict = std::sync::atomic::AtomicBool::new(false);
    let ingesters: Vec<_> = (0..5)
        .map(|_| {
            (
                sandbox.ingester(MAX_JOB_TIMEOUT),
                sandbox.ingester(STRICT_JOB_TIMEOUT),
            )
        })
        .collect();
    let processors: Vec<_> = (0..10).map(|_| sandbox.processor()).collect();
    let ordered: Vec<_> = (0..3).map(|_| sandbox.processor()).collect();
    let relay = sandbox.relay();

    let strict = &strict;
    let mut sandboxes = pollers(
        &world,
        &sqs,
        &INGESTER,
        &ingesters,
        move |pair, e, d, n, inv| {
            let (lenient, strict_one) = pair;
            let h = if strict.load(std::sync::atomic::Ordering::SeqCst) {
                strict_one
            } else {
                lenient
            };
            async move { h.handle_invocation(e, d, n, &inv).await }
        },
    );
    sandboxes.extend(pollers(&world, &sqs, &PROCESSOR, &processors, process));
    sandboxes.extend(pollers(&world, &sqs, &ORDERED, &ordered, process));
    let pollers = futures_util::future::join_all(sandboxes);
    let eventbridge = producer::EventBridge::new(Arc::clone(&world), Arc::clone(&sqs));
    let producing = producer::produce(&world, &eventbridge, options);
    let operating = operator::operate(&world, &sqs, &store, &eventbridge, strict, options);
    let relaying = relay_schedule(&world, &relay);
    let conducting = conduct(&world, &sqs, options);
    let (_, sent, actions, (), (), ()) = tokio::join!(
        pollers,
        producing,
        operating,
        relaying,
        conducting,
        eventbridge.deliver_all()
    );
    let mut outcome = check::check(&check::Seen {
        world: &world,
        sqs: &sqs,
        topic: &topic,
        store: &store,
        sent: &sent,
        strict_from: actions.strict_from,
    });
    outcome.seed = seed;
    jobs_core::clock::run_virtual(None);
    outcome
}

/// An event source mapping, as `pipeline.json` sets it: the queue, the batch size,
/// and the consuming function's timeout.
#[derive(Debug)]
struct Mapping {
    function: &'static str,
    queue: &'static str,
    batch: usize,
    timeout_secs: u64,
}

const INGESTER: Mapping = Mapping {
    function: "ingester",
    queue: "ingester-queue",
    batch: 10,
    timeout_secs: 30,
};
const PROCESSOR: Mapping = Mapping {
    function: "processor",
    queue: "jobs-todo",
    batch: 10,
    timeout_secs: 900,
};
const ORDERED: Mapping = Mapping {
    function: "processor-fifo",
    queue: "jobs-todo.fifo",
    batch: 1,
    timeout_secs: 900,
};

/// One invocation of a processor sandbox.
async fn process<Q, T, S>(
    p: &Processor<Q, T, S>,
    event: SqsEvent,
    deadline: Timestamp,
    now: Timestamp,
    inv: Invocation,
) -> SqsBatchResponse
where
    Q: jobs_core::ports::MessageQueue,
    T: jobs_core::ports::Topic,
    S: jobs_core::store::JobStore + jobs_core::store::Sagas,
{
    p.handle_invocation(event, deadline, now, &inv).await
}

type Poller<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>;

/// One poller of `mapping` per sandbox, each invoking its own handler.
fn pollers<'a, H, F, Fut>(
    world: &'a World,
    sqs: &'a Sqs,
    mapping: &'static Mapping,
    sandboxes: &'a [H],
    invoke: F,
) -> Vec<Poller<'a>>
where
    F: Fn(&'a H, SqsEvent, Timestamp, Timestamp, Invocation) -> Fut + Copy + 'a,
    Fut: Future<Output = SqsBatchResponse> + 'a,
{
    sandboxes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let name = format!("{}#{i}", mapping.function);
            let run = move |e, d, n, inv| invoke(h, e, d, n, inv);
            Box::pin(poll(world, sqs, mapping, name, run)) as Poller<'a>
        })
        .collect()
}

/// An event source mapping's poller: receives a batch, invokes the function with it
/// under its deadline, and deletes what the function did not report as failed. An
/// invocation may crash at any moment (its future dropped): then nothing is deleted
/// and the batch comes back after the visibility timeout.
async fn poll<F, Fut>(world: &World, sqs: &Sqs, mapping: &Mapping, name: String, invoke: F)
where
    F: Fn(SqsEvent, Timestamp, Timestamp, Invocation) -> Fut,
    Fut: Future<Output = SqsBatchResponse>,
{
    let (queue, batch, timeout_secs) = (mapping.queue, mapping.batch, mapping.timeout_secs);
    let mut invocations = 0u64;
    while !world.stopped() {
        let got = sqs.receive(queue, batch);
        if got.is_empty() {
            let idle = world.draw(|r| r.random_range(500..3000));
            tokio::time::sleep(Duration::from_millis(idle)).await;
            continue;
        }
        invocations += 1;
        let ids: Vec<String> = got
            .iter()
            .map(|d| format!("{}{}", d.message.id, sqs::describe(&d.message.body)))
            .collect();
        world.note(format!("{name} invoked with {}", ids.join(", ")));
        let event: SqsEvent =
            serde_json::from_value(sqs::lambda_event(queue, &got)).expect("an SQS event");
        let now = world.now();
        let timeout = Duration::from_secs(timeout_secs);
        let deadline = now + chrono::TimeDelta::from_std(timeout).unwrap_or_default();
        let crash = (!world.calm() && world.chance(world.rates.crash))
            .then(|| world.draw(|r| Duration::from_millis(r.random_range(0..2000))));
        let cut = crash.unwrap_or(timeout);
        let inv = Invocation {
            request_id: format!("{name}-{invocations}"),
            coldstart: false,
        };
        // A job that asks to crash its process unwinds: the invocation is lost whole.
        let invocation = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            invoke(event, deadline, now, inv),
        ));
        let answered = tokio::select! {
            biased;
            response = invocation => response.ok(),
            () = tokio::time::sleep(cut) => None,
        };
        let Some(response) = answered else {
            world.note(format!(
                "{name} {}",
                if crash.is_some() {
                    "crashed"
                } else {
                    "timed out"
                }
            ));
            continue;
        };
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        for d in &got {
            if !failed.contains(&d.message.id.as_str()) {
                sqs.delete(queue, &d.receipt);
            }
        }
        if !failed.is_empty() {
            world.note(format!("{name} left in SQS: {}", failed.join(", ")));
        }
    }
}

/// The relay on its schedule (`rate(1 minute)`), each run with its own request id.
async fn relay_schedule(world: &World, relay: &Relay<Queue, Topic<'_>, Store<'_>>) {
    let mut runs = 0u64;
    while !world.stopped() {
        tokio::time::sleep(Duration::from_secs(60)).await;
        runs += 1;
        let now = world.now();
        let inv = Invocation {
            request_id: format!("relay-{runs}"),
            coldstart: false,
        };
        let deadline = now + chrono::TimeDelta::seconds(60);
        let crash = (!world.calm() && world.chance(world.rates.crash / 3.0))
            .then(|| world.draw(|r| Duration::from_millis(r.random_range(0..3000))));
        let sweep = relay.sweep(deadline, &inv, jobs_core::clock::now);
        tokio::select! {
            biased;
            s = sweep => if s.found > 0 { world.note(format!("relay: {s:?}")) },
            () = tokio::time::sleep(crash.unwrap_or(Duration::from_secs(60))) => world.note("relay crashed or timed out"),
        }
    }
}

/// Ends the faults after `faults_for`, waits until the work queues are drained and
/// every lease has run out (so the relay has swept), then stops everything.
async fn conduct(world: &World, sqs: &Sqs, options: &Options) {
    tokio::time::sleep(options.faults_for).await;
    world.calm_down();
    let give_up = world.now() + chrono::TimeDelta::hours(48);
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let busy: usize = ["ingester-queue", "jobs-todo", "jobs-todo.fifo"]
            .iter()
            .map(|q| sqs.depth(q))
            .sum();
        if busy == 0 || world.now() > give_up {
            break;
        }
    }
    // Leases are at most 15 minutes; the relay takes what is left after 30 s more.
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    world.note("quiesced");
    world.stop();
}
