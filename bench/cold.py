"""Cold starts of several builds against hello-world, interleaved, without an emulator.

`bench/run.py`'s cold start (its fake Runtime API and its clock: exec to the first poll
of `/runtime/invocation/next`), but with no MiniStack: the functions get the
environment `make up` gives them, pointed at 127.0.0.1 ports where nothing answers
(init makes no AWS or OTLP call), and each process is killed at its first poll. Every
round runs each binary once, in a new random order, so that a noisy neighbour on the
machine weighs on all of them alike. Prints each binary's median and its ratio to
hello's median.

    .stack/venv/bin/python bench/cold.py --rounds 40 \\
        hello=target/release/hello ingester=target/release/ingester processor=...

A label is `NAME[-off][.BUILD][+TAG]`: a NAME starting with `ingester` or `processor`
gets that function's environment, `-off` drops its OTEL_ variables (telemetry off),
`.BUILD` only tells builds apart, and `+TAG` adds the variables of `--extra TAG:K=V`.
Anything else gets the bare environment.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import FakeRuntime, lambda_env, without_telemetry  # noqa: E402

NOWHERE = "http://127.0.0.1:9"  # discard: nothing listens, nothing is called at init
REGION = "us-east-1"
QUEUE = f"{NOWHERE}/000000000000"

BARE = {
    "AWS_ENDPOINT_URL": NOWHERE,
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
}
COMMON = {
    **BARE,
    "DEAD_LETTER_QUEUE_URL": f"{QUEUE}/dead-letter-queue",
    "JOB_END_STATE_TOPIC_ARN": f"arn:aws:sns:{REGION}:000000000000:job-end-state-topic",
    "JOBS_TABLE": "job-state",
    "JOBS_STACK_ID": "bench",
    "AWS_LAMBDA_LOG_FORMAT": "JSON",
    "RUST_LOG": "info",
    "JOBS_TODO_QUEUE_URL": f"{QUEUE}/jobs-todo",
    "JOBS_TODO_FIFO_QUEUE_URL": f"{QUEUE}/jobs-todo.fifo",
}
ENVS = {
    "ingester": {**COMMON, "MAX_JOB_TIMEOUT_SECONDS": "879", "INGESTER_QUEUE_URL": f"{QUEUE}/ingester-queue",
                 "MAX_RECEIVE_COUNT": "5"},
    "processor": {**COMMON, "DEADLINE_MARGIN_MS": "21000", "MAX_ATTEMPTS": "3", "RETRY_BASE_DELAY_SECONDS": "2"},
}


EXTRA: dict[str, dict[str, str]] = {}  # `+tag` of a label: more variables (--extra tag:K=V)


def env_for(label: str) -> dict:
    base, _, tag = label.partition("+")
    base = base.partition(".")[0]  # `ingester-off.new`: `.new` only names the build
    env = dict(BARE)
    for name, function_env in ENVS.items():
        if base.startswith(name):
            env = without_telemetry(function_env) if base.endswith("-off") else dict(function_env)
    return {**env, **EXTRA.get(tag, {})}


def init_ms(binary: Path, env: dict, wrap: list[str] | None = None) -> float:
    """Exec to the first poll; the process is killed there. Under `wrap` (a command
    such as `perf stat -o F --`), the wrapper's child is killed and the wrapper waited."""
    runtime = FakeRuntime([])  # never answers a poll: init alone
    full_env = lambda_env(binary, env, runtime.address)
    try:
        start = time.perf_counter()
        proc = subprocess.Popen([*(wrap or []), str(binary)], env=full_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not runtime.polled:
                if proc.poll() is not None:
                    raise RuntimeError(f"{binary} exited with {proc.returncode} before its first poll")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{binary}: no poll in 30 s")
                time.sleep(0.0002)
        finally:
            victims = [proc.pid]
            if wrap:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                victims = [int(c) for c in children.read_text().split()] if children.exists() else []
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
    finally:
        runtime.close()
    return (runtime.polled[0] - start) * 1000


EVENTS = "page-faults,task-clock,user_time,system_time"


def perf_stat(builds: dict[str, Path], rounds: int, out: Path) -> None:
    """Medians of `perf stat` counts, exec to the first poll (the wrapper's own start is
    not in them)."""
    out.mkdir(parents=True, exist_ok=True)
    for label, binary in builds.items():
        counts: dict[str, list[float]] = {}
        for r in range(rounds):
            f = out / f"{label}.{r}.csv"
            init_ms(binary, env_for(label), ["perf", "stat", "-x", ",", "-o", str(f), "-e", EVENTS, "--"])
            for line in f.read_text().splitlines():
                cells = line.split(",")
                if len(cells) > 2 and cells[0] and cells[0][0].isdigit():
                    counts.setdefault(cells[2], []).append(float(cells[0]))
        summary = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in counts.items())
        print(f"perf stat {label}: {summary}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--perf-stat", metavar="DIR", type=Path,
                        help="also run each binary --rounds times under `perf stat` (page faults, CPU); "
                             "its outputs go to DIR")
    parser.add_argument("--extra", action="append", default=[], metavar="TAG:K=V",
                        help="extra environment for the labels ending in +TAG")
    parser.add_argument("builds", nargs="+", metavar="LABEL=BINARY")
    args = parser.parse_args(argv)
    builds = dict(b.split("=", 1) for b in args.builds)
    builds = {label: Path(p) for label, p in builds.items()}
    if "hello" not in builds:
        parser.error("one build must be labelled hello")
    for extra in args.extra:
        tag, _, kv = extra.partition(":")
        k, _, v = kv.partition("=")
        EXTRA.setdefault(tag, {})[k] = v
    rng = random.Random(args.seed)
    times: dict[str, list[float]] = {label: [] for label in builds}
    for label, binary in builds.items():
        init_ms(binary, env_for(label))  # page cache
    for r in range(args.rounds):
        order = list(builds)
        rng.shuffle(order)
        for label in order:
            times[label].append(init_ms(builds[label], env_for(label)))
        print(f"\rround {r + 1}/{args.rounds}", end="", file=sys.stderr)
    print(file=sys.stderr)
    if args.perf_stat:
        perf_stat(builds, args.rounds, args.perf_stat)
    hello = statistics.median(times["hello"])
    width = max(len(label) for label in builds)
    for label in builds:
        t = sorted(times[label])
        med = statistics.median(t)
        q1, q3 = t[len(t) // 4], t[(3 * len(t)) // 4]
        print(f"{label:<{width}}  median {med:6.2f} ms  (IQR {q1:5.2f}-{q3:5.2f})  {med / hello:.2f}x hello")
    return 0


if __name__ == "__main__":
    sys.exit(main())
