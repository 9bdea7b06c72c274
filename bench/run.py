"""`make bench`: cold start, per-job CPU and size of the pipeline's functions, each
figure next to its reference and as a ratio, printed as one table.

Cold start: each binary is executed against a small fake Lambda Runtime API (below)
and timed from exec to its first poll of `/runtime/invocation/next` (init), and to its
first response for a representative one-record event (first invocation; the pipeline's
functions make their real AWS calls against a MiniStack started here through
`stack.up()`, like `make up`, and export their telemetry to its local OTLP receiver;
they run a second time with telemetry off). The reference is a hello-world `lambda_runtime` function
(`bench/hello`) built with the same release profile. Peak RSS is the process's VmHWM
after that first response.

Per-job CPU: the criterion estimates of `functions/core/benches/per_job.rs`, which
`make bench` runs first.

Throughput: 2,000 jobs put on EventBridge as fast as possible, through no-op functions
(`bench/noop`), then through the pipeline, each deployed the same way on a fresh
MiniStack: jobs per second, p50/p99 latency, and each function's peak RSS under the run.
The pipeline runs once without telemetry (like the no-op pair) and once exporting
spans and metrics to the local OTLP receiver.

Cost: GB-seconds and dollars per million jobs at 128 MB from the measured warm
durations, for batch sizes 10, 5 and 1.

Requests (`--requests N`): N jobs of the generator's mix (rejected, flaky, duplicated
and valid ones) through the pipeline, and through the no-op pair, with every AWS call of
the functions and the generator going through a recording proxy (bench/recorder.py): the
calls and billed units per job by service and action, and what a million jobs cost
(bench/cost.py, which holds the prices). `--requests N --no-cold-start --jobs 0` runs
only that.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "stack"))

import stack as stk  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402

import cost  # noqa: E402  (bench/, the script's own directory)
from recorder import Recorder  # noqa: E402

RELEASE = ROOT / "target" / "release"
CRITERION = ROOT / "target" / "criterion"
API = "/2018-06-01/runtime"
PER_JOB_TARGET_NS = 10_000
COLD_START_TARGET = 1.5


class FakeRuntime:
    """A Lambda Runtime API that hands out `events` one by one and records when things
    happen; with none, it only notes the polls (init alone, for bench/cold.py)."""

    def __init__(self, events: list[dict]):
        self.events = [json.dumps(e).encode() for e in events]
        self.polled: list[float] = []  # when each `/invocation/next` poll arrived
        self.served: list[float] = []  # when each event was handed out
        self.responded: list[float] = []  # when each response came back
        self.error: bytes | None = None
        self.done = threading.Event()
        self.release = threading.Event()
        runtime = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if not self.path.startswith(f"{API}/invocation/next"):
                    self.send_error(404)
                    return
                runtime.polled.append(time.perf_counter())
                if len(runtime.served) == len(runtime.events):
                    # Out of events: the poll waits until the process is killed, and
                    # nobody reads the answer.
                    runtime.release.wait(60)
                    self.close_connection = True
                    return
                event = runtime.events[len(runtime.served)]
                runtime.served.append(time.perf_counter())
                self.send_response(200)
                deadline_ms = int((time.time() + 30) * 1000)
                for k, v in {
                    "Lambda-Runtime-Aws-Request-Id": str(uuid.uuid4()),
                    "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:000000000000:function:bench",
                    "Lambda-Runtime-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
                    "Content-Type": "application/json",
                    "Content-Length": str(len(event)),
                }.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(event)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/response"):
                    runtime.responded.append(time.perf_counter())
                else:
                    runtime.error = body
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if runtime.error is not None or len(runtime.responded) == len(runtime.events):
                    runtime.done.set()

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a killed client is expected
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class Run:
    init_ms: float  # exec to the first poll
    first_ms: float  # exec to the first response
    warm_ms: list[float]  # each later event, from hand-out to response
    rss_kib: int  # VmHWM once every event was answered


def lambda_env(binary: Path, env: dict, runtime_api: str) -> dict:
    """`env` plus what Lambda sets for every function, the runtime API at `runtime_api`."""
    return {
        **env,
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "AWS_LAMBDA_FUNCTION_NAME": binary.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{binary.name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "PATH": "/usr/bin:/bin",
    }


def cold_start(binary: Path, env: dict, events: list[dict]) -> Run:
    """One exec, fed `events` one after another."""
    runtime = FakeRuntime(events)
    full_env = lambda_env(binary, env, runtime.address)
    try:
        start = time.perf_counter()
        proc = subprocess.Popen([str(binary)], env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not runtime.done.wait(60):
                raise RuntimeError(f"{binary.name} answered {len(runtime.responded)} of {len(events)} events in 60 s")
            if runtime.error is not None:
                raise RuntimeError(f"{binary.name} reported an error: {runtime.error[:300]!r}")
            rss = peak_rss_kib(proc.pid)
        finally:
            proc.kill()
            proc.wait()
    finally:
        runtime.close()
    served, responded = runtime.served, runtime.responded
    return Run(
        init_ms=(served[0] - start) * 1000,
        first_ms=(responded[0] - start) * 1000,
        warm_ms=[(r - s) * 1000 for s, r in zip(served[1:], responded[1:])],
        rss_kib=rss,
    )


def a_job() -> dict:
    job_id = f"bench-{uuid.uuid4().hex[:12]}"
    return {"id": job_id, "job_type": "user_onboarding", "message": {"user_id": "42", "user_name": "Ada"}}


def ingester_body(stack: stk.Stack) -> str:
    return json.dumps({
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "JobEvent", "source": "jobs",
        "time": "2026-11-23T10:00:00Z", "region": stack.region, "detail": a_job(),
    })


def processor_body(stack: stk.Stack) -> str:
    job = a_job()
    return json.dumps({"job_id": job["id"], "job_type": job["job_type"], "status": "NEW",
                       "received_at": "2026-11-23T10:00:00.000Z", "attempt": 1, "errors": [], "job": job})


def sqs_event(stack: stk.Stack, queue: str, bodies: list[str]) -> dict:
    return {"Records": [{
        "messageId": str(uuid.uuid4()), "receiptHandle": "bench", "body": body,
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
        "eventSource": "aws:sqs", "eventSourceARN": f"arn:aws:sqs:{stack.region}:000000000000:{queue}",
        "awsRegion": stack.region,
    } for body in bodies]}


def function_env(stack: stk.Stack, name: str) -> dict:
    lam = stack.client("lambda")
    env = lam.get_function_configuration(FunctionName=name).get("Environment", {}).get("Variables", {})
    return {**env, **stack.env()}


def without_telemetry(env: dict) -> dict:
    return {k: v for k, v in env.items() if not k.startswith("OTEL_")}


def criterion_estimates() -> dict[str, float]:
    """Mean time per iteration in ns, by benchmark name."""
    out = {}
    for est in sorted(CRITERION.glob("*/new/estimates.json")):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        out[bench["title"]] = json.loads(est.read_text())["mean"]["point_estimate"]
    return out


def row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [row(rows[0], widths), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [row(r, widths) for r in rows[1:]])


def throughput(binaries: Path, jobs: int, label: str, telemetry: bool = False) -> dict:
    """Puts `jobs` onboarding jobs on EventBridge as fast as 8 senders go and waits for
    every end state: jobs per second from the first put to the last end, per-job latency
    (put to the processor's notification timestamp), and each function's peak RSS.
    `telemetry`: run the local OTLP receiver, so the functions export their spans."""
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory(prefix=f"bench-{label}-") as state:
        state_dir = Path(state)
        stack = stk.up(port=free_port(), state_dir=state_dir, binaries=binaries, use_existing=False,
                       receiver=telemetry)
        try:
            events = stack.client("events")
            details = [a_job() for _ in range(jobs)]
            put_at: dict[str, float] = {}

            def put(batch: list[dict]) -> None:
                t = time.time()
                entries = [{"Source": "jobs", "DetailType": "JobEvent", "Detail": json.dumps(d)} for d in batch]
                out = events.put_events(Entries=entries)
                if out["FailedEntryCount"]:
                    raise RuntimeError(f"PutEvents refused {out['FailedEntryCount']} entries")
                for d in batch:
                    put_at[d["id"]] = t

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, [details[i : i + 10] for i in range(0, jobs, 10)]))
            notes = stk.await_end_states(stack, set(put_at), timeout=900, linger=0)
            ended = {n["job_id"]: stk.parse_time(n["timestamp"]) for n in notes}
            if len(ended) < jobs:
                raise RuntimeError(f"{label}: only {len(ended)} of {jobs} jobs ended")
            marker = (state_dir / "stack-id").read_text().strip()
            rss: dict[str, int] = {}
            for pid in stk.marked_pids(marker):
                try:
                    name = dict(
                        kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv
                    ).get(b"AWS_LAMBDA_FUNCTION_NAME", b"?").decode()
                    rss[name] = max(rss.get(name, 0), peak_rss_kib(pid))
                except OSError:
                    continue
        finally:
            stk.down(state_dir)
    latencies = sorted((ended[j] - put_at[j]) * 1000 for j in ended)
    span = max(ended.values()) - min(put_at.values())
    return {
        "rate": jobs / span,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "rss": rss,
    }


# Lambda list prices (us-east-1), per GB-second and per request: bench/cost.py's table.
GB_SECOND = cost.PRICES[("lambda", "gb_s")]
PER_REQUEST = cost.PRICES[("lambda", "invocations")]

# The job mix of the request count: the generator's defaults for rejected jobs, and some
# of each kind of trouble the pipeline must absorb. Jobs run for at most a second.
REQUEST_MIX = ("--malformed-ratio", "0.2", "--flaky-ratio", "0.1", "--duplicate-ratio", "0.1",
               "--max-job-seconds", "1", "--seed", "17")
REQUEST_RATE = 50  # jobs per second
# Valid jobs that complete on their first attempt, each sent once: what the state writes
# per happy-path job are counted on (docs/design.md, State writes per job).
HAPPY_MIX = ("--malformed-ratio", "0", "--flaky-ratio", "0", "--duplicate-ratio", "0",
             "--saga-ratio", "0", "--max-job-seconds", "1", "--seed", "17")
# Sagas of one to four steps, none failing: each step adds its effect and its record.
SAGA_MIX = tuple("1" if prev == "--saga-ratio" else arg for prev, arg in zip(("",) + HAPPY_MIX, HAPPY_MIX))
# The happy path over five ordering keys: every job through jobs-todo.fifo.
KEYED_MIX = (*HAPPY_MIX, "--keys", "5")
HAPPY_JOBS = 50


def state_write_units(m: cost.Measured, unit: str = "wru") -> float:
    """DynamoDB write units billed for `m`, every write action together: the table's
    (`wru`), or its outbox index's (`index_wru`)."""
    return sum(v for (svc, _, u), v in m.units.items() if svc == "dynamodb" and u == unit)


def noop_binaries(noop: Path, into: Path) -> Path:
    """A binaries directory with the no-op function deployed as both hops."""
    for name in ("ingester", "processor"):
        (into / name).write_bytes(noop.read_bytes())
        (into / name).chmod(0o755)
    return into


def log_messages(stack: stk.Stack, function: str) -> list[str]:
    """Every CloudWatch log event the emulator wrote for `function`."""
    logs = stack.client("logs")
    out, token = [], None
    while True:
        kwargs = {"logGroupName": f"/aws/lambda/{function}", **({"nextToken": token} if token else {})}
        try:
            page = logs.filter_log_events(**kwargs)
        except logs.exceptions.ResourceNotFoundException:
            return out
        out += [e["message"] for e in page.get("events", [])]
        token = page.get("nextToken")
        if not token and len(page.get("events", [])) >= 10_000:
            # MiniStack (1.5.33) returns at most 10,000 events and no nextToken.
            raise RuntimeError(f"/aws/lambda/{function} has over 10,000 log events: count fewer jobs")
        if not token or not page.get("events"):
            return out


def count_requests(binaries: Path, jobs: int, label: str, timeout: float = 300,
                   mix: tuple[str, ...] = REQUEST_MIX) -> cost.Measured:
    """Puts `jobs` jobs of `mix` (REQUEST_MIX) on EventBridge through a recording proxy, with the
    functions' calls going through it too, waits until both work queues are empty and stay
    so, then adds each function's invocations, GB-s and log bytes from its log group."""
    with tempfile.TemporaryDirectory(prefix=f"bench-requests-{label}-") as state:
        state_dir = Path(state)
        port = free_port()
        settings = stk.load_settings()
        # The outbox index's keys, as the provisioning (and terraform/state.tf) define it.
        index_keys = tuple(k["AttributeName"] for k in stk.outbox_index(settings["outbox_index"])["KeySchema"])
        recorder = Recorder(key_names={settings["state_table"]: ["pk"]},
                            event_target=settings["functions"]["ingester"]["source_queue"],
                            indexes={settings["state_table"]: [index_keys]})
        proxy = FaultProxy(f"http://127.0.0.1:{port}", observer=recorder)
        try:
            url = proxy.start()
            # Telemetry on, as `make up` deploys the functions (the OTLP receiver is not
            # AWS, so it is not counted).
            stack = stk.up(port=port, state_dir=state_dir, binaries=binaries, use_existing=False,
                           fault_injection=True, fault_proxy=url, receiver=True)
            try:
                from dataclasses import replace

                sent = stk.generate(replace(stack, endpoint=url), state_dir / "manifest.jsonl",
                                    "--count", str(jobs), "--rate", str(REQUEST_RATE), *mix,
                                    timeout=timeout)
                # Done when both work queues are empty (retries wait there, delayed) and
                # still are a few seconds later (a last invocation may be sending).
                deadline = time.monotonic() + timeout
                while True:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{label}: jobs still in flight after {timeout:.0f} s")
                    if stk.wait_idle(stack, max(1.0, deadline - time.monotonic())):
                        time.sleep(3)
                        if stk.wait_idle(stack, 1):
                            break
                measured = cost.Measured(label=label, jobs=len({j["job_id"] for j in sent if j["outcome"] == "sent"}),
                                         memory_mb=settings["functions"]["ingester"]["memory_mb"])
                snap = recorder.snapshot()
                measured.calls.update(snap["calls"])
                measured.units.update(snap["units"])
                measured.records = sum(snap["messages"].get(q, 0)
                                       for fn in settings["functions"].values() for q in stk.sources(fn))
                for name in stk.FUNCTIONS:
                    memory = settings["functions"][name]["memory_mb"]
                    cost.add_lambda(measured, name, cost.lambda_usage(log_messages(stack, name), memory))
            finally:
                stk.down(state_dir)
        finally:
            proxy.stop()
    return measured


def cost_per_million(durations_ms: dict[str, float], batch: int, memory_mb: int = 128) -> dict[str, float]:
    """Dollars per million jobs for both functions, when each invocation carries `batch`
    jobs and takes the measured warm duration for a batch of that size."""
    invocations = 1_000_000 / batch
    out = {}
    for arch, price in GB_SECOND.items():
        gb_s = sum(invocations * (ms / 1000) * memory_mb / 1024 for ms in durations_ms.values())
        out[arch] = gb_s * price + len(durations_ms) * invocations * PER_REQUEST
    out["gb_s"] = sum(invocations * (ms / 1000) * memory_mb / 1024 for ms in durations_ms.values())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="cold starts per binary (median reported)")
    parser.add_argument("--warm", type=int, default=10, help="warm 10-record batches after each cold start")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in each throughput run (0: none)")
    parser.add_argument("--requests", type=int, default=0, metavar="N",
                        help="count and price the AWS requests of N jobs, pipeline and no-op floor (0: skip)")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold starts (and the hello reference)")
    parser.add_argument("--noop", type=Path, default=RELEASE / "noop",
                        help="the no-op function for the floors (default: target/release/noop)")
    args = parser.parse_args(argv)

    rows = [["measure", "value", "reference", "ratio", "target", "met"]]

    def add(measure: str, value: float, unit: str, ref: float | None, target: str = "", met: bool | None = None,
            ratio_of: float | None = None) -> None:
        base = ratio_of if ratio_of is not None else ref
        rows.append([
            measure, f"{value:.1f} {unit}", f"{ref:.1f} {unit}" if ref is not None else "",
            f"{value / base:.2f}x" if base else "", target, "" if met is None else ("yes" if met else "NO"),
        ])

    needed = ["ingester", "processor"] + ([] if args.no_cold_start else ["hello"])
    for binary in [RELEASE / n for n in needed] + ([args.noop] if args.jobs else []):
        if not binary.exists():
            print(f"{binary} is missing: run `make bench`, which builds it", file=sys.stderr)
            return 2

    requests_report = None
    if args.requests:
        print(f"requests: {args.requests} jobs through the pipeline, every AWS call recorded ...", file=sys.stderr)
        measured = count_requests(RELEASE, args.requests, "pipeline")
        floor = None
        if args.noop.exists():
            print(f"requests: {args.requests} jobs through the no-op functions ...", file=sys.stderr)
            with tempfile.TemporaryDirectory(prefix="bench-noop-bin-") as d:
                floor = count_requests(noop_binaries(args.noop, Path(d)), args.requests, "floor")
        else:
            print(f"{args.noop} is missing: no floor for the request count (build it: cargo build --release -p noop)",
                  file=sys.stderr)
        requests_report = cost.report(measured, floor)
        print(f"requests: {HAPPY_JOBS} happy-path jobs through the pipeline ...", file=sys.stderr)
        happy = count_requests(RELEASE, HAPPY_JOBS, "happy path", mix=HAPPY_MIX)
        per_job = state_write_units(happy) / max(happy.jobs, 1)
        add("requests: DynamoDB write units per happy-path job", per_job, "WRU", None, "<= 3", per_job <= 3)
        # The outbox index: the end puts the job's entry, the mark removes it.
        per_job = state_write_units(happy, "index_wru") / max(happy.jobs, 1)
        add("requests: outbox index write units per happy-path job", per_job, "WRU", None, "<= 2", per_job <= 2)
        print(f"requests: {HAPPY_JOBS} sagas through the pipeline ...", file=sys.stderr)
        sagas = count_requests(RELEASE, HAPPY_JOBS, "sagas", mix=SAGA_MIX)
        per_job = state_write_units(sagas) / max(sagas.jobs, 1)
        # 3, and 2 per step (its effect, its record); the generator's sagas have 2.5 on average.
        add("requests: DynamoDB write units per saga (1 to 4 steps)", per_job, "WRU", None, "about 8", None)
        print(f"requests: {HAPPY_JOBS} jobs over 5 ordering keys through the pipeline ...", file=sys.stderr)
        keyed = count_requests(RELEASE, HAPPY_JOBS, "keyed", mix=KEYED_MIX)
        per_job = state_write_units(keyed) / max(keyed.jobs, 1)
        add("requests: DynamoDB write units per keyed job", per_job, "WRU", None, "<= 3", per_job <= 3)
        # Its attempt is read from its record before the claim: both stages' records.
        per_job = state_write_units(keyed, "rru") / max(keyed.jobs, 1)
        add("requests: DynamoDB read units per keyed job", per_job, "RRU", None, "<= 2", per_job <= 2)
    if args.no_cold_start:
        results: dict[str, list[Run]] = {}
        zips = {}
    else:
        results, zips = cold_starts(args)
    _finish(args, rows, add, results, zips, requests_report)
    return 0


def cold_starts(args) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory(prefix="bench-") as state:
        state_dir = Path(state)
        port = free_port()
        print(f"starting MiniStack on 127.0.0.1:{port} for the cold starts ...", file=sys.stderr)
        # With the local OTLP receiver, as `make up` deploys them: telemetry on.
        stack = stk.up(port=port, state_dir=state_dir, use_existing=False, receiver=True)
        try:
            results: dict[str, list[Run]] = {}
            ingester_events = lambda n: [sqs_event(stack, "ingester-queue", [ingester_body(stack) for _ in range(n)])]  # noqa: E731
            processor_events = lambda n: [sqs_event(stack, "jobs-todo", [processor_body(stack) for _ in range(n)])]  # noqa: E731
            plans = {
                "hello": (RELEASE / "hello", dict(stack.env()), lambda n: [{"hello": "world"}] * n),
                "ingester": (RELEASE / "ingester", function_env(stack, "ingester"), ingester_events),
                "processor": (RELEASE / "processor", function_env(stack, "processor"), processor_events),
                "ingester, telemetry off": (RELEASE / "ingester", without_telemetry(function_env(stack, "ingester")),
                                            ingester_events),
                "processor, telemetry off": (RELEASE / "processor",
                                             without_telemetry(function_env(stack, "processor")), processor_events),
            }
            for name, (binary, env, make) in plans.items():
                def events() -> list[dict]:
                    first = make(1)[:1]
                    return first + [e for _ in range(args.warm) for e in make(10)[:1]]

                cold_start(binary, env, events())  # warms the page cache, so every run reads the same
                runs = []
                for i in range(args.runs):
                    runs.append(cold_start(binary, env, events()))
                    print(f"\r{name}: {i + 1}/{args.runs} cold starts", end="", file=sys.stderr)
                print(file=sys.stderr)
                results[name] = runs
            zips = {name: len(stk.package(RELEASE / name)) for name in ("ingester", "processor")}
        finally:
            stk.down(state_dir)
    return results, zips


def _finish(args, rows, add, results, zips, requests_report) -> None:
    def median(name: str, pick) -> float:
        return statistics.median(pick(r) for r in results[name])

    warm: dict[str, float] = {}
    if results:
        hello_init = median("hello", lambda r: r.init_ms)
        hello_first = median("hello", lambda r: r.first_ms)
        hello_rss = median("hello", lambda r: r.rss_kib) / 1024
    for name in ("ingester", "processor") if results else ():
        init = median(name, lambda r: r.init_ms)
        add(f"{name}: cold start, exec to first poll (median of {args.runs})", init, "ms", hello_init,
            f"<= {COLD_START_TARGET}x", init <= COLD_START_TARGET * hello_init)
        bare = median(f"{name}, telemetry off", lambda r: r.init_ms)
        add(f"{name}: the same with telemetry off", bare, "ms", hello_init,
            f"<= {COLD_START_TARGET}x", bare <= COLD_START_TARGET * hello_init)
        add(f"{name}: cold, exec to first response (1 record)", median(name, lambda r: r.first_ms), "ms", hello_first)
        warm[name] = median(name, lambda r: statistics.median(r.warm_ms))
        add(f"{name}: warm invocation, 10 records", warm[name], "ms", None)
        add(f"{name}: zip", zips[name] / 1e6, "MB", None, "< 6 MB", zips[name] < 6e6)
        add(f"{name}: peak RSS after {args.warm + 1} invocations", median(name, lambda r: r.rss_kib) / 1024, "MiB",
            hello_rss, "< 30 MiB", median(name, lambda r: r.rss_kib) < 30 * 1024)

    estimates = criterion_estimates()
    if not estimates:
        print(f"no criterion results in {CRITERION}: run `make bench`", file=sys.stderr)
    for title, ns in estimates.items():
        add(f"per job: {title}", ns / 1000, "us", None, "< 10 us", ns < PER_JOB_TARGET_NS)

    if args.jobs:
        with tempfile.TemporaryDirectory(prefix="bench-noop-bin-") as d:
            noop_dir = noop_binaries(args.noop, Path(d))
            print(f"throughput: {args.jobs} jobs through no-op functions ...", file=sys.stderr)
            floor = throughput(noop_dir, args.jobs, "noop")
        print(f"throughput: {args.jobs} jobs through the pipeline ...", file=sys.stderr)
        real = throughput(RELEASE, args.jobs, "pipeline")
        add(f"end to end: jobs per second ({args.jobs} jobs)", real["rate"], "/s", floor["rate"], ">= 0.90x",
            real["rate"] >= 0.9 * floor["rate"])
        add("end to end: p50 latency, put to end state", real["p50"], "ms", floor["p50"])
        add("end to end: p99 latency", real["p99"], "ms", floor["p99"], "<= 1.2x", real["p99"] <= 1.2 * floor["p99"])
        print(f"throughput: {args.jobs} jobs through the pipeline, telemetry on ...", file=sys.stderr)
        traced = throughput(RELEASE, args.jobs, "traced", telemetry=True)
        add("end to end, telemetry on: jobs per second", traced["rate"], "/s", floor["rate"], ">= 0.90x",
            traced["rate"] >= 0.9 * floor["rate"])
        add("end to end, telemetry on: p99 latency", traced["p99"], "ms", floor["p99"], "<= 1.2x",
            traced["p99"] <= 1.2 * floor["p99"])
        for name in ("ingester", "processor"):
            kib = real["rss"].get(name, 0)
            add(f"{name}: peak RSS under the run", kib / 1024, "MiB", floor["rss"].get(name, 0) / 1024, "< 30 MiB",
                kib < 30 * 1024)

    if len(rows) > 1:
        print()
        print(table(rows))
    print(f"\nmachine: {os.cpu_count()} cores, {platform_line()}; references built with the same release profile")
    if warm:
        print("\nCost per million jobs at 128 MB, from the warm durations above (emulator latencies, not AWS's):")
        for batch in (10, 5, 1):
            # A smaller batch is modelled with the same per-invocation time: the calls of
            # a batch run concurrently, so the time is dominated by round trips, not count.
            c = cost_per_million(warm, batch)
            print(f"  batch {batch:>2}: {c['gb_s']:8.1f} GB-s, ${c['arm64']:.2f} on arm64, ${c['x86_64']:.2f} on x86_64")
    if requests_report:
        print()
        print(requests_report)


def platform_line() -> str:
    import platform

    return f"{platform.machine()} {platform.system()} {platform.release()}, Python {platform.python_version()}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
