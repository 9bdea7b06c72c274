"""`job-generator dlq` against the embedded stack: listing leaves the queue as it was,
a dry run moves nothing, and a redrive sends a failed job back to jobs-todo and a
rejected one back to the ingester, deleting each dead letter only once its copy is out.
On conftest.py's `pipeline`, the stack as `make up` starts it."""

from __future__ import annotations

import json
import subprocess
import time

import stack as stk
from helpers import INGESTER_QUEUE, JOBS_TODO, MAX_ATTEMPTS

GENERATOR = stk.RELEASE / "job-generator"


def ops(stack: stk.Stack, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env(), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(GENERATOR), *args], env=env, capture_output=True, text=True, timeout=120)


def dead_letter(job_id: str, stage: str, job: dict) -> str:
    status = "FAILED" if stage == "processor" else "REJECTED"
    return json.dumps(
        {
            "job_id": job_id,
            "job_type": job.get("job_type"),
            "status": status,
            "stage": stage,
            "attempts": MAX_ATTEMPTS,
            "errors": [
                {"stage": stage, "code": "downstream_unavailable", "message": "the test put it here", "attempt": MAX_ATTEMPTS,
                 "timestamp": "2026-11-23T10:00:00.000Z"}
            ],
            "job": job,
        }
    )


def depth(sqs, url: str) -> int:
    return stk.queue_depth(sqs, url)


def test_list_dry_run_and_redrive(pipeline):
    sqs = pipeline.client("sqs")
    queues = pipeline.resources["queues"]
    dlq = queues[pipeline.settings["dead_letter_queue"]]
    good = {"job_type": "user_onboarding", "message": {"user_id": "42", "user_name": "Ada"}}
    sqs.send_message(QueueUrl=dlq, MessageBody=dead_letter("job-redrive-1", "processor", {**good, "id": "job-redrive-1"}))
    sqs.send_message(QueueUrl=dlq, MessageBody=dead_letter("job-redrive-2", "ingester", {**good, "id": "job-redrive-2"}))

    listed = ops(pipeline, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert "job-redrive-1  FAILED at processor" in listed.stdout and "downstream_unavailable" in listed.stdout
    assert "job-redrive-2  REJECTED at ingester" in listed.stdout
    assert depth(sqs, dlq) == 2, "listing must leave the dead letters where they were"

    dry = ops(pipeline, "dlq", "redrive", "--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"job-redrive-1: would go to {JOBS_TODO}" in dry.stdout
    assert f"job-redrive-2: would go to {INGESTER_QUEUE}" in dry.stdout
    assert depth(sqs, dlq) == 2, "a dry run moves nothing"

    refused = ops(pipeline, "dlq", "redrive")
    assert refused.returncode == 2 and "--all" in refused.stderr, "a redrive must name its jobs or say --all"

    moved = ops(pipeline, "dlq", "redrive", "--all")
    assert moved.returncode == 0, moved.stderr
    assert "moved 2, kept 0, skipped 0, failed 0" in moved.stderr

    # Both come back through the pipeline and complete.
    watch = queues[pipeline.settings["demo_subscriber_queue"]]
    ended: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(ended) < 2:
        for m in stk.drain(sqs, watch, wait=2):
            n = json.loads(m["Body"])
            ended[n["job_id"]] = n
    assert set(ended) == {"job-redrive-1", "job-redrive-2"}
    assert all(n["status"] == "COMPLETED" for n in ended.values()), ended
    # The processor failure kept its history and came back as its next attempt.
    assert ended["job-redrive-1"]["attempts"] >= MAX_ATTEMPTS + 1
    assert [e["code"] for e in ended["job-redrive-1"]["errors"]] == ["downstream_unavailable"]
    assert depth(sqs, dlq) == 0
