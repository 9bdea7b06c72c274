"""The embedded stack: the whole pipeline on MiniStack, without Docker or Terraform.

`up` starts MiniStack on 127.0.0.1 (or uses the emulator AWS_ENDPOINT_URL points at),
packages the release `bootstrap` binaries, and provisions queues, topic, rule, the rule's
event archive, table, functions, event source mappings and the outbox relay's schedule from
terraform/pipeline.json, the same settings the Terraform reads. Every step is idempotent. `down` stops only the processes `up` started, by pid.
`outcomes` reads back end states from the topic's demo subscriber and the DLQ.

This file is the CLI (`python stack/stack.py up|down|demo|status|outcomes|env|trace`, as
the Makefile runs it) and the one module other code imports: `up`, `down` and `attach`
live here, and every public name of the modules below is re-exported, so `import stack`
gives tests and tools (compose_smoke.py, bench/run.py) the whole tool. The parts:

  common.py     paths (ROOT, RELEASE, the state dir), StackError, log
  settings.py   terraform/pipeline.json and the rules it must follow (load_settings)
  emulator.py   MiniStack started, reused and stopped by pid; the Stack handle
  provision.py  the Lambda zips and every resource, idempotently
  traffic.py    the generator run, queues drained, end states awaited and summarised

Tests import this module and call `up()` / `down()`: the same code path as `make up`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common import DEFAULT_STATE_DIR, RELEASE, ROOT, StackError, log
from emulator import (
    COMPOSE_EMULATOR, COMPOSE_FILE, DEFAULT_PORT, DOCKER_ONLY_SETTINGS, Stack, alive, compose_emulator_env, healthy,
    marked_pids, ministack_binary, ministack_env, read_pid, start_emulator, stop_processes,
)
from provision import (
    ACCOUNT, ARCHIVE_DESCRIPTION, FUNCTIONS, PACKAGED, RELAY, RELAY_RULE, RELAY_RULE_BUS, TOPIC_KMS_KEY,
    deploy_function, ensure_archive, ensure_mapping, ensure_role, ensure_schedule, ensure_table, event_queue_policy,
    host_architecture, outbox_index, package, provision, queue_arn, sources, wait_active,
)
from settings import MIN_RECEIVE_COUNT, SETTINGS_FILE, load_settings
from traffic import await_end_states, drain, generate, outcomes, parse_time, print_outcomes, queue_depth, wait_idle

__all__ = [
    # common
    "DEFAULT_STATE_DIR", "RELEASE", "ROOT", "StackError", "log",
    # settings
    "MIN_RECEIVE_COUNT", "SETTINGS_FILE", "load_settings",
    # emulator
    "COMPOSE_EMULATOR", "COMPOSE_FILE", "DEFAULT_PORT", "DOCKER_ONLY_SETTINGS", "Stack", "alive",
    "compose_emulator_env", "healthy", "marked_pids", "ministack_binary", "ministack_env", "read_pid",
    "start_emulator", "stop_processes",
    # provision
    "ACCOUNT", "ARCHIVE_DESCRIPTION", "FUNCTIONS", "PACKAGED", "RELAY", "RELAY_RULE", "RELAY_RULE_BUS",
    "TOPIC_KMS_KEY", "deploy_function", "ensure_archive", "ensure_mapping", "ensure_role", "ensure_schedule",
    "ensure_table", "event_queue_policy", "host_architecture", "outbox_index", "package", "provision", "queue_arn",
    "sources", "wait_active",
    # traffic
    "await_end_states", "drain", "generate", "outcomes", "parse_time", "print_outcomes", "queue_depth", "wait_idle",
    # this file
    "attach", "down", "main", "up",
]


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
    min_receive_count: int = MIN_RECEIVE_COUNT,
) -> Stack:
    """`receiver`: without an OTLP endpoint, run the local OTLP receiver (otlp_receiver.py).
    `fault_injection`: let jobs ask the processor to fail (demos and fault tests).
    `fault_proxy`: the URL of a running stack/fault_proxy.py in front of the emulator; the
    functions' AWS_ENDPOINT_URL is then that URL, while provisioning, the generator and the
    tests (Stack.endpoint, Stack.env) keep talking to the emulator directly.
    `settings_file`: another pipeline.json (tests with short timeouts), checked by the
    same rules, but for `min_receive_count` (see load_settings)."""
    settings = load_settings(settings_file, min_receive_count)
    zips = {name: package(binaries / name) for name in PACKAGED}
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
