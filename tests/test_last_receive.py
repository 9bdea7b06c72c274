"""A forward whose answer is lost on a record's last receive: SQS took the job, the
ingester saw an error. Whatever the ingester then decides must agree with what the
processor does with the copy that did reach jobs-todo: one end state, one dead letter at
most (functions/core/src/store/mod.rs `Unforwarded`).

The stack runs as `make up` runs it (telemetry on), with the functions behind
stack/fault_proxy.py, and `ingester-queue` gives up after 2 receives instead of 5, so
the last receive comes 15 s after the first instead of 20 minutes.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

import stack as stk
from fault_proxy import FaultProxy

RECEIVES = 2


def lose_forward_answers(stack: stk.Stack) -> list[dict]:
    """Every forward to jobs-todo takes effect and loses its answer (the SDK's retries
    too); matched by the queue's URL, since the dead letter's error names jobs-todo too."""
    url = stack.resources["queues"]["jobs-todo"]
    return [{"service": "sqs", "action": "SendMessageBatch", "body_contains": f'"QueueUrl":"{url}"', "drop_answer": True}]


def few_receives(path: Path) -> Path:
    s = copy.deepcopy(stk.load_settings())
    s["queues"]["ingester-queue"]["max_receive_count"] = RECEIVES
    path.write_text(json.dumps(s))
    return path


@pytest.fixture(scope="module")
def lossy(tmp_path_factory, free_port):
    state = tmp_path_factory.mktemp("last-receive")
    settings = few_receives(state / "pipeline.json")
    port = free_port()
    proxy = FaultProxy(f"http://127.0.0.1:{port}")
    url = proxy.start()
    try:
        stack = stk.up(port=port, state_dir=state, use_existing=False, receiver=True, fault_proxy=url,
                       settings_file=settings, min_receive_count=RECEIVES)
        try:
            yield stack, proxy
        finally:
            stk.down(state)
    finally:
        proxy.stop()


def put_job(stack: stk.Stack, job_id: str) -> None:
    detail = {"id": job_id, "job_type": "user_onboarding", "message": {"user_id": job_id, "user_name": "Ada"}}
    out = stack.client("events").put_events(
        Entries=[{"Source": "jobs", "DetailType": "JobEvent", "Detail": json.dumps(detail), "EventBusName": "default"}]
    )
    assert out["FailedEntryCount"] == 0, out


def record(stack: stk.Stack, stage: str, job_id: str) -> dict | None:
    item = stack.client("dynamodb").get_item(
        TableName=stack.settings["state_table"], Key={"pk": {"S": f"{stage}#{job_id}"}}, ConsistentRead=True
    ).get("Item")
    return item and {k: next(iter(v.values())) for k, v in item.items()}


def wait_for(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def dead_letters(stack: stk.Stack) -> list[dict]:
    sqs = stack.client("sqs")
    url = stack.resources["queues"][stack.settings["dead_letter_queue"]]
    return [json.loads(m["Body"]) for m in stk.drain(sqs, url, wait=2)]


def set_processor_polling(stack: stk.Stack, enabled: bool) -> None:
    lam = stack.client("lambda")
    for m in lam.list_event_source_mappings(FunctionName="processor")["EventSourceMappings"]:
        lam.update_event_source_mapping(UUID=m["UUID"], Enabled=enabled)


def ends(notes: list[dict]) -> list[tuple[str, list[str]]]:
    return [(n["status"], [e["code"] for e in n["errors"]]) for n in notes]


def test_an_unforwarded_job_ends_failed_once_and_its_forwarded_copies_never_run(lossy):
    """The processor is not polling while the ingester gives up, so the copies wait on
    jobs-todo; once it polls again they must be dropped, not run and announced."""
    stack, proxy = lossy
    job_id = f"unforwarded-{int(time.time())}"
    set_processor_polling(stack, False)
    try:
        proxy.set_rules(lose_forward_answers(stack))
        try:
            put_job(stack, job_id)
            notes = stk.await_end_states(stack, {job_id}, timeout=120)
        finally:
            proxy.clear()
        lost = [e for e in proxy.log() if e.get("effect") == "drop_answer"]
        assert len(lost) >= RECEIVES, f"expected a lost forward on each of {RECEIVES} receives: {lost}"
        assert ends(notes) == [("FAILED", ["forward_failed"])], notes
        letters = [d for d in dead_letters(stack) if d["job_id"] == job_id]
        assert [(d["status"], d["errors"][-1]["code"]) for d in letters] == [("FAILED", "forward_failed")], letters
        stop = record(stack, "processor", job_id)
        assert stop and (stop["progress"], stop["attempt"]) == ("FAILED", "0"), stop
    finally:
        set_processor_polling(stack, True)

    sqs = stack.client("sqs")
    todo = stack.resources["queues"]["jobs-todo"]
    wait_for("jobs-todo to be drained", lambda: stk.queue_depth(sqs, todo) == 0, timeout=90)
    later = stk.await_end_states(stack, {job_id}, timeout=5, linger=5)
    assert later == [], f"a forwarded copy was run and announced: {later}"
    assert record(stack, "processor", job_id)["progress"] == "FAILED"


def test_a_job_the_processor_ran_before_the_last_receive_ends_completed_once(lossy):
    """The first lost forward reaches the processor at once and completes; the ingester's
    last receive must find the processor's record and record the forward, not FAILED."""
    stack, proxy = lossy
    job_id = f"forwarded-{int(time.time())}"
    proxy.set_rules(lose_forward_answers(stack))
    try:
        put_job(stack, job_id)
        forwarded = wait_for(
            "the ingester's last receive to record the forward",
            lambda: (r := record(stack, "ingester", job_id)) and r["progress"] != "IN_PROGRESS" and r,
            timeout=120,
        )
    finally:
        proxy.clear()
    assert forwarded["progress"] == "FORWARDED", forwarded
    lost = [e for e in proxy.log() if e.get("effect") == "drop_answer"]
    assert len(lost) >= RECEIVES, lost
    notes = stk.await_end_states(stack, {job_id}, timeout=30, linger=10)
    assert ends(notes) == [("COMPLETED", [])], notes
    assert [d for d in dead_letters(stack) if d["job_id"] == job_id] == []
    done = record(stack, "processor", job_id)
    assert (done["progress"], done["attempt"]) == ("COMPLETED", "1"), done
