"""The embedded stack's settings checks, packaging and archive provisioning, without an
emulator (the archive's calls are checked against botocore's model of the API)."""

import copy
import json
import zipfile
import io

import boto3
import pytest
import yaml
from botocore.stub import Stubber

import stack as stk


def write(tmp_path, settings):
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(settings))
    return path


def test_the_shipped_settings_follow_the_aws_rules():
    s = stk.load_settings()
    for fn in s["functions"].values():
        q = s["queues"][fn["source_queue"]]
        assert q["visibility_timeout_seconds"] >= 6 * fn["timeout_seconds"]
        assert q["max_receive_count"] == stk.MIN_RECEIVE_COUNT
    ordered = s["queues"][s["functions"]["processor"]["ordered_source_queue"]]
    assert ordered["fifo"] and s["queues"][ordered["dead_letter_queue"]]["fifo"]


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda s: s["queues"]["jobs-todo"].update(visibility_timeout_seconds=30), "queues.jobs-todo.visibility_timeout_seconds"),
        (lambda s: s["functions"]["ingester"].update(batch_size=11), "functions.ingester.batch_size"),
        (lambda s: s["functions"]["processor"].update(maximum_concurrency=1), "functions.processor.maximum_concurrency"),
        (lambda s: s["queues"]["ingester-queue"].update(max_receive_count=2), "queues.ingester-queue.max_receive_count"),
        (lambda s: s["functions"]["processor"].update(source_queue="nope"), "functions.processor.source_queue"),
        (lambda s: s["rule"]["retry"].update(maximum_retry_attempts=186), "rule.retry.maximum_retry_attempts"),
        (lambda s: s["functions"]["ingester"]["environment"].update(MAX_JOB_TIMEOUT_SECONDS="890"),
         "functions.ingester.environment.MAX_JOB_TIMEOUT_SECONDS"),
        (lambda s: s["rule"].pop("retry"), "rule.retry.maximum_event_age_seconds"),
        (lambda s: s.update(outbox_index=""), "outbox_index"),
        (lambda s: s.pop("relay"), "relay"),
        (lambda s: s["relay"].update(timeout_seconds=901), "relay.timeout_seconds"),
        (lambda s: s["relay"].update(timeout_seconds=0), "relay.timeout_seconds"),
        (lambda s: s["relay"].update(memory_mb=64), "relay.memory_mb"),
        (lambda s: s["relay"].update(memory_mb=10241), "relay.memory_mb"),
        # EventBridge refuses a plural unit for 1 and a singular one above.
        (lambda s: s["relay"].update(schedule_expression="rate(1 minutes)"), "relay.schedule_expression"),
        (lambda s: s["relay"].update(schedule_expression="rate(5 minute)"), "relay.schedule_expression"),
        (lambda s: s["relay"].update(schedule_expression="rate(0 minutes)"), "relay.schedule_expression"),
        (lambda s: s["relay"].update(schedule_expression="every minute"), "relay.schedule_expression"),
        (lambda s: s["relay"].update(schedule_expression="cron(0 12 * * ?)"), "relay.schedule_expression"),
        (lambda s: s["relay"]["environment"].update(RUST_LOG=1), "relay.environment"),
        # Five call timeouts and a second: 26 s with the default 5 s.
        (lambda s: s["relay"].update(timeout_seconds=26), "relay.timeout_seconds"),
        (lambda s: s["relay"]["environment"].update(CALL_TIMEOUT_MS="12000"), "relay.timeout_seconds"),
        (lambda s: s["relay"]["environment"].update(CALL_TIMEOUT_MS="soon"), "relay.environment.CALL_TIMEOUT_MS"),
        (lambda s: s.pop("archive"), "archive"),
        # SQS: a FIFO queue's name ends in .fifo, and its dead-letter queue is FIFO too.
        (lambda s: s["queues"]["jobs-todo.fifo"].pop("fifo"), "queues.jobs-todo.fifo.fifo"),
        (lambda s: s["queues"]["jobs-todo"].update(fifo=True), "queues.jobs-todo.fifo"),
        (lambda s: s["queues"]["jobs-todo.fifo"].update(dead_letter_queue="dead-letter-queue"),
         "queues.jobs-todo.fifo.dead_letter_queue"),
        (lambda s: s["queues"]["jobs-todo.fifo"].update(dead_letter_queue="gone.fifo"),
         "queues.jobs-todo.fifo.dead_letter_queue"),
        (lambda s: s["functions"]["processor"].update(ordered_source_queue="jobs-todo"),
         "functions.processor.ordered_source_queue"),
        # An ordered job's receives: 3 attempts and AWS's 5.
        (lambda s: s["queues"]["jobs-todo.fifo"].update(max_receive_count=7), "queues.jobs-todo.fifo.max_receive_count"),
        (lambda s: s["functions"]["processor"].update(ordered_batch_size=10), "functions.processor.ordered_batch_size"),
        (lambda s: s["functions"]["processor"]["environment"].update(MAX_ATTEMPTS="6"),
         "queues.jobs-todo.fifo.max_receive_count"),
        (lambda s: s["queues"]["jobs-todo.fifo"].update(visibility_timeout_seconds=900),
         "queues.jobs-todo.fifo.visibility_timeout_seconds"),
        (lambda s: s["archive"].update(name=""), "archive.name"),
        (lambda s: s["archive"].update(name="j" * 49), "archive.name"),
        # EventBridge's archive names take no slash, colon or space.
        (lambda s: s["archive"].update(name="job/events"), "archive.name"),
        (lambda s: s["archive"].update(name="job events"), "archive.name"),
        (lambda s: s["archive"].pop("name"), "archive.name"),
        (lambda s: s["archive"].update(retention_days=-1), "archive.retention_days"),
        (lambda s: s["archive"].update(retention_days=1.5), "archive.retention_days"),
        (lambda s: s["archive"].update(retention_days="14"), "archive.retention_days"),
        (lambda s: s["archive"].update(retention_days=True), "archive.retention_days"),
    ],
)
def test_a_broken_setting_is_refused_by_name(tmp_path, change, named):
    s = copy.deepcopy(stk.load_settings())
    change(s)
    with pytest.raises(stk.StackError, match=named.replace(".", r"\.")):
        stk.load_settings(write(tmp_path, s))


@pytest.mark.parametrize("schedule", ["rate(1 minute)", "rate(5 minutes)", "rate(1 hour)", "rate(2 days)", "cron(0/5 * * * ? *)"])
def test_every_schedule_form_eventbridge_accepts_is_accepted(tmp_path, schedule):
    s = copy.deepcopy(stk.load_settings())
    s["relay"]["schedule_expression"] = schedule
    assert stk.load_settings(write(tmp_path, s))["relay"]["schedule_expression"] == schedule


@pytest.mark.parametrize("name, days", [("job-events", 14), ("j" * 48, 0), ("Jobs_v2.archive", 3650)])
def test_every_archive_eventbridge_accepts_is_accepted(tmp_path, name, days):
    """0 days is EventBridge's "keep indefinitely"; 48 characters its longest name."""
    s = copy.deepcopy(stk.load_settings())
    s["archive"] = {"name": name, "retention_days": days}
    assert stk.load_settings(write(tmp_path, s))["archive"] == {"name": name, "retention_days": days}


def test_package_makes_an_executable_bootstrap(tmp_path):
    binary = tmp_path / "fn"
    binary.write_bytes(b"\x7fELF fake")
    with zipfile.ZipFile(io.BytesIO(stk.package(binary))) as z:
        info = z.getinfo("bootstrap")
        assert (info.external_attr >> 16) & 0o111, "bootstrap must be executable"
        assert z.read("bootstrap") == b"\x7fELF fake"


def test_package_names_a_missing_binary(tmp_path):
    with pytest.raises(stk.StackError, match="cargo build --release"):
        stk.package(tmp_path / "missing")


def test_the_embedded_emulator_runs_with_the_compose_emulators_settings(tmp_path):
    env = stk.ministack_env(4599, tmp_path)
    compose = yaml.safe_load(stk.COMPOSE_FILE.read_text())["services"][stk.COMPOSE_EMULATOR]["environment"]
    assert env["SERVICES"] == compose["SERVICES"]
    # Docker-only settings are the embedded stack's own: loopback, its port, local executor.
    assert env["BIND_HOST"] == "127.0.0.1" and env["GATEWAY_PORT"] == "4599"
    assert "LAMBDA_EXECUTOR" not in env and "LAMBDA_DOCKER_NETWORK" not in env


def test_an_interpolated_compose_setting_is_refused_by_name(tmp_path):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  localstack:\n    environment:\n      SERVICES: ${MY_SERVICES}\n")
    with pytest.raises(stk.StackError, match=r"environment\.SERVICES"):
        stk.compose_emulator_env(compose)


BUS = "arn:aws:events:us-east-1:000000000000:event-bus/default"


def archive_calls(existing: list[dict]):
    """An events client that answers ListArchives with `existing`, and its stubber."""
    events = boto3.client("events", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(events)
    s = stk.load_settings()
    stub.add_response("list_archives", {"Archives": existing}, {"NamePrefix": s["archive"]["name"]})
    return events, stub, s


def archive_config(s: dict) -> dict:
    return {
        "ArchiveName": s["archive"]["name"],
        "EventPattern": json.dumps(s["rule"]["event_pattern"]),
        "RetentionDays": s["archive"]["retention_days"],
        "Description": stk.ARCHIVE_DESCRIPTION,
    }


def test_a_missing_archive_is_created_on_the_bus_with_the_rules_pattern():
    # ListArchives matches by prefix: an archive whose name only starts the same is another.
    name = stk.load_settings()["archive"]["name"]
    events, stub, s = archive_calls([{"ArchiveName": f"{name}-old", "EventSourceArn": BUS}])
    stub.add_response("create_archive", {"ArchiveArn": "arn:aws:events:us-east-1:000000000000:archive/job-events"},
                      {**archive_config(s), "EventSourceArn": BUS})
    with stub:
        stk.ensure_archive(events, s, BUS)
    stub.assert_no_pending_responses()


def test_an_existing_archive_is_given_the_settings_again():
    events, stub, s = archive_calls([{"ArchiveName": stk.load_settings()["archive"]["name"], "EventSourceArn": BUS}])
    stub.add_response("update_archive", {}, archive_config(s))
    with stub:
        stk.ensure_archive(events, s, BUS)
    stub.assert_no_pending_responses()


def test_an_archive_of_another_bus_is_refused_by_name_not_deleted():
    other = "arn:aws:events:us-east-1:000000000000:event-bus/other"
    events, stub, s = archive_calls([{"ArchiveName": stk.load_settings()["archive"]["name"], "EventSourceArn": other}])
    with stub, pytest.raises(stk.StackError, match=r"archive\.name"):
        stk.ensure_archive(events, s, BUS)
    stub.assert_no_pending_responses()
