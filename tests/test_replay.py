"""The archive of job events, replayed with `job-generator replay` over a time window,
on the stack `make up` starts (telemetry on).

Without `--rerun`, every event comes back through the ingester and no job that ended
runs, ends or is dead-lettered again: the ingester finds each ended (a valid job at the
processor's record, a rejection at its own) and drops the copy. With
`--rerun failed,rejected` and `--job-id`, the named FAILED and REJECTED jobs end once
more, under a new attempt, with one new dead letter each and a notification that says
so; the COMPLETED job and the jobs not named do not run; and a copy of a replayed event
changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import otlp_receiver
import stack as stk
from helpers import INGESTER_QUEUE, JOBS_TODO, MAX_JOB_SECONDS, dead_letters_of, onboarding, put_jobs, wait_for

GENERATOR = stk.RELEASE / "job-generator"


def letters_of(stack: stk.Stack, job_ids: set[str]) -> list[tuple[str, str]]:
    """(job id, status) of every dead letter of these jobs; the queue is left as it was."""
    return sorted((d["job_id"], d["status"]) for d in dead_letters_of(stack, job_ids))


def consumer_spans(stack: stk.Stack, job_id: str, queue: str) -> list[dict]:
    """The job's `process <queue>` spans, oldest first: one per delivery."""
    spans = otlp_receiver.read(stack.state_dir)
    found = [s for s in spans if s["attributes"].get("job.id") == job_id and s["name"] == f"process {queue}"]
    return sorted(found, key=lambda s: s["start_ns"])


def jobs_of(run: str) -> dict[str, tuple[dict, str]]:
    """A COMPLETED, a FAILED and a REJECTED job, by id, with the status each ends with."""
    return {
        f"replay-ok-{run}": (onboarding(f"replay-ok-{run}"), "COMPLETED"),
        f"replay-bad-{run}": ({"id": f"replay-bad-{run}", "job_type": "report_generation",
                               "message": {"filters": "a=1"}}, "REJECTED"),
        # Longer than what is left of an invocation after its claim: FAILED at once. Sent
        # in a trace of its own, as the generator sends jobs.
        f"replay-failed-{run}": ({"id": f"replay-failed-{run}", "job_type": "long_running_job",
                                  "message": {"task_name": "t", "timeout": MAX_JOB_SECONDS},
                                  "trace_context": {"traceparent": f"00-{trace_of(run)}-{run}{run}-01"}}, "FAILED"),
    }


def trace_of(run: str) -> str:
    """The trace id the run's FAILED job is sent in."""
    return run * 4


def ended_live(stack: stk.Stack, jobs: dict[str, tuple[dict, str]]) -> tuple[datetime, datetime]:
    """Sends the jobs and waits for each end; the window that holds their events."""
    start = datetime.now(timezone.utc) - timedelta(seconds=2)
    put_jobs(stack, [detail for detail, _ in jobs.values()])
    notes = stk.await_end_states(stack, set(jobs), timeout=90, linger=2)
    assert sorted((n["job_id"], n["status"]) for n in notes) == sorted((j, want) for j, (_, want) in jobs.items())
    return start, datetime.now(timezone.utc) + timedelta(seconds=1)


def replay(stack: stk.Stack, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env(), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(GENERATOR), "replay", *args, "--wait-secs", "60"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def window(start: datetime, end: datetime) -> list[str]:
    return ["--from", start.isoformat(), "--to", end.isoformat()]


def test_a_replayed_window_runs_and_ends_no_job_again(pipeline):
    run = uuid.uuid4().hex[:8]
    jobs = jobs_of(run)
    start, end = ended_live(pipeline, jobs)
    letters = letters_of(pipeline, set(jobs))
    assert letters == sorted((j, want) for j, (_, want) in jobs.items() if want != "COMPLETED")

    out = replay(pipeline, *window(start, end), "--name", f"plain-{run}")
    assert f"replay plain-{run} COMPLETED" in out.stdout

    # Every job's event came through the ingester once more, and was dropped there as
    # a repeat of a job that ended: nothing was forwarded to the processor again...
    wait_for("each replayed event delivered",
             lambda: all(len(consumer_spans(pipeline, j, INGESTER_QUEUE)) >= 2 for j in jobs), timeout=60)
    for job_id in jobs:
        replayed = consumer_spans(pipeline, job_id, INGESTER_QUEUE)[-1]
        assert replayed["attributes"].get("job.repeat") == "duplicate", (job_id, replayed["attributes"])
        assert len(consumer_spans(pipeline, job_id, JOBS_TODO)) <= 1
    # ...and nothing ran, ended or was dead-lettered again.
    again = stk.await_end_states(pipeline, set(jobs), timeout=15, linger=0)
    assert again == [], f"a replayed job that had ended was announced again: {again}"
    assert letters_of(pipeline, set(jobs)) == letters


def test_a_rerun_ends_the_named_failed_and_rejected_jobs_once_more(pipeline):
    run = uuid.uuid4().hex[:8]
    jobs = jobs_of(run)
    # A FAILED job in the window that the replay does not name.
    left_out = f"replay-left-out-{run}"
    jobs[left_out] = ({"id": left_out, "job_type": "long_running_job",
                       "message": {"task_name": "t", "timeout": MAX_JOB_SECONDS}}, "FAILED")
    start, end = ended_live(pipeline, jobs)
    named = [j for j in jobs if j != left_out]
    name = f"fix-{run}"
    ids = [arg for j in named for arg in ("--job-id", j)]
    replay(pipeline, *window(start, end), "--name", name, "--rerun", "failed,rejected", *ids)

    failed, rejected, completed = (f"replay-{k}-{run}" for k in ("failed", "bad", "ok"))
    notes = stk.await_end_states(pipeline, {failed, rejected}, timeout=60, linger=10)
    got = sorted((n["job_id"], n["status"], n["attempts"], n.get("replay")) for n in notes)
    rerun = {"name": name, "rerun": True}
    assert got == sorted([(failed, "FAILED", 2, rerun), (rejected, "REJECTED", 1, rerun)]), got

    # One new dead letter each: the FAILED one with its whole history, both attempts.
    letters = dead_letters_of(pipeline, set(jobs))
    assert sorted((d["job_id"], d["status"]) for d in letters) == sorted(
        [(failed, "FAILED")] * 2 + [(rejected, "REJECTED")] * 2 + [(left_out, "FAILED")]
    )
    newest = [d for d in letters if d["job_id"] == failed and d.get("replay") == rerun]
    assert len(newest) == 1 and [e["attempt"] for e in newest[0]["errors"]] == [1, 2], newest

    # The job not named was dropped at the ingester; the COMPLETED one was not run.
    assert consumer_spans(pipeline, left_out, INGESTER_QUEUE)[-1]["attributes"].get("job.repeat") == "not_replayed"
    assert consumer_spans(pipeline, completed, INGESTER_QUEUE)[-1]["attributes"].get("job.repeat") == "duplicate"
    # The rerun is part of the job's own trace: its archived event carried the context.
    runs = consumer_spans(pipeline, failed, JOBS_TODO)
    assert [r["trace_id"] for r in runs] == [trace_of(run)] * 2, runs

    # A copy of a replayed event (EventBridge delivers at least once) changes nothing.
    sqs = pipeline.client("sqs")
    for job_id in (failed, rejected):
        copy = {"version": "0", "id": f"copy-{job_id}", "detail-type": "JobEvent", "source": "jobs",
                "time": start.isoformat(), "replay-name": name, "detail": jobs[job_id][0]}
        sqs.send_message(QueueUrl=pipeline.resources["queues"][INGESTER_QUEUE], MessageBody=json.dumps(copy))
    wait_for("the copies delivered",
             lambda: all(len(consumer_spans(pipeline, j, INGESTER_QUEUE)) >= 3 for j in (failed, rejected)), timeout=60)
    again = stk.await_end_states(pipeline, set(jobs), timeout=10, linger=0)
    assert again == [], f"a copy of a replayed event ran its job again: {again}"
    again_letters = dead_letters_of(pipeline, set(jobs))
    assert sorted((d["job_id"], d["status"], d["attempts"]) for d in again_letters) == sorted(
        (d["job_id"], d["status"], d["attempts"]) for d in letters
    )
