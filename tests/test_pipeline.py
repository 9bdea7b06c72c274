"""End-to-end tests against the embedded stack.

Each module starts its own MiniStack on a free port through `stack.up()`, the code path
`make up` runs, and stops it with `stack.down()` (conftest.py's `pipeline`). Nothing
assumes a running emulator.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest

import otlp_receiver
import stack as stk
from helpers import DEAD_LETTER_QUEUE, EVENT_BUS, INGESTER_QUEUE, JOBS_TODO, MAX_JOB_SECONDS, WORK_QUEUES, wait_for

ROOT = stk.ROOT
ORIGINAL_JOBS = sorted((ROOT / "functions" / "core" / "fixtures" / "original-jobs").glob("*/*.json"))
GENERATED = 300
ORIGINAL_LONG_JOB_SECS = 300  # the original demo's long_running_job runs that long


def test_every_job_ends_exactly_once_in_the_right_state(pipeline, tmp_path):
    sent = []
    for i, path in enumerate(ORIGINAL_JOBS):
        for line in stk.generate(pipeline, tmp_path / f"original-{i}.jsonl", "--file", str(path)):
            line["original"] = path.parent.name  # "good" or "bad"
            sent.append(line)
    sent += stk.generate(
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
    notes = stk.await_end_states(pipeline, set(expected), timeout=ORIGINAL_LONG_JOB_SECS + 120, keep_others=True)

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
    dead = stk.drain(sqs, queues[DEAD_LETTER_QUEUE], wait=2)
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
    for name in WORK_QUEUES:
        assert stk.queue_depth(sqs, queues[name]) == 0, f"{name} still holds messages"


def test_the_generator_refuses_to_send_where_no_rule_routes_jobs(tmp_path, free_port):
    """EventBridge accepts events no rule matches and drops them: a generator run before
    provisioning (e.g. `docker compose run job-generator` while terraform still runs)
    must fail by name instead of reporting every job as sent."""
    state = tmp_path / "stack"
    endpoint, _ = stk.start_emulator(state, free_port(), use_existing=False)
    try:
        bare = stk.Stack(endpoint=endpoint, state_dir=state, settings=stk.load_settings())
        with pytest.raises(stk.StackError) as refused:
            stk.generate(bare, tmp_path / "m.jsonl", "--count", "2", "--rate", "50", "--seed", "3")
        assert "no enabled rule" in str(refused.value) and "--skip-route-check" in str(refused.value)
        assert "exited with 2" in str(refused.value)
        # The escape hatch still sends (and EventBridge still accepts and drops).
        sent = stk.generate(bare, tmp_path / "n.jsonl", "--count", "2", "--rate", "50", "--seed", "3", "--skip-route-check")
        assert [s["outcome"] for s in sent] == ["sent", "sent"]
    finally:
        stk.stop_processes(state)


def test_up_is_idempotent_and_down_stops_every_process(tmp_path, free_port):
    state = tmp_path / "stack"
    port = free_port()
    stack = stk.up(port=port, state_dir=state, use_existing=False)
    pid = stk.read_pid(state)
    again = stk.up(port=port, state_dir=state, use_existing=False)
    assert stk.read_pid(state) == pid, "a second up reuses the running emulator"
    lam = again.client("lambda")
    for fn in stk.FUNCTIONS:
        # One mapping per queue the function consumes, however often `up` runs.
        mapped = sorted(m["EventSourceArn"].rsplit(":", 1)[-1]
                        for m in lam.list_event_source_mappings(FunctionName=fn)["EventSourceMappings"])
        assert mapped == sorted(stk.sources(again.settings["functions"][fn])), (fn, mapped)
    # The relay is run by its schedule alone.
    assert not lam.list_event_source_mappings(FunctionName=stk.RELAY)["EventSourceMappings"]
    targets = again.client("events").list_targets_by_rule(Rule=stk.RELAY_RULE, EventBusName=stk.RELAY_RULE_BUS)
    assert len(targets["Targets"]) == 1
    sns = again.client("sns")
    assert len(sns.list_subscriptions_by_topic(TopicArn=again.resources["topic_arn"])["Subscriptions"]) == 1

    # Start function workers, so there is something that could outlive MiniStack.
    stk.generate(stack, tmp_path / "m.jsonl", "--count", "3", "--rate", "10", "--seed", "1", "--malformed-ratio", "0")
    marker = (state / "stack-id").read_text().strip()
    workers = wait_for("the functions to start workers", lambda: stk.marked_pids(marker), timeout=30, every=0.5)

    stk.down(state)
    assert not stk.alive(pid)
    assert not [w for w in workers if stk.alive(w)], "function workers outlived down"
    assert not stk.healthy(stack.endpoint)


def test_each_job_is_one_trace_from_generator_to_processor(pipeline, tmp_path):
    """Valid, rejected and failing jobs: one trace each, parent/child across the three
    processes, messaging span names, kinds and attributes, errors on the bad ones.
    Runs on the module's stack after the conservation test (which drains every queue)."""
    assert pipeline.otlp_endpoint, "the stack runs the local OTLP receiver"
    run = uuid.uuid4().hex[:8]
    jobs = {
        f"ok-clean-{run}": ({"job_type": "data_cleanup", "message": {"target_table": "users", "retention": 30}}, "COMPLETED"),
        f"ok-onboard-{run}": ({"job_type": "user_onboarding", "message": {"user_id": "u1", "user_name": "Ada"}}, "COMPLETED"),
        f"rejected-{run}": ({"job_type": "report_generation", "message": {"filters": "a=1"}}, "REJECTED"),
        # At the longest timeout the ingester accepts (a longer one is rejected): what the
        # processor could run on a fresh invocation, which is more than is left after the
        # claim, so it fails at once with deadline_exceeded instead of being cut off.
        f"failed-{run}": ({"job_type": "long_running_job", "message": {"task_name": "t", "timeout": MAX_JOB_SECONDS}}, "FAILED"),
    }
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps({**detail, "id": job_id}) + "\n" for job_id, (detail, _) in jobs.items()))
    manifest = {m["job_id"]: m for m in stk.generate(pipeline, tmp_path / "m.jsonl", "--file", str(path))}
    assert set(manifest) == set(jobs) and all(m["outcome"] == "sent" for m in manifest.values())

    notes = stk.await_end_states(pipeline, set(jobs), timeout=90, keep_others=True)
    status = {n["job_id"]: n["status"] for n in notes if n["job_id"] in jobs}
    assert status == {j: want for j, (_, want) in jobs.items()}

    def expected_spans(job_id):
        return 2 if jobs[job_id][1] == "REJECTED" else 5  # generator + ingester (+ send, process, execute)

    deadline = time.monotonic() + 30
    while True:
        spans = otlp_receiver.read(pipeline.state_dir)
        traces = {j: otlp_receiver.job_traces(spans, j) for j in jobs}
        complete = all(
            len(t) == 1 and len([s for s in next(iter(t.values())) if s["attributes"].get("job.id") == j]) >= expected_spans(j)
            for j, t in traces.items()
        )
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    for job_id, (detail, want) in jobs.items():
        assert len(traces[job_id]) == 1, f"{job_id}: spans in {len(traces[job_id])} traces, expected one"
        trace_id, trace = next(iter(traces[job_id].items()))
        assert trace_id == manifest[job_id]["trace_id"], "the generator's trace is the job's trace"
        print(f"\n{job_id} ({want})\n" + otlp_receiver.waterfall(trace))
        by_id = {s["span_id"]: s for s in trace}
        orphans = [s["name"] for s in trace if s["parent_span_id"] and s["parent_span_id"] not in by_id]
        assert not orphans, f"{job_id}: spans whose parent is not in the trace: {orphans}"

        def one(name, service):
            found = [s for s in trace if s["name"] == name and s["service"] == service]
            assert len(found) == 1, f"{job_id}: expected one {name!r} from {service}, got {[(s['name'], s['service']) for s in trace]}"
            return found[0]

        def parent(span):
            return by_id.get(span["parent_span_id"])

        sent = one(f"send {EVENT_BUS}", "job-generator")
        assert sent["kind"] == "PRODUCER" and sent["parent_span_id"] is None
        assert sent["attributes"]["messaging.destination.name"] == EVENT_BUS
        assert sent["attributes"]["messaging.message.id"] == manifest[job_id]["event_id"]

        ingest = one(f"process {INGESTER_QUEUE}", "ingester")
        assert ingest["kind"] == "CONSUMER" and parent(ingest) is sent
        attrs = ingest["attributes"]
        assert attrs["messaging.system"] == "aws_sqs" and attrs["messaging.destination.name"] == INGESTER_QUEUE
        assert attrs["messaging.message.id"] and attrs["faas.invocation_id"] and "faas.coldstart" in attrs
        assert attrs["job.id"] == job_id and attrs["job.type"] == detail["job_type"]
        # The invocation's batch span links to the message it processed.
        batch = [s for s in spans if s["name"] == "ingester" and any(ln["span_id"] == sent["span_id"] for ln in s["links"])]
        assert len(batch) == 1 and batch[0]["attributes"]["messaging.batch.message_count"] >= 1, batch

        if want == "REJECTED":
            assert ingest["status"] == "ERROR" and attrs["error.type"] == "missing_field", ingest
            assert attrs["job.status"] == "REJECTED"
            assert not [s for s in trace if s["service"] == "processor"], "a rejected job never reaches the processor"
            continue
        assert ingest["status"] != "ERROR", ingest
        forward = one(f"send {JOBS_TODO}", "ingester")
        assert forward["kind"] == "PRODUCER" and parent(forward) is ingest
        assert forward["attributes"]["messaging.system"] == "aws_sqs"
        assert forward["attributes"]["messaging.destination.name"] == JOBS_TODO
        process = one(f"process {JOBS_TODO}", "processor")
        assert process["kind"] == "CONSUMER" and parent(process) is forward
        assert process["attributes"]["messaging.message.id"] and process["attributes"]["job.type"] == detail["job_type"]
        execute = one(f"execute {detail['job_type']}", "processor")
        assert execute["kind"] == "INTERNAL" and parent(execute) is process
        assert execute["attributes"]["job.id"] == job_id
        assert process["attributes"]["job.status"] == want
        if want == "FAILED":
            assert process["status"] == "ERROR" and process["attributes"]["error.type"] == "deadline_exceeded"
            assert execute["status"] == "ERROR"
        else:
            assert not [s["name"] for s in trace if s["status"] == "ERROR"]

    # The functions' JSON log lines about these jobs name the job and its trace.
    lines = []
    for raw in (pipeline.state_dir / "ministack.log").read_text(errors="replace").splitlines():
        if run in raw and raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                pass
    about = [ln for ln in lines if "fields" in ln and ln.get("fields", {}).get("job_id") in jobs]
    assert len(about) >= len(jobs), f"expected JSON log lines about each job, got {len(about)}"
    for ln in about:
        job_id = ln["fields"]["job_id"]
        assert ln["span"]["job_id"] == job_id and ln["span"]["trace_id"] == manifest[job_id]["trace_id"], ln

    # Metrics, flushed per invocation like the spans: the names the dashboard uses.
    points = otlp_receiver.read(pipeline.state_dir, otlp_receiver.METRICS)
    ends = {(p["attributes"].get("job.type"), p["attributes"].get("job.status")) for p in points if p["name"] == "job.end_states"}
    for _, (detail, want) in jobs.items():
        assert (detail["job_type"], want) in ends, (detail["job_type"], want, ends)
    latency = [p for p in points if p["name"] == "job.latency"]
    assert latency and all(p["unit"] == "s" and p["type"] == "histogram" for p in latency)
    assert {p["service"] for p in latency} == {"ingester", "processor"}
