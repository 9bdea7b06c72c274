"""Jobs into a running stack and end states out of it, for the CLI, the tests and the
other tools (compose_smoke.py, bench/run.py).

`generate` runs job-generator against the stack and returns the manifest of what it sent.
`await_end_states` drains the demo subscriber queue until every job asked about has
announced its end state or the timeout passes, then lingers, so that a second announcement
of a job is seen too. `drain` deletes what it returns; `queue_depth` counts visible,
in-flight and delayed messages. `outcomes` summarises the end states of whatever ran.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

from common import RELEASE, StackError, log
from emulator import Stack


def drain(sqs, url: str, wait: float = 0) -> list[dict]:
    """Receives and deletes everything currently in a queue."""
    out = []
    deadline = time.monotonic() + wait
    while True:
        r = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1 if wait else 0, MessageAttributeNames=["All"]
        )
        msgs = r.get("Messages", [])
        if msgs:
            out.extend(msgs)
            sqs.delete_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
            )
        elif time.monotonic() >= deadline:
            return out


def queue_depth(sqs, url: str) -> int:
    a = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return sum(int(v) for v in a.values())


def await_end_states(
    stack: Stack, job_ids: set[str], timeout: float, linger: float = 5, keep_others: bool = False
) -> list[dict]:
    """Drains the demo subscriber queue until every job in `job_ids` has announced an end
    state or `timeout` passes, then `linger` seconds more so that a late second
    announcement is caught too. Returns the notifications about those jobs, or every
    notification drained with `keep_others` (to catch end states nobody asked for)."""
    sqs = stack.client("sqs")
    url = stack.resources["queues"][stack.settings["demo_subscriber_queue"]]
    seen: list[dict] = []

    def take(wait: float) -> None:
        notes = (json.loads(m["Body"]) for m in drain(sqs, url, wait=wait))
        seen.extend(n for n in notes if keep_others or n["job_id"] in job_ids)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        take(1)
        if job_ids <= {n["job_id"] for n in seen}:
            break
    take(linger)
    return seen


def generate(stack: Stack, manifest: Path, *args: str, timeout: float = 300) -> list[dict]:
    """Runs job-generator against the stack with `--manifest`; returns the manifest lines."""
    env = {**stack.env(), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [str(RELEASE / "job-generator"), "--manifest", str(manifest), *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    if out.returncode != 0:
        raise StackError(f"job-generator exited with {out.returncode}: {out.stderr}")
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def parse_time(rfc3339: str) -> float:
    """Seconds since the epoch of a timestamp as the functions write them."""
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def wait_idle(stack: Stack, timeout: float) -> bool:
    """Waits until every work queue is empty (nothing in flight)."""
    from provision import sources

    sqs = stack.client("sqs")
    urls = [stack.resources["queues"][q] for fn in stack.settings["functions"].values() for q in sources(fn)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(queue_depth(sqs, u) == 0 for u in urls):
            return True
        time.sleep(1)
    return False



def outcomes(stack: Stack, settle: float = 120) -> dict:
    """Waits for in-flight jobs, then reports end states from the demo subscriber and the DLQ."""
    sqs = stack.client("sqs")
    if not wait_idle(stack, settle):
        log(f"jobs still in flight after {settle:.0f} s; reporting what has ended so far")
    notes = [json.loads(m["Body"]) for m in drain(sqs, stack.resources["queues"][stack.settings["demo_subscriber_queue"]], wait=3)]
    by_status = Counter((n.get("status"), n.get("job_type")) for n in notes)
    dlq_url = stack.resources["queues"][stack.settings["dead_letter_queue"]]
    dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    codes = Counter(e["code"] for n in notes if n.get("status") != "COMPLETED" for e in n.get("errors", [])[-1:])
    return {"notifications": len(notes), "by_status": by_status, "dlq_depth": int(dlq["ApproximateNumberOfMessages"]), "codes": codes}


def print_outcomes(o: dict) -> None:
    print(f"\nEnd states announced on the topic: {o['notifications']}")
    print(f"  {'status':<10} {'job_type':<20} {'jobs':>6}")
    for (status, job_type), n in sorted(o["by_status"].items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        print(f"  {str(status):<10} {str(job_type):<20} {n:>6}")
    if o["codes"]:
        print("  last error codes: " + ", ".join(f"{c} {n}" for c, n in o["codes"].most_common()))
    print(f"Messages held in dead-letter-queue: {o['dlq_depth']}")
