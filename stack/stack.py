"""The embedded stack: the whole pipeline on MiniStack, without Docker or Terraform.

`up` starts MiniStack on 127.0.0.1 (or uses the emulator AWS_ENDPOINT_URL points at),
packages the release `bootstrap` binaries, and provisions queues, topic, rule, functions
and event source mappings from terraform/pipeline.json, the same settings the Terraform
reads. Every step is idempotent. `down` stops only the processes `up` started, by pid.
`outcomes` reads back end states from the topic's demo subscriber and the DLQ.

Tests import this module and call `up()` / `down()`: the same code path as `make up`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Release binaries: cargo's target dir, which CARGO_TARGET_DIR may move.
RELEASE = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target").resolve() / "release"
SETTINGS_FILE = ROOT / "terraform" / "pipeline.json"
DEFAULT_STATE_DIR = ROOT / ".stack"
DEFAULT_PORT = 4566
ACCOUNT = "000000000000"
FUNCTIONS = ("ingester", "processor")
TOPIC_KMS_KEY = "alias/aws/sns"  # terraform: var.topic_kms_key_id


class StackError(Exception):
    """A problem `up`/`down` can explain: printed without a traceback."""


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings


def load_settings(path: Path = SETTINGS_FILE, min_receive_count: int = 5) -> dict:
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
    if problems:
        raise StackError(f"{path.name} is invalid:\n  " + "\n  ".join(problems))
    return settings


# --------------------------------------------------------------------------- packaging


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


# --------------------------------------------------------------------------- emulator


@dataclass
class Stack:
    """A running emulator and where its state lives."""

    endpoint: str
    state_dir: Path
    settings: dict
    region: str = "us-east-1"
    started_here: bool = False
    resources: dict = field(default_factory=dict)
    otlp_endpoint: str | None = None

    def client(self, service: str):
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
        )

    def env(self) -> dict:
        """Environment for tools (generator, tests) pointed at this stack."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            **({"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint} if self.otlp_endpoint else {}),
        }


def healthy(endpoint: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def ministack_binary() -> Path:
    exe = Path(sys.executable).parent / "ministack"
    if not exe.exists():
        raise StackError(f"{exe} not found: run `make venv` (MiniStack is installed in the stack's virtualenv)")
    return exe


def start_emulator(state_dir: Path, port: int, use_existing: bool = True) -> tuple[str, bool]:
    """Returns (endpoint, started_here). Reuses a healthy emulator at AWS_ENDPOINT_URL
    (unless use_existing is False) or at our own pid file; otherwise starts MiniStack
    on 127.0.0.1:port."""
    external = os.environ.get("AWS_ENDPOINT_URL") if use_existing else None
    if external and healthy(external):
        log(f"using the emulator already running at {external}")
        return external, False
    if external:
        log(f"AWS_ENDPOINT_URL={external} does not answer; starting MiniStack instead")
    endpoint = f"http://127.0.0.1:{port}"
    pid = read_pid(state_dir)
    if pid and alive(pid) and healthy(endpoint):
        log(f"MiniStack already running (pid {pid}) at {endpoint}")
        return endpoint, True
    if healthy(endpoint):
        raise StackError(
            f"something else already answers on {endpoint}; stop it, or set AWS_ENDPOINT_URL={endpoint} to use it"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    logfile = open(state_dir / "ministack.log", "ab")
    env = dict(os.environ)
    env.update(ministack_env(port, state_dir))
    proc = subprocess.Popen(
        [str(ministack_binary())],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=state_dir,
        start_new_session=True,  # its own process group: `down` stops it and its workers by pgid
    )
    (state_dir / "ministack.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"MiniStack exited with {proc.returncode}; see {state_dir / 'ministack.log'}")
        if healthy(endpoint):
            log(f"MiniStack started (pid {proc.pid}) at {endpoint}")
            return endpoint, True
        time.sleep(0.25)
    stop_processes(state_dir)
    raise StackError(f"MiniStack did not become healthy within 60 s; see {state_dir / 'ministack.log'}")


COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_EMULATOR = "localstack"  # the compose service that runs LocalStack or MiniStack
# Settings of the compose emulator that only mean something inside Docker; the embedded
# MiniStack sets its own (loopback, its own port, functions as local processes).
DOCKER_ONLY_SETTINGS = {
    "GATEWAY_PORT", "BIND_HOST", "MINISTACK_HOST", "LAMBDA_EXECUTOR", "LAMBDA_DOCKER_NETWORK",
    "DOCKER_NETWORK", "DOCKER_HOST", "LOCALSTACK_AUTH_TOKEN",
}


def compose_emulator_env(compose_file: Path = COMPOSE_FILE) -> dict[str, str]:
    """The environment docker-compose.yml gives its emulator, less the Docker-only
    settings: the embedded MiniStack runs with it, so that a service the compose list
    lacks (SERVICES) fails `make up` and the end-to-end tests too, not only Docker users."""
    import yaml

    try:
        services = yaml.safe_load(compose_file.read_text())["services"]
        env = services[COMPOSE_EMULATOR].get("environment") or {}
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        raise StackError(f"cannot read services.{COMPOSE_EMULATOR}.environment from {compose_file}: {e}") from e
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    out = {}
    for key, value in env.items():
        if key in DOCKER_ONLY_SETTINGS:
            continue
        value = "" if value is None else str(value)
        if "$" in value:
            raise StackError(
                f"{compose_file.name}: services.{COMPOSE_EMULATOR}.environment.{key} is interpolated ({value!r}); "
                "the embedded stack cannot resolve it: add it to DOCKER_ONLY_SETTINGS in stack/stack.py or give a value"
            )
        out[key] = value
    return out


def ministack_env(port: int, state_dir: Path) -> dict:
    return {
        **compose_emulator_env(),
        "GATEWAY_PORT": str(port),
        "BIND_HOST": "127.0.0.1",  # MiniStack listens on every interface by default
        "MINISTACK_HOST": "127.0.0.1",
        "LAMBDA_WARM_TTL_SECONDS": "300",
        "LOG_LEVEL": os.environ.get("MINISTACK_LOG_LEVEL", "INFO"),
    }


def read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "ministack.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True while the process runs; a zombie (killed, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def marked_pids(marker: str) -> list[int]:
    """Pids of processes whose environment carries this stack's marker: the function
    workers MiniStack started for us, even if they left its process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"JOBS_STACK_ID={marker}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_processes(state_dir: Path) -> list[int]:
    """Stops MiniStack (its whole process group) and every worker carrying our marker."""
    targets = set()
    pid = read_pid(state_dir)
    marker_file = state_dir / "stack-id"
    marker = marker_file.read_text().strip() if marker_file.exists() else None
    if marker:
        targets.update(marked_pids(marker))
    if pid and alive(pid):
        targets.add(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if pid:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for p in list(targets):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                targets.discard(p)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in targets):
            time.sleep(0.1)
        targets = {p for p in targets if alive(p)}
        if not targets:
            break
    for name in ("ministack.pid",):
        (state_dir / name).unlink(missing_ok=True)
    return sorted(targets)


# --------------------------------------------------------------------------- provisioning


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
    # The DLQ first: the work queues' redrive policies point at it.
    for name in sorted(s["queues"], key=lambda n: n != dlq_name):
        q = s["queues"][name]
        attrs = {
            "VisibilityTimeout": str(q["visibility_timeout_seconds"]),
            "MessageRetentionPeriod": str(q["message_retention_seconds"]),
            "SqsManagedSseEnabled": "true",
        }
        if "max_receive_count" in q:
            attrs["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": queue_arn(stack, dlq_name), "maxReceiveCount": q["max_receive_count"]}
            )
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
        urls[name] = url

    work_queues = [queue_arn(stack, n) for n, q in s["queues"].items() if "max_receive_count" in q]
    sqs.set_queue_attributes(
        QueueUrl=urls[dlq_name],
        Attributes={"RedriveAllowPolicy": json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": work_queues})},
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

    ensure_table(stack.client("dynamodb"), s["state_table"])

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
        if name == "ingester":
            env["INGESTER_QUEUE_URL"] = urls[fn["source_queue"]]
            # Its last receive dead-letters instead of failing (the processor counts
            # attempts in the message, not receives).
            env["MAX_RECEIVE_COUNT"] = str(receive[fn["source_queue"]])
        if name == "processor" and fault_injection:
            env["FAULT_INJECTION"] = "true"
        deploy_function(lam, name, fn, zips[name], role_arn, env)
        ensure_mapping(lam, name, fn, queue_arn(stack, fn["source_queue"]))
    return {"queues": urls, "topic_arn": topic_arn, "role_arn": role_arn}


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


def ensure_table(ddb, name: str) -> None:
    """The job state table, as terraform/state.tf declares it."""
    try:
        ddb.describe_table(TableName=name)
    except ddb.exceptions.ResourceNotFoundException:
        ddb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            SSESpecification={"Enabled": True},
        )
        ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    ttl = ddb.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):  # AWS refuses enabling it twice
        ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})
    backups = ddb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
    if backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus") != "ENABLED":
        ddb.update_continuous_backups(
            TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )


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


def ensure_mapping(lam, name: str, fn: dict, source_arn: str) -> None:
    settings = {
        "BatchSize": fn["batch_size"],
        "MaximumBatchingWindowInSeconds": fn["maximum_batching_window_seconds"],
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "ScalingConfig": {"MaximumConcurrency": fn["maximum_concurrency"]},
    }
    existing = lam.list_event_source_mappings(FunctionName=name, EventSourceArn=source_arn).get(
        "EventSourceMappings", []
    )
    if existing:
        lam.update_event_source_mapping(UUID=existing[0]["UUID"], Enabled=True, **settings)
    else:
        lam.create_event_source_mapping(FunctionName=name, EventSourceArn=source_arn, Enabled=True, **settings)


# --------------------------------------------------------------------------- up / down


def up(
    port: int = DEFAULT_PORT,
    state_dir: Path = DEFAULT_STATE_DIR,
    binaries: Path = RELEASE,
    otlp_endpoint: str | None = None,
    use_existing: bool = True,
    receiver: bool = False,
    fault_injection: bool = False,
    fault_proxy: str | None = None,
    settings_file: Path = SETTINGS_FILE,
    min_receive_count: int = 5,
) -> Stack:
    """`receiver`: without an OTLP endpoint, run the local OTLP receiver (otlp_receiver.py).
    `fault_injection`: let jobs ask the processor to fail (demos and fault tests).
    `fault_proxy`: the URL of a running stack/fault_proxy.py in front of the emulator; the
    functions' AWS_ENDPOINT_URL is then that URL, while provisioning, the generator and the
    tests (Stack.endpoint, Stack.env) keep talking to the emulator directly.
    `settings_file`: another pipeline.json (tests with short timeouts), checked by the
    same rules, but for `min_receive_count` (see load_settings)."""
    settings = load_settings(settings_file, min_receive_count)
    zips = {name: package(binaries / name) for name in FUNCTIONS}
    endpoint, started = start_emulator(state_dir, port, use_existing)
    stack = Stack(endpoint=endpoint, state_dir=state_dir, settings=settings, region=settings["region"], started_here=started)
    marker_file = state_dir / "stack-id"
    if not marker_file.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        marker_file.write_text(uuid.uuid4().hex)
    otlp = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    if otlp is None and receiver:
        import otlp_receiver

        otlp = otlp_receiver.start(state_dir)
        log(f"OTLP receiver at {otlp}; spans in {state_dir / otlp_receiver.SPANS}")
    stack.otlp_endpoint = otlp
    t0 = time.monotonic()
    stack.resources = provision(
        stack, zips, marker_file.read_text().strip(), otlp, fault_injection, functions_endpoint=fault_proxy
    )
    saved = {"endpoint": endpoint, "otlp_endpoint": otlp, **stack.resources}
    (state_dir / "resources.json").write_text(json.dumps(saved, indent=2))
    log(f"provisioned in {time.monotonic() - t0:.1f} s; zips: "
        + ", ".join(f"{n} {len(z) / 1e6:.1f} MB" for n, z in zips.items()))
    return stack


def down(state_dir: Path = DEFAULT_STATE_DIR) -> None:
    if not (state_dir / "ministack.pid").exists() and not (state_dir / "stack-id").exists():
        log("nothing to stop")
        return
    left = stop_processes(state_dir)
    import otlp_receiver

    otlp_receiver.stop(state_dir)
    (state_dir / "stack-id").unlink(missing_ok=True)
    if left:
        raise StackError(f"could not stop pids {left}")
    log("stopped MiniStack and its function workers")


# --------------------------------------------------------------------------- read-back


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
    """Waits until both work queues are empty (nothing in flight)."""
    sqs = stack.client("sqs")
    urls = [stack.resources["queues"][fn["source_queue"]] for fn in stack.settings["functions"].values()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(queue_depth(sqs, u) == 0 for u in urls):
            return True
        time.sleep(1)
    return False


def attach(state_dir: Path = DEFAULT_STATE_DIR) -> Stack:
    """A handle on the stack `up` left running."""
    try:
        saved = json.loads((state_dir / "resources.json").read_text())
    except (OSError, ValueError) as e:
        raise StackError("no running stack: run `make up` first") from e
    endpoint = saved.pop("endpoint")
    otlp = saved.pop("otlp_endpoint", None)
    if not healthy(endpoint):
        raise StackError(f"the stack at {endpoint} does not answer: run `make up`")
    settings = load_settings()
    return Stack(
        endpoint=endpoint, state_dir=state_dir, settings=settings, region=settings["region"], resources=saved,
        otlp_endpoint=otlp,
    )


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


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="where pid, logs and ids live")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start MiniStack (unless one is reachable) and provision the pipeline")
    p_up.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", DEFAULT_PORT)))
    p_up.add_argument(
        "--no-receiver", action="store_true",
        help="do not run the local OTLP receiver (it runs unless OTEL_EXPORTER_OTLP_ENDPOINT is set)",
    )
    p_up.add_argument(
        "--fault-injection", action="store_true", default=os.environ.get("FAULT_INJECTION", "") in ("1", "true"),
        help="let jobs ask the processor to fail (job-generator --flaky-ratio); also FAULT_INJECTION=1",
    )
    sub.add_parser("down", help="stop what `up` started, by pid")
    sub.add_parser("status", help="say whether the stack runs and how full its queues are")
    p_out = sub.add_parser("outcomes", help="wait for in-flight jobs, then print end states")
    p_out.add_argument("--settle", type=float, default=120, help="seconds to wait for in-flight jobs")
    p_demo = sub.add_parser("demo", help="run the generator against the running stack, then print end states")
    p_demo.add_argument("--minutes", type=float, default=1.0)
    sub.add_parser("env", help="print shell exports pointing tools at the running stack")
    p_trace = sub.add_parser("trace", help="print a job's trace as a waterfall (from the local OTLP receiver)")
    p_trace.add_argument("job_id")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            stack = up(
                port=args.port, state_dir=args.state_dir, receiver=not args.no_receiver,
                fault_injection=args.fault_injection,
            )
            print(f"pipeline is up at {stack.endpoint}")
        elif args.command == "down":
            down(args.state_dir)
        elif args.command == "status":
            stack = attach(args.state_dir)
            sqs = stack.client("sqs")
            print(f"up at {stack.endpoint}")
            for name, url in sorted(stack.resources["queues"].items()):
                print(f"  {name:<22} {queue_depth(sqs, url):>6} messages")
        elif args.command == "outcomes":
            print_outcomes(outcomes(attach(args.state_dir), settle=args.settle))
        elif args.command == "demo":
            stack = attach(args.state_dir)
            generator = RELEASE / "job-generator"
            cmd = [str(generator), "--minutes", str(args.minutes)]
            log("running " + " ".join(cmd[-3:]))
            rc = subprocess.call(cmd, env={**os.environ, **stack.env()})
            if rc not in (0, 1):
                raise StackError(f"job-generator exited with {rc}")
            print_outcomes(outcomes(stack))
        elif args.command == "env":
            for k, v in attach(args.state_dir).env().items():
                print(f"export {k}={v}")
        elif args.command == "trace":
            import otlp_receiver

            traces = otlp_receiver.job_traces(otlp_receiver.read(args.state_dir), args.job_id)
            if not traces:
                raise StackError(f"no spans about job {args.job_id} in {args.state_dir / otlp_receiver.SPANS}")
            for spans in traces.values():
                print(otlp_receiver.waterfall(spans))
    except StackError as e:
        print(f"stack: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
