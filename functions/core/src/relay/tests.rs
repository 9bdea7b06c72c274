//! The relay against the real processor and ingester on in-memory ports that fail as
//! AWS does: each test strands an end (its SQS message is never delivered again) and
//! checks who announces it, and that it is announced once.

use super::*;
use crate::ingester::{Ingester, IngesterConfig};
use crate::processor::{Processor, ProcessorConfig};
use crate::retry::RetryPolicy;
use crate::store::{MemoryStore, Progress};
use crate::testing::{MemoryQueue, MemoryTopic, Shared};
use aws_lambda_events::sqs::SqsEvent;
use chrono::DateTime;
use serde_json::{json, Value};
use std::time::Duration;

/// The ports both stages and the relay share, as one AWS account does.
#[derive(Default)]
struct Account {
    ingester_queue: MemoryQueue,
    jobs_todo: MemoryQueue,
    jobs_todo_fifo: MemoryQueue,
    dead_letters: MemoryQueue,
    topic: MemoryTopic,
    store: MemoryStore,
}

impl Account {
    fn processor(
        &self,
    ) -> Processor<Shared<'_, MemoryQueue>, Shared<'_, MemoryTopic>, Shared<'_, MemoryStore>> {
        Processor {
            jobs_todo: Shared(&self.jobs_todo),
            jobs_todo_fifo: Shared(&self.jobs_todo_fifo),
            dead_letters: Shared(&self.dead_letters),
            topic: Shared(&self.topic),
            store: Shared(&self.store),
            config: ProcessorConfig {
                deadline_margin: Duration::from_secs(3),
                retry: RetryPolicy::default(),
                fault_injection: true,
                kinds: crate::kinds::Registry::builtin(),
            },
            telemetry: Instruments::default(),
        }
    }

    fn ingester(
        &self,
    ) -> Ingester<Shared<'_, MemoryQueue>, Shared<'_, MemoryTopic>, Shared<'_, MemoryStore>> {
        Ingester {
            source: Shared(&self.ingester_queue),
            jobs_todo: Shared(&self.jobs_todo),
            jobs_todo_fifo: Shared(&self.jobs_todo_fifo),
            dead_letters: Shared(&self.dead_letters),
            topic: Shared(&self.topic),
            store: Shared(&self.store),
            config: IngesterConfig {
                max_receive_count: 5,
                max_job_timeout_secs: 60,
                kinds: crate::kinds::Registry::builtin(),
            },
            telemetry: Instruments::default(),
        }
    }

    fn relay(
        &self,
    ) -> Relay<Shared<'_, MemoryQueue>, Shared<'_, MemoryTopic>, Shared<'_, MemoryStore>> {
        Relay {
            dead_letters: Shared(&self.dead_letters),
            topic: Shared(&self.topic),
            store: Shared(&self.store),
            config: RelayConfig::default(),
            telemetry: Instruments::default(),
        }
    }

    /// Every notification so far, as (job id, status).
    fn announced(&self) -> Vec<(String, JobStatus)> {
        let mut notes: Vec<_> = self
            .topic
            .notifications()
            .into_iter()
            .map(|n| (n.job_id, n.status))
            .collect();
        notes.sort_by(|a, b| a.0.cmp(&b.0));
        notes
    }

    fn refuse_notifications_of(&self, job_id: &str) {
        self.topic
            .refuse
            .lock()
            .expect("lock")
            .push(job_id.to_owned());
    }

    fn let_notifications_through(&self) {
        self.topic.refuse.lock().expect("lock").clear();
    }
}

fn at(secs: i64) -> Timestamp {
    DateTime::from_timestamp(1_795_000_000 + secs, 0).expect("valid")
}

/// The relay's sweep at `secs`, with an invocation of 60 s.
async fn sweep_at(account: &Account, secs: i64) -> Sweep {
    let invocation = Invocation {
        request_id: format!("sweep-{secs}"),
        coldstart: false,
    };
    account
        .relay()
        .sweep(at(secs + 60), &invocation, || at(secs))
        .await
}

fn sqs_event(queue: &str, messages: &[(String, String)]) -> SqsEvent {
    let records: Vec<_> = messages
        .iter()
        .map(|(id, body)| {
            json!({"messageId": id, "receiptHandle": format!("rh-{id}"), "body": body,
            "attributes": {"ApproximateReceiveCount": "1"},
            "eventSourceARN": format!("arn:aws:sqs:us-east-1:000000000000:{queue}")})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).expect("event")
}

/// A `jobs-todo` message of `detail` at attempt 1.
fn enriched(id: &str, detail: Value) -> (String, String) {
    let body = json!({"job_id": id, "job_type": detail["job_type"], "status": "NEW",
        "received_at": "2026-11-22T10:00:00Z", "attempt": 1, "errors": [], "job": detail});
    (format!("m-{id}"), body.to_string())
}

fn report(id: &str) -> Value {
    json!({"id": id, "job_type": "report_generation",
        "message": {"report_name": "Sales", "filters": "region=US"}})
}

/// The processor runs `id` at `secs` (deadline 100 s later) with its notification
/// refused: the end is recorded, not announced, and the message is then lost.
async fn strand_in_processor(account: &Account, id: &str, detail: Value, secs: i64) {
    account.refuse_notifications_of(id);
    let message = enriched(id, detail);
    let response = account
        .processor()
        .handle(sqs_event("jobs-todo", &[message]), at(secs + 100), at(secs))
        .await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "the record stays in SQS"
    );
    let records = account.store.get(id).await.expect("store");
    assert!(
        records
            .iter()
            .any(|r| matches!(r.progress, Progress::Done(Some(_))) && !r.announced),
        "{records:?}"
    );
    account.let_notifications_through();
}

#[tokio::test(start_paused = true)]
async fn an_end_whose_message_was_lost_is_announced_once_after_its_lease() {
    let account = Account::default();
    strand_in_processor(&account, "job-lost", report("job-lost"), 0).await;

    // While the processor's lease (its deadline, 100 s) lasts, the end is its own.
    assert_eq!(sweep_at(&account, 50).await.found, 0);
    assert!(account.announced().is_empty());

    let sweep = sweep_at(&account, 200).await;
    assert_eq!((sweep.found, sweep.announced), (1, 1), "{sweep:?}");
    assert_eq!(
        account.announced(),
        [("job-lost".to_owned(), JobStatus::Completed)]
    );
    let record = &account.store.get("job-lost").await.expect("store")[0];
    assert!(record.announced);

    // Nothing is left to relay, and the lost message, were it ever to come back, only
    // finds the job ended and announced.
    assert_eq!(sweep_at(&account, 300).await, Sweep::default());
    let again = enriched("job-lost", report("job-lost"));
    account
        .processor()
        .handle(sqs_event("jobs-todo", &[again]), at(500), at(400))
        .await;
    assert_eq!(account.announced().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_end_gets_the_dead_letter_it_was_recorded_with_once() {
    let account = Account::default();
    let failing = json!({"id": "job-bad", "job_type": "report_generation",
        "message": {"report_name": "Sales", "filters": "region=US"},
        "fault": {"fail_always": true}});
    // The dead letter cannot be stored either: the end is recorded, nothing went out.
    account
        .dead_letters
        .refuse
        .lock()
        .expect("lock")
        .push("job-bad".into());
    // The job fails three attempts; each retry is fed back until the last one ends it.
    let mut messages = vec![enriched("job-bad", failing.clone())];
    for secs in [0, 10, 20] {
        let sent_before = account.jobs_todo.sent.lock().expect("lock").len();
        account
            .processor()
            .handle(sqs_event("jobs-todo", &messages), at(secs + 100), at(secs))
            .await;
        let sent = account.jobs_todo.sent.lock().expect("lock")[sent_before..].to_vec();
        messages = sent
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("retry-{secs}-{i}"), m.body.clone()))
            .collect();
    }
    assert!(messages.is_empty(), "the third attempt ends the job");
    assert!(account.dead_letters.dead_letters().is_empty());
    assert!(account.announced().is_empty());
    account.dead_letters.refuse.lock().expect("lock").clear();

    let sweep = sweep_at(&account, 400).await;
    assert_eq!((sweep.found, sweep.announced), (1, 1), "{sweep:?}");
    let letters = account.dead_letters.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!((letter.status, letter.attempts), (JobStatus::Failed, 3));
    assert_eq!(letter.errors.len(), 3, "the whole history");
    assert_eq!(letter.job, failing, "the job as sent, for a redrive");
    assert_eq!(
        account.announced(),
        [("job-bad".to_owned(), JobStatus::Failed)]
    );
    assert_eq!(sweep_at(&account, 500).await.found, 0);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_the_ingester_could_not_announce_is_relayed_with_its_letter() {
    let account = Account::default();
    let bad = json!({"version": "0", "id": "ev-1", "source": "jobs", "detail-type": "JobEvent",
        "time": "2026-11-22T10:00:00Z",
        "detail": {"id": "job-rejected", "job_type": "report_generation", "message": {}}});
    account.refuse_notifications_of("job-rejected");
    let message = ("m-ev-1".to_owned(), bad.to_string());
    account
        .ingester()
        .handle(sqs_event("ingester-queue", &[message]), at(0))
        .await;
    account.let_notifications_through();
    let letters_before = account.dead_letters.dead_letters().len();
    assert_eq!(letters_before, 1, "stored before the publish failed");

    let sweep = sweep_at(&account, 100).await;
    assert_eq!(sweep.announced, 1, "{sweep:?}");
    let notes = account.topic.notifications();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (
            notes[0].status,
            notes[0].stage,
            notes[0].errors[0].code.as_str()
        ),
        (JobStatus::Rejected, Stage::Ingester, "missing_field")
    );
    // The ingester stored the letter and marked it so: the relay only announces.
    assert_eq!(account.dead_letters.dead_letters().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_relay_and_a_late_copy_of_the_message_announce_it_once() {
    // The message comes back while the relay holds the end: the copy is dropped.
    let account = Account::default();
    strand_in_processor(&account, "job-race", report("job-race"), 0).await;
    let entries = account
        .store
        .stranded(crate::store::outbox::shard("job-race"), at(200), 10)
        .await;
    let entry = entries.expect("store").pop().expect("stranded");
    let relay_take = Take {
        job_id: "job-race",
        stage: Stage::Processor,
        seen: entry.lease_until,
        until: at(260),
        holder: "relay:r1",
        token: "t-relay",
    };
    assert!(account
        .store
        .take(&relay_take, at(200))
        .await
        .expect("store")
        .is_some());
    let copy = enriched("job-race", report("job-race"));
    let deliver = |deadline: i64, now: i64| {
        let copy = copy.clone();
        let account = &account;
        async move {
            account
                .processor()
                .handle(sqs_event("jobs-todo", &[copy]), at(deadline), at(now))
                .await
        }
    };
    // The relay has no message of its own: the copy is kept, in case the relay fails.
    let response = deliver(300, 201).await;
    assert_eq!(response.batch_item_failures.len(), 1, "kept in SQS");
    assert!(account.announced().is_empty(), "the relay announces it");
    // The relay that took it dies; the next sweep after its lease announces it, and
    // the kept copy, back later, finds it announced.
    assert_eq!(sweep_at(&account, 240).await.found, 0, "the dead relay's");
    assert_eq!(sweep_at(&account, 300).await.announced, 1);
    assert!(deliver(500, 400).await.batch_item_failures.is_empty());
    assert_eq!(account.announced().len(), 1);

    // The other way round: the copy takes the end first, and the relay finds nothing.
    let account = Account::default();
    strand_in_processor(&account, "job-race", report("job-race"), 0).await;
    account.topic.faults.slow_down(Duration::from_secs(20));
    let copy_run = async {
        account
            .processor()
            .handle(
                sqs_event("jobs-todo", std::slice::from_ref(&copy)),
                at(1000),
                at(200),
            )
            .await
    };
    let relay_run = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sweep_at(&account, 201).await
    };
    let (_, sweep) = tokio::join!(copy_run, relay_run);
    assert_eq!(sweep.announced, 0, "{sweep:?}");
    assert_eq!(account.announced().len(), 1, "the copy announced it");
}

#[tokio::test(start_paused = true)]
async fn ends_a_relay_took_and_could_not_announce_are_announced_by_a_later_sweep() {
    let account = Account::default();
    for id in ["job-a", "job-b", "job-c"] {
        strand_in_processor(&account, id, report(id), 0).await;
    }
    // The take's answer is lost for the first (it took effect), the topic is down for
    // the rest: nothing is announced, and everything is held until the relay's deadline.
    account.store.faults.only("UpdateItem");
    account.store.faults.lose_answers(1);
    account.topic.faults.refuse_calls(10);
    let sweep = sweep_at(&account, 200).await;
    assert_eq!(
        (sweep.found, sweep.announced, sweep.failed),
        (3, 0, 3),
        "{sweep:?}"
    );
    assert!(account.announced().is_empty());
    assert_eq!(
        sweep_at(&account, 230).await.found,
        0,
        "held by the first sweep"
    );
    account.topic.faults.refuse_calls(0);

    let sweep = sweep_at(&account, 300).await;
    assert_eq!((sweep.found, sweep.announced), (3, 3), "{sweep:?}");
    assert_eq!(
        account.announced(),
        ["job-a", "job-b", "job-c"].map(|id| (id.to_owned(), JobStatus::Completed))
    );
}

#[tokio::test(start_paused = true)]
async fn a_sweep_reads_page_after_page_until_the_outbox_is_empty() {
    let account = Account::default();
    let ids: Vec<String> = (0..40).map(|i| format!("job-{i:02}")).collect();
    for id in &ids {
        strand_in_processor(&account, id, report(id), 0).await;
    }
    let mut relay = account.relay();
    relay.config.page = 1;
    let invocation = Invocation::default();
    let sweep = relay.sweep(at(260), &invocation, || at(200)).await;
    assert_eq!(
        (sweep.found, sweep.announced, sweep.more),
        (40, 40, false),
        "{sweep:?}"
    );
    assert_eq!(account.announced().len(), 40);
}

#[tokio::test(start_paused = true)]
async fn of_two_takers_who_saw_the_same_lease_only_one_takes_the_end() {
    let account = Account::default();
    strand_in_processor(&account, "job-both", report("job-both"), 0).await;
    let shard = crate::store::outbox::shard("job-both");
    let seen = account
        .store
        .stranded(shard, at(200), 10)
        .await
        .expect("store");
    let take = |holder| Take {
        job_id: "job-both",
        stage: Stage::Processor,
        seen: seen[0].lease_until,
        until: at(300),
        holder,
        token: "t",
    };
    let first = account
        .store
        .take(&take("relay:r1"), at(200))
        .await
        .expect("store");
    let second = account
        .store
        .take(&take("m-copy"), at(200))
        .await
        .expect("store");
    assert_eq!(first.map(|r| r.holder), Some("relay:r1".to_owned()));
    assert_eq!(
        second, None,
        "the second saw a lease that is no longer there"
    );
}

#[tokio::test(start_paused = true)]
async fn a_copy_kept_while_the_relay_held_the_end_announces_it_once_the_relay_is_gone() {
    let account = Account::default();
    strand_in_processor(&account, "job-kept", report("job-kept"), 0).await;
    let shard = crate::store::outbox::shard("job-kept");
    let seen = account
        .store
        .stranded(shard, at(200), 10)
        .await
        .expect("store");
    let relay_take = Take {
        job_id: "job-kept",
        stage: Stage::Processor,
        seen: seen[0].lease_until,
        until: at(260),
        holder: "relay:r1",
        token: "t-relay",
    };
    let taken = account
        .store
        .take(&relay_take, at(200))
        .await
        .expect("store");
    assert!(taken.is_some());
    // The relay dies; the kept copy comes back after its lease and announces the end.
    let copy = enriched("job-kept", report("job-kept"));
    let response = account
        .processor()
        .handle(sqs_event("jobs-todo", &[copy]), at(400), at(261))
        .await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(account.announced().len(), 1);
    assert_eq!(
        sweep_at(&account, 400).await.found,
        0,
        "announced by the copy"
    );
}

#[tokio::test(start_paused = true)]
async fn a_take_sent_again_after_its_answer_was_lost_finds_its_own_write() {
    let account = Account::default();
    strand_in_processor(&account, "job-lost-answer", report("job-lost-answer"), 0).await;
    let shard = crate::store::outbox::shard("job-lost-answer");
    let seen = account
        .store
        .stranded(shard, at(200), 10)
        .await
        .expect("store");
    let take = Take {
        job_id: "job-lost-answer",
        stage: Stage::Processor,
        seen: seen[0].lease_until,
        until: at(260),
        holder: "relay:r1",
        token: "t1",
    };
    account.store.faults.lose_answers(1);
    assert!(
        account.store.take(&take, at(200)).await.is_err(),
        "the answer is lost"
    );
    let again = account.store.take(&take, at(200)).await.expect("store");
    assert!(
        again.is_some(),
        "the SDK's retry of the same take is the take"
    );
    let other = Take {
        token: "t2",
        ..take
    };
    assert_eq!(
        account.store.take(&other, at(200)).await.expect("store"),
        None
    );
}
