"""The archive of job events, replayed as an operator would (`StartReplay` over a time
window), on the stack `make up` starts (telemetry on): every event comes back through the
ingester, and no job that already ended runs, ends or is dead-lettered again. The claims
decide it: a replayed valid job meets the processor's ended record, a replayed rejection
the ingester's.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import otlp_receiver
import stack as stk
from helpers import EVENT_BUS, JOBS_TODO, MAX_JOB_SECONDS, dead_letters_of, onboarding, put_jobs, wait_for


def letters_of(stack: stk.Stack, job_ids: set[str]) -> list[tuple[str, str]]:
    """(job id, status) of every dead letter of these jobs; the queue is left as it was."""
    return sorted((d["job_id"], d["status"]) for d in dead_letters_of(stack, job_ids))


def consumer_spans(stack: stk.Stack, job_id: str, queue: str) -> list[dict]:
    """The job's `process <queue>` spans, oldest first: one per delivery."""
    spans = otlp_receiver.read(stack.state_dir)
    found = [s for s in spans if s["attributes"].get("job.id") == job_id and s["name"] == f"process {queue}"]
    return sorted(found, key=lambda s: s["start_ns"])


def test_a_replayed_window_runs_and_ends_no_job_again(pipeline):
    run = uuid.uuid4().hex[:8]
    jobs = {
        f"replay-ok-{run}": (onboarding(f"replay-ok-{run}"), "COMPLETED"),
        f"replay-bad-{run}": ({"id": f"replay-bad-{run}", "job_type": "report_generation",
                               "message": {"filters": "a=1"}}, "REJECTED"),
        # Longer than what is left of an invocation after its claim: FAILED at once.
        f"replay-failed-{run}": ({"id": f"replay-failed-{run}", "job_type": "long_running_job",
                                  "message": {"task_name": "t", "timeout": MAX_JOB_SECONDS}}, "FAILED"),
    }
    events = pipeline.client("events")
    archive = pipeline.settings["archive"]["name"]
    start = datetime.now(timezone.utc) - timedelta(seconds=2)
    put_jobs(pipeline, [detail for detail, _ in jobs.values()])
    notes = stk.await_end_states(pipeline, set(jobs), timeout=90, linger=2)
    assert sorted((n["job_id"], n["status"]) for n in notes) == sorted((j, want) for j, (_, want) in jobs.items())
    letters = letters_of(pipeline, set(jobs))
    assert letters == sorted((j, want) for j, (_, want) in jobs.items() if want != "COMPLETED")
    end = datetime.now(timezone.utc) + timedelta(seconds=2)

    archived = events.describe_archive(ArchiveName=archive)
    bus_arn = events.describe_event_bus(Name=EVENT_BUS)["Arn"]
    assert archived["EventSourceArn"] == bus_arn
    rule_arn = events.describe_rule(Name=pipeline.settings["rule"]["name"], EventBusName=EVENT_BUS)["Arn"]
    name = f"replay-{run}"
    events.start_replay(ReplayName=name, EventSourceArn=archived["ArchiveArn"], EventStartTime=start, EventEndTime=end,
                        Destination={"Arn": bus_arn, "FilterArns": [rule_arn]})
    state = wait_for("the replay to complete", lambda: (s := events.describe_replay(ReplayName=name)["State"])
                     in ("COMPLETED", "FAILED", "CANCELLED") and s, timeout=60)
    assert state == "COMPLETED"

    # Every job's event came through the ingester once more, and each valid one through
    # the processor, which found it ended...
    ingester, processor = pipeline.settings["functions"]["ingester"]["source_queue"], JOBS_TODO

    def delivered_again():
        if not all(len(consumer_spans(pipeline, j, ingester)) >= 2 for j in jobs):
            return False
        return all(len(consumer_spans(pipeline, j, processor)) >= 2 for j, (_, want) in jobs.items() if want != "REJECTED")

    wait_for("each replayed event delivered", delivered_again, timeout=60)
    for job_id, (_, want) in jobs.items():
        stage_queue = ingester if want == "REJECTED" else processor
        replayed = consumer_spans(pipeline, job_id, stage_queue)[-1]
        assert replayed["attributes"].get("job.repeat") == "duplicate", (job_id, replayed["attributes"])
    # ...and nothing ran, ended or was dead-lettered again.
    again = stk.await_end_states(pipeline, set(jobs), timeout=15, linger=0)
    assert again == [], f"a replayed job that had ended was announced again: {again}"
    assert letters_of(pipeline, set(jobs)) == letters
