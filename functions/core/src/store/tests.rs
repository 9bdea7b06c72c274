use super::*;
use chrono::{TimeZone, Utc};
use serde_json::json;

fn at(secs: i64) -> Timestamp {
    Utc.timestamp_opt(1_790_000_000 + secs, 0)
        .single()
        .expect("time")
}

fn claim<'a>(fp: &'a str, attempt: u32, lease: i64) -> Claim<'a> {
    Claim {
        job_id: "job-1",
        stage: Stage::Processor,
        fingerprint: fp,
        legacy_fingerprint: None,
        attempt,
        lease_until: at(lease),
        holder: "m1",
        token: "",
        history: None,
    }
}

/// Gives back attempt 1 of `job-1` at the processor.
fn release<'a>(holder: &'a str, token: &'a str) -> Release<'a> {
    Release {
        job_id: "job-1",
        stage: Stage::Processor,
        attempt: 1,
        holder,
        token,
    }
}

#[tokio::test]
async fn a_second_claim_of_a_finished_job_is_a_duplicate() {
    let store = MemoryStore::default();
    assert_eq!(
        store.claim(&claim("a", 1, 60), at(0)).await.expect("store"),
        ClaimOutcome::Claimed
    );
    let done = Progress::Done(Some(JobStatus::Completed));
    store
        .finish(&crate::store::Finish {
            job_id: "job-1".into(),
            stage: Stage::Processor,
            attempt: 1,
            progress: done,
            detail: None,
            now: at(1),
        })
        .await
        .expect("store");
    assert_eq!(
        store.claim(&claim("a", 1, 60), at(2)).await.expect("store"),
        ClaimOutcome::Duplicate {
            progress: done,
            announced: false
        }
    );
    announce(&store, "job-1", at(3)).await;
    assert_eq!(
        store.claim(&claim("a", 1, 60), at(4)).await.expect("store"),
        ClaimOutcome::Duplicate {
            progress: done,
            announced: true
        }
    );
}

#[tokio::test]
async fn an_unannounced_end_is_resumed_by_its_holder_or_after_the_lease() {
    let store = MemoryStore::default();
    store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
    let done = Progress::Done(Some(JobStatus::Completed));
    store
        .finish(&crate::store::Finish {
            job_id: "job-1".into(),
            stage: Stage::Processor,
            attempt: 1,
            progress: done,
            detail: None,
            now: at(1),
        })
        .await
        .expect("store");
    let copy = Claim {
        holder: "m2",
        ..claim("a", 1, 120)
    };
    assert_eq!(
        store.claim(&copy, at(2)).await.expect("store"),
        ClaimOutcome::Stale,
        "a copy must not announce while the holder may be announcing"
    );
    let resumed = ClaimOutcome::Duplicate {
        progress: done,
        announced: false,
    };
    assert_eq!(
        store
            .claim(&claim("a", 1, 120), at(2))
            .await
            .expect("store"),
        resumed,
        "the holder's own re-delivery resumes"
    );
    // Resuming took the end over until the re-delivery's own deadline.
    assert_eq!(
        store.claim(&copy, at(61)).await.expect("store"),
        ClaimOutcome::Stale,
        "the re-delivery announcing it holds it until its deadline"
    );
    assert_eq!(
        store.claim(&copy, at(121)).await.expect("store"),
        resumed,
        "anyone resumes once the lease ran out"
    );
}

#[tokio::test]
async fn a_live_lease_keeps_others_out_and_an_expired_one_lets_them_in() {
    let store = MemoryStore::default();
    store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
    let copy = Claim {
        holder: "m2",
        ..claim("a", 1, 120)
    };
    assert_eq!(
        store.claim(&copy, at(30)).await.expect("store"),
        ClaimOutcome::Stale,
        "a copy of the running attempt"
    );
    assert_eq!(
        store
            .claim(&claim("a", 1, 120), at(30))
            .await
            .expect("store"),
        ClaimOutcome::Held { until: at(60) },
        "the running attempt's own message waits for its lease"
    );
    assert_eq!(
        store
            .claim(&claim("a", 2, 120), at(30))
            .await
            .expect("store"),
        ClaimOutcome::Busy { until: at(60) },
        "the next attempt waits for the running one to hand over"
    );
    assert_eq!(
        store
            .claim(&claim("a", 1, 120), at(61))
            .await
            .expect("store"),
        ClaimOutcome::Claimed
    );
}

#[tokio::test]
async fn a_released_claim_is_taken_again_by_its_own_message_only() {
    let store = MemoryStore::default();
    store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
    store
        .release(&release("m9", ""), at(1))
        .await
        .expect("store");
    assert_eq!(
        store.claim(&claim("a", 1, 60), at(2)).await.expect("store"),
        ClaimOutcome::Held { until: at(60) },
        "another holder cannot release the claim"
    );
    store
        .release(&release("m1", ""), at(3))
        .await
        .expect("store");
    assert_eq!(
        store.claim(&claim("a", 1, 60), at(4)).await.expect("store"),
        ClaimOutcome::Claimed
    );
}

#[tokio::test]
async fn a_claim_retried_with_its_own_token_is_claimed_and_another_delivery_held() {
    let store = MemoryStore::default();
    let mine = Claim {
        token: "t1",
        history: None,
        ..claim("a", 1, 60)
    };
    store.faults.lose_answers(1);
    assert!(store.claim(&mine, at(0)).await.is_err(), "answer lost");
    assert_eq!(
        store.claim(&mine, at(0)).await.expect("store"),
        ClaimOutcome::Claimed,
        "the same request again finds its own write"
    );
    let other = Claim {
        token: "t2",
        history: None,
        ..claim("a", 1, 120)
    };
    assert_eq!(
        store.claim(&other, at(1)).await.expect("store"),
        ClaimOutcome::Held { until: at(60) },
        "another delivery of the same message"
    );
    let untokened = claim("a", 1, 120);
    assert_eq!(
        store.claim(&untokened, at(1)).await.expect("store"),
        ClaimOutcome::Held { until: at(60) },
        "an empty token matches nothing"
    );
    store
        .release(&release("m1", "t2"), at(2))
        .await
        .expect("store");
    assert_eq!(
        store.claim(&other, at(3)).await.expect("store"),
        ClaimOutcome::Held { until: at(60) },
        "another delivery cannot give the claim back"
    );
    store
        .release(&release("m1", "t1"), at(4))
        .await
        .expect("store");
    assert_eq!(
        store.claim(&other, at(5)).await.expect("store"),
        ClaimOutcome::Claimed
    );
}

#[tokio::test]
async fn a_batch_of_claims_retried_with_their_tokens_is_claimed() {
    let store = MemoryStore::default();
    let claims = [
        Claim {
            token: "t1",
            history: None,
            ..claim("a", 1, 60)
        },
        Claim {
            job_id: "job-2",
            holder: "m2",
            token: "t2",
            history: None,
            ..claim("a", 1, 60)
        },
    ];
    store.faults.lose_answers(1);
    let lost = store.claim_all(&claims, at(0)).await;
    assert!(lost.iter().all(Result::is_err));
    let again = store.claim_all(&claims, at(0)).await;
    assert_eq!(
        again,
        [Ok(ClaimOutcome::Claimed), Ok(ClaimOutcome::Claimed)]
    );
}

#[tokio::test]
async fn a_retry_is_claimed_by_the_next_attempt_only() {
    let store = MemoryStore::default();
    store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
    store
        .finish(&crate::store::Finish {
            job_id: "job-1".into(),
            stage: Stage::Processor,
            attempt: 1,
            progress: Progress::Retrying,
            detail: None,
            now: at(1),
        })
        .await
        .expect("store");
    assert_eq!(
        store.claim(&claim("a", 1, 60), at(2)).await.expect("store"),
        ClaimOutcome::Stale
    );
    assert_eq!(
        store.claim(&claim("a", 2, 60), at(3)).await.expect("store"),
        ClaimOutcome::Claimed
    );
}

#[tokio::test]
async fn a_reopened_job_is_claimed_by_a_later_attempt_only() {
    let store = MemoryStore::default();
    store.claim(&claim("a", 3, 60), at(0)).await.expect("store");
    let failed = Progress::Done(Some(JobStatus::Failed));
    store
        .finish(&crate::store::Finish {
            job_id: "job-1".into(),
            stage: Stage::Processor,
            attempt: 3,
            progress: failed,
            detail: None,
            now: at(1),
        })
        .await
        .expect("store");
    announce(&store, "job-1", at(1)).await;
    let reopen = Reopen {
        job_id: "job-1",
        stage: Stage::Processor,
        fingerprint: "a",
        legacy_fingerprint: None,
        status: JobStatus::Failed,
        attempt: 3,
        last_error: None,
        below: 3,
        by: "dl-1",
    };
    assert_eq!(
        store.reopen(&reopen, at(2)).await.expect("store"),
        Reopened::Now
    );
    assert_eq!(
        store.claim(&claim("a", 3, 60), at(3)).await.expect("store"),
        ClaimOutcome::Stale
    );
    assert_eq!(
        store.claim(&claim("a", 4, 60), at(3)).await.expect("store"),
        ClaimOutcome::Claimed
    );
}

#[tokio::test]
async fn every_write_that_changes_a_record_refreshes_its_expiry() {
    let store = MemoryStore::default();
    let expiry = || store.get("job-1");
    let expires = |t: i64| at(t) + RETENTION;
    store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
    store
        .release(&release("m1", ""), at(10))
        .await
        .expect("store");
    assert_eq!(expiry().await.expect("store")[0].expires_at, expires(10));
    store
        .claim(&claim("a", 1, 60), at(20))
        .await
        .expect("store");
    assert_eq!(expiry().await.expect("store")[0].expires_at, expires(20));
    let failed = Progress::Done(Some(JobStatus::Failed));
    store
        .finish(&crate::store::Finish {
            job_id: "job-1".into(),
            stage: Stage::Processor,
            attempt: 1,
            progress: failed,
            detail: None,
            now: at(30),
        })
        .await
        .expect("store");
    assert_eq!(expiry().await.expect("store")[0].expires_at, expires(30));
    announce(&store, "job-1", at(40)).await;
    assert_eq!(expiry().await.expect("store")[0].expires_at, expires(40));
    let reopen = Reopen {
        job_id: "job-1",
        stage: Stage::Processor,
        fingerprint: "a",
        legacy_fingerprint: None,
        status: JobStatus::Failed,
        attempt: 1,
        last_error: None,
        below: 1,
        by: "dl-1",
    };
    store.reopen(&reopen, at(50)).await.expect("store");
    assert_eq!(expiry().await.expect("store")[0].expires_at, expires(50));
}

#[tokio::test]
async fn reused_ids_with_other_content_conflict() {
    let store = MemoryStore::default();
    store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
    assert_eq!(
        store
            .claim(&claim("b", 1, 60), at(100))
            .await
            .expect("store"),
        ClaimOutcome::Conflict {
            fingerprint: "a".into()
        }
    );
}

#[tokio::test]
async fn only_the_holder_may_finish() {
    let store = MemoryStore::default();
    store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
    let failed = Progress::Done(Some(JobStatus::Failed));
    assert!(store
        .finish(&crate::store::Finish {
            job_id: "job-1".into(),
            stage: Stage::Processor,
            attempt: 2,
            progress: failed,
            detail: None,
            now: at(1)
        })
        .await
        .is_err());
    assert!(store
        .finish(&crate::store::Finish {
            job_id: "job-2".into(),
            stage: Stage::Processor,
            attempt: 1,
            progress: failed,
            detail: None,
            now: at(1)
        })
        .await
        .is_err());
}

#[test]
fn the_fingerprint_ignores_key_order_and_sees_content() {
    let a = fingerprint(&json!({"job_type": "x", "message": {"a": 1, "b": 2}}));
    let b = fingerprint(&json!({"message": {"b": 2, "a": 1}, "job_type": "x"}));
    let c = fingerprint(&json!({"job_type": "x", "message": {"a": 1, "b": 3}}));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn the_fingerprint_is_a_sha256_of_the_canonical_content() {
    // printf '%s' '{"job_type":"x","message":{"a":1}}' | sha256sum
    assert_eq!(
        fingerprint(&json!({"message": {"a": 1}, "job_type": "x"})),
        "3ab929ff8b86b571d6ff27ab1e850751a8f46132f11da30f892f15e4eef036e4"
    );
}

#[test]
fn the_fingerprint_leaves_out_the_trace_context_a_sender_may_change() {
    let job = json!({"job_type": "x", "message": {"a": 1}});
    let mut nested = job.clone();
    nested["trace_context"] = json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "a=b"});
    let mut flat = job.clone();
    flat["traceparent"] = json!("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01");
    flat["tracestate"] = json!("c=d");
    assert_eq!(fingerprint(&nested), fingerprint(&job));
    assert_eq!(fingerprint(&flat), fingerprint(&job));
    let mut nested_message = job.clone();
    nested_message["message"]["traceparent"] = json!("x");
    assert_ne!(
        fingerprint(&nested_message),
        fingerprint(&job),
        "only the top-level fields"
    );
}

#[tokio::test]
async fn a_record_with_the_old_fingerprint_is_compared_the_old_way() {
    let store = MemoryStore::default();
    let job = json!({"job_type": "x", "message": {"a": 1},
        "trace_context": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}});
    let (fp, old) = (fingerprint(&job), legacy_fingerprint(&job));
    assert!(is_legacy(&old) && !is_legacy(&fp), "{old} {fp}");
    // Written before the upgrade: the old function's fingerprint, ended and announced.
    store
        .claim(&claim(&old, 1, 60), at(0))
        .await
        .expect("store");
    let done = Progress::Done(Some(JobStatus::Completed));
    store
        .finish(&crate::store::Finish {
            job_id: "job-1".into(),
            stage: Stage::Processor,
            attempt: 1,
            progress: done,
            detail: None,
            now: at(1),
        })
        .await
        .expect("store");
    announce(&store, "job-1", at(2)).await;
    let again = Claim {
        legacy_fingerprint: Some(&old),
        ..claim(&fp, 1, 60)
    };
    assert_eq!(
        store.claim(&again, at(3)).await.expect("store"),
        ClaimOutcome::Duplicate {
            progress: done,
            announced: true
        },
        "the same job, recognised by the old function"
    );
    let other = json!({"job_type": "x", "message": {"a": 2}});
    let (other_fp, other_old) = (fingerprint(&other), legacy_fingerprint(&other));
    let reused = Claim {
        legacy_fingerprint: Some(&other_old),
        ..claim(&other_fp, 1, 60)
    };
    assert_eq!(
        store.claim(&reused, at(4)).await.expect("store"),
        ClaimOutcome::Conflict { fingerprint: old },
        "other content under the id still conflicts"
    );
    // Only the old shape is read the old way: a stored value that is not 16 hex
    // digits must equal the new fingerprint.
    assert!(!is_legacy("0123456789abcdeg") && !is_legacy(&fp[..15]));
}

#[test]
fn progress_round_trips_through_its_name() {
    for p in [
        Progress::InProgress,
        Progress::Retrying,
        Progress::Done(None),
        Progress::Done(Some(JobStatus::Completed)),
        Progress::Done(Some(JobStatus::Failed)),
        Progress::Done(Some(JobStatus::Rejected)),
    ] {
        assert_eq!(Progress::parse(p.as_str()), Some(p));
    }
}

fn unforwarded<'a>(fp: &'a str, token: &'a str) -> Stop<'a> {
    Stop {
        job_id: "job-1",
        fingerprint: fp,
        legacy_fingerprint: None,
        holder: "m1",
        token,
        lease_until: at(30),
        status: JobStatus::Failed,
        detail: json!({"status": "FAILED"}),
        now: at(1),
    }
}

/// A forwarded copy of `job-1` on jobs-todo (another message than the ingester's).
fn forwarded_copy(fp: &str) -> Claim<'_> {
    Claim {
        holder: "todo-1",
        ..claim(fp, 1, 120)
    }
}

#[tokio::test]
async fn an_unforwarded_end_stops_the_processor_and_its_lost_answer_is_found_again() {
    let store = MemoryStore::default();
    store.faults.lose_answers(1);
    assert!(store.stop(&unforwarded("a", "t1")).await.is_err());
    // The SDK's retry finds its own stop, not a processor that took the job.
    let again = store.stop(&unforwarded("a", "t1")).await;
    assert_eq!(again.expect("store"), Forestalled::Ended);
    let ended = Progress::Done(Some(JobStatus::Failed));
    let records = store.get("job-1").await.expect("store");
    assert_eq!(
        records
            .iter()
            .map(|r| (r.stage, r.progress, r.attempt, r.announced))
            .collect::<Vec<_>>(),
        [(Stage::Processor, ended, STOP_ATTEMPT, false)],
        "the job's one record"
    );
    // A forwarded copy arriving while the ingester announces is dropped...
    assert_eq!(
        store
            .claim(&forwarded_copy("a"), at(2))
            .await
            .expect("store"),
        ClaimOutcome::Stale
    );
    // ...and one arriving after an ingester that could not announce announces it.
    assert_eq!(
        store
            .claim(&forwarded_copy("a"), at(31))
            .await
            .expect("store"),
        ClaimOutcome::Duplicate {
            progress: ended,
            announced: false
        }
    );
    announce(&store, "job-1", at(3)).await;
    assert_eq!(
        store
            .claim(&forwarded_copy("a"), at(4))
            .await
            .expect("store"),
        ClaimOutcome::Duplicate {
            progress: ended,
            announced: true
        },
        "announced once, by whoever got there"
    );
}

#[tokio::test]
async fn an_unforwarded_end_leaves_a_job_the_processor_holds_to_the_processor() {
    let store = MemoryStore::default();
    store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
    let answer = store.stop(&unforwarded("a", "t1")).await;
    assert_eq!(answer.expect("store"), Forestalled::Taken);
    let records = store.get("job-1").await.expect("store");
    assert_eq!(
        (records.len(), records[0].progress),
        (1, Progress::InProgress),
        "untouched: {records:?}"
    );
    // Another content's processor record says nothing of this job: named, and
    // nothing written.
    let other = MemoryStore::default();
    other.claim(&claim("b", 1, 60), at(0)).await.expect("store");
    assert_eq!(
        other.stop(&unforwarded("a", "t1")).await.expect("store"),
        Forestalled::OtherContent {
            fingerprint: "b".into()
        }
    );
    let kept = other.get("job-1").await.expect("store");
    assert_eq!(
        (kept.len(), kept[0].fingerprint.as_str()),
        (1, "b"),
        "{kept:?}"
    );
}

#[tokio::test]
async fn a_redrive_of_the_unforwarded_letter_reopens_its_stop_once() {
    let store = MemoryStore::default();
    let mut end = unforwarded("a", "t1");
    let error = ErrorEntry::new(Stage::Ingester, "forward_failed".into(), "lost", 5, at(1));
    end.detail = json!({"errors": [error]});
    store.stop(&end).await.expect("store");
    // Not announced yet: the letter waits for its end's announcement.
    let early = Reopen {
        job_id: "job-1",
        stage: Stage::Processor,
        fingerprint: "a",
        legacy_fingerprint: None,
        status: JobStatus::Failed,
        attempt: STOP_ATTEMPT,
        last_error: Some(&error),
        below: STOP_ATTEMPT,
        by: "dl-1",
    };
    assert!(matches!(
        store.reopen(&early, at(2)).await.expect("store"),
        Reopened::Keep(_)
    ));
    announce(&store, "job-1", at(2)).await;
    let reopen = Reopen {
        job_id: "job-1",
        stage: Stage::Processor,
        fingerprint: "a",
        legacy_fingerprint: None,
        status: JobStatus::Failed,
        attempt: STOP_ATTEMPT,
        last_error: Some(&error),
        below: STOP_ATTEMPT,
        by: "dl-1",
    };
    assert_eq!(
        store.reopen(&reopen, at(2)).await.expect("store"),
        Reopened::Now
    );
    assert_eq!(
        store.reopen(&reopen, at(3)).await.expect("store"),
        Reopened::Already
    );
    assert_eq!(
        store
            .claim(&claim("a", 1, 120), at(4))
            .await
            .expect("store"),
        ClaimOutcome::Claimed,
        "the redriven job runs"
    );
}

/// Marks the end `job_id`'s processor record holds announced, as its announcer does.
async fn announce(store: &MemoryStore, job_id: &str, now: Timestamp) {
    let records = store.get(job_id).await.expect("store");
    let record = records
        .iter()
        .find(|r| r.stage == Stage::Processor)
        .expect("a processor record");
    let end = end_id(record.detail.as_ref()).unwrap_or_default();
    let mark = Mark::new(job_id, Stage::Processor, &end, Marked::Announced);
    store.mark(&mark, now).await.expect("store");
}

#[tokio::test]
async fn a_stop_reopened_by_an_operator_may_be_stopped_again_and_a_stop_left_unannounced_is_resumed(
) {
    let store = MemoryStore::default();
    let first = unforwarded("a", "t1");
    assert_eq!(store.stop(&first).await.expect("store"), Forestalled::Ended);
    // The same message delivered again (another token) finds its own stop to announce;
    // another message, while the first delivery's lease lasts, finds it taken.
    let again = Stop {
        token: "t2",
        ..first.clone()
    };
    assert_eq!(
        store.stop(&again).await.expect("store"),
        Forestalled::Unannounced
    );
    let copy = Stop {
        holder: "m2",
        token: "t3",
        ..first.clone()
    };
    assert_eq!(store.stop(&copy).await.expect("store"), Forestalled::Taken);
    // Found unannounced, the stop is taken by the delivery that announces it: a
    // relay's take of the lease it saw then fails.
    let held = store.get("job-1").await.expect("store");
    assert_eq!(held[0].token, "t2", "taken by the announcing delivery");
    let late = Stop {
        now: at(31),
        ..copy.clone()
    };
    assert_eq!(
        store.stop(&late).await.expect("store"),
        Forestalled::Unannounced
    );
    // A redrive reopens the stop: the redriven event may stop the job again.
    store
        .records
        .lock()
        .expect("lock")
        .values_mut()
        .for_each(|r| r.progress = Progress::Retrying);
    let redriven = Stop {
        holder: "dl-1",
        token: "t4",
        ..first
    };
    assert_eq!(
        store.stop(&redriven).await.expect("store"),
        Forestalled::Ended
    );
    let records = store.get("job-1").await.expect("store");
    assert_eq!(
        (records[0].holder.as_str(), records[0].progress),
        ("dl-1", Progress::Done(Some(JobStatus::Failed)))
    );
}
