//! The checker of the invariant, run once a schedule has quiesced: every accepted
//! event ends exactly once per life (its first, and one more for each reopen an
//! operator or a replay's rerun made), under the id its producer knows, with a status
//! its oracle allows, and with exactly one dead letter for each `FAILED` or `REJECTED`
//! end; nothing is left unannounced, or non-terminal without a message in a
//! dead-letter queue that `dlq list` shows; every saga effect took effect once and
//! was undone in reverse.

use crate::producer::Sent;
use crate::sqs::Sqs;
use crate::world::World;
use crate::Outcome;
use jobs_core::messages::{DeadLetter, JobStatus, Notification};
use jobs_core::redrive::Stranded;
use jobs_core::store::{MemoryStore, Progress};
use jobs_core::testing::MemoryTopic;
use jobs_core::Timestamp;
use std::collections::{BTreeMap, HashMap};

/// What a quiesced schedule left for the checker.
#[derive(Debug)]
pub struct Seen<'a> {
    pub world: &'a World,
    pub sqs: &'a Sqs,
    pub topic: &'a MemoryTopic,
    pub store: &'a MemoryStore,
    pub sent: &'a [Sent],
    pub strict_from: Option<Timestamp>,
}

/// The end a dead letter is of: the `notification_id` of the end it was written for.
fn letter_key(dl: &DeadLetter) -> String {
    Notification::for_dead_letter(dl, Timestamp::UNIX_EPOCH).notification_id()
}

/// A notification as its subscribers read it: its body on the topic, whole.
fn content(n: &Notification) -> String {
    jobs_core::record::notification_message(n).body
}

fn describe(n: &Notification) -> String {
    let codes: Vec<&str> = n.errors.iter().map(|e| e.code.as_str()).collect();
    format!(
        "{} by {} at attempt {} [{}]{}",
        n.status.as_str(),
        n.stage.as_str(),
        n.attempts,
        codes.join(","),
        n.replay
            .as_ref()
            .map(|r| format!(" replay {}{}", r.name, if r.rerun { " rerun" } else { "" }))
            .unwrap_or_default()
    )
}

/// Checks a quiesced schedule.
pub fn check(seen: &Seen<'_>) -> Outcome {
    let mut violations = Vec::new();
    let notes = seen.topic.notifications();
    let letters: Vec<(DeadLetter, Timestamp)> = seen
        .sqs
        .accepted("dead-letter-queue")
        .iter()
        .filter_map(|m| Some((serde_json::from_str(&m.body).ok()?, m.sent_at)))
        .collect();
    let end_marks: Vec<(String, Timestamp)> = seen
        .store
        .marks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(mark, at)| (mark.end.clone(), *at))
        .collect();
    // Which producer's job an id names: its own id, or one of its events' ids.
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, s) in seen.sent.iter().enumerate() {
        owner.insert(&s.job_id, i);
        for e in &s.event_ids {
            owner.entry(e).or_insert(i);
        }
    }
    // Each job's ends, one per notification id; a second notification of one id is a
    // copy (the design cannot always publish once), which must say the same.
    let mut by_job: BTreeMap<usize, Vec<&Notification>> = BTreeMap::new();
    let mut first: HashMap<String, &Notification> = HashMap::new();
    let mut copies = 0;
    for n in &notes {
        let id = n.notification_id();
        if let Some(earlier) = first.get(&id) {
            copies += 1;
            if content(earlier) != content(n) {
                violations.push(format!(
                    "job {}: two notifications {id} that differ: {} and {}",
                    n.job_id,
                    describe(earlier),
                    describe(n)
                ));
            }
            continue;
        }
        first.insert(id, n);
        match owner.get(n.job_id.as_str()) {
            Some(&i) => by_job.entry(i).or_default().push(n),
            None => violations.push(format!(
                "a notification under the id {:?}, which no producer knows: {}",
                n.job_id,
                describe(n)
            )),
        }
    }
    let reopened = seen
        .store
        .reopened
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let marks: Vec<String> = seen
        .store
        .replays
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .marks
        .keys()
        .map(|(_, job)| job.clone())
        .collect();
    let waiting = waiting_in_dlq(seen.sqs);
    let mut lives = 0;
    let mut letter_copies = 0;
    for (i, sent) in seen.sent.iter().enumerate() {
        let id = sent.job_id.as_str();
        let ends = by_job.get(&i).cloned().unwrap_or_default();
        let reopens = reopened.iter().filter(|(j, _)| j == id).count()
            + marks.iter().filter(|j| *j == id).count();
        lives += reopens + 1;
        let pending = waiting.contains_key(id);
        let said: Vec<String> = ends.iter().map(|n| describe(n)).collect();
        if ends.len() == reopens + 1 || (ends.len() == reopens && pending) {
            if let Some(last) = ends.last() {
                if !allowed(seen, sent, last) {
                    violations.push(format!(
                        "job {id} ended {}, its oracle says {:?}: {}",
                        last.status.as_str(),
                        sent.expect,
                        said.join("; ")
                    ));
                }
            }
        } else {
            violations.push(format!(
                "job {id}: {} end(s) for {} li(fe|ves){}: [{}]",
                ends.len(),
                reopens + 1,
                if pending { " (one waits in a DLQ)" } else { "" },
                said.join("; ")
            ));
        }
        letter_copies += check_letters(id, &ends, &letters, &end_marks, &mut violations);
    }
    check_records(seen.store, &waiting, &mut violations);
    for (job, stage) in seen
        .store
        .stale_claims
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        violations.push(format!(
            "job {job}: claimed at the {} twice at once (two copies in one batch)",
            stage.as_str()
        ));
    }
    check_sagas(seen.store, &mut violations);
    Outcome {
        seed: 0,
        copies,
        letter_copies,
        lives,
        violations,
        trace: seen.world.trace(),
    }
}

/// Whether the status a job ended with is one its oracle allows.
fn allowed(seen: &Seen<'_>, sent: &Sent, last: &Notification) -> bool {
    if sent.expect.contains(&last.status) {
        return true;
    }
    // A job that fails its first k attempts completes on a later one, also when an
    // operator runs it again after it failed for good.
    let fails_first = sent.detail["fault"]["fail_attempts"].as_u64();
    if last.status == JobStatus::Completed
        && fails_first.is_some_and(|k| u64::from(last.attempts) > k)
    {
        return true;
    }
    let code = last.errors.last().map_or("", |e| e.code.as_str());
    match last.status {
        JobStatus::Rejected => sent.strict_rejects && seen.strict_from.is_some(),
        // A dependency out past the retry schedule fails a valid job's forward; a long
        // job claimed late has no budget left.
        JobStatus::Failed => {
            code == "forward_failed"
                || (code == "deadline_exceeded" && sent.detail["job_type"] == "long_running_job")
        }
        _ => false,
    }
}

/// Exactly one dead letter for each `FAILED` or `REJECTED` end, none for another. A
/// second copy only where no mark of its end landed since the copy before: the stage
/// could not know the first was stored (a lost `SendMessageBatch` answer, window 6; a
/// crash or a refused mark between the letter and its mark). A copy stored after the
/// end was marked is a violation. The copies it allowed.
fn check_letters(
    id: &str,
    ends: &[&Notification],
    letters: &[(DeadLetter, Timestamp)],
    marks: &[(String, Timestamp)],
    out: &mut Vec<String>,
) -> usize {
    let owed: Vec<String> = ends
        .iter()
        .filter(|n| matches!(n.status, JobStatus::Failed | JobStatus::Rejected))
        .map(|n| n.notification_id())
        .collect();
    let mut have: BTreeMap<String, Vec<Timestamp>> = BTreeMap::new();
    for (dl, at) in letters.iter().filter(|(dl, _)| dl.job_id == id) {
        have.entry(letter_key(dl)).or_default().push(*at);
    }
    let mut allowed = 0;
    for (key, times) in &mut have {
        if !owed.contains(key) {
            out.push(format!(
                "job {id}: a dead letter of an end never announced ({key})"
            ));
            continue;
        }
        times.sort();
        for pair in times.windows(2) {
            let marked = marks
                .iter()
                .any(|(end, at)| end == key && pair[0] <= *at && *at < pair[1]);
            if marked {
                out.push(format!(
                    "job {id}: its dead letter stored again at {} after its end was marked ({key})",
                    pair[1]
                ));
            } else {
                allowed += 1;
            }
        }
    }
    for key in &owed {
        if !have.contains_key(key) {
            out.push(format!("job {id}: no dead letter for its end {key}"));
        }
    }
    allowed
}

/// The jobs that have a message in a dead-letter queue now, as `dlq list` shows them.
fn waiting_in_dlq(sqs: &Sqs) -> BTreeMap<String, usize> {
    let mut waiting = BTreeMap::new();
    for q in ["dead-letter-queue", "dead-letter-queue.fifo"] {
        for m in sqs.messages(q) {
            let id = serde_json::from_str::<DeadLetter>(&m.body)
                .map(|dl| dl.job_id)
                .ok()
                .or_else(|| Stranded::of(&m.body).and_then(|s| s.job_id().map(str::to_owned)));
            if let Some(id) = id {
                *waiting.entry(id).or_insert(0) += 1;
            }
        }
    }
    waiting
}

/// No end left unannounced, no record left in flight unless `dlq list` shows its job.
fn check_records(store: &MemoryStore, waiting: &BTreeMap<String, usize>, out: &mut Vec<String>) {
    let records = store.records.lock().unwrap_or_else(|e| e.into_inner());
    let mut keys: Vec<_> = records.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let r = &records[&key];
        match r.progress {
            Progress::Done(Some(_)) if !r.announced => out.push(format!(
                "job {}: its {} end {} was never announced",
                r.job_id,
                r.stage.as_str(),
                r.progress.as_str()
            )),
            Progress::InProgress | Progress::Retrying if !waiting.contains_key(&r.job_id) => {
                out.push(format!(
                    "job {}: left {} at the {} at attempt {}, and no DLQ message shows it",
                    r.job_id,
                    r.progress.as_str(),
                    r.stage.as_str(),
                    r.attempt
                ));
            }
            _ => {}
        }
    }
}

/// A saga step's index, and when it took effect and was undone (ns), if it was.
type StepTimes = (u32, Option<i64>, Option<i64>);

/// Each saga effect took effect at most once per key (a key is a job, run and step);
/// where a run was compensated, every step that took effect was undone, in reverse.
fn check_sagas(store: &MemoryStore, out: &mut Vec<String>) {
    let sagas = store.sagas.lock().unwrap_or_else(|e| e.into_inner());
    let mut runs: BTreeMap<(String, String), Vec<StepTimes>> = BTreeMap::new();
    for (key, effect) in &sagas.effects {
        // effect#<job>#<run>#<step>
        let parts: Vec<&str> = key.rsplitn(3, '#').collect();
        let (Some(step), Some(run), Some(job)) = (parts.first(), parts.get(1), parts.get(2)) else {
            continue;
        };
        let step: u32 = step.parse().unwrap_or(0);
        runs.entry(((*job).to_owned(), (*run).to_owned()))
            .or_default()
            .push((step, effect.applied_ns, effect.compensated_ns));
        if effect.compensated_ns.is_some() && effect.undo_calls == 0 {
            out.push(format!("saga {key}: compensated without a request"));
        }
    }
    for ((job, run), mut steps) in runs {
        steps.sort_unstable();
        let compensated = steps.iter().any(|s| s.2.is_some());
        if !compensated {
            continue;
        }
        for s in &steps {
            if s.1.is_some() && s.2.is_none() {
                out.push(format!(
                    "saga {job} run {run}: step {} took effect and was never undone",
                    s.0
                ));
            }
        }
        let undone: Vec<(u32, i64)> = steps.iter().filter_map(|s| s.2.map(|t| (s.0, t))).collect();
        if undone.windows(2).any(|w| w[0].1 < w[1].1) {
            out.push(format!(
                "saga {job} run {run}: compensations not in reverse order: {undone:?}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobs_core::messages::{ErrorEntry, Stage};
    use jobs_core::store::{Mark, Marked};
    use serde_json::json;

    fn sent(id: &str, expect: JobStatus) -> Sent {
        Sent {
            job_id: id.to_owned(),
            event_ids: vec![format!("evt-{id}")],
            detail: json!({"id": id, "job_type": "data_cleanup"}),
            expect: vec![expect],
            strict_rejects: false,
        }
    }

    fn rejected(id: &str, at: i64) -> (Notification, DeadLetter) {
        let when = Timestamp::from_timestamp(1_800_000_000 + at, 0).expect("a time");
        let error = ErrorEntry::new(Stage::Ingester, "missing_field".into(), "no", 1, when);
        let dl = DeadLetter::new(id.into(), None, JobStatus::Rejected, error, json!({}));
        (Notification::for_dead_letter(&dl, when), dl)
    }

    /// Checks what the topic and the DLQ got, for the jobs sent.
    fn verdict(sent: &[Sent], notes: &[Notification], letters: &[DeadLetter]) -> Vec<String> {
        verdict_marked(sent, notes, letters, false)
    }

    /// [`verdict`], with each end marked (`marked`) right after its first letter.
    fn verdict_marked(
        sent: &[Sent],
        notes: &[Notification],
        letters: &[DeadLetter],
        marked: bool,
    ) -> Vec<String> {
        let start = Timestamp::from_timestamp(1_800_000_000, 0).expect("a time");
        let world = World::new(7, start, std::time::Duration::from_secs(1));
        world.calm_down();
        let sqs = Sqs::new(std::sync::Arc::clone(&world));
        let store = MemoryStore::default();
        for (i, dl) in letters.iter().enumerate() {
            sqs.enqueue(
                "dead-letter-queue",
                &jobs_core::record::dead_letter_message(dl),
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
            if marked && i == 0 {
                let end = letter_key(dl);
                let mark = Mark::new(&dl.job_id, dl.stage, &end, Marked::LetterStored);
                let mut marks = store.marks.lock().expect("lock");
                marks.push((mark, jobs_core::clock::now()));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        let topic = MemoryTopic::default();
        topic
            .published
            .lock()
            .expect("lock")
            .extend(notes.iter().cloned());
        let seen = Seen {
            world: &world,
            sqs: &sqs,
            topic: &topic,
            store: &store,
            sent,
            strict_from: None,
        };
        check(&seen).violations
    }

    #[test]
    fn one_end_with_its_one_letter_passes_and_its_copy_is_a_copy() {
        let (n, dl) = rejected("j1", 0);
        let jobs = [sent("j1", JobStatus::Rejected)];
        assert_eq!(
            verdict(&jobs, std::slice::from_ref(&n), std::slice::from_ref(&dl)),
            Vec::<String>::new()
        );
        let copy = n.clone();
        assert_eq!(
            verdict(&jobs, &[n, copy], &[dl]),
            Vec::<String>::new(),
            "same id, same content"
        );
    }

    #[test]
    fn a_second_end_a_second_letter_a_wrong_status_and_an_unknown_id_are_each_named() {
        let (n, dl) = rejected("j1", 0);
        let (again, dl2) = rejected("j1", 60);
        let jobs = [sent("j1", JobStatus::Rejected)];
        let v = verdict(&jobs, &[n.clone(), again], &[dl.clone(), dl2]);
        assert!(v.iter().any(|v| v.contains("2 end(s) for 1")), "{v:?}");
        let twice = [dl.clone(), dl.clone()];
        let v = verdict(&jobs, std::slice::from_ref(&n), &twice);
        assert!(v.is_empty(), "unmarked, the stage could not know: {v:?}");
        let v = verdict_marked(&jobs, std::slice::from_ref(&n), &twice, true);
        assert!(
            v.iter()
                .any(|v| v.contains("stored again") && v.contains("after its end was marked")),
            "{v:?}"
        );
        let v = verdict(&jobs, std::slice::from_ref(&n), &[]);
        assert!(v.iter().any(|v| v.contains("no dead letter")), "{v:?}");
        let v = verdict(
            &[sent("j1", JobStatus::Completed)],
            std::slice::from_ref(&n),
            std::slice::from_ref(&dl),
        );
        assert!(v.iter().any(|v| v.contains("its oracle says")), "{v:?}");
        let (stranger, _) = rejected("msg-000001", 0);
        let v = verdict(&jobs, &[n.clone(), stranger], std::slice::from_ref(&dl));
        assert!(
            v.iter().any(|v| v.contains("which no producer knows")),
            "{v:?}"
        );
        // A copy rebuilt later says another time: subscribers see two bodies.
        let mut later = n.clone();
        later.timestamp += chrono::TimeDelta::seconds(5);
        let v = verdict(&jobs, &[n.clone(), later], std::slice::from_ref(&dl));
        assert!(v.iter().any(|v| v.contains("that differ")), "{v:?}");
        let mut changed = n.clone();
        changed.job_type = Some("other".into());
        let v = verdict(&jobs, &[n, changed], &[dl]);
        assert!(v.iter().any(|v| v.contains("that differ")), "{v:?}");
        assert!(verdict(&jobs, &[], &[])
            .iter()
            .any(|v| v.contains("0 end(s) for 1")));
    }
}
