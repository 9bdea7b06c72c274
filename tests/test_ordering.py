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
from helpers import MAX_ATTEMPTS, dead_letters_of, expected_end, put_jobs, state_record

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


def assert_run_in_sequence(by_key: dict, executes: dict, sequence: dict, attempts: dict) -> None:
    """Each key's execute spans follow SQS's sequence order, a job's attempts together
    and before the next job's first, never overlapping; one span per attempt."""
    for key, mine in by_key.items():
        # The ingester forwards in rounds, so SQS's order within a key may differ from the
        # send order; it is the order the key's jobs must run in.
        by_sequence = sorted(mine, key=lambda j: sequence[j])
        runs = [(s["start_ns"], s["end_ns"], j) for j in mine for s in executes[j]]
        by_start = [j for _, _, j in sorted(runs)]
        collapsed = [j for i, j in enumerate(by_start) if i == 0 or by_start[i - 1] != j]
        assert collapsed == by_sequence, f"key {key}: ran in another order than SQS's"
        ordered = sorted(runs)
        overlaps = [(a[2], b[2]) for a, b in zip(ordered, ordered[1:]) if b[0] < a[1]]
        assert not overlaps, f"key {key}: executions overlap: {overlaps}"
        assert len(runs) == sum(attempts[j] for j in mine), f"key {key}: one execute span per attempt"


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
    by_key = {k: [j for j in jobs if f"-k{k}-" in j] for k in range(KEYS)}
    assert_run_in_sequence(by_key, executes, sequence, {j: w[1] for j, w in want.items()})

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


def test_generated_keyed_traffic_ends_each_job_once_and_each_key_in_order(pipeline, tmp_path):
    """The generator's own mix with every valid job keyed: malformed jobs, flaky ones,
    sagas, and copies of jobs sent again with fresh trace contexts. Every job ends once
    as the manifest promises (status, last code, error count), with a letter only when
    rejected; each key's jobs run in SQS's order, one at a time."""
    sent = stk.generate(
        pipeline, tmp_path / "keyed.jsonl",
        *("--count", "120", "--rate", "40", "--seed", "1602", "--max-job-seconds", "1", "--keys", "6"),
        *("--malformed-ratio", "0.2", "--flaky-ratio", "0.1", "--duplicate-ratio", "0.05", "--saga-ratio", "0.3"),
    )
    delivered = [s for s in sent if s["outcome"] == "sent"]
    first: dict[str, dict] = {}
    for s in delivered:
        first.setdefault(s["job_id"], s)
    keyed = {j: s["detail"]["ordering_key"] for j, s in first.items()
             if isinstance(s["detail"], dict) and isinstance(s["detail"].get("ordering_key"), str)
             and not s["expected_rejection"]}
    kinds = {first[j]["detail"]["job_type"] for j in keyed}
    assert len(first) < len(delivered) and "saga" in kinds and len(set(keyed.values())) == 6, (
        "the mix must hold copies, sagas and every key", kinds)

    notes = stk.await_end_states(pipeline, set(first), timeout=500, linger=5)
    ends: dict[str, list] = defaultdict(list)
    for n in notes:
        ends[n["job_id"]].append((n["status"], n["errors"][-1]["code"] if n["errors"] else None, len(n["errors"])))
    wrong = {}
    for job_id, s in first.items():
        status, code, errors = expected_end(s)
        got = ends.get(job_id, [])
        if len(got) != 1 or got[0][0] != status or (code and got[0][1] != code) or got[0][2] != errors:
            wrong[job_id] = (got, (status, code, errors), s["detail"])
    assert not wrong, f"{len(wrong)} jobs ended otherwise than sent (got, expected, detail): {list(wrong.items())[:3]}"
    rejected = {j for j, s in first.items() if s["expected_rejection"]}
    letters = dead_letters_of(pipeline, set(first))
    assert sorted(d["job_id"] for d in letters) == sorted(rejected), "one letter per rejection, none else"

    executes, sequence = spans_by_job(pipeline, set(keyed))
    assert set(sequence) == set(keyed), "every keyed job came through jobs-todo.fifo, once forwarded"
    by_key: dict[str, list] = defaultdict(list)
    for j, key in keyed.items():
        by_key[key].append(j)
    assert_run_in_sequence(by_key, executes, sequence, {j: ends[j][0][2] + 1 for j in keyed})
