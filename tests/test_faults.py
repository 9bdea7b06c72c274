"""Faults the way AWS shows them, injected between the functions and the emulator by
stack/fault_proxy.py: answers lost after the call took effect, slow calls, throttling.
Each test asserts every affected job's single end state, not counts.

One MiniStack serves the module, started through `stack.up()` as `make up` does
(telemetry on), with only the functions pointed at the proxy.
"""

from __future__ import annotations

import time

import pytest

import stack as stk
from helpers import onboarding, put_jobs


@pytest.fixture(scope="module")
def faulty(start_stack):
    with start_stack("faults", receiver=True, proxy=True) as (stack, proxy):
        yield stack, proxy


@pytest.mark.parametrize("stage", ["ingester", "processor"])
def test_a_lost_claim_answer_does_not_hold_the_job_until_its_lease_ends(faulty, stage):
    """The claim took effect but its answer was lost (the SDK retries, and its retry
    finds the item it wrote itself). The job must still end once, soon: not after the
    lease (the invocation deadline, up to 900 s for the processor) has run out. The
    ingester claims only the jobs it rejects, so its case is a rejection."""
    stack, proxy = faulty
    job_id = f"lost-claim-{stage}-{int(time.time())}"
    job = onboarding(job_id)
    expected = [("COMPLETED", [])]
    if stage == "ingester":
        del job["message"]["user_name"]
        expected = [("REJECTED", ["missing_field"])]
    proxy.set_rules([{"service": "dynamodb", "body_contains": f"{stage}#{job_id}", "times": 1, "drop_answer": True}])
    try:
        put_jobs(stack, [job])
        notes = stk.await_end_states(stack, {job_id}, timeout=60)
    finally:
        proxy.clear()
    dropped = [e for e in proxy.log() if e.get("effect") == "drop_answer"]
    assert dropped, "the fault was never injected: did the claim's request change?"
    assert [(n["status"], [e["code"] for e in n["errors"]]) for n in notes] == expected, notes
