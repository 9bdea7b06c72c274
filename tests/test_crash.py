"""A function worker killed in the middle of a job: the job's message comes back after
its visibility timeout, its claim's lease has run out by then, and it runs again and
ends once. On a stack with short timeouts (processor 30 s, jobs-todo visibility 180 s,
the 6x rule kept) so that it takes minutes, not the production hour and a half.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import stack as stk
from helpers import DEADLINE_MARGIN_SECONDS, JOBS_TODO, put_jobs, state_record, wait_for, workers_of

PROCESSOR_TIMEOUT = 30
JOB_SECS = 6


def short_settings() -> dict:
    s = stk.load_settings()
    s["functions"]["processor"]["timeout_seconds"] = PROCESSOR_TIMEOUT
    s["queues"][JOBS_TODO]["visibility_timeout_seconds"] = 6 * PROCESSOR_TIMEOUT
    s["functions"]["ingester"]["environment"]["MAX_JOB_TIMEOUT_SECONDS"] = str(PROCESSOR_TIMEOUT - DEADLINE_MARGIN_SECONDS)
    return s


@pytest.fixture(scope="module")
def short(start_stack):
    # Fault injection on: the saga's test asks for its crash.
    with start_stack("crash", receiver=True, settings=short_settings(), fault_injection=True) as stack:
        yield stack


def test_a_worker_killed_mid_job_leaves_the_job_to_run_again_and_end_once(short):
    job_id = f"crash-{int(time.time())}"
    put_jobs(short, [{"id": job_id, "job_type": "long_running_job", "message": {"task_name": "killed", "timeout": JOB_SECS}}])

    # Wait until the processor holds the job, then kill every processor worker.
    wait_for(
        f"the processor to claim {job_id}",
        lambda: (state_record(short, "processor", job_id) or {}).get("progress") == "IN_PROGRESS",
        timeout=60, every=0.2,
    )
    killed = workers_of(short, "processor")
    assert killed, "no processor worker to kill"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert not stk.await_end_states(short, {job_id}, timeout=JOB_SECS + 2, linger=0), "a killed job cannot end"

    # Back after the visibility timeout, past the dead attempt's lease: runs and ends once.
    notes = stk.await_end_states(short, {job_id}, timeout=6 * PROCESSOR_TIMEOUT + 90)
    assert [(n["status"], n["errors"]) for n in notes] == [("COMPLETED", [])], notes
    assert notes[0]["result"]["ran_for_secs"] == JOB_SECS


def test_a_saga_worker_killed_between_a_step_and_its_record_takes_the_effect_once(short):
    """The job asks its worker to abort right after step 1's request took effect and before
    the saga's log records it (fault injection, first delivery only). Its message comes
    back after the visibility timeout; the step's request goes out again under the same
    idempotency key, the service finds it done, and the saga goes on and ends once."""
    job_id = f"crash-saga-{int(time.time())}"
    steps = ["create_account", "create_workspace", "send_welcome"]
    put_jobs(short, [{"id": job_id, "job_type": "saga", "fault": {"step": 1, "crash": True},
                      "message": {"user_id": job_id, "steps": [{"action": a} for a in steps]}}])

    def effect(step: int) -> dict | None:
        return state_record(short, "effect", f"{job_id}#1#{step}")

    wait_for("step 1 to take effect", lambda: effect(1), timeout=60, every=0.2)
    assert not stk.await_end_states(short, {job_id}, timeout=5, linger=0), "the crashed worker cannot end the job"
    assert (effect(1)["calls"], effect(2)) == ("1", None)
    log = state_record(short, "saga", job_id)
    assert log and '"done":1' in log["log"], log

    notes = stk.await_end_states(short, {job_id}, timeout=6 * PROCESSOR_TIMEOUT + 90)
    assert [(n["status"], n["attempts"], n["errors"]) for n in notes] == [("COMPLETED", 1, [])], notes
    # Step 1 was asked twice and took effect once; the others once each.
    found = [effect(s) for s in range(len(steps))]
    assert [(e["calls"], "applied_ns" in e, "compensated_ns" in e) for e in found] == [
        ("1", True, False), ("2", True, False), ("1", True, False)], found
