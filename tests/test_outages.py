"""Two fault scenarios end to end, each on its own MiniStack with short timeouts and the
functions behind stack/fault_proxy.py:

1. Slow endings near the deadline: every call of a processor ending (the end-state
   write, the dead letter, the publish, the announced mark) takes 3.5 s, under the 5 s
   call timeout, while a job runs as long as its invocation allows. Each job must end
   once, before the invocation's deadline, with its message deleted from jobs-todo.
2. SNS down for longer than the retry schedule: records exhaust their receives and SQS
   moves them to the DLQ next to the dead letters stored on every receive; once SNS is
   back an operator runs `job-generator dlq redrive --all`, and every job must end once,
   and the redrive must return (it once redrove the dead letters its own redriven jobs
   wrote, without end; a third test checks that without an outage).

Each test asserts every job's single end state (status, attempts, error codes and its
dead letters), not counts.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import time

import pytest

import stack as stk
from fault_proxy import FaultProxy

GENERATOR = stk.RELEASE / "job-generator"


# --------------------------------------------------------------------------- helpers


def start(tmp_path_factory, free_port, name: str, settings: dict, fault_injection: bool = False):
    """A stack on its own port with only the functions behind a fresh fault proxy."""
    state = tmp_path_factory.mktemp(name)
    path = state / "pipeline.json"
    path.write_text(json.dumps(settings))
    port = free_port()
    proxy = FaultProxy(f"http://127.0.0.1:{port}")
    url = proxy.start()
    try:
        stack = stk.up(
            port=port, state_dir=state, use_existing=False, receiver=False, fault_proxy=url,
            settings_file=path, fault_injection=fault_injection,
        )
    except BaseException:
        proxy.stop()
        stk.down(state)
        raise
    return stack, proxy, state


def put_jobs(stack: stk.Stack, *details: dict) -> None:
    out = stack.client("events").put_events(Entries=[
        {"Source": "jobs", "DetailType": "JobEvent", "Detail": json.dumps(d), "EventBusName": "default"}
        for d in details
    ])
    assert out["FailedEntryCount"] == 0, out


def record(stack: stk.Stack, stage: str, job_id: str) -> dict | None:
    """A stage's state record of a job, values flattened."""
    item = stack.client("dynamodb").get_item(
        TableName=stack.settings["state_table"], Key={"pk": {"S": f"{stage}#{job_id}"}}, ConsistentRead=True
    ).get("Item")
    return item and {k: next(iter(v.values())) for k, v in item.items()}


def ended(stack: stk.Stack, stage: str, job_id: str) -> tuple:
    r = record(stack, stage, job_id) or {}
    return r.get("progress"), int(r.get("attempt", -1)), r.get("announced")


def queue_counts(stack: stk.Stack, name: str) -> dict[str, int]:
    attrs = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.resources["queues"][name],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return {k.removeprefix("ApproximateNumberOfMessages") or "Visible": int(v) for k, v in attrs.items()}


def peek(stack: stk.Stack, name: str) -> list[dict]:
    """Every message of a queue, oldest first, left where it was: received (hidden) until
    none is left, then made visible again. Bodies parsed."""
    sqs = stack.client("sqs")
    url = stack.resources["queues"][name]
    seen: dict[str, dict] = {}
    while True:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
        if not msgs:
            break
        for m in msgs:
            seen.setdefault(m["MessageId"], m)
    for m in seen.values():
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    return [json.loads(m["Body"]) for m in seen.values()]


def kind(body: dict) -> str:
    """What a DLQ message is: a dead letter a function wrote, or a record SQS moved
    there as it was (a jobs-todo job, or an ingester-queue event)."""
    if "stage" in body and "attempts" in body:
        return "dead_letter"
    if "received_at" in body and "attempt" in body:
        return "stranded_job"
    if "detail-type" in body:
        return "stranded_event"
    return "unknown"


def dlq_by_job(stack: stk.Stack, dlq: str | None = None) -> dict[str, list[tuple]]:
    """A DLQ (by default the shared one) per job id: (kind, status, attempts, last error
    code, last error time) per message, oldest first."""
    out: dict[str, list[tuple]] = {}
    for body in peek(stack, dlq or stack.settings["dead_letter_queue"]):
        k = kind(body)
        if k == "dead_letter":
            last = body["errors"][-1] if body["errors"] else {}
            key, entry = body["job_id"], (k, body["status"], body["attempts"], last.get("code"), last.get("timestamp"))
        elif k == "stranded_job":
            key, entry = body["job_id"], (k, body["attempt"])
        elif k == "stranded_event":
            key, entry = body["detail"].get("id") or body["id"], (k,)
        else:
            key, entry = "?", (k, json.dumps(body)[:200])
        out.setdefault(key, []).append(entry)
    return out


def ended_as(notes: list[dict]) -> dict[str, list[tuple]]:
    """Per job: (status, attempts, [(error code, attempt)]) of each notification."""
    out: dict[str, list[tuple]] = {}
    for n in notes:
        out.setdefault(n["job_id"], []).append(
            (n["status"], n["attempts"], [(e["code"], e["attempt"]) for e in n["errors"]])
        )
    return out


EMPTY = {"Visible": 0, "NotVisible": 0, "Delayed": 0}


def wait_until(condition, timeout: float, every: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


def wait_for(condition, timeout: float, every: float = 1.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} did not hold within {timeout:.0f} s")
        time.sleep(every)


def ops(stack: stk.Stack, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env(), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(GENERATOR), *args], env=env, capture_output=True, text=True, timeout=180)


# --------------------------------------------------------------------------- 1. slow endings

PROCESSOR_TIMEOUT = 30  # as test_crash.py: jobs-todo visibility 180 s, the 6x rule kept
SLOW_MS = 3500  # each ending call: under the functions' 5 s call timeout


def slow_settings() -> dict:
    s = copy.deepcopy(stk.load_settings())
    s["functions"]["processor"]["timeout_seconds"] = PROCESSOR_TIMEOUT
    s["queues"]["jobs-todo"]["visibility_timeout_seconds"] = 6 * PROCESSOR_TIMEOUT
    margin_secs = int(s["functions"]["processor"]["environment"]["DEADLINE_MARGIN_MS"]) // 1000
    s["functions"]["ingester"]["environment"]["MAX_JOB_TIMEOUT_SECONDS"] = str(PROCESSOR_TIMEOUT - margin_secs)
    return s


@pytest.fixture(scope="module")
def slow(tmp_path_factory, free_port):
    stack, proxy, state = start(tmp_path_factory, free_port, "slow-endings", slow_settings(), fault_injection=True)
    try:
        yield stack, proxy
    finally:
        try:
            stk.down(state)
        finally:
            proxy.stop()


def slow_ending_rules(dlq_url: str) -> list[dict]:
    return [
        # Claims stay quick: a slow claim comes off the job's budget, and this test is
        # about the ending. The first matching rule wins, so INSERTs take this one.
        {"service": "dynamodb", "body_contains": "INSERT INTO", "delay_ms": 1, "note": "claims pass"},
        # The processor's end-state writes and announced marks (and its reads/releases).
        {"service": "dynamodb", "body_contains": "processor#", "delay_ms": SLOW_MS},
        {"service": "sns", "delay_ms": SLOW_MS},
        {"service": "sqs", "action": ["SendMessage", "SendMessageBatch"], "body_contains": dlq_url,
         "delay_ms": SLOW_MS},
    ]


def test_slow_endings_near_the_deadline_end_each_job_once_and_delete_its_message(slow):
    """A job that runs for what its invocation leaves it (the processor's timeout less
    DEADLINE_MARGIN_MS, less what the claim took: the longest whole second is
    MAX_JOB_TIMEOUT_SECONDS - 1, 8 s), then an ending whose every call takes 3.5 s (end
    state, publish, mark: 10.5 s; 14 s with a dead letter), in a 30 s invocation. It
    must complete once, its record at attempt 1 and announced, and its message must be
    deleted (not left in flight to come back after the 180 s visibility timeout and be
    announced again).

    Two failing jobs go through the same slow ending, with a dead letter:
    - one at MAX_JOB_TIMEOUT_SECONDS itself, the longest the ingester accepts: more than
      is left once the invocation started and the claim is taken, so the processor
      refuses it at once as deadline_exceeded (not retryable);
    - one that fails every attempt (fault injection): three attempts, each hand-over a
      slow write, then FAILED.
    """
    stack, proxy = slow
    settings = stack.settings
    max_secs = int(settings["functions"]["ingester"]["environment"]["MAX_JOB_TIMEOUT_SECONDS"])
    max_attempts = int(settings["functions"]["processor"]["environment"]["MAX_ATTEMPTS"])
    assert max_secs == PROCESSOR_TIMEOUT - 21, settings
    run = int(time.time())
    near, limit, failing = f"near-deadline-{run}", f"at-limit-{run}", f"fails-{run}"
    dlq_url = stack.resources["queues"][settings["dead_letter_queue"]]
    proxy.set_rules(slow_ending_rules(dlq_url))
    started = time.monotonic()
    try:
        put_jobs(
            stack,
            {"id": near, "job_type": "long_running_job", "message": {"task_name": "near", "timeout": max_secs - 1}},
            {"id": limit, "job_type": "long_running_job", "message": {"task_name": "limit", "timeout": max_secs}},
            {"id": failing, "job_type": "user_onboarding", "message": {"user_id": "u1", "user_name": "Ada"},
             "fault": {"fail_always": True}},
        )
        notes = stk.await_end_states(stack, {near, limit, failing}, timeout=150, linger=5)
        # The last mark follows the last publish: wait until each invocation returned
        # and its message was deleted (an invocation cut off by its deadline, or a
        # record given back, leaves the message to come back and be announced again),
        # then gather anything announced late.
        emptied = wait_until(lambda: queue_counts(stack, "jobs-todo") == EMPTY, timeout=30)
        notes += stk.await_end_states(stack, {near, limit, failing}, timeout=0, linger=3)
        took = time.monotonic() - started
        log = proxy.log()
    finally:
        proxy.clear()

    assert ended_as(notes) == {
        near: [("COMPLETED", 1, [])],
        limit: [("FAILED", 1, [("deadline_exceeded", 1)])],
        failing: [("FAILED", max_attempts, [("injected_fault", a) for a in range(1, max_attempts + 1)])],
    }, notes
    assert emptied, f"jobs-todo still holds messages: {queue_counts(stack, 'jobs-todo')}"
    assert [n["result"] for n in notes if n["job_id"] == near] == [{"task": "near", "ran_for_secs": max_secs - 1}]
    assert ended(stack, "processor", near) == ("COMPLETED", 1, True)
    assert ended(stack, "processor", limit) == ("FAILED", 1, True)
    assert ended(stack, "processor", failing) == ("FAILED", max_attempts, True)
    dlq = dlq_by_job(stack)
    assert {job: [e[:4] for e in entries] for job, entries in dlq.items()} == {
        limit: [("dead_letter", "FAILED", 1, "deadline_exceeded")],
        failing: [("dead_letter", "FAILED", max_attempts, "injected_fault")],
    }, dlq
    assert queue_counts(stack, "jobs-todo") == EMPTY

    # The fault was applied to every kind of ending call, each one slow but answered.
    slowed = [e for e in log if e.get("rule") in (1, 2, 3)]
    for service, action in (("sns", None), ("sqs", None), ("dynamodb", "BatchExecuteStatement")):
        calls = [e for e in slowed if e["service"] == service and action in (None, e["action"])]
        assert calls, f"no slow {service} call: did the rules stop matching?"
        assert all(e["duration_ms"] >= SLOW_MS and e["status"] == 200 for e in calls), calls
    print(f"slow endings: {took:.0f} s until every job ended and jobs-todo was empty")


# --------------------------------------------------------------------------- 2. an outage


class RedriveLoop(AssertionError):
    """A redrive that never ends and announces a job again and again (REDRIVE_LOOP)."""


# A redrive that reads the dead letters its own redriven jobs write would send them back
# again, and so on without end (each such letter holds its job's current end): the
# redrive acts only on letters sent before it started (job-generator/src/dlq.rs, `sweep`).


def redrive(stack: stk.Stack, *args: str, timeout: float) -> dict:
    """`job-generator dlq redrive ARGS`, stopped (by its pid) if it runs past `timeout`."""
    env = {**stack.env(), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([str(GENERATOR), "dlq", "redrive", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        finished = True
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        finished = False
    return {"finished": finished, "returncode": proc.returncode, "stdout": out[-3000:], "stderr": err[-3000:]}


INGESTER_TIMEOUT = 5
OUTAGE_PROCESSOR_TIMEOUT = 6
CALL_TIMEOUT_MS = 1000  # so that DEADLINE_MARGIN_MS (4 calls + 1 s) fits a 6 s processor


def outage_settings() -> dict:
    """Timeouts short enough that five receives take minutes: the functions' own early
    retries (15, 60, 240, 900 s) are fixed in the code, so the test refuses them (see
    below) and the queues' visibility timeouts, 6x the functions' timeouts, pace the
    receives instead: 30 s on ingester-queue, 36 s on jobs-todo."""
    s = copy.deepcopy(stk.load_settings())
    fns, queues = s["functions"], s["queues"]
    fns["ingester"]["timeout_seconds"] = INGESTER_TIMEOUT
    queues["ingester-queue"]["visibility_timeout_seconds"] = 6 * INGESTER_TIMEOUT
    fns["processor"]["timeout_seconds"] = OUTAGE_PROCESSOR_TIMEOUT
    queues["jobs-todo"]["visibility_timeout_seconds"] = 6 * OUTAGE_PROCESSOR_TIMEOUT
    # The FIFO queue of keyed jobs, as short as its settings check allows: 6x the
    # processor's timeout, and one receive per attempt plus five.
    ordered = queues[fns["processor"]["ordered_source_queue"]]
    ordered["visibility_timeout_seconds"] = 6 * OUTAGE_PROCESSOR_TIMEOUT
    ordered["max_receive_count"] = int(fns["processor"]["environment"].get("MAX_ATTEMPTS", "3")) + 5
    margin_ms = 4 * CALL_TIMEOUT_MS + 1000
    for fn in fns.values():
        fn["environment"]["CALL_TIMEOUT_MS"] = str(CALL_TIMEOUT_MS)
    fns["processor"]["environment"]["DEADLINE_MARGIN_MS"] = str(margin_ms)
    fns["ingester"]["environment"]["MAX_JOB_TIMEOUT_SECONDS"] = str(OUTAGE_PROCESSOR_TIMEOUT - margin_ms // 1000)
    return s


@pytest.fixture(scope="module")
def outage(tmp_path_factory, free_port):
    stack, proxy, state = start(tmp_path_factory, free_port, "outage", outage_settings())
    # These tests are about the stages' own retry schedule and the operator's redrive of
    # what an outage strands. The relay would announce the stranded ends on its own once
    # SNS is back (tests/test_relay.py shows that), so its schedule is off here.
    stack.client("events").disable_rule(Name=stk.RELAY_RULE, EventBusName=stk.RELAY_RULE_BUS)
    try:
        yield stack, proxy
    finally:
        try:
            stk.down(state)
        finally:
            proxy.stop()


SNS_DOWN = [
    # SNS is down: connections close unanswered, nothing is published.
    {"service": "sns", "refuse": True},
    # A failed record's early return (ChangeMessageVisibility, 15 s then 60 s, 240 s,
    # 900 s) fails too: the queue's visibility timeout brings it back instead, so five
    # receives take 2.5 to 3 minutes rather than the 20 the schedule allows.
    {"service": "sqs", "action": ["ChangeMessageVisibility", "ChangeMessageVisibilityBatch"], "status": 503},
]


def test_an_sns_outage_longer_than_the_retry_schedule_ends_every_job_once_after_a_redrive(outage):
    """SNS refuses every call until both jobs' records have used up their receives
    (maxReceiveCount 5):

    - a valid job is forwarded (SQS and DynamoDB are up), runs and is recorded
      COMPLETED by the processor, whose every receive then fails to publish; SQS moves
      the jobs-todo record to the DLQ ("stranded");
    - a keyed job goes the same way through jobs-todo.fifo, whose records SQS moves to
      dead-letter-queue.fifo (a FIFO queue's DLQ is FIFO);
    - a malformed job is stopped REJECTED by the ingester on the processor's record,
      which stores its dead letter once (and marks it stored) and fails to publish on
      every receive (each retry finds the recorded end and resumes at the publish), then
      SQS moves the ingester-queue record to the DLQ too.

    SNS comes back; `job-generator dlq redrive --all`, which reads both dead-letter
    queues. Each valid job must be announced COMPLETED once (from its recorded end,
    attempt 1, not run again), the malformed one
    REJECTED once, with exactly one dead letter left: its own, which the redrive keeps
    (its end was not announced when the redrive read it). Nothing announced twice,
    nothing left stranded.
    """
    stack, proxy = outage
    run = int(time.time())
    valid, malformed, keyed = f"outage-ok-{run}", f"outage-bad-{run}", f"outage-keyed-{run}"
    fifo_dlq = stack.settings["queues"]["jobs-todo.fifo"]["dead_letter_queue"]
    rejection = [("missing_field", 1)]
    proxy.set_rules(SNS_DOWN)
    try:
        put_jobs(
            stack,
            {"id": valid, "job_type": "user_onboarding", "message": {"user_id": "u1", "user_name": "Ada"}},
            {"id": malformed, "job_type": "report_generation", "message": {"filters": "region=EU"}},
            {"id": keyed, "job_type": "user_onboarding", "ordering_key": "outage",
             "message": {"user_id": "u2", "user_name": "Grace"}},
        )
        # Both records go round until SQS moves them: the work queues empty out.
        visibility = max(q["visibility_timeout_seconds"] for q in stack.settings["queues"].values())
        most_receives = max(q.get("max_receive_count", 0) for q in stack.settings["queues"].values())
        wait_for(
            lambda: all(queue_counts(stack, q) == EMPTY
                        for q in ("ingester-queue", "jobs-todo", "jobs-todo.fifo"))
            # The letter, and the two records SQS moved.
            and len(peek(stack, stack.settings["dead_letter_queue"])) >= 3
            and len(peek(stack, fifo_dlq)) >= 1,
            timeout=(most_receives + 1) * visibility + 60, every=3, what="every record moved to a DLQ",
        )
        refused = [e for e in proxy.log() if e.get("rule") == 0]  # SNS_DOWN[0]
    finally:
        proxy.clear()  # SNS is back

    # During the outage: nothing announced, both ends recorded and not announced.
    assert refused, "SNS was never called: did the rule stop matching?"
    during = stk.await_end_states(stack, {valid, malformed, keyed}, timeout=0, linger=1)
    assert not during, f"announced with SNS down: {ended_as(during)}"
    assert ended(stack, "ingester", valid) == (None, -1, None), "a forwarded job has no ingester record"
    assert ended(stack, "processor", valid) == ("COMPLETED", 1, False)
    assert ended(stack, "processor", keyed) == ("COMPLETED", 1, False)
    assert dlq_by_job(stack, fifo_dlq) == {keyed: [("stranded_job", 1)]}
    assert ended(stack, "processor", malformed) == ("REJECTED", 0, False)
    before = dlq_by_job(stack)
    copies = before[malformed][:-1]
    assert {job: [e[:4] for e in entries] for job, entries in before.items()} == {
        valid: [("stranded_job", 1)],
        # One letter, stored before the first publish failed and marked stored, so no
        # retry stores it again; then the record itself, moved by SQS.
        malformed: [("dead_letter", "REJECTED", 1, "missing_field"), ("stranded_event",)],
    }, before
    assert len({c[4] for c in copies}) == 1, f"the copies are of one end: {copies}"
    listed = ops(stack, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^{valid}  STRANDED in jobs-todo .* attempt 1", listed.stdout, re.M), listed.stdout
    assert re.search(rf"^{malformed}  STRANDED in ingester-queue", listed.stdout, re.M), listed.stdout
    assert re.search(rf"^{keyed}  STRANDED in jobs-todo .* attempt 1", listed.stdout, re.M), listed.stdout
    assert f"1 in {fifo_dlq}" in listed.stderr, listed.stderr
    assert len(re.findall(rf"^{malformed}  REJECTED at ingester", listed.stdout, re.M)) == 1, listed.stdout

    # The operator sends everything back (bounded: a redrive of seven messages takes
    # seconds; one that is still running after 30 s is stopped, by its own pid).
    redriven = redrive(stack, "--all", timeout=30)
    notes = stk.await_end_states(stack, {valid, malformed, keyed}, timeout=90, linger=15)
    by_job = ended_as(notes)
    assert by_job.get(valid) == [("COMPLETED", 1, [])], (notes, redriven)
    assert by_job.get(keyed) == [("COMPLETED", 1, [])], (notes, redriven)
    assert ended(stack, "processor", valid) == ("COMPLETED", 1, True)
    assert ended(stack, "processor", keyed) == ("COMPLETED", 1, True)
    if not redriven["finished"] or by_job.get(malformed) != [("REJECTED", 1, rejection)]:
        raise RedriveLoop(
            f"`dlq redrive --all` {'finished' if redriven['finished'] else 'was still running after 30 s'}; "
            f"{malformed} was announced {len(by_job.get(malformed, []))} times: "
            f"{sorted(set(map(repr, by_job.get(malformed, []))))}; redrive output: {redriven}"
        )
    assert ended(stack, "processor", malformed) == ("REJECTED", 0, True)
    wait_for(lambda: all(queue_counts(stack, q) == EMPTY
                         for q in ("ingester-queue", "jobs-todo", "jobs-todo.fifo")), timeout=60, what="work queues emptied")
    assert dlq_by_job(stack, fifo_dlq) == {}, "the stranded keyed record was moved back"
    after = dlq_by_job(stack)
    assert {job: [e[:4] for e in entries] for job, entries in after.items()} == {
        malformed: [("dead_letter", "REJECTED", 1, "missing_field")],
    }, (after, redriven)
    # Moved: the three stranded records; kept: the letter, whose end was still to be
    # announced (by its stranded event, redriven in the same sweep).
    assert "moved 3, kept 1, skipped 0, failed 0" in redriven["stderr"], redriven


def test_a_redriven_rejection_is_validated_once_more_and_ends_once_more(outage):
    """The outage test's bug without an outage: one rejected job, announced and
    dead-lettered once; the operator redrives it by id. It must be validated once
    more (a redrive is for a fixed validator or sender) and end once more: one
    REJECTED notification, one dead letter, and the redrive must return."""
    stack, _ = outage
    job_id = f"redrive-once-{int(time.time())}"
    put_jobs(stack, {"id": job_id, "job_type": "report_generation", "message": {"filters": "region=EU"}})
    first = stk.await_end_states(stack, {job_id}, timeout=60, linger=2)
    assert ended_as(first) == {job_id: [("REJECTED", 1, [("missing_field", 1)])]}, first
    assert [e[:4] for e in dlq_by_job(stack).get(job_id, [])] == [("dead_letter", "REJECTED", 1, "missing_field")]

    redriven = redrive(stack, "--job-id", job_id, timeout=20)
    again = stk.await_end_states(stack, {job_id}, timeout=30, linger=5)
    if not redriven["finished"] or len(again) != 1:
        raise RedriveLoop(
            f"`dlq redrive --job-id {job_id}` {'returned' if redriven['finished'] else 'was still running after 20 s'}"
            f"; the job was announced {len(again)} more times; redrive output: {redriven}"
        )
    assert ended_as(again) == {job_id: [("REJECTED", 1, [("missing_field", 1)])]}, again
    assert "moved 1, kept 0, skipped 0, failed 0" in redriven["stderr"], redriven
    assert [e[:4] for e in dlq_by_job(stack).get(job_id, [])] == [("dead_letter", "REJECTED", 1, "missing_field")]
