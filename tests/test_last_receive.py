"""A forward whose answer is lost on a record's last receive: SQS took the job, the
ingester saw an error. Whatever the ingester then decides must agree with what the
processor does with the copy that did reach jobs-todo: one end state, one dead letter at
most (functions/core/src/store/mod.rs `Stop`).

The stack runs as `make up` runs it (telemetry on), with the functions behind
stack/fault_proxy.py, and `ingester-queue` gives up after 2 receives instead of 5, so
the last receive comes 15 s after the first instead of 20 minutes.
"""

from __future__ import annotations

import json
import time

import pytest

import stack as stk
from helpers import DEAD_LETTER_QUEUE, INGESTER_QUEUE, JOBS_TODO, onboarding, put_jobs, set_polling, state_record, wait_for

RECEIVES = 2


def lose_forward_answers(stack: stk.Stack) -> list[dict]:
    """Every forward to jobs-todo takes effect and loses its answer (the SDK's retries
    too); matched by the queue's URL, since the dead letter's error names jobs-todo too."""
    url = stack.resources["queues"][JOBS_TODO]
    return [{"service": "sqs", "action": "SendMessageBatch", "body_contains": f'"QueueUrl":"{url}"', "drop_answer": True}]


def few_receives() -> dict:
    s = stk.load_settings()
    s["queues"][INGESTER_QUEUE]["max_receive_count"] = RECEIVES
    return s


@pytest.fixture(scope="module")
def lossy(start_stack):
    with start_stack(
        "last-receive", receiver=True, proxy=True, settings=few_receives(), min_receive_count=RECEIVES
    ) as (stack, proxy):
        yield stack, proxy


def dead_letters(stack: stk.Stack) -> list[dict]:
    sqs = stack.client("sqs")
    url = stack.resources["queues"][DEAD_LETTER_QUEUE]
    return [json.loads(m["Body"]) for m in stk.drain(sqs, url, wait=2)]


def ends(notes: list[dict]) -> list[tuple[str, list[str]]]:
    return [(n["status"], [e["code"] for e in n["errors"]]) for n in notes]


def test_an_unforwarded_job_ends_failed_once_and_its_forwarded_copies_never_run(lossy):
    """The processor is not polling while the ingester gives up, so the copies wait on
    jobs-todo; once it polls again they must be dropped, not run and announced."""
    stack, proxy = lossy
    job_id = f"unforwarded-{int(time.time())}"
    set_polling(stack, "processor", False)
    try:
        proxy.set_rules(lose_forward_answers(stack))
        try:
            put_jobs(stack, [onboarding(job_id)])
            notes = stk.await_end_states(stack, {job_id}, timeout=120)
        finally:
            proxy.clear()
        lost = [e for e in proxy.log() if e.get("effect") == "drop_answer"]
        assert len(lost) >= RECEIVES, f"expected a lost forward on each of {RECEIVES} receives: {lost}"
        assert ends(notes) == [("FAILED", ["forward_failed"])], notes
        letters = [d for d in dead_letters(stack) if d["job_id"] == job_id]
        assert [(d["status"], d["errors"][-1]["code"]) for d in letters] == [("FAILED", "forward_failed")], letters
        stop = state_record(stack, "processor", job_id)
        assert stop and (stop["progress"], stop["attempt"], stop["announced"]) == ("FAILED", "0", True), stop
        assert state_record(stack, "ingester", job_id) is None, "a forwarded job has no ingester record"
    finally:
        set_polling(stack, "processor", True)

    sqs = stack.client("sqs")
    todo = stack.resources["queues"][JOBS_TODO]
    wait_for("jobs-todo to be drained", lambda: stk.queue_depth(sqs, todo) == 0, timeout=90)
    later = stk.await_end_states(stack, {job_id}, timeout=5, linger=5)
    assert later == [], f"a forwarded copy was run and announced: {later}"
    assert state_record(stack, "processor", job_id)["progress"] == "FAILED"


def test_a_job_the_processor_ran_before_the_last_receive_ends_completed_once(lossy):
    """The first lost forward reaches the processor at once and completes; the ingester's
    last receive must find the processor's record and leave the job to it, not FAILED."""
    stack, proxy = lossy
    job_id = f"forwarded-{int(time.time())}"
    sqs = stack.client("sqs")
    source = stack.resources["queues"][INGESTER_QUEUE]
    lost_forwards = lambda: [e for e in proxy.log() if e.get("effect") == "drop_answer"]  # noqa: E731
    before = len(lost_forwards())
    proxy.set_rules(lose_forward_answers(stack))
    try:
        put_jobs(stack, [onboarding(job_id)])
        wait_for(
            "the ingester's last receive to leave the job to the processor",
            lambda: len(lost_forwards()) >= before + RECEIVES and stk.queue_depth(sqs, source) == 0,
            timeout=120,
        )
    finally:
        proxy.clear()
    assert state_record(stack, "ingester", job_id) is None, "a forwarded job has no ingester record"
    notes = stk.await_end_states(stack, {job_id}, timeout=30, linger=10)
    assert ends(notes) == [("COMPLETED", [])], notes
    assert [d for d in dead_letters(stack) if d["job_id"] == job_id] == []
    done = state_record(stack, "processor", job_id)
    assert (done["progress"], done["attempt"]) == ("COMPLETED", "1"), done
