"""Provisioning: every resource of the pipeline created or brought back to its settings.

`provision` creates, or updates in place, the queues (the DLQ first, with the redrive
policies pointing at it), the end-state topic and its demo subscriber, the rule and its
target, the queue policies, the archive of the rule's events, the state table and its
outbox index, the role, the functions and their event source mappings, and the outbox
relay with the schedule that runs it, as the Terraform declares them (tests/test_drift.py compares the two).
Every step is idempotent: running it again on a provisioned emulator changes nothing but
the code and configuration it deploys. `package` makes the Lambda zips from the release
binaries.
"""

from __future__ import annotations

import io
import json
import platform
import time
import zipfile
from pathlib import Path

from common import StackError
from emulator import Stack

ACCOUNT = "000000000000"
# The functions a queue feeds: each has its event source mapping and its block under
# pipeline.json's `functions`.
FUNCTIONS = ("ingester", "processor")
# The outbox relay, run by a schedule rather than a queue: its block is pipeline.json's `relay`.
RELAY = "relay"
PACKAGED = (*FUNCTIONS, RELAY)
# terraform/events.tf: aws_cloudwatch_event_rule.relay and aws_lambda_permission.relay_schedule.
# Schedules run only on the default bus.
RELAY_RULE = "relay-schedule"
RELAY_RULE_BUS = "default"
RELAY_PERMISSION = "EventBridgeRunsTheRelay"
TOPIC_KMS_KEY = "alias/aws/sns"  # terraform: var.topic_kms_key_id
# terraform/events.tf: aws_cloudwatch_event_archive.jobs.
ARCHIVE_DESCRIPTION = "Job events the ingester rule accepts, for replay"


def redrive_target(settings: dict, queue: str) -> str:
    """The dead-letter queue SQS moves `queue`'s records to: its own `dead_letter_queue`,
    else the shared one (a FIFO queue's must be FIFO)."""
    return settings["queues"][queue].get("dead_letter_queue", settings["dead_letter_queue"])


def dead_letter_queues(settings: dict) -> dict[str, list[str]]:
    """Each redrive target and the work queues that redrive to it, in settings order."""
    targets: dict[str, list[str]] = {}
    for name, q in settings["queues"].items():
        if "max_receive_count" in q:
            targets.setdefault(redrive_target(settings, name), []).append(name)
    return targets


def package(binary: Path) -> bytes:
    """A Lambda zip holding the binary as an executable `bootstrap`."""
    if not binary.is_file():
        raise StackError(f"{binary} is missing: build it with `cargo build --release` (make build)")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("bootstrap", date_time=(2026, 1, 1, 0, 0, 0))
        info.external_attr = 0o100755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, binary.read_bytes())
    return buf.getvalue()


def queue_arn(stack: Stack, name: str) -> str:
    return f"arn:aws:sqs:{stack.region}:{ACCOUNT}:{name}"


def provision(
    stack: Stack, zips: dict[str, bytes], marker: str, otlp_endpoint: str | None, fault_injection: bool = False,
    functions_endpoint: str | None = None,
) -> dict:
    """Creates or updates every resource; returns their URLs and ARNs. `functions_endpoint`:
    where the functions send their AWS calls, if not to the emulator (see `up`'s fault_proxy)."""
    s = stack.settings
    sqs, sns, events, lam, iam = (stack.client(n) for n in ("sqs", "sns", "events", "lambda", "iam"))
    dlq_name = s["dead_letter_queue"]
    urls = {}
    # Dead-letter queues first: the work queues' redrive policies point at them.
    for name in sorted(s["queues"], key=lambda n: n not in dead_letter_queues(s)):
        q = s["queues"][name]
        attrs = {
            "VisibilityTimeout": str(q["visibility_timeout_seconds"]),
            "MessageRetentionPeriod": str(q["message_retention_seconds"]),
            "SqsManagedSseEnabled": "true",
        }
        if "max_receive_count" in q:
            attrs["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": queue_arn(stack, redrive_target(s, name)), "maxReceiveCount": q["max_receive_count"]}
            )
        # A queue is FIFO from its creation on (SQS cannot change it later); content-based
        # deduplication stays off: the ingester names each forward.
        created = {"FifoQueue": "true", "ContentBasedDeduplication": "false"} if q.get("fifo") else {}
        url = sqs.create_queue(QueueName=name, Attributes=created)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
        urls[name] = url

    # Each dead-letter queue takes redrives only from the queues that name it.
    for target, redriven in dead_letter_queues(s).items():
        sqs.set_queue_attributes(
            QueueUrl=urls[target],
            Attributes={"RedriveAllowPolicy": json.dumps(
                {"redrivePermission": "byQueue", "sourceQueueArns": [queue_arn(stack, n) for n in redriven]}
            )},
        )

    topic_arn = sns.create_topic(Name=s["topic"], Attributes={"KmsMasterKeyId": TOPIC_KMS_KEY})["TopicArn"]
    watch = s["demo_subscriber_queue"]
    watch_url = sqs.create_queue(QueueName=watch, Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    urls[watch] = watch_url
    subs = sns.list_subscriptions_by_topic(TopicArn=topic_arn).get("Subscriptions", [])
    if not any(x["Endpoint"] == queue_arn(stack, watch) for x in subs):
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn(stack, watch),
            Attributes={"RawMessageDelivery": "true"},
        )

    rule = s["rule"]
    events.put_rule(
        Name=rule["name"], EventBusName=s["event_bus"], EventPattern=json.dumps(rule["event_pattern"]), State="ENABLED"
    )
    target_queue = s["functions"]["ingester"]["source_queue"]
    # Undeliverable events go to the DLQ as they are (MiniStack 1.5.33 stores these
    # settings but drops such events; AWS applies them).
    events.put_targets(
        Rule=rule["name"],
        EventBusName=s["event_bus"],
        Targets=[{
            "Id": target_queue,
            "Arn": queue_arn(stack, target_queue),
            "RetryPolicy": {
                "MaximumEventAgeInSeconds": rule["retry"]["maximum_event_age_seconds"],
                "MaximumRetryAttempts": rule["retry"]["maximum_retry_attempts"],
            },
            "DeadLetterConfig": {"Arn": queue_arn(stack, dlq_name)},
        }],
    )

    # The same grants the Terraform gives: only this rule may send to the ingester's
    # queue, and dead-letter what it cannot deliver.
    rule_arn = events.describe_rule(Name=rule["name"], EventBusName=s["event_bus"])["Arn"]
    for name, sid in ((target_queue, "EventBridgeSendsJobs"), (dlq_name, "EventBridgeDeadLettersUndeliverableJobs")):
        sqs.set_queue_attributes(
            QueueUrl=urls[name],
            Attributes={"Policy": json.dumps(event_queue_policy(queue_arn(stack, name), rule_arn, sid))},
        )

    ensure_archive(events, s, events.describe_event_bus(Name=s["event_bus"])["Arn"])
    ensure_table(stack.client("dynamodb"), s["state_table"], s["outbox_index"])

    role_arn = ensure_role(iam)
    receive = {name: q.get("max_receive_count", 5) for name, q in s["queues"].items()}
    common = {
        "DEAD_LETTER_QUEUE_URL": urls[dlq_name],
        "JOB_END_STATE_TOPIC_ARN": topic_arn,
        "JOBS_TABLE": s["state_table"],
        "JOBS_STACK_ID": marker,
        # MiniStack's provided.al2023 workers get no endpoint of their own (1.5.33);
        # without it the SDK would call real AWS.
        "AWS_ENDPOINT_URL": functions_endpoint or stack.endpoint,
        # On AWS this comes from LoggingConfig (the variable is reserved there).
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
    }
    if otlp_endpoint:
        common["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    for name in FUNCTIONS:
        fn = s["functions"][name]
        env = dict(fn.get("environment", {}), **common)
        # The ingester forwards to jobs-todo; the processor sends retries back to it.
        env["JOBS_TODO_QUEUE_URL"] = urls[s["functions"]["processor"]["source_queue"]]
        # Jobs with an ordering key go, and wait out their retries, in the FIFO queue.
        env["JOBS_TODO_FIFO_QUEUE_URL"] = urls[s["functions"]["processor"]["ordered_source_queue"]]
        if name == "ingester":
            env["INGESTER_QUEUE_URL"] = urls[fn["source_queue"]]
            # Its last receive dead-letters instead of failing (the processor counts
            # attempts in the message, not receives).
            env["MAX_RECEIVE_COUNT"] = str(receive[fn["source_queue"]])
        if name == "processor" and fault_injection:
            env["FAULT_INJECTION"] = "true"
        deploy_function(lam, name, fn, zips[name], role_arn, env)
        for source in sources(fn):
            ensure_mapping(lam, name, fn, queue_arn(stack, source), fifo=s["queues"][source].get("fifo", False))
    # The relay gets `common` too: the same endpoint (behind a fault proxy, if any) and the
    # marker `down` stops its workers by.
    relay = s["relay"]
    relay_env = dict(relay.get("environment", {}), **common, OUTBOX_INDEX=s["outbox_index"])
    deploy_function(lam, RELAY, relay, zips[RELAY], role_arn, relay_env)
    ensure_schedule(events, lam, relay["schedule_expression"])
    return {"queues": urls, "topic_arn": topic_arn, "role_arn": role_arn}


def ensure_schedule(events, lam, schedule_expression: str) -> None:
    """The rule that runs the relay, its one target, and the relay's leave for this rule
    to invoke it, as terraform/events.tf declares them (MiniStack 1.5.33 invokes without
    the leave; AWS refuses)."""
    rule_arn = events.put_rule(
        Name=RELAY_RULE, EventBusName=RELAY_RULE_BUS, ScheduleExpression=schedule_expression, State="ENABLED",
        Description="Runs the outbox relay",
    )["RuleArn"]
    relay_arn = lam.get_function_configuration(FunctionName=RELAY)["FunctionArn"]
    events.put_targets(Rule=RELAY_RULE, EventBusName=RELAY_RULE_BUS, Targets=[{"Id": RELAY, "Arn": relay_arn}])
    try:
        lam.add_permission(
            FunctionName=RELAY, StatementId=RELAY_PERMISSION, Action="lambda:InvokeFunction",
            Principal="events.amazonaws.com", SourceArn=rule_arn,
        )
    except lam.exceptions.ResourceConflictException:
        pass  # given by an earlier `up`: the rule's ARN is the same


def ensure_archive(events, settings: dict, bus_arn: str) -> None:
    """The archive keeping every event the jobs rule accepts, for replay, as
    terraform/events.tf declares it: created if missing, else given the settings'
    pattern, retention and description again, so a changed setting is applied. It keeps
    only events from its creation on. EventBridge cannot move an archive to another bus:
    one on another bus is refused by name rather than deleted with its events."""
    archive = settings["archive"]
    config = {
        "EventPattern": json.dumps(settings["rule"]["event_pattern"]),
        "RetentionDays": archive["retention_days"],  # 0: kept indefinitely
        "Description": ARCHIVE_DESCRIPTION,
    }
    # ListArchives, not DescribeArchive: MiniStack 1.5.33's describe returns every
    # archived event too.
    found = [
        a for a in events.list_archives(NamePrefix=archive["name"]).get("Archives", [])
        if a["ArchiveName"] == archive["name"]
    ]
    if not found:
        events.create_archive(ArchiveName=archive["name"], EventSourceArn=bus_arn, **config)
        return
    if found[0]["EventSourceArn"] != bus_arn:
        raise StackError(
            f"archive {archive['name']} (archive.name) archives {found[0]['EventSourceArn']}, not {bus_arn} "
            "(event_bus); EventBridge cannot move an archive: rename archive.name, or delete the archive and its events"
        )
    events.update_archive(ArchiveName=archive["name"], **config)


def event_queue_policy(queue: str, rule_arn: str, sid: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": sid,
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
            }
        ],
    }


def outbox_index(name: str) -> dict:
    """terraform/state.tf's global_secondary_index: sparse (only unannounced ends carry
    `outbox`), keyed by shard and lease end, keys only."""
    return {
        "IndexName": name,
        "KeySchema": [
            {"AttributeName": "outbox", "KeyType": "HASH"},
            {"AttributeName": "lease_until", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "KEYS_ONLY"},
    }


# Every key attribute of the table and of its index.
TABLE_ATTRIBUTES = [
    {"AttributeName": "pk", "AttributeType": "S"},
    {"AttributeName": "outbox", "AttributeType": "S"},
    {"AttributeName": "lease_until", "AttributeType": "N"},
]


def ensure_table(ddb, name: str, index: str, timeout: float = 300) -> None:
    """The job state table with its outbox index, as terraform/state.tf declares them. A
    table made before the index existed (a stack started by an older `up`) gets the index
    added, and is waited for until the index is ACTIVE: the relay queries it."""
    try:
        table = ddb.describe_table(TableName=name)["Table"]
    except ddb.exceptions.ResourceNotFoundException:
        ddb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=TABLE_ATTRIBUTES,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[outbox_index(index)],
            SSESpecification={"Enabled": True},
        )
        ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    else:
        if not any(g["IndexName"] == index for g in table.get("GlobalSecondaryIndexes", [])):
            # The request itself must define the new index's key attributes.
            ddb.update_table(
                TableName=name, AttributeDefinitions=TABLE_ATTRIBUTES,
                GlobalSecondaryIndexUpdates=[{"Create": outbox_index(index)}],
            )
    wait_index_active(ddb, name, index, timeout)
    ttl = ddb.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):  # AWS refuses enabling it twice
        ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})
    backups = ddb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
    if backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus") != "ENABLED":
        ddb.update_continuous_backups(
            TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )


def wait_index_active(ddb, name: str, index: str, timeout: float) -> None:
    """Until the table and the index are ACTIVE (a status the describe leaves out counts
    as active: an emulator may not report one)."""
    deadline = time.monotonic() + timeout
    while True:
        table = ddb.describe_table(TableName=name)["Table"]
        statuses = [table.get("TableStatus", "ACTIVE")] + [
            g.get("IndexStatus", "ACTIVE") for g in table.get("GlobalSecondaryIndexes", []) if g["IndexName"] == index
        ]
        if all(s == "ACTIVE" for s in statuses):
            return
        if time.monotonic() > deadline:
            raise StackError(f"table {name} and its index {index} are {statuses}, not ACTIVE, after {timeout:.0f} s")
        time.sleep(1)


def ensure_role(iam) -> str:
    name = "job-pipeline-local"
    try:
        return iam.get_role(RoleName=name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
        }
        return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


def deploy_function(lam, name: str, fn: dict, zip_bytes: bytes, role_arn: str, env: dict) -> None:
    config = {
        "Runtime": "provided.al2023",
        "Handler": "bootstrap",
        "Role": role_arn,
        "Timeout": fn["timeout_seconds"],
        "MemorySize": fn["memory_mb"],
        "Environment": {"Variables": env},
        "LoggingConfig": {"LogFormat": "JSON"},
    }
    try:
        lam.get_function(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        lam.create_function(FunctionName=name, Code={"ZipFile": zip_bytes}, Architectures=[host_architecture()], **config)
        wait_active(lam, name)
        return
    lam.update_function_code(FunctionName=name, ZipFile=zip_bytes)
    wait_active(lam, name)
    lam.update_function_configuration(FunctionName=name, **config)
    wait_active(lam, name)


def host_architecture() -> str:
    """MiniStack runs the binary as a local process, so it must be the host's instruction set."""
    return "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


def wait_active(lam, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cfg = lam.get_function_configuration(FunctionName=name)
        if cfg.get("State", "Active") == "Active" and cfg.get("LastUpdateStatus", "Successful") != "InProgress":
            return
        time.sleep(0.2)
    raise StackError(f"function {name} did not become Active within {timeout:.0f} s")


def sources(fn: dict) -> list[str]:
    """The queues a function consumes: its source queue, and the processor's FIFO one."""
    return [fn["source_queue"], *([fn["ordered_source_queue"]] if "ordered_source_queue" in fn else [])]


def ensure_mapping(lam, name: str, fn: dict, source_arn: str, fifo: bool = False) -> None:
    settings = {
        # A FIFO queue's batch is one record (stack/settings.py says why).
        "BatchSize": fn["ordered_batch_size"] if fifo else fn["batch_size"],
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "ScalingConfig": {"MaximumConcurrency": fn["maximum_concurrency"]},
    }
    # Lambda takes no batching window for a FIFO queue.
    if not fifo:
        settings["MaximumBatchingWindowInSeconds"] = fn["maximum_batching_window_seconds"]
    existing = lam.list_event_source_mappings(FunctionName=name, EventSourceArn=source_arn).get(
        "EventSourceMappings", []
    )
    if existing:
        lam.update_event_source_mapping(UUID=existing[0]["UUID"], Enabled=True, **settings)
    else:
        lam.create_event_source_mapping(FunctionName=name, EventSourceArn=source_arn, Enabled=True, **settings)
