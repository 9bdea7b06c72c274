"""End-to-end tests against the embedded stack.

Each module starts its own MiniStack on a free port through `stack.up()`, the code path
`make up` runs, and stops it with `stack.down()`. Nothing assumes a running emulator.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

import stack as stk

ROOT = stk.ROOT
GENERATOR = ROOT / "target" / "release" / "job-generator"
ORIGINAL_JOBS = sorted((ROOT / "functions" / "core" / "fixtures" / "original-jobs").glob("*/*.json"))
GENERATED = 300
ORIGINAL_LONG_JOB_SECS = 300  # the original demo's long_running_job runs that long


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    state = tmp_path_factory.mktemp("stack")
    stack = stk.up(port=stk_free_port(), state_dir=state, use_existing=False)
    try:
        yield stack
    finally:
        stk.down(state)


def stk_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(stack: stk.Stack, manifest: Path, *args: str) -> list[dict]:
    """Runs job-generator against the stack; returns its manifest lines."""
    env = {**stack.env(), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [str(GENERATOR), "--manifest", str(manifest), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def collect(sqs, url: str, expected_ids: set[str], timeout: float) -> list[dict]:
    """Drains end-state notifications until every expected job has one, then a little
    longer so that a late duplicate would be caught too."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += [json.loads(m["Body"]) for m in stk.drain(sqs, url, wait=2)]
        if expected_ids <= {n["job_id"] for n in seen}:
            break
    seen += [json.loads(m["Body"]) for m in stk.drain(sqs, url, wait=5)]
    return seen


def test_every_job_ends_exactly_once_in_the_right_state(pipeline, tmp_path):
    sent = []
    for i, path in enumerate(ORIGINAL_JOBS):
        for line in generate(pipeline, tmp_path / f"original-{i}.jsonl", "--file", str(path)):
            line["original"] = path.parent.name  # "good" or "bad"
            sent.append(line)
    sent += generate(
        pipeline,
        tmp_path / "generated.jsonl",
        *("--count", str(GENERATED), "--rate", "60", "--seed", "42", "--malformed-ratio", "0.2"),
        *("--max-job-seconds", "3"),
    )
    # MiniStack accepts details that real EventBridge refuses; either way nothing may vanish.
    delivered = [s for s in sent if s["outcome"] == "sent"]
    assert len(delivered) + sum(s["outcome"] == "refused" for s in sent) == len(sent) == GENERATED + 6
    expected = {}
    for s in delivered:
        bad = s.get("original") == "bad" or s["expected_rejection"] is not None
        expected[s["job_id"]] = ("REJECTED" if bad else "COMPLETED", s)
    assert len(expected) == len(delivered), "job ids must be unique"

    sqs = pipeline.client("sqs")
    queues = pipeline.resources["queues"]
    notes = collect(sqs, queues["job-end-states"], set(expected), timeout=ORIGINAL_LONG_JOB_SECS + 120)

    per_job = Counter(n["job_id"] for n in notes)
    missing = set(expected) - set(per_job)
    duplicated = {j: c for j, c in per_job.items() if c > 1}
    unknown = set(per_job) - set(expected)
    assert not missing, f"{len(missing)} jobs never ended: {sorted(missing)[:5]}"
    assert not duplicated, f"jobs announced more than once: {duplicated}"
    assert not unknown, f"end states for jobs nobody sent: {unknown}"

    wrong = []
    for n in notes:
        status, s = expected[n["job_id"]]
        if n["status"] != status:
            wrong.append((n["job_id"], n["status"], status, n["errors"]))
        elif status == "REJECTED":
            if s["expected_rejection"] and n["errors"][-1]["code"] != s["expected_rejection"]:
                wrong.append((n["job_id"], n["errors"][-1]["code"], s["expected_rejection"]))
            assert n["stage"] == "ingester" and n["attempts"] >= 1
        else:
            assert n["stage"] == "processor" and n["result"], n
    assert not wrong, f"{len(wrong)} jobs ended in the wrong state: {wrong[:5]}"

    # Every rejection, and only those, sits in the DLQ once, with the job as it was sent.
    dead = stk.drain(sqs, queues["dead-letter-queue"], wait=2)
    dead_ids = Counter(json.loads(m["Body"])["job_id"] for m in dead)
    rejected = {j for j, (status, _) in expected.items() if status == "REJECTED"}
    assert set(dead_ids) == rejected and max(dead_ids.values()) == 1, (dead_ids, rejected)
    for m in dead:
        body = json.loads(m["Body"])
        attrs = {k: v["StringValue"] for k, v in m["MessageAttributes"].items()}
        assert attrs["stage"] == "ingester" and attrs["error_code"] == body["errors"][-1]["code"]
        assert body["job"] == expected[body["job_id"]][1]["detail"]
        assert body["errors"][0]["message"], "every rejection carries a reason"

    # The original demo's long job really ran its 300 s (the Go demo's timed out).
    original_long = [
        j for j, (_, s) in expected.items()
        if s.get("original") == "good" and s["detail"]["job_type"] == "long_running_job"
    ]
    long_job = next(n for n in notes if n["job_id"] in original_long)
    assert long_job["status"] == "COMPLETED" and long_job["result"]["ran_for_secs"] == ORIGINAL_LONG_JOB_SECS

    counts = Counter(n["status"] for n in notes)
    print(f"\nconservation: {len(expected)} jobs, {dict(counts)}, {len(dead)} dead letters")
    for name in ("ingester-queue", "jobs-todo"):
        assert stk.queue_depth(sqs, queues[name]) == 0, f"{name} still holds messages"


def test_up_is_idempotent_and_down_stops_every_process(tmp_path):
    state = tmp_path / "stack"
    port = stk_free_port()
    stack = stk.up(port=port, state_dir=state, use_existing=False)
    pid = stk.read_pid(state)
    again = stk.up(port=port, state_dir=state, use_existing=False)
    assert stk.read_pid(state) == pid, "a second up reuses the running emulator"
    lam = again.client("lambda")
    for fn in stk.FUNCTIONS:
        assert len(lam.list_event_source_mappings(FunctionName=fn)["EventSourceMappings"]) == 1
    sns = again.client("sns")
    assert len(sns.list_subscriptions_by_topic(TopicArn=again.resources["topic_arn"])["Subscriptions"]) == 1

    # Start function workers, so there is something that could outlive MiniStack.
    generate(stack, tmp_path / "m.jsonl", "--count", "3", "--rate", "10", "--seed", "1", "--malformed-ratio", "0")
    marker = (state / "stack-id").read_text().strip()
    deadline = time.monotonic() + 30
    while not stk.marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    workers = stk.marked_pids(marker)
    assert workers, "the functions should have started workers"

    stk.down(state)
    assert not stk.alive(pid)
    assert not [w for w in workers if stk.alive(w)], "function workers outlived down"
    assert not stk.healthy(stack.endpoint)
