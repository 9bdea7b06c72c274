"""Static checks of terraform/: it parses, its variables are documented, its IAM grants are
exactly least privilege, its queues outlast their consumers, and checkov finds nothing.

No Terraform binary is needed: tests/hcl_eval.py evaluates the expressions."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

import aws_services as aws
import stack as stk
from hcl_eval import Module, Ref

TF = stk.ROOT / "terraform"
CHECKOV = stk.ROOT / ".stack" / "checkov-venv" / "bin" / "checkov"
RECEIVE = ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]
LOGS = ["logs:CreateLogStream", "logs:PutLogEvents"]
STATE_READ = ["dynamodb:GetItem"]
STATE_WRITE = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:PartiQLInsert", "dynamodb:PartiQLUpdate"]


@pytest.fixture(scope="module")
def module():
    return Module(TF)


def test_every_variable_has_a_type_and_a_description(module):
    assert module.variables, "no variables found: did the parse fail silently?"
    for name, body in module.variables.items():
        assert "type" in body, f"variable {name} has no type"
        assert module.value(body.get("description", '""')).strip(), f"variable {name} has no description"


def test_every_variable_is_in_the_readme_table(module):
    """The module's inputs table is written by hand: it must not miss a variable
    (tests/test_docs.py also checks each row's type, default and description)."""
    readme = (TF / "README.md").read_text()
    missing = [name for name in module.variables if f"| `{name}` |" not in readme]
    assert not missing, f"terraform/README.md's Inputs table lacks {missing}"


def test_the_main_resources_have_plain_names(module):
    expected = {
        "aws_sqs_queue.ingester", "aws_sqs_queue.jobs_todo", "aws_sqs_queue.dead_letter",
        "aws_lambda_function.ingester", "aws_lambda_function.processor",
        "aws_lambda_event_source_mapping.ingester", "aws_lambda_event_source_mapping.processor",
        "aws_cloudwatch_log_group.ingester", "aws_cloudwatch_log_group.processor",
        "aws_sns_topic.job_end_state", "aws_cloudwatch_event_rule.ingester", "aws_cloudwatch_event_target.ingester",
        "aws_iam_role.ingester", "aws_iam_role.processor", "aws_dynamodb_table.jobs",
        "aws_lambda_function.relay", "aws_cloudwatch_log_group.relay", "aws_iam_role.relay",
        "aws_cloudwatch_event_rule.relay", "aws_cloudwatch_event_target.relay", "aws_lambda_permission.relay_schedule",
        "aws_cloudwatch_event_archive.jobs",
    }
    assert expected <= set(module.resources())


def created(module: Module, r: str) -> bool:
    """Whether a resource exists with the module's variables (`count = 0` does not)."""
    body = module.resources()[r]
    return "count" not in body or module.value(body["count"]) != 0


def grants(module: Module, function: str) -> set[tuple[str, str, str]]:
    """(action, resource name, condition) of every policy attached to the function's role."""
    role = module.attribute(f"aws_lambda_function.{function}", "role")
    out = set()
    for r in module.resources():
        if not (r.startswith("aws_iam_role_policy.") and created(module, r)):
            continue
        if module.attribute(r, "role").resource != role.resource:
            continue
        doc = module.attribute(r, "policy")
        for st in module.attribute(unindexed(doc.resource), "statement"):
            assert st.get("effect", "Allow") == "Allow"
            conditions = " ".join(
                f"{c['test']} {c['variable']} {','.join(c['values'])}" for c in st.get("condition", [])
            )
            for action in st["actions"]:
                for res in st["resources"]:
                    out.add((action, describe(module, res), conditions))
    return out


def unindexed(resource: str) -> str:
    """`data.x.y[0]` (a counted resource's instance) -> `data.x.y`."""
    return resource.split("[", 1)[0]


def describe(module: Module, res) -> str:
    """A granted resource as `kind:name`, e.g. `sqs:jobs-todo`, `logs:/aws/lambda/ingester:*`."""
    if not isinstance(res, Ref):
        return f"literal:{res}"
    suffix = res.path.split(".arn", 1)[1] if ".arn" in res.path else ""
    resource = unindexed(res.resource)
    kind = resource.removeprefix("data.").split(".")[0]
    name_attr = "key_id" if kind == "aws_kms_key" else "name"
    name = module.attribute(resource, name_attr)
    return f"{kind}:{name}{suffix}"


# The processor's two queues, as the settings name them: jobs without an ordering key and
# the FIFO one of jobs with one (the ingester sends to both, the processor reads both).
JOBS_TODO = [stk.load_settings()["functions"]["processor"][q] for q in ("source_queue", "ordered_source_queue")]


def expected_grants(function: str, source: str | list[str], sends: list[str], log_group: str) -> set[tuple[str, str, str]]:
    sources = [source] if isinstance(source, str) else source
    out = {(a, f"aws_sqs_queue:{q}", "") for a in RECEIVE for q in sources}
    out |= {("sqs:SendMessage", f"aws_sqs_queue:{q}", "") for q in sends}
    out.add(("sns:Publish", "aws_sns_topic:job-end-state-topic", ""))
    out |= {(a, f"aws_cloudwatch_log_group:{log_group}:*", "") for a in LOGS}
    # Both stages' records may be read; only the function's own (keys "<stage>#<id>") written.
    out |= {(a, "aws_dynamodb_table:jobs", "") for a in STATE_READ}
    own_keys = f"ForAllValues:StringLike dynamodb:LeadingKeys {function}#*"
    out |= {(a, "aws_dynamodb_table:jobs", own_keys) for a in STATE_WRITE}
    return out


# The writes a function makes on the other stage's records: the ingester's stop on the
# processor's record when a forward failed on its last receive (PutItem), and its mark
# of that stop as announced (an update of the mark's attributes only, `outbox` removed).
PROCESSOR_KEYS = "ForAllValues:StringLike dynamodb:LeadingKeys processor#*"
MARK_ONLY = "ForAllValues:StringEquals dynamodb:Attributes pk,announced,letter_stored,updated_ms,expires_at,outbox,progress,end_id"
PROCESSOR_STOP = {
    ("dynamodb:PutItem", "aws_dynamodb_table:jobs", PROCESSOR_KEYS),
    ("dynamodb:UpdateItem", "aws_dynamodb_table:jobs", f"{PROCESSOR_KEYS} {MARK_ONLY}"),
    ("dynamodb:PartiQLUpdate", "aws_dynamodb_table:jobs", f"{PROCESSOR_KEYS} {MARK_ONLY}"),
}


# The relay consumes no queue: it queries the outbox index, reads the records it finds,
# takes them and marks them announced (updates of either stage's records; the take
# returns the whole record, so no attribute condition), and sends the letters and
# notifications their delivery left unsent. It never puts or deletes a record.
RELAY_GRANTS = {
    ("dynamodb:Query", "aws_dynamodb_table:jobs/index/outbox", ""),
    ("dynamodb:GetItem", "aws_dynamodb_table:jobs", ""),
    ("dynamodb:UpdateItem", "aws_dynamodb_table:jobs", ""),
    ("dynamodb:PartiQLUpdate", "aws_dynamodb_table:jobs", ""),
    ("sqs:SendMessage", "aws_sqs_queue:dead-letter-queue", ""),
    ("sns:Publish", "aws_sns_topic:job-end-state-topic", ""),
} | {(a, "aws_cloudwatch_log_group:/aws/lambda/relay:*", "") for a in LOGS}


# A replay's rerun: the mark it puts (keys "replay#...") and its reopening of a
# processor end, limited to what the reopening writes.
RERUN_ONLY = (
    "ForAllValues:StringEquals dynamodb:Attributes pk,progress,attempt,holder,announced,updated_ms,expires_at,outbox,fingerprint"
)
RERUN = {
    ("dynamodb:PutItem", "aws_dynamodb_table:jobs", "ForAllValues:StringLike dynamodb:LeadingKeys replay#*"),
    ("dynamodb:UpdateItem", "aws_dynamodb_table:jobs", f"{PROCESSOR_KEYS} {RERUN_ONLY}"),
}


def saga_grants() -> set[tuple[str, str, str]]:
    """The processor's writes of saga items, read from functions/core/src/store/dynamo/saga.rs
    and store/saga.rs: each call of the DynamoDB client there with the prefix of the key
    it writes (a log by PutItem, an effect by UpdateItem)."""
    store = stk.ROOT / "functions/core/src/store"
    src = (store / "dynamo/saga.rs").read_text()
    log_prefix = re.search(r'fn log_key\(.*?\{\s*format!\("(\w+#)', src, re.S)
    effect_prefix = re.search(r'fn key\(&self\) -> String \{\s*format!\(\s*"(\w+#)', (store / "saga.rs").read_text(), re.S)
    assert log_prefix and effect_prefix, "the saga keys were not found"
    keys = {"log_key(": log_prefix.group(1), "effect.key()": effect_prefix.group(1)}
    out = set()
    for call in re.finditer(r"\.(put_item|update_item|get_item|delete_item)\(\)([^;]*?)\.key\(|\.(put_item)\(\)([^;]*?)\.item\(\"pk\", s\(([^)]*\)?)\)", src, re.S):
        op = call.group(1) or call.group(3)
        if op == "get_item":
            continue
        after = src[call.end():call.end() + 80]
        named = call.group(5) or after
        prefix = next((p for k, p in keys.items() if k in named), None)
        assert prefix, f"the key of a {op} in dynamo/saga.rs is not a saga key: {named!r}"
        action = "dynamodb:" + "".join(w.title() for w in op.split("_"))
        out.add((action, "aws_dynamodb_table:jobs", f"ForAllValues:StringLike dynamodb:LeadingKeys {prefix}*"))
    return out


def test_the_saga_grants_are_the_keys_and_calls_the_code_writes():
    """Guards against a saga's log or effect writes being denied on AWS (every saga would
    stay in SQS until its retries ran out): the calls in the saga store, with the prefix
    of the keys they write, must be the processor's grants beyond its own records."""
    found = saga_grants()
    assert {a for a, _, _ in found} == {"dynamodb:PutItem", "dynamodb:UpdateItem"}, found


def test_each_function_may_touch_only_its_own_resources(module):
    assert grants(module, "ingester") == expected_grants(
        "ingester", "ingester-queue", [*JOBS_TODO, "dead-letter-queue"], "/aws/lambda/ingester"
    ) | PROCESSOR_STOP | RERUN
    # The processor consumes both, and sends retries back to the standard one only (an
    # ordered job's retry waits in place: a visibility change, part of consuming).
    assert grants(module, "processor") == expected_grants(
        "processor", JOBS_TODO, ["jobs-todo", "dead-letter-queue"], "/aws/lambda/processor"
    ) | saga_grants()
    assert grants(module, "relay") == RELAY_GRANTS


def written_by(expression: str) -> set[str]:
    """The attributes an UpdateExpression writes: SET's targets and REMOVE's names (the
    mark takes `outbox` away, which IAM counts as touching it)."""
    out = set()
    for body in re.findall(r"\b(?:SET|REMOVE)\s+(.*?)(?=\s+(?:SET|REMOVE)\b|$)", expression.strip(), re.S):
        out |= {part.split("=")[0].strip() for part in body.split(",")}
    return out


def mark_attributes() -> set[str]:
    """What the store's marks (announced, letter stored) write and check, read from
    functions/core/src/store/dynamo.rs: the UpdateItem expressions and their condition,
    and the batched PartiQL UPDATEs, which must write the same attributes."""
    src = (stk.ROOT / "functions/core/src/store/dynamo.rs").read_text()
    single = set()
    for name in ("MARK_ANNOUNCED", "MARK_LETTER_STORED"):
        single |= written_by(rust_str(src, name))
    checked = named_by(rust_str(src, "MARK_IF_END"))
    body = re.search(r"fn mark_statement\(.*?\n\}\n", src, re.S)
    assert body, "the batched marks were not found in dynamo.rs"
    batched = set(re.findall(r'(?:SET|REMOVE)\s+\\"(\w+)\\"', body.group(0)))
    where = set(re.findall(r'\\"(\w+)\\" (?:=|IN)', body.group(0).split("WHERE", 1)[1]))
    assert single == batched, (single, batched)
    assert where - {"pk"} <= checked, (where, checked)
    return single | checked


def test_an_update_expression_is_read_with_its_remove_clause():
    assert written_by("SET announced = :t, updated_ms = :u, expires_at = :x REMOVE outbox") == {
        "announced", "updated_ms", "expires_at", "outbox"
    }
    assert written_by("REMOVE a, b SET c = :c") == {"a", "b", "c"}


def test_the_stop_mark_grant_lists_what_the_mark_writes():
    """Guards against the ingester's announced mark on a processor stop being denied on
    AWS, which would let the processor announce that end a second time: the attributes
    the store's mark calls write are read from the code and must be the ones the grant
    allows, with the key."""
    written = mark_attributes()
    allowed = set(MARK_ONLY.split()[-1].split(","))
    assert allowed == written | {"pk"}, (allowed, written)


def rust_str(src: str, name: str) -> str:
    """The value of `const NAME: &str = "..."` in Rust source, `\\`-continued lines joined."""
    found = re.search(rf'const {name}: &str =\s*"((?:[^"\\]|\\\n)+)"', src)
    assert found, f"{name} was not found"
    return re.sub(r"\\\n\s*", "", found.group(1))


def named_by(condition: str) -> set[str]:
    """The attribute names a ConditionExpression mentions (not its values or keywords)."""
    words = set(re.findall(r"(?<![:\w])([A-Za-z_]\w*)\b(?!\s*\()", condition))
    return words - {"AND", "OR", "NOT", "BETWEEN", "IN"}


def test_named_by_reads_names_not_values_or_functions():
    assert named_by("progress = :done AND attribute_exists(pk) AND NOT announced = :t") == {
        "progress", "pk", "announced"
    }


def test_the_rerun_grant_lists_what_the_reopening_touches():
    """Guards against a replay's rerun of a FAILED job being denied on AWS (the replayed
    event would stay in SQS and the job would never run again): the attributes the
    reopening writes and checks, read from the code, must be the ones the ingester's
    grant on processor records allows, with the key; and the mark's key must start as
    the grant's LeadingKeys says."""
    store = stk.ROOT / "functions/core/src/store"
    dynamo = (store / "dynamo.rs").read_text()
    src = (store / "dynamo/replay.rs").read_text()
    assert ".update_expression(REOPEN)" in src, "the rerun reopens with another expression"
    extra = re.search(r'format!\("\{REOPEN_IF_SEEN\}([^"]*)"\)', src)
    assert extra, "the rerun's condition was not found in dynamo/replay.rs"
    touched = written_by(rust_str(dynamo, "REOPEN")) | named_by(rust_str(dynamo, "REOPEN_IF_SEEN") + extra.group(1))
    allowed = set(RERUN_ONLY.split()[-1].split(","))
    assert allowed == touched | {"pk"}, (allowed, touched)
    mark_key = re.search(r'fn mark_key\(.*?\{\s*format!\("([^"]+)"', src, re.S)
    assert mark_key and mark_key.group(1).startswith("replay#"), mark_key


def test_a_customer_managed_topic_key_is_granted_to_every_publisher():
    key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    m = Module(TF, variables={"topic_kms_key_id": key})
    for fn in ("ingester", "processor", "relay"):
        extra = grants(m, fn) - (RELAY_GRANTS if fn == "relay" else expected_grants(
            fn, "ingester-queue" if fn == "ingester" else JOBS_TODO,
            [*(JOBS_TODO if fn == "ingester" else ["jobs-todo"]), "dead-letter-queue"],
            f"/aws/lambda/{fn}",
        ) | PROCESSOR_STOP | RERUN | (saga_grants() if fn == "processor" else set()))
        assert extra == {("kms:GenerateDataKey*", f"aws_kms_key:{key}", ""), ("kms:Decrypt", f"aws_kms_key:{key}", "")}, extra


def test_queues_outlast_their_consumers_six_times(module):
    for r in module.resources():
        if not r.startswith("aws_lambda_event_source_mapping."):
            continue
        queue = module.attribute(r, "event_source_arn").resource
        fn = module.attribute(r, "function_name").resource
        visibility = module.attribute(queue, "visibility_timeout_seconds")
        timeout = module.attribute(fn, "timeout")
        assert visibility >= 6 * timeout, f"{queue} visibility {visibility} < 6 x {fn} timeout {timeout}"
        assert module.attribute(r, "function_response_types") == ["ReportBatchItemFailures"]
        redrive = module.attribute(queue, "redrive_policy").value
        assert redrive["maxReceiveCount"] >= 5


def test_every_service_terraform_calls_has_an_emulator_endpoint(module):
    """Guards against Terraform creating a resource on real AWS (with test credentials,
    so the apply fails) because its service has no entry in `endpoints {}`. The services
    come from the resource and data-source types, through the provider's prefix table."""
    (provider,) = [b['"aws"'] for b in module.blocks["provider"]]
    configured = set(module.value(provider["endpoints"])[0])
    services = aws.terraform_services(module)
    assert {"sqs", "lambda", "dynamodb"} <= set(services), f"derivation found too little: {services}"
    missing = {
        svc: sorted(types) for svc, types in services.items()
        if not configured & set(aws.endpoint_keys(svc))
    }
    assert not missing, f"no emulator endpoint for these services (and the types that call them): {missing}"


def test_a_resource_of_an_unknown_service_is_not_passed_over():
    table = aws.provider_table()
    assert aws.provider_service("aws_iam_policy_document", table) is None  # computed locally
    assert aws.provider_service("aws_cloudwatch_event_rule", table) != aws.provider_service("aws_cloudwatch_log_group", table)
    with pytest.raises(AssertionError, match="no AWS provider service"):
        aws.provider_service("aws_nonexistent_widget", table)


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({"endpoint": "http://localstack:4566"}, "http://localstack:4566"),
        # Applied from the host: the functions still run on the compose network.
        ({"endpoint": "http://localhost:4566", "function_endpoint": "http://localstack:4566"}, "http://localstack:4566"),
        ({"endpoint": ""}, None),
    ],
)
def test_functions_call_the_endpoint_they_can_reach(variables, expected):
    m = Module(TF, variables=variables)
    for fn in ("ingester", "processor", "relay"):
        env = m.attribute(f"aws_lambda_function.{fn}", "environment")[0]["variables"]
        assert env.get("AWS_ENDPOINT_URL") == expected, (fn, variables)


@pytest.mark.parametrize(
    "variables, reachable",
    [
        ({"endpoint": "http://localstack:4566"}, True),
        ({"endpoint": "http://localhost:4566"}, False),
        ({"endpoint": "http://127.0.0.1:4566"}, False),
        ({"endpoint": "http://localhost:4566", "function_endpoint": "http://localstack:4566"}, True),
        ({"endpoint": ""}, True),
    ],
)
def test_terraform_warns_when_functions_would_call_their_own_loopback(variables, reachable):
    m = Module(TF, variables=variables)
    (check,) = [b['"functions_can_reach_the_emulator"'] for b in m.blocks["check"]]
    assert m.value(check["assert"][0]["condition"]) is reachable


@pytest.mark.parametrize("endpoint", ["", "http://localstack:4566"])
def test_the_endpoint_variable_alone_switches_every_service(endpoint):
    m = Module(TF, variables={"endpoint": endpoint})
    (provider,) = [b['"aws"'] for b in m.blocks["provider"]]
    endpoints = m.value(provider["endpoints"])[0]
    expected = endpoint or None
    assert endpoints and all(v == expected for v in endpoints.values()), endpoints
    assert m.value(provider["skip_credentials_validation"]) is bool(endpoint)
    env = m.attribute("aws_lambda_function.processor", "environment")[0]["variables"]
    assert ("AWS_ENDPOINT_URL" in env) is bool(endpoint)


def test_checkov_finds_no_failed_check_and_every_skip_says_why():
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run `make checkov`"
    out = subprocess.run(
        [str(CHECKOV), "-d", str(TF), "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )
    report = json.loads(out.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert summary["parsing_errors"] == 0, report["results"]["parsing_errors"]
    assert summary["failed"] == 0 and not failed, f"checkov failed checks: {failed}"
    assert summary["passed"] > 50, "checkov evaluated almost nothing: did it read terraform/?"
    for c in report["results"]["skipped_checks"]:
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{c['check_id']} on {c['resource']} is skipped without a reason"
    assert out.returncode == 0, out.stderr[-2000:]
