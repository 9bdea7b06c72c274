"""Ordered jobs on the stack `make up` starts (telemetry on, fault injection on): jobs that
share an `ordering_key` go through `jobs-todo.fifo` and run one at a time, in the order
the ingester forwarded them, even when some fail and retry; jobs without a key keep
their concurrency.

The order is SQS's: each `process jobs-todo.fifo` span carries the record's sequence
number, and the execute spans of a key, in that order, must follow one another without
overlap. Every job ends once with the status, attempts and history its fault asks for.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

import pytest

import otlp_receiver
import stack as stk
from helpers import MAX_ATTEMPTS, dead_letters_of, put_jobs, state_record

KEYS = 5
PER_KEY = 10


@pytest.fixture(scope="module")
def pipeline(start_stack):
    """The stack as `make up` starts it with FAULT_INJECTION=1 (receiver on)."""
    with start_stack("ordering", receiver=True, fault_injection=True) as stack:
        yield stack


def plan(run: str) -> dict[str, dict]:
    """50 jobs over 5 keys, sent interleaved; every fourth fails once or twice, one
    of each key for good. Each runs for a second, so overlap would show."""
    jobs = {}
    for n in range(PER_KEY):
        for k in range(KEYS):
            fault = None
            if (n + k) % 4 == 1:
                fault = {"fail_attempts": 1 + (n % 2)}
            elif n == 7 and k % 2 == 0:
                fault = {"fail_always": True}
            job_id = f"ord-{run}-k{k}-{n}"
            detail = {"id": job_id, "job_type": "long_running_job", "ordering_key": f"user-{k}-{run}",
                      "message": {"task_name": f"step {n}", "timeout": 1}}
            jobs[job_id] = {**detail, "fault": fault} if fault else detail
    return jobs


def expected(detail: dict) -> tuple[str, int, int]:
    """(status, attempts, errors) the job's fault calls for."""
    fault = detail.get("fault") or {}
    if fault.get("fail_always"):
        return "FAILED", MAX_ATTEMPTS, MAX_ATTEMPTS
    fails = fault.get("fail_attempts", 0)
    return "COMPLETED", fails + 1, fails


def spans_by_job(stack: stk.Stack, ids: set[str]) -> tuple[dict, dict]:
    """Each job's execute spans (oldest first), and its FIFO sequence number."""
    executes, sequence = defaultdict(list), {}
    for s in otlp_receiver.read(stack.state_dir):
        job_id = s["attributes"].get("job.id")
        if job_id not in ids:
            continue
        if s["name"].startswith("execute "):
            executes[job_id].append(s)
        elif s["name"] == "process jobs-todo.fifo" and "job.sequence_number" in s["attributes"]:
            sequence[job_id] = int(s["attributes"]["job.sequence_number"])
    return {j: sorted(v, key=lambda s: s["start_ns"]) for j, v in executes.items()}, sequence


def test_each_keys_jobs_run_one_at_a_time_in_order_through_failures_and_retries(pipeline):
    run = uuid.uuid4().hex[:8]
    jobs = plan(run)
    unkeyed = {f"free-{run}-{i}": {"id": f"free-{run}-{i}", "job_type": "long_running_job",
                                   "message": {"task_name": "free", "timeout": 1}} for i in range(5)}
    put_jobs(pipeline, list(jobs.values()) + list(unkeyed.values()))
    notes = stk.await_end_states(pipeline, set(jobs) | set(unkeyed), timeout=400, linger=5)

    # Every job ends once, as its fault asks; one letter for each that failed for good.
    got = {n["job_id"]: (n["status"], n["attempts"], len(n["errors"])) for n in notes}
    assert len(notes) == len(got), "one end per job"
    want = {j: expected(d) for j, d in jobs.items()} | {j: ("COMPLETED", 1, 0) for j in unkeyed}
    assert got == want
    for n in notes:
        assert [e["attempt"] for e in n["errors"]] == list(range(1, len(n["errors"]) + 1)), n
    letters = dead_letters_of(pipeline, set(jobs))
    assert sorted(d["job_id"] for d in letters) == sorted(j for j, w in want.items() if w[0] == "FAILED")
    assert all(len(d["errors"]) == MAX_ATTEMPTS for d in letters)

    executes, sequence = spans_by_job(pipeline, set(jobs))
    assert set(sequence) == set(jobs), "every keyed job came through jobs-todo.fifo"
    for k in range(KEYS):
        mine = [j for j in jobs if f"-k{k}-" in j]
        # The ingester forwards in rounds, so SQS's order within a key may differ from the
        # send order; it is the order the key's jobs must run in.
        by_sequence = sorted(mine, key=lambda j: sequence[j])
        runs = [(s["start_ns"], s["end_ns"], j) for j in mine for s in executes[j]]
        by_start = [j for _, _, j in sorted(runs)]
        # Each job's attempts, one after another, before the next job's first.
        collapsed = [j for i, j in enumerate(by_start) if i == 0 or by_start[i - 1] != j]
        assert collapsed == by_sequence, f"key {k}: ran in another order than SQS's"
        ordered = sorted(runs)
        overlaps = [(a[2], b[2]) for a, b in zip(ordered, ordered[1:]) if b[0] < a[1]]
        assert not overlaps, f"key {k}: executions overlap: {overlaps}"
        assert len(runs) == sum(want[j][1] for j in mine), "one execute span per attempt"

    # Retries waited in place: nothing was sent to the FIFO queue beyond the forwards,
    # and the unkeyed jobs never went through it.
    assert not any(j in sequence for j in unkeyed)
    for j in jobs:
        record = state_record(pipeline, "processor", j)
        assert record["progress"] == want[j][0] and int(record["attempt"]) == want[j][1], record


def test_a_key_that_sqs_cannot_hold_still_orders_and_a_bad_key_is_rejected(pipeline):
    run = uuid.uuid4().hex[:8]
    key = f"clé {run} ✓"  # not SQS's alphabet: its group is the key's SHA-256
    good = {f"uni-{run}-{n}": {"id": f"uni-{run}-{n}", "job_type": "long_running_job", "ordering_key": key,
                               "message": {"task_name": "x", "timeout": 1}} for n in range(3)}
    bad = {"id": f"badkey-{run}", "job_type": "long_running_job", "ordering_key": "",
           "message": {"task_name": "x", "timeout": 1}}
    put_jobs(pipeline, [*good.values(), bad])
    notes = stk.await_end_states(pipeline, {*good, bad["id"]}, timeout=120, linger=3)
    by_id = {n["job_id"]: n for n in notes}
    assert all(by_id[j]["status"] == "COMPLETED" for j in good)
    rejected = by_id[bad["id"]]
    assert (rejected["status"], rejected["errors"][-1]["code"], rejected["errors"][-1].get("field")) == (
        "REJECTED", "invalid_ordering_key", "ordering_key")
    executes, sequence = spans_by_job(pipeline, set(good))
    assert set(sequence) == set(good)
    starts = sorted((executes[j][0]["start_ns"], j) for j in good)
    assert [j for _, j in starts] == sorted(good, key=lambda j: sequence[j])
