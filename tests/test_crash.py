"""A function worker killed in the middle of a job: the job's message comes back after
its visibility timeout, its claim's lease has run out by then, and it runs again and
ends once. On a stack with short timeouts (processor 30 s, jobs-todo visibility 180 s,
the 6x rule kept) so that it takes minutes, not the production hour and a half.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import pytest

import stack as stk

PROCESSOR_TIMEOUT = 30
JOB_SECS = 6


def short_settings(path: Path) -> Path:
    s = copy.deepcopy(stk.load_settings())
    s["functions"]["processor"]["timeout_seconds"] = PROCESSOR_TIMEOUT
    s["queues"]["jobs-todo"]["visibility_timeout_seconds"] = 6 * PROCESSOR_TIMEOUT
    margin_secs = int(s["functions"]["processor"]["environment"]["DEADLINE_MARGIN_MS"]) // 1000
    s["functions"]["ingester"]["environment"]["MAX_JOB_TIMEOUT_SECONDS"] = str(PROCESSOR_TIMEOUT - margin_secs)
    path.write_text(json.dumps(s))
    return path


@pytest.fixture(scope="module")
def short(tmp_path_factory, free_port):
    state = tmp_path_factory.mktemp("crash")
    settings = short_settings(state / "pipeline.json")
    stack = stk.up(port=free_port(), state_dir=state, use_existing=False, receiver=True, settings_file=settings)
    try:
        yield stack
    finally:
        stk.down(state)


def workers_of(stack: stk.Stack, function: str) -> list[int]:
    """Pids of this stack's worker processes running `function`."""
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


def processor_record(stack: stk.Stack, job_id: str) -> dict | None:
    item = stack.client("dynamodb").get_item(
        TableName=stack.settings["state_table"], Key={"pk": {"S": f"processor#{job_id}"}}, ConsistentRead=True
    ).get("Item")
    return item and {k: next(iter(v.values())) for k, v in item.items()}


def test_a_worker_killed_mid_job_leaves_the_job_to_run_again_and_end_once(short):
    job_id = f"crash-{int(time.time())}"
    out = short.client("events").put_events(Entries=[{
        "Source": "jobs", "DetailType": "JobEvent", "EventBusName": "default",
        "Detail": json.dumps({"id": job_id, "job_type": "long_running_job",
                              "message": {"task_name": "killed", "timeout": JOB_SECS}}),
    }])
    assert out["FailedEntryCount"] == 0, out

    # Wait until the processor holds the job, then kill every processor worker.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = processor_record(short, job_id)
        if record and record.get("progress") == "IN_PROGRESS":
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the processor never claimed {job_id}")
    killed = workers_of(short, "processor")
    assert killed, "no processor worker to kill"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert not stk.await_end_states(short, {job_id}, timeout=JOB_SECS + 2, linger=0), "a killed job cannot end"

    # Back after the visibility timeout, past the dead attempt's lease: runs and ends once.
    notes = stk.await_end_states(short, {job_id}, timeout=6 * PROCESSOR_TIMEOUT + 90)
    assert [(n["status"], n["errors"]) for n in notes] == [("COMPLETED", [])], notes
    assert notes[0]["result"]["ran_for_secs"] == JOB_SECS
