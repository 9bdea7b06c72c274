"""Faults the way AWS shows them, injected between the functions and the emulator by
stack/fault_proxy.py: answers lost after the call took effect, slow calls, throttling.
Each test asserts every affected job's single end state, not counts.

One MiniStack serves the module, started through `stack.up()` as `make up` does
(telemetry on), with only the functions pointed at the proxy.
"""

from __future__ import annotations

import json
import time

import pytest

import stack as stk
from fault_proxy import FaultProxy


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, free_port):
    state = tmp_path_factory.mktemp("faults")
    port = free_port()
    proxy = FaultProxy(f"http://127.0.0.1:{port}")
    url = proxy.start()
    try:
        stack = stk.up(port=port, state_dir=state, use_existing=False, receiver=True, fault_proxy=url)
        try:
            yield stack, proxy
        finally:
            stk.down(state)
    finally:
        proxy.stop()


def put_job(stack: stk.Stack, detail: dict) -> None:
    out = stack.client("events").put_events(
        Entries=[{"Source": "jobs", "DetailType": "JobEvent", "Detail": json.dumps(detail), "EventBusName": "default"}]
    )
    assert out["FailedEntryCount"] == 0, out


def onboarding(job_id: str) -> dict:
    return {"id": job_id, "job_type": "user_onboarding", "message": {"user_id": job_id, "user_name": "Ada"}}


@pytest.mark.parametrize("stage", ["ingester", "processor"])
def test_a_lost_claim_answer_does_not_hold_the_job_until_its_lease_ends(faulty, stage):
    """The claim took effect but its answer was lost (the SDK retries, and its retry
    finds the item it wrote itself). The job must still end once, soon: not after the
    lease (the invocation deadline, up to 900 s for the processor) has run out."""
    stack, proxy = faulty
    job_id = f"lost-claim-{stage}-{int(time.time())}"
    proxy.set_rules([{"service": "dynamodb", "body_contains": f"{stage}#{job_id}", "times": 1, "drop_answer": True}])
    try:
        put_job(stack, onboarding(job_id))
        notes = stk.await_end_states(stack, {job_id}, timeout=60)
    finally:
        proxy.clear()
    dropped = [e for e in proxy.log() if e.get("effect") == "drop_answer"]
    assert dropped, "the fault was never injected: did the claim's request change?"
    assert [(n["status"], n["errors"]) for n in notes] == [("COMPLETED", [])], notes
