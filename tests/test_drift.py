"""The embedded stack and the Terraform must describe the same pipeline.

`make up` provisions MiniStack with stack/provision.py; real deployments and docker-compose use
terraform/. Both read terraform/pipeline.json, but each also states things of its own (SSE,
policies, environment, mapping options, the relay's schedule rule, the event archive's source
and pattern, and the table's index), and either could hard-code a value. This test
starts the embedded stack, reads back what it really created, evaluates what the Terraform
declares (tests/hcl_eval.py), and compares the two in one normalised shape.

Deliberate differences, all local plumbing, are listed in LOCAL_ONLY_ENV and explained in
terraform/README.md (Kept in step with `make up`): the emulator endpoint, the stack's process marker and the log format variable
that AWS sets from LoggingConfig. IAM roles and log groups are not compared: MiniStack does
not enforce IAM, so the least-privilege policies are checked statically in test_terraform.py.
"""

from __future__ import annotations

import json
import re

import pytest

import stack as stk
from hcl_eval import JsonDoc, Module, Ref
from helpers import DEAD_LETTER_QUEUE, INGESTER_QUEUE, SETTINGS

LOCAL_ONLY_ENV = {"JOBS_STACK_ID", "AWS_ENDPOINT_URL", "AWS_LAMBDA_LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT"}
FUNCTIONS = {
    "ingester": "aws_lambda_function.ingester",
    "processor": "aws_lambda_function.processor",
    "relay": "aws_lambda_function.relay",
}
# The rules as terraform/events.tf names them: the jobs' route, and the relay's schedule.
JOBS_RULE = "aws_cloudwatch_event_rule.ingester"
SCHEDULE_RULE = "aws_cloudwatch_event_rule.relay"
ARCHIVE = "aws_cloudwatch_event_archive"


@pytest.fixture(scope="module")
def live(pipeline):
    """What conftest.py's `pipeline` (the stack as `make up` starts it) really provisioned."""
    return described(pipeline)


@pytest.fixture(scope="module")
def declared():
    return Declared(Module(stk.ROOT / "terraform")).pipeline()


# --------------------------------------------------------------------------- live side


def last(arn_or_url: str) -> str:
    """The name at the end of a queue URL, queue/topic ARN or rule ARN."""
    return arn_or_url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def described(stack: stk.Stack) -> dict:
    """What the embedded stack really provisioned, read back from the emulator."""
    s = stack.settings
    sqs, sns, events, lam = (stack.client(n) for n in ("sqs", "sns", "events", "lambda"))
    out = {"queues": {}, "functions": {}, "mappings": {}}
    for name in s["queues"]:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(a["RedrivePolicy"]) if "RedrivePolicy" in a else None
        out["queues"][name] = {
            "fifo": a.get("FifoQueue") == "true",
            "content_based_deduplication": a.get("ContentBasedDeduplication") == "true",
            "visibility_timeout_seconds": int(a["VisibilityTimeout"]),
            "message_retention_seconds": int(a["MessageRetentionPeriod"]),
            "sse": a.get("SqsManagedSseEnabled") == "true",
            "redrive": redrive and {"target": last(redrive["deadLetterTargetArn"]), "max_receive_count": int(redrive["maxReceiveCount"])},
            "redrive_allow": redrive_allow(json.loads(a["RedriveAllowPolicy"])) if "RedriveAllowPolicy" in a else None,
            "policy": queue_policy(json.loads(a["Policy"])) if "Policy" in a else None,
        }
    rule = events.describe_rule(Name=s["rule"]["name"], EventBusName=s["event_bus"])
    targets = events.list_targets_by_rule(Rule=rule["Name"], EventBusName=s["event_bus"])["Targets"]
    out["rule"] = {
        "name": rule["Name"],
        "bus": rule.get("EventBusName", "default"),
        "pattern": json.loads(rule["EventPattern"]),
        "targets": sorted(
            (t["Id"], last(t["Arn"]), last(t.get("DeadLetterConfig", {}).get("Arn", "")),
             t.get("RetryPolicy", {}).get("MaximumEventAgeInSeconds"), t.get("RetryPolicy", {}).get("MaximumRetryAttempts"))
            for t in targets
        ),
    }
    topic_arn = sns.create_topic(Name=s["topic"])["TopicArn"]  # idempotent lookup by name
    topic = sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"]
    out["topic"] = {"name": last(topic_arn), "kms_master_key_id": topic.get("KmsMasterKeyId")}
    schedule = events.describe_rule(Name=stk.RELAY_RULE, EventBusName=stk.RELAY_RULE_BUS)
    out["schedule"] = {
        "name": schedule["Name"],
        "bus": schedule.get("EventBusName", "default"),
        "expression": schedule.get("ScheduleExpression"),
        "targets": sorted(
            (t["Id"], last(t["Arn"]))
            for t in events.list_targets_by_rule(Rule=schedule["Name"], EventBusName=stk.RELAY_RULE_BUS)["Targets"]
        ),
        "permissions": invoke_permissions(lam, stk.RELAY),
    }
    # Every archive of the jobs' bus (a stale one, say of a renamed archive.name, is drift):
    # the list for the source, a describe of each for its pattern.
    bus_arn = events.describe_event_bus(Name=s["event_bus"])["Arn"]
    out["archive"] = sorted(
        (
            archive_part(events.describe_archive(ArchiveName=a["ArchiveName"]))
            for a in events.list_archives(EventSourceArn=bus_arn)["Archives"]
        ),
        key=lambda a: a["name"],
    )
    table = stack.client("dynamodb").describe_table(TableName=s["state_table"])["Table"]
    ddb = stack.client("dynamodb")
    ttl = ddb.describe_time_to_live(TableName=s["state_table"])["TimeToLiveDescription"]
    pitr = ddb.describe_continuous_backups(TableName=s["state_table"])["ContinuousBackupsDescription"]
    out["table"] = {
        "name": table["TableName"],
        "billing": table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED"),
        "key": sorted((k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]),
        "attributes": sorted((a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]),
        "indexes": sorted(
            (g["IndexName"], tuple(sorted((k["AttributeName"], k["KeyType"]) for k in g["KeySchema"])),
             g["Projection"]["ProjectionType"])
            for g in table.get("GlobalSecondaryIndexes", [])
        ),
        "ttl": ttl.get("AttributeName") if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") else None,
        "point_in_time_recovery": pitr["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED",
    }
    for name in FUNCTIONS:
        c = lam.get_function_configuration(FunctionName=name)
        env = c.get("Environment", {}).get("Variables", {})
        out["functions"][name] = {
            "runtime": c["Runtime"],
            "handler": c["Handler"],
            "timeout": c["Timeout"],
            "memory": c["MemorySize"],
            "log_format": c.get("LoggingConfig", {}).get("LogFormat"),
            "environment": {k: env_value(v) for k, v in env.items() if k not in LOCAL_ONLY_ENV},
        }
        for m in lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]:
            out["mappings"][f"{name} <- {last(m['EventSourceArn'])}"] = {
                "source": last(m["EventSourceArn"]),
                "batch_size": m["BatchSize"],
                "window": m.get("MaximumBatchingWindowInSeconds", 0),
                "response_types": m.get("FunctionResponseTypes", []),
                "max_concurrency": m.get("ScalingConfig", {}).get("MaximumConcurrency"),
                "enabled": m.get("State", "Enabled") in ("Enabled", "Enabling", "Updating"),
            }
    return out


def archive_part(a: dict) -> dict:
    """An archive as DescribeArchive returns it: its name, the bus it archives, its pattern
    and retention (0 or absent: indefinitely)."""
    return {
        "name": a["ArchiveName"],
        "bus": last(a["EventSourceArn"]),
        "pattern": json.loads(a["EventPattern"]) if a.get("EventPattern") else None,
        "retention_days": a.get("RetentionDays", 0),
    }


def invoke_permissions(lam, function: str) -> list:
    """Who may invoke the function, from its resource policy: (sid, principal, action,
    the rule it is limited to)."""
    try:
        policy = json.loads(lam.get_policy(FunctionName=function)["Policy"])
    except lam.exceptions.ResourceNotFoundException:
        return []
    out = []
    for st in policy["Statement"]:
        source = [v for cond in st.get("Condition", {}).values() for k, v in cond.items() if k.lower() == "aws:sourcearn"]
        out.append((st["Sid"], st["Principal"]["Service"], st["Action"], last(source[0]) if source else None))
    return sorted(out)


def env_value(v: str) -> str:
    """Queue URLs and topic ARNs differ by account and host; compare what they name."""
    return f"->{last(v)}" if v.startswith(("http://", "https://", "arn:")) else v


def redrive_allow(doc: dict) -> dict:
    return {"permission": doc["redrivePermission"], "sources": sorted(last(a) for a in doc.get("sourceQueueArns", []))}


def queue_policy(doc: dict) -> list:
    out = []
    for st in doc["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        (test, cond), = st.get("Condition", {}).items()
        (variable, values), = cond.items()
        values = values if isinstance(values, list) else [values]
        out.append(
            {
                "effect": st["Effect"],
                "principals": sorted(st["Principal"]["Service"] if isinstance(st["Principal"]["Service"], list) else [st["Principal"]["Service"]]),
                "actions": sorted(actions),
                "resources": [last(st["Resource"])],
                "condition": [test, variable, sorted(last(v) for v in values)],
            }
        )
    return out


# --------------------------------------------------------------------------- declared side


class Declared:
    """What the Terraform declares, in the same shape as `described`."""

    def __init__(self, module: Module):
        self.m = module

    def name_of(self, ref) -> str:
        """The name a reference points at: aws_sqs_queue.x.arn -> x's `name`."""
        if not isinstance(ref, Ref):
            return ref
        attr = {"aws_lambda_function": "function_name"}.get(ref.path.split(".")[0], "name")
        return self.m.attribute(ref.resource, attr)

    def present(self) -> dict[str, dict]:
        """The resources this configuration creates: those with `count = 0` (the
        optional end-state queue, off by default) are not part of the pipeline."""
        return {r: b for r, b in self.m.resources().items() if "count" not in b or self.m.value(b["count"]) != 0}

    def one(self, resource: str, block: str) -> dict:
        return self.m.attribute(resource, block)[0]

    def pipeline(self) -> dict:
        m = self.m
        queues = {}
        redrive_allows = {
            self.name_of(m.attribute(r, "queue_url")): m.attribute(r, "redrive_allow_policy").value
            for r in self.present()
            if r.startswith("aws_sqs_queue_redrive_allow_policy.")
        }
        policies = {
            self.name_of(m.attribute(r, "queue_url")): m.attribute(r, "policy")
            for r in self.present()
            if r.startswith("aws_sqs_queue_policy.")
        }
        for r, body in self.present().items():
            if not r.startswith("aws_sqs_queue."):
                continue
            name = m.attribute(r, "name")
            redrive = m.attribute(r, "redrive_policy").value if "redrive_policy" in body else None
            allow = redrive_allows.get(name)
            policy = policies.get(name)
            queues[name] = {
                "fifo": m.attribute(r, "fifo_queue") if "fifo_queue" in body else False,
                "content_based_deduplication": (
                    m.attribute(r, "content_based_deduplication") if "content_based_deduplication" in body else False
                ),
                "visibility_timeout_seconds": m.attribute(r, "visibility_timeout_seconds"),
                "message_retention_seconds": m.attribute(r, "message_retention_seconds"),
                "sse": m.attribute(r, "sqs_managed_sse_enabled") if "sqs_managed_sse_enabled" in body else False,
                "redrive": redrive and {"target": self.name_of(redrive["deadLetterTargetArn"]), "max_receive_count": redrive["maxReceiveCount"]},
                "redrive_allow": allow and {"permission": allow["redrivePermission"], "sources": sorted(self.name_of(a) for a in allow["sourceQueueArns"])},
                "policy": policy and self.policy_document(policy),
            }
        rule = JOBS_RULE
        pattern = m.attribute(rule, "event_pattern")
        targets = self.targets_of(rule)
        out = {
            "queues": queues,
            "rule": {
                "name": m.attribute(rule, "name"),
                "bus": m.attribute(rule, "event_bus_name"),
                "pattern": pattern.value if isinstance(pattern, JsonDoc) else json.loads(pattern),
                "targets": sorted(self.target(t) for t in targets),
            },
            "topic": {
                "name": m.attribute("aws_sns_topic.job_end_state", "name"),
                "kms_master_key_id": m.attribute("aws_sns_topic.job_end_state", "kms_master_key_id"),
            },
            "schedule": {
                "name": m.attribute(SCHEDULE_RULE, "name"),
                "bus": m.attribute(SCHEDULE_RULE, "event_bus_name"),
                "expression": m.attribute(SCHEDULE_RULE, "schedule_expression"),
                "targets": sorted(
                    (m.attribute(t, "target_id"), self.name_of(m.attribute(t, "arn"))) for t in self.targets_of(SCHEDULE_RULE)
                ),
                "permissions": sorted(
                    (m.attribute(p, "statement_id"), m.attribute(p, "principal"), m.attribute(p, "action"),
                     self.name_of(m.attribute(p, "source_arn")))
                    for p in self.present()
                    if p.startswith("aws_lambda_permission.") and self.name_of(m.attribute(p, "function_name")) == stk.RELAY
                ),
            },
            "archive": sorted(
                (self.archive(r) for r in self.present() if r.startswith(f"{ARCHIVE}.")), key=lambda a: a["name"]
            ),
            "functions": {},
            "mappings": {},
        }
        t = "aws_dynamodb_table.jobs"
        ttl = self.one(t, "ttl")
        out["table"] = {
            "name": m.attribute(t, "name"),
            "billing": m.attribute(t, "billing_mode"),
            "key": [(m.attribute(t, "hash_key"), "HASH")],
            "attributes": sorted((a["name"], a["type"]) for a in m.attribute(t, "attribute")),
            "indexes": sorted(
                (g["name"], tuple(sorted([(g["hash_key"], "HASH")] + ([(g["range_key"], "RANGE")] if "range_key" in g else []))),
                 g["projection_type"])
                for g in m.attribute(t, "global_secondary_index")
            ),
            "ttl": ttl["attribute_name"] if ttl["enabled"] else None,
            "point_in_time_recovery": self.one(t, "point_in_time_recovery")["enabled"],
        }
        for name, fn in FUNCTIONS.items():
            env = self.one(fn, "environment")["variables"]
            out["functions"][name] = {
                "runtime": m.attribute(fn, "runtime"),
                "handler": m.attribute(fn, "handler"),
                "timeout": m.attribute(fn, "timeout"),
                "memory": m.attribute(fn, "memory_size"),
                "log_format": self.one(fn, "logging_config")["log_format"],
                "environment": {k: self.env_value(v) for k, v in env.items()},
            }
        for r in m.resources():
            if not r.startswith("aws_lambda_event_source_mapping."):
                continue
            fn = self.name_of(m.attribute(r, "function_name"))
            source = self.name_of(m.attribute(r, "event_source_arn"))
            body = m.resources()[r]
            out["mappings"][f"{fn} <- {source}"] = {
                "source": source,
                "batch_size": m.attribute(r, "batch_size"),
                # Unset (a FIFO queue takes none), the provider sends none: Lambda's 0.
                "window": (
                    m.attribute(r, "maximum_batching_window_in_seconds")
                    if "maximum_batching_window_in_seconds" in body else 0
                ),
                "response_types": m.attribute(r, "function_response_types"),
                "max_concurrency": self.one(r, "scaling_config")["maximum_concurrency"],
                "enabled": m.attribute(r, "enabled"),
            }
        return out

    def archive(self, r: str) -> dict:
        """An aws_cloudwatch_event_archive in archive_part's shape."""
        m = self.m
        body = self.present()[r]
        pattern = m.attribute(r, "event_pattern") if "event_pattern" in body else None
        return {
            "name": m.attribute(r, "name"),
            "bus": self.name_of(m.attribute(r, "event_source_arn")),
            "pattern": pattern.value if isinstance(pattern, JsonDoc) else pattern and json.loads(pattern),
            "retention_days": m.attribute(r, "retention_days") if "retention_days" in body else 0,
        }

    def targets_of(self, rule: str) -> list[str]:
        """The aws_cloudwatch_event_target resources of one rule."""
        return [
            r for r in self.m.resources()
            if r.startswith("aws_cloudwatch_event_target.") and self.m.attribute(r, "rule").resource == rule
        ]

    def target(self, t: str) -> tuple:
        """A rule target in `described`'s shape: id, queue, dead-letter queue, retries."""
        m = self.m
        retry = self.one(t, "retry_policy")
        return (
            m.attribute(t, "target_id"),
            self.name_of(m.attribute(t, "arn")),
            self.name_of(self.one(t, "dead_letter_config")["arn"]),
            retry["maximum_event_age_in_seconds"],
            retry["maximum_retry_attempts"],
        )

    def env_value(self, v) -> str:
        """In env_value's shape: a name as itself, a URL or ARN as `->name`."""
        if not isinstance(v, Ref):
            return v
        return self.name_of(v) if v.path.endswith(".name") else f"->{self.name_of(v)}"

    def policy_document(self, ref: Ref) -> list:
        """An aws_iam_policy_document data source, in queue_policy's shape."""
        out = []
        for st in self.m.attribute(ref.resource, "statement"):
            (principal,) = st["principals"]
            (cond,) = st["condition"]
            out.append(
                {
                    "effect": st.get("effect", "Allow"),
                    "principals": sorted(principal["identifiers"]),
                    "actions": sorted(st["actions"]),
                    "resources": [self.name_of(r) for r in st["resources"]],
                    "condition": [cond["test"], cond["variable"], sorted(self.name_of(v) for v in cond["values"])],
                }
            )
        return out


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("part", ["queues", "rule", "schedule", "archive", "topic", "table", "functions", "mappings"])
def test_the_embedded_stack_provisions_what_terraform_declares(live, declared, part):
    assert live[part] == declared[part], f"{part} differ between `make up` (left) and terraform/ (right)"


def test_the_comparison_sees_every_resource(live, declared):
    """An empty or partial read on both sides would compare equal; it must not."""
    assert set(declared["queues"]) == set(SETTINGS["queues"])
    assert set(declared["functions"]) == set(stk.PACKAGED)
    assert set(declared["mappings"]) == {
        f"{fn} <- {source}" for fn in stk.FUNCTIONS for source in stk.sources(SETTINGS["functions"][fn])
    }, "each function on each of its queues; the relay is run by its schedule, not a queue"
    fifo = {name for name, q in declared["queues"].items() if q["fifo"]}
    assert fifo == {n for n in SETTINGS["queues"] if n.endswith(".fifo")} and fifo, "the ordered jobs' queues"
    assert declared["schedule"]["targets"] == [(stk.RELAY, stk.RELAY)] and declared["schedule"]["expression"]
    assert declared["schedule"]["permissions"], "EventBridge must be let to invoke the relay"
    assert declared["table"]["indexes"], "the relay queries the outbox index"
    assert len(declared["archive"]) == 1, "one archive keeps the jobs' events"
    (archive,) = declared["archive"]
    assert archive["name"] == SETTINGS["archive"]["name"] and archive["bus"] == SETTINGS["event_bus"]
    assert archive["pattern"] == declared["rule"]["pattern"], "the archive keeps what the jobs rule accepts"
    assert declared["rule"]["targets"] and declared["queues"][INGESTER_QUEUE]["policy"]
    assert declared["queues"][DEAD_LETTER_QUEUE]["policy"], "EventBridge must be let to dead-letter"
    assert all(t[2] == DEAD_LETTER_QUEUE and t[3] and t[4] for t in declared["rule"]["targets"])
    assert all(f["environment"] for f in live["functions"].values())


def function_vars() -> dict[str, dict[str, set[str]]]:
    """Each function's variables as functions/core/src/config.rs lists them (INGESTER_VARS,
    PROCESSOR_VARS, RELAY_VARS, COMMON_OPTIONAL), constants resolved from the crate's sources: the
    lists the functions really read from, not a copy of them here."""
    src = (stk.ROOT / "functions/core/src").rglob("*.rs")
    consts = {}
    for path in src:
        for name, value in re.findall(r'const ([A-Z_]+): &str = "([A-Z_]+)";', path.read_text()):
            consts[name] = value
    text = (stk.ROOT / "functions/core/src/config.rs").read_text()

    def names(body: str) -> set[str]:
        out = set()
        for item in re.findall(r'"[A-Z_]+"|[a-z_:]*[A-Z_]{3,}', body):
            key = item.strip('"').rsplit("::", 1)[-1]
            out.add(consts.get(key, key) if not item.startswith('"') else key)
        return out

    common = names(re.search(r"COMMON_OPTIONAL: &\[&str\] = &\[(.*?)\];", text, re.S).group(1))
    out = {}
    for fn in FUNCTIONS:
        block = re.search(rf"{fn.upper()}_VARS: FunctionVars = FunctionVars \{{(.*?)\n\}};", text, re.S).group(1)
        required = names(re.search(r"required: &\[(.*?)\]", block, re.S).group(1))
        optional = names(re.search(r"optional: &\[(.*?)\]", block, re.S).group(1)) | common
        out[fn] = {"required": required, "optional": optional}
    return out


def test_the_function_variable_lists_are_read_whole():
    """The parse above must see what config.rs declares, or the next test proves nothing."""
    v = function_vars()
    assert {"INGESTER_QUEUE_URL", "MAX_RECEIVE_COUNT", "JOBS_TABLE"} <= v["ingester"]["required"]
    assert {"DEADLINE_MARGIN_MS", "FAULT_INJECTION", "TLS_TRUST_ROOTS", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= v["processor"]["optional"]
    assert "INGESTER_QUEUE_URL" not in v["processor"]["required"] | v["processor"]["optional"]
    assert {"OUTBOX_INDEX", "JOBS_TABLE"} <= v["relay"]["required"] and "JOBS_TODO_QUEUE_URL" not in v["relay"]["required"]


@pytest.mark.parametrize("side", ["live", "declared"])
@pytest.mark.parametrize("fn", list(FUNCTIONS))
def test_each_function_is_given_every_variable_it_needs_and_none_it_ignores(live, declared, side, fn):
    """Guards against a function that stops at init (a required variable missing) and a
    setting that silently does nothing (a name the function never reads, such as a typo)."""
    given = set((live if side == "live" else declared)["functions"][fn]["environment"])
    v = function_vars()[fn]
    missing = v["required"] - given
    assert not missing, f"{side} does not set {sorted(missing)} for {fn}"
    platform = {k for k in given if k.startswith("AWS_")} | {"JOBS_STACK_ID"}
    ignored = given - v["required"] - v["optional"] - platform
    assert not ignored, f"{side} sets {sorted(ignored)} for {fn}, which it never reads"
