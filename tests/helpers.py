"""What the end-to-end tests share beyond the stack tool: the settings they assert against,
read from terraform/pipeline.json so that no test restates a setting's value, and the few
moves several tests make on a running stack.

The helpers that read a stack back (`stk.await_end_states`, `stk.drain`, `stk.queue_depth`,
`stk.generate`, `stk.parse_time`) are not here: they live in stack/traffic.py, because the
CLI, compose_smoke.py and bench/run.py use them too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, TypeVar

import stack as stk

T = TypeVar("T")

SETTINGS = stk.load_settings()
INGESTER_QUEUE = SETTINGS["functions"]["ingester"]["source_queue"]
JOBS_TODO = SETTINGS["functions"]["processor"]["source_queue"]
WORK_QUEUES = (INGESTER_QUEUE, JOBS_TODO)
DEAD_LETTER_QUEUE = SETTINGS["dead_letter_queue"]
EVENT_BUS = SETTINGS["event_bus"]
_PROCESSOR_ENV = SETTINGS["functions"]["processor"]["environment"]
MAX_ATTEMPTS = int(_PROCESSOR_ENV["MAX_ATTEMPTS"])
RETRY_BASE_DELAY_SECONDS = int(_PROCESSOR_ENV["RETRY_BASE_DELAY_SECONDS"])
DEADLINE_MARGIN_SECONDS = int(_PROCESSOR_ENV["DEADLINE_MARGIN_MS"]) // 1000
# The longest job timeout the ingester accepts.
MAX_JOB_SECONDS = int(SETTINGS["functions"]["ingester"]["environment"]["MAX_JOB_TIMEOUT_SECONDS"])


def onboarding(job_id: str, **extra) -> dict:
    """A valid job that completes at once; `extra` adds fields (e.g. `fault=`)."""
    return {"id": job_id, "job_type": "user_onboarding", "message": {"user_id": job_id, "user_name": "Ada"}, **extra}


def put_jobs(stack: stk.Stack, details: list[dict]) -> None:
    """Publishes each job detail as the generator does: on the bus, from the source the rule matches."""
    events = stack.client("events")
    source = stack.settings["rule"]["event_pattern"]["source"][0]
    for i in range(0, len(details), 10):
        entries = [
            {"Source": source, "DetailType": "JobEvent", "Detail": json.dumps(d), "EventBusName": stack.settings["event_bus"]}
            for d in details[i : i + 10]
        ]
        out = events.put_events(Entries=entries)
        assert out["FailedEntryCount"] == 0, out


def state_record(stack: stk.Stack, stage: str, job_id: str) -> dict | None:
    """A stage's record of a job in the state table, its values unwrapped; None if there is none."""
    item = stack.client("dynamodb").get_item(
        TableName=stack.settings["state_table"], Key={"pk": {"S": f"{stage}#{job_id}"}}, ConsistentRead=True
    ).get("Item")
    return item and {k: next(iter(v.values())) for k, v in item.items()}


def set_polling(stack: stk.Stack, function: str, enabled: bool) -> None:
    """Turns the function's event source mappings off (its messages wait in its queue) or on."""
    lam = stack.client("lambda")
    for m in lam.list_event_source_mappings(FunctionName=function)["EventSourceMappings"]:
        lam.update_event_source_mapping(UUID=m["UUID"], Enabled=enabled)


def wait_for(what: str, check: Callable[[], T], timeout: float, every: float = 1) -> T:
    """Calls `check` every `every` seconds until it returns something true, and returns that;
    fails the test, naming `what`, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def workers_of(stack: stk.Stack, function: str) -> list[int]:
    """Pids of this stack's worker processes running `function` (by its marker, as `down`)."""
    marker = (stack.state_dir / "stack-id").read_text().strip()
    found = []
    for pid in stk.marked_pids(marker):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"AWS_LAMBDA_FUNCTION_NAME={function}".encode() in env:
            found.append(pid)
    return found


def dead_letters_of(stack: stk.Stack, job_ids: set[str]) -> list[dict]:
    """Every message in the DLQ about these jobs, read without taking it: each is made
    visible again at once, so the queue is left as it was."""
    sqs = stack.client("sqs")
    url = stack.resources["queues"][DEAD_LETTER_QUEUE]
    seen: dict[str, dict] = {}
    # Received messages stay hidden, so each receive brings new ones until none is left
    # (bounded: 200 receives is 2,000 messages).
    for _ in range(200):
        out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=30)
        fresh = [m for m in out.get("Messages", []) if m["MessageId"] not in seen]
        if not fresh:
            break
        for m in fresh:
            seen[m["MessageId"]] = m
    for m in seen.values():
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    bodies = [json.loads(m["Body"]) for m in seen.values()]
    return [b for b in bodies if b.get("job_id") in job_ids]


def expected_end(sent: dict) -> tuple[str, str | None, int]:
    """(status, last error code, number of errors) a generator manifest line promises."""
    if sent["expected_rejection"]:
        return "REJECTED", sent["expected_rejection"], 1
    if isinstance(sent["detail"], dict) and "fault" in sent["detail"]:
        return "COMPLETED", None, MAX_ATTEMPTS - 1  # fails twice, then completes
    return "COMPLETED", None, 0
