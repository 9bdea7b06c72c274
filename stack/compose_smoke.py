"""`make compose-smoke`: proves the docker-compose path end to end. Brings the stack up,
waits for Terraform, sends jobs with the compose generator, then checks that every job
ended exactly once with the right status and that Jaeger holds its trace.

`--dry-run` calls neither Docker nor the network: it builds the same plan and checks it
against the repository (compose services and ports, generator flags, the end-state
queue, the service names the code gives its traces)."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

import stack as stk

ROOT = stk.ROOT
OUT_DIR = stk.DEFAULT_STATE_DIR / "compose-smoke"  # git-ignored (.stack/); the generator's /out
EMULATOR, JAEGER, TERRAFORM, BUILD, COLLECTOR, GENERATOR = (
    stk.COMPOSE_EMULATOR, "jaeger", "terraform", "build", "otel-collector", "job-generator")
PORTS = {EMULATOR: 4566, JAEGER: 16686}  # each published on 127.0.0.1 by that service
ENDPOINT = f"http://127.0.0.1:{PORTS[EMULATOR]}"
HEALTH = {EMULATOR: f"{ENDPOINT}/_localstack/health", JAEGER: f"http://127.0.0.1:{PORTS[JAEGER]}/"}
LOGS = {"provision": (BUILD, TERRAFORM), "pipeline": (EMULATOR, COLLECTOR), **{s: (s,) for s in HEALTH}}
CRATES = ("job-generator", "ingester", "processor")  # the crates a job's trace crosses


class Fail(Exception):
    pass


def say(msg: str) -> None:
    print(f"[smoke] {msg}", flush=True)


def service_names() -> dict[str, str]:
    """Crate -> the service name its main.rs gives Telemetry::from_env (what Jaeger shows)."""
    names = {}
    for main in [ROOT / "job-generator/src/main.rs", *sorted(ROOT.glob("functions/*/src/main.rs"))]:
        found = re.findall(r'Telemetry::from_env\(\s*"([^"]+)"', main.read_text())
        if len(found) > 1:
            raise Fail(f"{main.relative_to(ROOT)} calls Telemetry::from_env {len(found)} times")
        names.update({main.parent.parent.name: found[0]} if found else {})
    if missing := [c for c in CRATES if c not in names]:
        raise Fail(f'no Telemetry::from_env("...") in the main.rs of {missing}: which services to ask Jaeger for?')
    return names


def generator_args(jobs: int, seed: int) -> list[str]:
    return ["--count", str(jobs), "--rate", "5", "--seed", str(seed), "--malformed-ratio", "0.25",
            "--max-job-seconds", "2", "--manifest", "/out/manifest.jsonl"]


def plan(args) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """Every compose command the run calls or names in a failure, with the services it names."""
    base = shlex.split(os.environ.get("COMPOSE", "docker compose"))
    if args.compose_file:
        base += ["-f", str(args.compose_file.resolve()), "--project-directory", str(ROOT)]
    return {
        "up": (base + ["up", "-d"], ()),
        "ps": (base + ["ps", "-a", "--format", "json", TERRAFORM], (TERRAFORM,)),
        "generate": (base + ["run", "--rm", "-T", "-v", f"{OUT_DIR.resolve()}:/out", GENERATOR,
                             *generator_args(args.jobs, args.seed)], (GENERATOR,)),
        **{f"logs {k}": (base + ["logs", *svcs], svcs) for k, svcs in LOGS.items()},
        "down": (base + ["down", "-v"], ()),
    }


def jaeger_url(service: str, job_id: str) -> str:
    query = {"service": service, "tags": json.dumps({"job.id": job_id}), "limit": 5, "lookback": "1h"}
    return f"http://127.0.0.1:{PORTS[JAEGER]}/api/traces?" + urllib.parse.urlencode(query)


# --------------------------------------------------------------------------- checks


def parse_ps(text: str) -> list[dict]:
    """`docker compose ps --format json`: one JSON array (older v2) or one object a line."""
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def expected_end_states(manifest: list[dict]) -> dict[str, tuple[str, str | None]]:
    """Sent job id -> (status, rejection code), read as tests/test_pipeline.py reads it."""
    return {m["job_id"]: ("REJECTED" if m["expected_rejection"] else "COMPLETED", m["expected_rejection"])
            for m in manifest if m["outcome"] == "sent"}


def check_end_states(manifest: list[dict], notes: list[dict]) -> tuple[Counter, list[str]]:
    """(end states by status, problems): each sent job ends once, rightly; nothing else ends."""
    expected = expected_end_states(manifest)
    problems = [f"job {m['job_id']}: unsent (the generator could not put it on EventBridge)"
                for m in manifest if m["outcome"] == "unsent"]
    per_job = Counter(n["job_id"] for n in notes)
    problems += [f"job {j}: {per_job[j] or 'no'} end states, expected exactly one" for j in expected if per_job[j] != 1]
    for n in notes:
        if n["job_id"] not in expected:
            problems.append(f"job {n['job_id']}: ended {n.get('status')} but this run did not send it")
            continue
        status, code = expected[n["job_id"]]
        got = (n.get("errors") or [{}])[-1].get("code")
        if n.get("status") != status:
            problems.append(f"job {n['job_id']}: ended {n.get('status')} (last error {got}), expected {status}")
        elif code and got != code:
            problems.append(f"job {n['job_id']}: rejected with code {got}, expected {code}")
    return Counter(n.get("status") for n in notes), problems


def trace_wanted(names: dict[str, str], status: str, detail) -> tuple[set[str], str]:
    """(services the job's trace must hold, the one to search by). A detail that is not a
    JSON object cannot carry the generator's trace context: its trace starts at the ingester."""
    services = {names["ingester"]} | ({names["job-generator"]} if isinstance(detail, dict) else set())
    if status == "REJECTED":
        return services, names["ingester"]
    return services | {names["processor"]}, names["processor"]


def trace_passes(data: list[dict], job_id: str, services: set[str]) -> bool:
    """Jaeger's `data`: is there a trace with a span tagged job.id=<id> and spans of `services`?"""
    for trace in data:
        spans = trace.get("spans") or []
        tagged = any(t.get("key") == "job.id" and t.get("value") == job_id for s in spans for t in s.get("tags", []))
        procs = {pid: p.get("serviceName") for pid, p in (trace.get("processes") or {}).items()}
        if tagged and services <= {procs.get(s.get("processID")) for s in spans}:
            return True
    return False


def dry_run(args) -> int:
    import yaml

    problems, commands, compose_file = [], plan(args), args.compose_file or stk.COMPOSE_FILE
    services = (yaml.safe_load(compose_file.read_text()) or {}).get("services") or {}
    problems += [f"`{shlex.join(argv)}` names service {s!r}, which {compose_file.name} lacks"
                 for argv, named in commands.values() for s in named if s not in services]
    for svc, port in PORTS.items():
        published = []
        for p in (services.get(svc) or {}).get("ports") or []:
            parts = str(p).split("/")[0].split(":")  # [host_ip:]host_port:container_port, or long syntax
            published.append((p.get("host_ip"), str(p.get("published"))) if isinstance(p, dict)
                             else (parts[0], parts[1]) if len(parts) == 3 else (None, parts[0]))
        if ("127.0.0.1", str(port)) not in published:
            problems.append(f"service {svc!r} does not publish 127.0.0.1:{port} in {compose_file.name} (has {published})")
    started, todo = set(), [GENERATOR]  # what `compose run` starts: depends_on, and theirs
    while todo:
        for dep in (services.get(todo.pop()) or {}).get("depends_on") or []:
            if dep not in started:
                started.add(dep)
                todo.append(dep)
    if started & {BUILD, TERRAFORM}:
        problems.append(f"the generator step would start {sorted(started & {BUILD, TERRAFORM})} (depends_on of {GENERATOR})")
    env = (services.get(TERRAFORM) or {}).get("environment") or {}
    env = dict((e.split("=", 1) + [None])[:2] for e in env) if isinstance(env, list) else env
    if str(env.get("TF_VAR_end_state_queue")).lower() != "true":
        problems.append(f'services.{TERRAFORM}.environment.TF_VAR_end_state_queue is not "true": '
                        "Terraform would not create the end-state queue")
    settings = stk.load_settings()
    block = re.search(r'resource\s+"aws_sqs_queue"\s+"end_states"\s*\{(.*?)\n\}',
                      (ROOT / "terraform" / "notifications.tf").read_text(), re.S)
    if not block or not re.search(r"\bname\s*=\s*local\.pipeline\.demo_subscriber_queue\b", block.group(1)):
        problems.append("terraform/notifications.tf: aws_sqs_queue.end_states is not named local.pipeline.demo_subscriber_queue")
    generator = args.generator or stk.RELEASE / "job-generator"
    if not generator.is_file():
        problems.append(f"{generator} is missing: run `make build`")
    else:
        flags = set(re.findall(r"--[a-z][a-z-]*", subprocess.run(
            [str(generator), "--help"], capture_output=True, text=True, timeout=30).stdout))
        problems += [f"{generator} --help has no {f} (the generator step passes it)"
                     for f in generator_args(args.jobs, args.seed) if f.startswith("--") and f not in flags]
    try:
        names = service_names()
    except Fail as e:
        problems, names = problems + [str(e)], dict(zip(CRATES, CRATES))
    lines = [shlex.join(argv) for argv, _ in commands.values()] + [f"GET {url}" for url in HEALTH.values()]
    lines.append(f"sqs get_queue_url {settings['demo_subscriber_queue']} at {ENDPOINT} ({settings['region']}), drain it")
    lines += [f"GET {jaeger_url(names[crate], '<job id>')}" for crate in ("processor", "ingester")]
    print("\n".join(lines) + f"\n# the generator step starts: {', '.join([GENERATOR, *sorted(started)])}")
    for p in problems:
        print(f"compose-smoke --dry-run: {p}", file=sys.stderr)
    if not problems:
        print(f"compose-smoke --dry-run: plan checked, {len(lines)} commands")
    return 1 if problems else 0


# --------------------------------------------------------------------------- the run


def call(argv: list[str], timeout: float, what: str, look: str, capture: bool = False) -> str:
    try:
        out = subprocess.run(argv, cwd=ROOT, timeout=max(timeout, 1), text=True, capture_output=capture)
    except FileNotFoundError:
        raise Fail(f"{argv[0]} not found: install Docker with Compose v2, or set COMPOSE=docker-compose")
    except subprocess.TimeoutExpired:
        raise Fail(f"{what} took more than {timeout:.0f} s: see `{look}`")
    if out.returncode != 0:
        raise Fail(f"{what} exited with {out.returncode}{': ' + out.stderr.strip() if capture else ''}; see `{look}`")
    return out.stdout or ""


def get(url: str):
    """The parsed JSON body (None if not JSON), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()
    except (OSError, ValueError):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return {}


def run(args) -> int:
    cmds, names = plan(args), service_names()
    look = {k: shlex.join(argv) for k, (argv, _) in cmds.items()}
    deadline = time.monotonic() + args.provision_timeout
    say(f"{look['up']} (a first run compiles everything: allowing {args.provision_timeout / 60:.0f} min)")
    call(cmds["up"][0], deadline - time.monotonic(), "`up -d`", look["logs provision"])

    say(f"waiting for the one-shot {TERRAFORM} service to exit 0")
    started, shown = time.monotonic(), 0.0
    while True:
        rows = parse_ps(call(cmds["ps"][0], 60, "`ps`", look["logs provision"], capture=True))
        state = next((r for r in rows if r.get("Service", TERRAFORM) == TERRAFORM), {"State": "not created"})
        if state.get("State") == "exited":
            if int(state.get("ExitCode", -1)) != 0:
                raise Fail(f"{TERRAFORM} exited with {state.get('ExitCode')}: see `{look['logs provision']}`")
            break
        if time.monotonic() > deadline:
            raise Fail(f"{TERRAFORM} still {state.get('State')} after {args.provision_timeout:.0f} s: see `{look['logs provision']}`")
        if time.monotonic() - shown >= 30:
            shown = time.monotonic()
            say(f"  {TERRAFORM}: {state.get('State')} ({shown - started:.0f} s)")
        time.sleep(5)

    for svc, url in HEALTH.items():
        say(f"waiting for {svc} at {url}")
        until = time.monotonic() + 120
        while get(url) is None:
            if time.monotonic() > until:
                raise Fail(f"{url} does not answer after 120 s: see `{look['logs ' + svc]}`")
            time.sleep(2)

    settings = stk.load_settings()
    queue = settings["demo_subscriber_queue"]
    box = stk.Stack(endpoint=ENDPOINT, state_dir=OUT_DIR, settings=settings, region=settings["region"])
    sqs = box.client("sqs")
    try:
        box.resources = {"queues": {queue: sqs.get_queue_url(QueueName=queue)["QueueUrl"]}}
    except sqs.exceptions.QueueDoesNotExist:
        raise Fail(f'no queue {queue}: is TF_VAR_end_state_queue "true" for {TERRAFORM}? see `{look["logs provision"]}`')
    say(f"{queue}: {len(stk.drain(sqs, box.resources['queues'][queue]))} end states of earlier runs discarded")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    manifest_file = OUT_DIR / "manifest.jsonl"
    manifest_file.unlink(missing_ok=True)
    say(f"{look['generate']} (seed {args.seed}: --seed {args.seed} sends the same jobs again)")
    call(cmds["generate"][0], args.jobs / 5 + 180, "the generator", look["logs pipeline"])
    try:
        manifest = [json.loads(line) for line in manifest_file.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise Fail(f"cannot read the generator's manifest {manifest_file}: {e}")
    expected = expected_end_states(manifest)
    say(f"{len(expected)} jobs sent, {len(manifest) - len(expected)} refused or unsent; reading end states "
        f"from {queue} (up to {args.end_state_timeout:.0f} s, then 5 s for late duplicates)")
    notes = stk.await_end_states(box, set(expected), timeout=args.end_state_timeout, linger=5, keep_others=True)
    counts, problems = check_end_states(manifest, notes)
    print(f"  {'status':<10} {'jobs':>5}\n" + "\n".join(f"  {str(s):<10} {n:>5}" for s, n in sorted(counts.items(), key=str)))

    detail = {m["job_id"]: m.get("detail") for m in manifest}
    want = {n["job_id"]: trace_wanted(names, n["status"], detail[n["job_id"]]) for n in notes if n["job_id"] in expected}
    say(f"looking up {len(want)} traces in Jaeger (up to 60 s)")
    until, pending = time.monotonic() + 60, set(want)
    while pending and time.monotonic() < until:
        for job_id in sorted(pending):
            services, by = want[job_id]
            if trace_passes((get(jaeger_url(by, job_id)) or {}).get("data") or [], job_id, services):
                pending.discard(job_id)
        time.sleep(2 if pending else 0)
    found = len(want) - len(pending)
    print(f"  traces found / expected: {found} / {len(want)}")
    problems += [f"job {j}: no trace in Jaeger with spans of {sorted(want[j][0])}" for j in sorted(pending)]
    problems += [] if expected else ["the generator sent no jobs"]
    if problems:
        raise Fail("\n  ".join([f"{len(problems)} problems (see `{look['logs pipeline']}`):", *problems]))
    print(f"compose-smoke: {len(expected)} jobs, all ended exactly once with the right status, {found} traces in Jaeger")
    if args.down:
        call(cmds["down"][0], 300, "`down -v`", look["logs pipeline"])
    else:
        print(f"the stack is still running; stop it with: {look['down']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="compose-smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="check the plan against the repository: no Docker, no network")
    p.add_argument("--jobs", type=int, default=20, help="jobs to send (default 20)")
    p.add_argument("--seed", type=int, default=random.randrange(1 << 31), help="generator seed (default: new each run, so ids are new)")
    p.add_argument("--provision-timeout", type=float, default=2400, help="seconds for up -d and terraform (default 40 min)")
    p.add_argument("--end-state-timeout", type=float, default=180, help="seconds to wait for end states (default 180)")
    p.add_argument("--down", action="store_true", help="`docker compose down -v` after a run that passed")
    p.add_argument("--compose-file", type=Path, help="another compose file (tests)")
    p.add_argument("--generator", type=Path, help="another generator binary for --dry-run's --help check (tests)")
    args = p.parse_args(argv)
    try:
        try:
            return dry_run(args) if args.dry_run else run(args)
        except (BotoCoreError, ClientError) as e:
            raise Fail(f"the emulator at {ENDPOINT}: {e}; see `docker compose logs {EMULATOR}`")
    except Fail as e:
        print(f"compose-smoke: FAILED: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
