"""The pipeline's settings: terraform/pipeline.json, the file the Terraform reads too.

`load_settings` returns the file as a dict only once it passes the rules AWS enforces on
the resources the settings describe (visibility timeout at least 6 x the function timeout,
batch sizes, concurrency, receive counts, EventBridge retry limits, the relay's Lambda
limits and schedule, the event archive's name and retention) and the pipeline's own (the
ingester accepts no job longer than the processor can run). A broken file is refused
with every problem named by its setting's path, before anything is started or created.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from common import ROOT, StackError

SETTINGS_FILE = ROOT / "terraform" / "pipeline.json"
# AWS's advice for a queue a Lambda polls: a throttled poller's receive counts too.
MIN_RECEIVE_COUNT = 5
# EventBridge's schedule forms: a rate's unit is singular for 1 and plural above ("rate(1
# minutes)" is refused), and a cron has six fields (minutes to year).
RATE = re.compile(r"rate\((?P<n>[1-9][0-9]*) (?P<unit>minute|hour|day)(?P<plural>s?)\)")
CRON = re.compile(r"cron\(\S+( \S+){5}\)")
# EventBridge's archive names: 1..48 of these characters.
ARCHIVE_NAME = re.compile(r"[.\-_A-Za-z0-9]{1,48}")


def load_settings(path: Path = SETTINGS_FILE, min_receive_count: int = MIN_RECEIVE_COUNT) -> dict:
    """Reads pipeline.json and checks the rules AWS enforces, naming the setting at fault.
    `min_receive_count`: the least `max_receive_count` a work queue may have; 5 is AWS's
    advice with Lambda (a throttled poller also counts a receive), lowered only by tests that
    must reach a record's last receive in seconds."""
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StackError(f"cannot read {path}: {e}") from e
    problems = []
    queues = settings.get("queues", {})
    for name, fn in settings.get("functions", {}).items():
        src = fn.get("source_queue")
        if src not in queues:
            problems.append(f"functions.{name}.source_queue: {src!r} is not in queues")
            continue
        visibility = queues[src]["visibility_timeout_seconds"]
        if visibility < 6 * fn["timeout_seconds"]:
            problems.append(
                f"queues.{src}.visibility_timeout_seconds is {visibility}; it must be at least 6 x "
                f"functions.{name}.timeout_seconds ({fn['timeout_seconds']}) = {6 * fn['timeout_seconds']}"
            )
        if not 1 <= fn["batch_size"] <= 10:
            problems.append(f"functions.{name}.batch_size must be 1..10 without a batching window")
        if not 2 <= fn["maximum_concurrency"] <= 1000:
            problems.append(f"functions.{name}.maximum_concurrency must be 2..1000")
        if queues[src].get("max_receive_count", 5) < min_receive_count:
            problems.append(f"queues.{src}.max_receive_count must be at least {min_receive_count} with Lambda")
    problems += fifo_problems(settings)
    fns = settings.get("functions", {})
    try:
        runs_for = fns["processor"]["timeout_seconds"] - int(fns["processor"]["environment"]["DEADLINE_MARGIN_MS"]) // 1000
        accepted = int(fns["ingester"]["environment"]["MAX_JOB_TIMEOUT_SECONDS"])
        if accepted > runs_for:
            problems.append(
                f"functions.ingester.environment.MAX_JOB_TIMEOUT_SECONDS is {accepted}; the processor can run a job "
                f"for at most {runs_for} s (functions.processor.timeout_seconds less DEADLINE_MARGIN_MS)"
            )
    except (KeyError, ValueError, TypeError) as e:
        problems.append(f"functions.ingester.environment.MAX_JOB_TIMEOUT_SECONDS and the processor's timeout and "
                        f"DEADLINE_MARGIN_MS must be set as whole numbers ({e!r})")
    retry = settings.get("rule", {}).get("retry", {})
    if not 60 <= retry.get("maximum_event_age_seconds", 0) <= 86400:
        problems.append("rule.retry.maximum_event_age_seconds must be 60..86400 (EventBridge's limits)")
    if not 0 <= retry.get("maximum_retry_attempts", -1) <= 185:
        problems.append("rule.retry.maximum_retry_attempts must be 0..185 (EventBridge's limits)")
    if not isinstance(settings.get("state_table"), str) or not settings["state_table"]:
        problems.append("state_table must name the job state table")
    if settings.get("dead_letter_queue") not in queues:
        problems.append("dead_letter_queue must name one of queues")
    if not isinstance(settings.get("outbox_index"), str) or not settings["outbox_index"]:
        problems.append("outbox_index must name the job state table's outbox index")
    problems += relay_problems(settings.get("relay"))
    problems += archive_problems(settings.get("archive"))
    if problems:
        raise StackError(f"{path.name} is invalid:\n  " + "\n  ".join(problems))
    return settings


def fifo_problems(settings: dict) -> list[str]:
    """The FIFO queues of jobs with an ordering key: named `.fifo` (SQS's rule) exactly when
    `fifo` is set, redriven only to a queue of their own kind (a FIFO queue's dead-letter
    queue must be FIFO), and the processor's `ordered_source_queue` one of them, with room
    in its receive count for every receive a job that ends can take: its own attempts wait
    in place, one receive each (with `ordered_batch_size` 1, no record waits in a batch
    behind another)."""
    queues = settings.get("queues", {})
    problems = []
    for name, q in queues.items():
        fifo = q.get("fifo", False)
        if fifo is not (name.endswith(".fifo")):
            problems.append(f"queues.{name}.fifo is {fifo}: SQS wants a FIFO queue's name, and only its, to end in .fifo")
        target = q.get("dead_letter_queue", settings.get("dead_letter_queue"))
        if "max_receive_count" in q and target in queues and queues[target].get("fifo", False) is not fifo:
            problems.append(f"queues.{name}.dead_letter_queue is {target!r}: a queue's dead-letter queue must be "
                            "of its own kind (FIFO for FIFO)")
        elif "max_receive_count" in q and target not in queues:
            problems.append(f"queues.{name}.dead_letter_queue: {target!r} is not in queues")
    processor = settings.get("functions", {}).get("processor", {})
    ordered = processor.get("ordered_source_queue")
    if ordered not in queues or not queues[ordered].get("fifo", False):
        return problems + [f"functions.processor.ordered_source_queue: {ordered!r} must name a FIFO queue of queues"]
    q = queues[ordered]
    if q["visibility_timeout_seconds"] < 6 * processor.get("timeout_seconds", 0):
        problems.append(f"queues.{ordered}.visibility_timeout_seconds must be at least 6 x "
                        "functions.processor.timeout_seconds")
    try:
        attempts = int(processor.get("environment", {}).get("MAX_ATTEMPTS", "3"))
    except ValueError:
        attempts = 3
    # One record per batch: a group's records in one batch would run one after another
    # within one invocation's time, and a later one could fail for a deadline it did not
    # take; and each one waiting behind a failed one would use up a receive.
    batch = processor.get("ordered_batch_size")
    if batch != 1:
        problems.append(f"functions.processor.ordered_batch_size is {batch!r}; it must be 1: a FIFO group's jobs "
                        "in one batch share one invocation's time, and those waiting behind a failed one use up receives")
    least = attempts + MIN_RECEIVE_COUNT
    if q.get("max_receive_count", 0) < least:
        problems.append(f"queues.{ordered}.max_receive_count must be at least MAX_ATTEMPTS + {MIN_RECEIVE_COUNT} "
                        f"= {least}: an ordered job is received once per attempt")
    return problems


# functions/core/src/guard.rs GuardConfig's default, and relay.rs PASS_CALLS.
DEFAULT_CALL_TIMEOUT_MS = 5000
RELAY_PASS_CALLS = 5


def relay_problems(relay) -> list[str]:
    """The outbox relay's block: Lambda's limits and a schedule EventBridge accepts."""
    if not isinstance(relay, dict):
        return ["relay must hold the outbox relay's settings"]
    problems = []
    if not _whole(relay.get("timeout_seconds"), 1, 900):
        problems.append("relay.timeout_seconds must be 1..900 (Lambda's limits)")
    if not _whole(relay.get("memory_mb"), 128, 10240):
        problems.append("relay.memory_mb must be 128..10240 (Lambda's limits)")
    schedule = relay.get("schedule_expression")
    rate = RATE.fullmatch(schedule) if isinstance(schedule, str) else None
    if rate and (rate["n"] == "1") == bool(rate["plural"]):
        problems.append(f"relay.schedule_expression is {schedule!r}: EventBridge wants a singular unit for 1 "
                        "and a plural one above, as in rate(1 minute) or rate(5 minutes)")
    elif not rate and not (isinstance(schedule, str) and CRON.fullmatch(schedule)):
        problems.append(f"relay.schedule_expression is {schedule!r}: it must be rate(<n> minute(s)|hour(s)|day(s)) "
                        "or cron(<six fields>)")
    env = relay.get("environment", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        problems.append("relay.environment must map variable names to strings (Lambda takes no other values)")
        return problems
    # A pass starts only with five call timeouts and a second left (functions/core/src/relay.rs
    # RelayConfig::for_calls): a shorter function would never sweep.
    call_ms = env.get("CALL_TIMEOUT_MS", str(DEFAULT_CALL_TIMEOUT_MS))
    if not call_ms.isdigit():
        problems.append(f"relay.environment.CALL_TIMEOUT_MS is {call_ms!r}: it must be a whole number of milliseconds")
    elif _whole(relay.get("timeout_seconds"), 1, 900):
        reserve = RELAY_PASS_CALLS * int(call_ms) / 1000 + 1
        if relay["timeout_seconds"] <= reserve:
            problems.append(f"relay.timeout_seconds is {relay['timeout_seconds']}; with CALL_TIMEOUT_MS {call_ms} a pass "
                            f"needs more than {reserve:g} s ({RELAY_PASS_CALLS} call timeouts and a second)")
    return problems


def archive_problems(archive) -> list[str]:
    """The event archive's block: a name and a retention EventBridge accepts."""
    if not isinstance(archive, dict):
        return ["archive must hold the event archive's settings (name, retention_days)"]
    problems = []
    name = archive.get("name")
    if not (isinstance(name, str) and ARCHIVE_NAME.fullmatch(name)):
        problems.append(f"archive.name is {name!r}: EventBridge wants 1..48 characters of . - _ A-Z a-z 0-9")
    # EventBridge keeps an archive's events indefinitely at 0.
    if not _whole(archive.get("retention_days"), 0, 2**31 - 1):
        problems.append(f"archive.retention_days is {archive.get('retention_days')!r}: it must be a whole number "
                        "of days, 0 or more (0 keeps the events indefinitely)")
    return problems


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
