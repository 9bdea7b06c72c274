"""Sagas on the stack `make up` starts (telemetry on, fault injection on): a job of several steps, each a
request under its idempotency key to a (simulated) service, whose effects live in the
state table as `effect#<job>#<run>#<step>`.

A saga that completes took each step's effect once, in order, even when a step failed
and was retried. A saga whose step fails for good undid the steps before it in reverse,
each once, left a tombstone on the failed one, and ended FAILED once with one dead
letter whose history holds every attempt's failure and one `compensated` entry per step
undone. Every step and compensation has its span in the job's trace. The crash between
a step and its record is in test_crash.py, on a stack with short timeouts.
"""

from __future__ import annotations

import uuid

import pytest

import otlp_receiver
import stack as stk
from helpers import MAX_ATTEMPTS, dead_letters_of, put_jobs

STEPS = ["create_account", "create_workspace", "send_welcome"]
UNDO = {"create_account": "delete_account", "create_workspace": "close_workspace", "send_welcome": "retract_welcome"}


@pytest.fixture(scope="module")
def pipeline(start_stack):
    """The stack as `make up` starts it with FAULT_INJECTION=1 (receiver on)."""
    with start_stack("saga", receiver=True, fault_injection=True) as stack:
        yield stack


def saga(job_id: str, fault: dict | None = None) -> dict:
    job = {"id": job_id, "job_type": "saga", "message": {"user_id": job_id, "steps": [{"action": a} for a in STEPS]}}
    return {**job, "fault": fault} if fault else job


def effects(stack: stk.Stack, job_id: str, run: int = 1) -> list[dict | None]:
    """The service's record of each step of the job's run, as the table keeps it."""
    db = stack.client("dynamodb")
    out = []
    for step in range(len(STEPS)):
        item = db.get_item(TableName=stack.settings["state_table"], ConsistentRead=True,
                           Key={"pk": {"S": f"effect#{job_id}#{run}#{step}"}}).get("Item")
        out.append(item and {k: next(iter(v.values())) for k, v in item.items()})
    return out


def saga_spans(stack: stk.Stack, job_id: str) -> list[dict]:
    """The job's step and compensation spans, oldest first."""
    spans = otlp_receiver.read(stack.state_dir)
    found = [s for s in spans if s["attributes"].get("job.id") == job_id
             and s["name"].split(" ")[0] in ("step", "compensate")]
    return sorted(found, key=lambda s: s["start_ns"])


def expected_end(failing: int | None, flaky: int | None) -> tuple[str, int, list[tuple[str, str]]]:
    """(status, attempts, history as (code, field)) of a saga failing for good at step
    `failing`, or failing its first two attempts at step `flaky`."""
    if failing is None:
        fails = [] if flaky is None else [("injected_fault", f"message.steps[{flaky}]")] * 2
        return "COMPLETED", 1 if flaky is None else 3, fails
    undone = [("compensated", f"message.steps[{s}]") for s in reversed(range(failing))]
    return "FAILED", MAX_ATTEMPTS, [("injected_fault", f"message.steps[{failing}]")] * MAX_ATTEMPTS + undone


def test_sagas_take_each_effect_once_and_undo_in_reverse_what_a_failed_step_left(pipeline):
    run = uuid.uuid4().hex[:8]
    # job id: (step failing for good, step failing its first two attempts)
    plan = {f"saga-ok-{run}": (None, None), f"saga-flaky-{run}": (None, 1)}
    plan |= {f"saga-fail{s}-{run}": (s, None) for s in range(len(STEPS))}

    def fault(failing, flaky):
        if failing is not None:
            return {"step": failing, "fail_always": True}
        return flaky is not None and {"step": flaky, "fail_attempts": 2} or None

    put_jobs(pipeline, [saga(j, fault(*p)) for j, p in plan.items()])
    notes = stk.await_end_states(pipeline, set(plan), timeout=120, linger=5)

    # One end each, with the status, attempts and history its faults call for.
    got = sorted((n["job_id"], n["status"], n["attempts"], [(e["code"], e.get("field")) for e in n["errors"]])
                 for n in notes)
    assert got == sorted((j, *expected_end(*p)) for j, p in plan.items()), got
    letters = dead_letters_of(pipeline, set(plan))
    assert sorted(d["job_id"] for d in letters) == sorted(j for j, p in plan.items() if p[0] is not None)
    for d in letters:
        status, attempts, history = expected_end(*plan[d["job_id"]])
        assert (d["status"], [(e["code"], e.get("field")) for e in d["errors"]]) == (status, history), d

    for job_id, (failing, flaky) in plan.items():
        found = effects(pipeline, job_id)
        applied = [e is not None and "applied_ns" in e for e in found]
        undone = [e is not None and "compensated_ns" in e for e in found]
        last = len(STEPS) if failing is None else failing
        # Each step before the failing one took effect once, under the attempt that ran it.
        assert applied == [s < last for s in range(len(STEPS))], (job_id, found)
        assert all(found[s]["calls"] == "1" for s in range(last)), (job_id, found)
        if flaky is not None:
            assert [e["attempt"] for e in found] == ["1", "3", "3"], (job_id, found)
        # In order: each step after the one before it.
        times = [int(found[s]["applied_ns"]) for s in range(last)]
        assert times == sorted(times), (job_id, times)
        if failing is None:
            assert undone == [False] * len(STEPS), (job_id, found)
            continue
        # Undone once each, the last done first; the failed step holds a tombstone only.
        assert undone == [s <= failing for s in range(len(STEPS))], (job_id, found)
        assert all(found[s]["undo_calls"] == "1" for s in range(failing + 1)), (job_id, found)
        undo_times = [int(found[s]["compensated_ns"]) for s in reversed(range(failing + 1))]
        assert undo_times == sorted(undo_times), (job_id, undo_times)
        assert effects(pipeline, job_id, run=2) == [None] * len(STEPS)

    # A span per step request and per compensation, in the job's trace, in order.
    for job_id, (failing, flaky) in plan.items():
        spans = saga_spans(pipeline, job_id)
        names = [s["name"] for s in spans]
        if failing is None:
            tries = {flaky: 3} if flaky is not None else {}
            want = [f"step {a}" for s, a in enumerate(STEPS) for _ in range(tries.get(s, 1))]
        else:
            want = [f"step {a}" for a in STEPS[:failing]] + [f"step {STEPS[failing]}"] * MAX_ATTEMPTS
            want += [f"compensate {UNDO[STEPS[s]]}" for s in reversed(range(failing + 1))]
        assert names == want, (job_id, names)
        assert len({s["trace_id"] for s in spans}) == 1, job_id
        ends = [(s["start_ns"], s["end_ns"]) for s in spans]
        assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:])), f"{job_id}: spans overlap"
        failed = [s["attributes"]["saga.step"] for s in spans if s["status"] == "ERROR"]
        assert failed == ([] if failing is None and flaky is None else [failing if flaky is None else flaky] * (
            MAX_ATTEMPTS if failing is not None else 2)), (job_id, failed)
