"""The outbox relay on the embedded stack, run by its schedule as `make up` deploys it
(telemetry on): ends recorded but never announced, whose SQS messages are then lost,
are announced once by the relay, with their dead letter; a relay killed after it took
ends leaves them to its next run, which announces each once.

On a stack with short timeouts (processor 30 s, relay 45 s) so that a lease ends in
seconds, not the production 15 minutes. MiniStack runs `rate(1 minute)` rules once a
minute, so each test waits a minute or two.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

import otlp_receiver
import stack as stk
from helpers import (
    DEADLINE_MARGIN_SECONDS, INGESTER_QUEUE, JOBS_TODO, dead_letters_of, onboarding, put_jobs, set_polling, state_record,
    wait_for, workers_of,
)

PROCESSOR_TIMEOUT = 30
RELAY_TIMEOUT = 45
# A lease is the holder's deadline; the relay waits 30 s more (clock skew), and runs
# once a minute: an end is relayed at most about two minutes after it was recorded.
RELAYED_WITHIN = PROCESSOR_TIMEOUT + 30 + 60 + RELAY_TIMEOUT + 60


def relay_settings() -> dict:
    s = stk.load_settings()
    s["functions"]["processor"]["timeout_seconds"] = PROCESSOR_TIMEOUT
    s["queues"][JOBS_TODO]["visibility_timeout_seconds"] = 6 * PROCESSOR_TIMEOUT
    s["functions"]["ingester"]["environment"]["MAX_JOB_TIMEOUT_SECONDS"] = str(PROCESSOR_TIMEOUT - DEADLINE_MARGIN_SECONDS)
    s["relay"]["timeout_seconds"] = RELAY_TIMEOUT
    # A relay call may take 8 s before the relay gives up on it: the kill below comes
    # while the relay waits on its publish, not after it moved on. (A pass then needs
    # 41 s: five call timeouts and a second.)
    s["relay"]["environment"]["CALL_TIMEOUT_MS"] = "8000"
    return s


@pytest.fixture(scope="module")
def relayed(start_stack):
    with start_stack("relay", receiver=True, proxy=True, settings=relay_settings()) as (stack, proxy):
        yield stack, proxy


def purge(stack: stk.Stack, *queues: str) -> None:
    """What an operator's PurgeQueue does: every message goes, in flight or not."""
    sqs = stack.client("sqs")
    for name in queues:
        sqs.purge_queue(QueueUrl=stack.resources["queues"][name])


def lose_messages(stack: stk.Stack, *queues: str) -> None:
    """Stops both functions polling, lets any invocation still running finish (its
    record goes back to its queue), then purges the queues: no message of these jobs
    will ever be delivered again. Polling resumes on queues now empty of them."""
    for function in ("ingester", "processor"):
        set_polling(stack, function, False)
    time.sleep(PROCESSOR_TIMEOUT + 5)
    purge(stack, *queues)
    for function in ("ingester", "processor"):
        set_polling(stack, function, True)


def unannounced_end(stack: stk.Stack, stage: str, job_id: str, status: str) -> bool:
    record = state_record(stack, stage, job_id) or {}
    return record.get("progress") == status and record.get("announced") is False


def test_ends_whose_messages_were_purged_are_announced_once_by_the_relay(relayed):
    """A valid job completes but cannot be announced (SNS refuses its notification), and a
    malformed one is rejected but neither its dead letter nor its notification goes out.
    Both records are recorded ends; then both queues are purged, so no SQS message will
    ever come back for them. The relay announces each once, stores the rejection's one
    dead letter with the job as sent, and does it in the job's trace."""
    stack, proxy = relayed
    run = uuid.uuid4().hex[:8]
    valid, bad = f"lost-ok-{run}", f"lost-bad-{run}"
    bad_detail = {"id": bad, "job_type": "report_generation", "message": {"filters": "a=1"}}
    proxy.set_rules([
        {"service": "sns", "body_contains": run, "refuse": True},
        {"service": "sqs", "action": ["SendMessage", "SendMessageBatch"], "body_contains": bad, "status": 503},
    ])
    put_jobs(stack, [onboarding(valid), bad_detail])
    wait_for("both ends recorded and unannounced", lambda: unannounced_end(stack, "processor", valid, "COMPLETED")
             and unannounced_end(stack, "processor", bad, "REJECTED"), timeout=90)
    lose_messages(stack, INGESTER_QUEUE, JOBS_TODO)
    proxy.clear()

    notes = stk.await_end_states(stack, {valid, bad}, timeout=RELAYED_WITHIN, linger=10)
    ended = sorted((n["job_id"], n["status"], n["stage"], [e["code"] for e in n["errors"]]) for n in notes)
    assert ended == [
        (bad, "REJECTED", "ingester", ["missing_field"]),
        (valid, "COMPLETED", "processor", []),
    ], notes
    letters = dead_letters_of(stack, {valid, bad})
    assert [(d["job_id"], d["status"], d["job"]) for d in letters] == [(bad, "REJECTED", bad_detail)], letters
    for stage, job_id in (("processor", valid), ("processor", bad)):
        record = state_record(stack, stage, job_id)
        assert record["announced"] is True and "outbox" not in record, record

    def relay_span_in_trace():
        traces = otlp_receiver.job_traces(otlp_receiver.read(stack.state_dir), valid)
        trace = next(iter(traces.values())) if len(traces) == 1 else []
        relay = [s for s in trace if (s["service"], s["name"]) == ("relay", "relay processor")]
        return (trace, relay) if relay else None

    trace, relay = wait_for("the relay's span in the job's trace", relay_span_in_trace, timeout=30)
    by_id = {s["span_id"]: s for s in trace}
    parent = by_id.get(relay[0]["parent_span_id"], {})
    assert (parent.get("service"), parent.get("name")) == ("processor", "process jobs-todo"), otlp_receiver.waterfall(trace)
    assert relay[0]["attributes"].get("job.status") == "COMPLETED"


def test_a_relay_killed_after_taking_ends_leaves_them_to_its_next_run(relayed):
    """Four completed jobs stranded as above. The relay's publish hangs (and is then
    refused, so nothing goes out); while it hangs, with every end taken by the relay,
    every relay worker is killed. The ends stay held until that relay's deadline; a
    later run takes them again and announces each exactly once."""
    stack, proxy = relayed
    run = uuid.uuid4().hex[:8]
    jobs = [f"killed-{run}-{i}" for i in range(4)]
    proxy.set_rules([{"service": "sns", "body_contains": run, "refuse": True}])
    put_jobs(stack, [onboarding(j) for j in jobs])
    wait_for("every end recorded", lambda: all(unannounced_end(stack, "processor", j, "COMPLETED") for j in jobs),
             timeout=90)
    lose_messages(stack, JOBS_TODO)
    # The relay's next publish waits 25 s, then is refused (and so is any other): time
    # to kill it mid-batch, with nothing published.
    proxy.set_rules([
        {"service": "sns", "body_contains": run, "delay_ms": 25_000, "refuse": True, "times": 1},
        {"service": "sns", "body_contains": run, "refuse": True},
    ])
    since_ms = int(time.time() * 1000)

    def taken_by_relay_now():
        records = [state_record(stack, "processor", j) or {} for j in jobs]
        return all(r.get("holder", "").startswith("relay:") and int(r["updated_ms"]) >= since_ms for r in records)

    wait_for("a relay run to take every end", taken_by_relay_now, timeout=RELAYED_WITHIN, every=0.5)
    time.sleep(1)
    killed = workers_of(stack, "relay")
    assert killed, "no relay worker to kill"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    proxy.clear()
    assert not stk.await_end_states(stack, set(jobs), timeout=5, linger=0), "a killed relay announced nothing"

    notes = stk.await_end_states(stack, set(jobs), timeout=RELAYED_WITHIN, linger=10)
    assert sorted((n["job_id"], n["status"]) for n in notes) == [(j, "COMPLETED") for j in jobs], notes
    for j in jobs:
        assert state_record(stack, "processor", j)["announced"] is True
