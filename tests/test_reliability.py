"""Fault tests on the embedded stack: duplicates end once, a consumer that was down
loses nothing, flaky jobs retry with growing delays and keep their error history,
and under mixed load every job id has exactly one end state.

One MiniStack with fault injection on serves the module, started through `stack.up()`
as `make up` does. Every wait is bounded; nothing here depends on a running stack.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from statistics import mean

import pytest

import stack as stk
from helpers import (
    DEAD_LETTER_QUEUE, INGESTER_QUEUE, JOBS_TODO, MAX_ATTEMPTS, RETRY_BASE_DELAY_SECONDS, WORK_QUEUES, expected_end,
    onboarding, put_jobs, set_polling, wait_for,
)

SLACK = 4  # seconds of polling and processing around a retry's delay


@pytest.fixture(scope="module")
def pipeline(start_stack):
    """conftest.py's `pipeline` (as `make up` runs it: telemetry on, so every producer's copy
    of a job carries its own trace context, as it does for users), with fault injection on."""
    with start_stack("reliability", receiver=True, fault_injection=True) as stack:
        yield stack


def processor_log_lines(stack: stk.Stack, job_id: str, text: str) -> int:
    """How many of the functions' log lines about exactly `job_id` contain `text`."""
    needle = f'"job_id":"{job_id}"'
    lines = (stack.state_dir / "ministack.log").read_text(errors="replace").splitlines()
    return sum(1 for line in lines if needle in line and text in line)


def test_duplicates_run_once_and_end_once(pipeline):
    """The same job published three times, and one jobs-todo message delivered three
    times: two copies at once (racing each other), a third after the job ended."""
    enriched = {
        "job_id": "dup-messages", "job_type": "user_onboarding", "status": "NEW",
        "received_at": "2026-11-23T10:00:00.000Z", "attempt": 1, "errors": [],
        "job": onboarding("dup-messages"),
    }
    sqs = pipeline.client("sqs")
    todo = pipeline.resources["queues"][JOBS_TODO]

    def send_copies(n: int) -> None:
        put_jobs(pipeline, [onboarding("dup-events")] * n)
        for _ in range(n):
            sqs.send_message(QueueUrl=todo, MessageBody=json.dumps(enriched))

    send_copies(2)
    notes = stk.await_end_states(pipeline, {"dup-events", "dup-messages"}, timeout=90)
    send_copies(1)
    notes += stk.await_end_states(pipeline, {"dup-events", "dup-messages"}, timeout=15, linger=0)
    per_job = Counter(n["job_id"] for n in notes)
    assert per_job == {"dup-events": 1, "dup-messages": 1}, per_job
    assert all(n["status"] == "COMPLETED" for n in notes), notes
    assert processor_log_lines(pipeline, "dup-events", "job completed") == 1
    assert processor_log_lines(pipeline, "dup-messages", "job completed") == 1


def test_after_a_restart_completed_jobs_are_not_run_again(pipeline):
    """Idempotency lives in the state table, not in a process: the function workers are
    killed between deliveries, then every job is delivered again (as an event and as a
    jobs-todo message), beside new jobs that show the fresh workers do work."""
    before = [onboarding(f"restart-{i}") for i in range(10)]
    put_jobs(pipeline, before)
    first = stk.await_end_states(pipeline, {j["id"] for j in before}, timeout=90)
    assert sorted(n["job_id"] for n in first) == sorted(j["id"] for j in before)

    marker = (pipeline.state_dir / "stack-id").read_text().strip()
    workers = stk.marked_pids(marker)
    assert workers, "the functions' worker processes should be running"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    wait_for("the killed workers to be gone", lambda: not any(stk.alive(p) for p in workers), timeout=10, every=0.2)

    sqs = pipeline.client("sqs")
    todo = pipeline.resources["queues"][JOBS_TODO]
    for j in before:
        enriched = {"job_id": j["id"], "job_type": j["job_type"], "status": "NEW",
                    "received_at": "2026-11-23T10:00:00.000Z", "attempt": 1, "errors": [], "job": j}
        sqs.send_message(QueueUrl=todo, MessageBody=json.dumps(enriched))
    after = [onboarding(f"fresh-{i}") for i in range(3)]
    put_jobs(pipeline, before + after)

    notes = stk.await_end_states(pipeline, {j["id"] for j in before + after}, timeout=90)
    assert sorted(n["job_id"] for n in notes) == sorted(j["id"] for j in after), "only the new jobs end now"
    fresh = set(stk.marked_pids(marker))
    assert fresh and not fresh & set(workers), "new workers did the work"
    for j in before:
        assert processor_log_lines(pipeline, j["id"], "job completed") == 1, j["id"]


def test_a_reused_id_with_other_content_is_rejected_by_name(pipeline):
    put_jobs(pipeline, [onboarding("reused-1")])
    first = stk.await_end_states(pipeline, {"reused-1"}, timeout=60)
    assert [n["status"] for n in first] == ["COMPLETED"]
    other = {"id": "reused-1", "job_type": "report_generation", "message": {"report_name": "R", "filters": "a=b"}}
    put_jobs(pipeline, [other])
    second = stk.await_end_states(pipeline, {"reused-1"}, timeout=60)
    assert [(n["status"], n["errors"][-1]["code"]) for n in second] == [("REJECTED", "job_id_reused")]


def test_flaky_jobs_retry_with_growing_delays_and_keep_their_history(pipeline):
    flaky = [onboarding(f"flaky-{i}", fault={"fail_attempts": 2}) for i in range(5)]
    doomed = [onboarding(f"doomed-{i:02}", fault={"fail_always": True}) for i in range(20)]
    put_jobs(pipeline, flaky + doomed)
    ids = {d["id"] for d in flaky + doomed}
    notes = {n["job_id"]: n for n in stk.await_end_states(pipeline, ids, timeout=180)}
    assert set(notes) == ids

    for d in flaky:
        n = notes[d["id"]]
        assert (n["status"], n["attempts"]) == ("COMPLETED", 3), n
        assert [(e["code"], e["attempt"]) for e in n["errors"]] == [("injected_fault", 1), ("injected_fault", 2)]

    gaps: list[list[float]] = [[], []]
    for d in doomed:
        n = notes[d["id"]]
        assert (n["status"], n["attempts"], len(n["errors"])) == ("FAILED", MAX_ATTEMPTS, MAX_ATTEMPTS), n
        times = [stk.parse_time(e["timestamp"]) for e in n["errors"]]
        for k in range(MAX_ATTEMPTS - 1):
            gap = times[k + 1] - times[k]
            # Full jitter: each wait lies within its doubling ceiling (plus polling).
            assert 0 <= gap <= RETRY_BASE_DELAY_SECONDS * 2**k + SLACK, (d["id"], k, gap)
            gaps[k].append(gap)
    print(f"\nmean wait before attempt 2: {mean(gaps[0]):.2f} s, before attempt 3: {mean(gaps[1]):.2f} s")
    assert mean(gaps[1]) > mean(gaps[0]), gaps

    sqs = pipeline.client("sqs")
    dead = [json.loads(m["Body"]) for m in stk.drain(sqs, pipeline.resources["queues"][DEAD_LETTER_QUEUE], wait=2)]
    doomed_dead = Counter(d["job_id"] for d in dead if d["job_id"].startswith("doomed-"))
    assert doomed_dead == {d["id"]: 1 for d in doomed}, doomed_dead
    assert all(len(d["errors"]) == MAX_ATTEMPTS for d in dead if d["job_id"].startswith("doomed-"))


def test_jobs_sent_while_the_processor_is_down_all_complete(pipeline, tmp_path):
    """The original demo's recovery scenario: the processor's mapping disabled while
    200 jobs arrive, then enabled again."""
    sqs = pipeline.client("sqs")
    set_polling(pipeline, "processor", False)
    try:
        sent = stk.generate(pipeline, tmp_path / "down.jsonl", "--count", "200", "--rate", "100", "--seed", "7",
                        "--max-job-seconds", "1", "--malformed-ratio", "0")
        ids = {s["job_id"] for s in sent if s["outcome"] == "sent"}
        assert len(ids) == 200
        todo = pipeline.resources["queues"][JOBS_TODO]
        wait_for(f"the ingester to forward 200 jobs to {JOBS_TODO}", lambda: stk.queue_depth(sqs, todo) >= 200, timeout=120)
        assert stk.queue_depth(sqs, todo) == 200, "the ingester forwards while the processor is down"
        early = stk.await_end_states(pipeline, ids, timeout=3)
        assert not early, f"{len(early)} jobs ended while the processor was down"
    finally:
        set_polling(pipeline, "processor", True)
    notes = stk.await_end_states(pipeline, ids, timeout=180)
    per_job = Counter(n["job_id"] for n in notes)
    assert set(per_job) == ids and max(per_job.values()) == 1
    assert all(n["status"] == "COMPLETED" for n in notes)


def test_every_job_has_exactly_one_end_state_under_mixed_load(pipeline, tmp_path):
    """2,000 jobs: 20% malformed, 10% flaky, 5% sent twice, each copy with a fresh trace
    context. Every job's status, last error code, error count and dead letters are
    checked against what the generator says it sent."""
    sent = stk.generate(
        pipeline, tmp_path / "load.jsonl",
        *("--count", "2000", "--rate", "200", "--seed", "2026", "--max-job-seconds", "1"),
        *("--malformed-ratio", "0.2", "--flaky-ratio", "0.1", "--duplicate-ratio", "0.05"),
        timeout=600,
    )
    delivered = [s for s in sent if s["outcome"] == "sent"]
    copies: dict[str, list[dict]] = {}
    for s in delivered:
        copies.setdefault(s["job_id"], []).append(s)
    ids = set(copies)
    repeated = {j: c for j, c in copies.items() if len(c) > 1}
    assert repeated and any(expected_end(c[0])[0] == "REJECTED" for c in repeated.values())
    # The copies of a job are the same job sent again, each under its own trace.
    for job_id, c in repeated.items():
        assert len({x["trace_id"] for x in c}) == len(c), f"{job_id}: copies share a trace context"

    notes = stk.await_end_states(pipeline, ids, timeout=600)
    per_job: dict[str, list[dict]] = {}
    for n in notes:
        per_job.setdefault(n["job_id"], []).append(n)
    missing = sorted(ids - set(per_job))
    twice = {j: [(n["status"], n["errors"][-1]["code"] if n["errors"] else None) for n in ns]
             for j, ns in per_job.items() if len(ns) > 1}
    wrong = []
    for job_id, ns in per_job.items():
        status, code, errors = expected_end(copies[job_id][0])
        n = ns[0]
        got = (n["status"], n["errors"][-1]["code"] if n["errors"] else None, len(n["errors"]))
        if got[0] != status or (code and got[1] != code) or got[2] != errors:
            wrong.append((job_id, got, (status, code, errors)))
    counts = Counter(n["status"] for n in notes)
    print(f"\nmixed load: {len(delivered)} sent ({len(delivered) - len(ids)} repeats), {len(ids)} job ids, "
          f"end states {dict(counts)}")
    assert not missing, f"{len(missing)} jobs never ended: {missing[:5]}"
    assert not twice, f"jobs with more than one end state: {list(twice.items())[:5]}"
    assert not wrong, f"{len(wrong)} jobs ended otherwise than sent (job, got, expected): {wrong[:5]}"

    # Exactly one dead letter for each rejected job of this run, and none for the others.
    sqs = pipeline.client("sqs")
    dead = Counter(
        body["job_id"]
        for body in (json.loads(m["Body"]) for m in stk.drain(sqs, pipeline.resources["queues"][DEAD_LETTER_QUEUE], wait=3))
        if body.get("job_id") in ids
    )
    rejected = {j for j, c in copies.items() if expected_end(c[0])[0] == "REJECTED"}
    assert set(dead) == rejected, (sorted(set(dead) ^ rejected)[:5])
    assert all(v == 1 for v in dead.values()), {j: v for j, v in dead.items() if v > 1}
    for name in WORK_QUEUES:
        assert stk.queue_depth(sqs, pipeline.resources["queues"][name]) == 0, f"{name} still holds messages"


def test_records_wait_in_sqs_while_a_dependency_is_down(pipeline):
    """The job state table deleted: the ingester forwards the valid jobs (it keeps no
    record of them), and the processor can claim none, so every record is reported as a
    batch failure and waits in jobs-todo; once the table is back, each job ends once."""
    ddb, sqs = pipeline.client("dynamodb"), pipeline.client("sqs")
    table = pipeline.settings["state_table"]
    ddb.delete_table(TableName=table)
    try:
        jobs = [onboarding(f"outage-{i}") for i in range(20)]
        put_jobs(pipeline, jobs)
        ids = {j["id"] for j in jobs}
        early = stk.await_end_states(pipeline, ids, timeout=10, linger=0)
        assert not early, f"{len(early)} jobs ended without their state table"
        queues = pipeline.resources["queues"]
        held = wait_for(
            f"the records to wait in {JOBS_TODO}",
            lambda: (n := stk.queue_depth(sqs, queues[JOBS_TODO])) == 20 and n,
            timeout=30,
        )
        assert held == 20 and stk.queue_depth(sqs, queues[INGESTER_QUEUE]) == 0
    finally:
        stk.ensure_table(ddb, table, pipeline.settings["outbox_index"])
    notes = stk.await_end_states(pipeline, ids, timeout=150)
    per_job = Counter(n["job_id"] for n in notes)
    assert per_job == {i: 1 for i in ids}, per_job
    assert all(n["status"] == "COMPLETED" for n in notes)
