"""What a million jobs cost on AWS, from the requests and units one measured run billed.

`PRICES` is the one table of prices (us-east-1, on-demand list prices, free tiers left
out). `cost_per_million` is pure: it turns a `Measured` run (calls and billed units by
service and action, the records the functions were handed, their invocations and GB-s)
into dollars per million jobs for a batch size and an architecture. `report` prints the
requests and units per job by service, for the pipeline and the floor (bench/noop), and
the cost per million at batch sizes 10, 5 and 1 on arm64 and x86_64.

The batch model: a call made once per invocation (the Lambda request and its GB-s, the
event source mapping's receive and delete, `SendMessageBatch`, `PublishBatch`) is
counted per invocation of the run and scaled to the batch size: per job it is
(per invocation) x (records per job) / batch. Everything billed per item (DynamoDB units,
EventBridge events, `SendMessage`, the rule's deliveries, the functions' log lines) is
counted per job as measured. GB-s per invocation are the emulator's durations, taken as
independent of the batch size (a batch's calls run concurrently: round trips, not count,
set the time); AWS's latencies differ, and so does the GB-s line.

What is not in it: storage (DynamoDB items, with TTL; PITR backups at $0.20/GB-month),
KMS requests for the SNS topic's key (SNS caches data keys), data transfer (none within
the region), the subscribers' own queues, and each queue's idle polls (a fixed monthly
cost, see bench/README.md#cost-per-million-jobs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# us-east-1 on-demand list prices in USD per unit, as published on the pages named, free
# tiers not counted. Written down on 2026-12-01 from the published price lists as last
# changed on the dates given (no network here to re-read them: check before quoting):
#   Lambda   aws.amazon.com/lambda/pricing: $0.20 per 1M requests; duration (first tier)
#            $0.0000166667/GB-s x86_64, $0.0000133334/GB-s arm64 (arm64 since 2021-09).
#   SQS      aws.amazon.com/sqs/pricing: standard queue, $0.40 per 1M requests (after the
#            first 1M/month), each 64 KB chunk of a payload one request.
#   SNS      aws.amazon.com/sns/pricing: standard topic, $0.50 per 1M publishes (64 KB
#            chunks); deliveries to SQS free.
#   EventBridge  aws.amazon.com/eventbridge/pricing: custom events, $1.00 per 1M (64 KB chunks).
#   DynamoDB aws.amazon.com/dynamodb/pricing/on-demand: $0.625 per 1M write request units,
#            $0.125 per 1M read request units (halved on 2024-11-01; before, $1.25 / $0.25).
#   CloudWatch Logs  aws.amazon.com/cloudwatch/pricing: standard ingestion $0.50 per GB.
PRICES: dict[tuple[str, str], float | dict[str, float]] = {
    ("lambda", "invocations"): 0.20 / 1e6,
    ("lambda", "gb_s"): {"arm64": 0.0000133334, "x86_64": 0.0000166667},
    ("sqs", "requests"): 0.40 / 1e6,
    ("sns", "requests"): 0.50 / 1e6,
    ("events", "events"): 1.00 / 1e6,
    ("dynamodb", "wru"): 0.625 / 1e6,
    # A global secondary index's writes are billed as the table's.
    ("dynamodb", "index_wru"): 0.625 / 1e6,
    ("dynamodb", "rru"): 0.125 / 1e6,
    ("logs", "gb"): 0.50,
}
PRICES_DATE = "2026-12-01"
ARCHES = ("arm64", "x86_64")
BATCHES = (10, 5, 1)
LOG_EVENT_OVERHEAD = 26  # bytes CloudWatch Logs adds to each event's size

# (service, action) made once per invocation: scaled with the batch size.
PER_INVOCATION = {
    ("lambda", "Invoke"),
    ("sqs", "ReceiveMessage (event source mapping)"),
    ("sqs", "DeleteMessageBatch (event source mapping)"),
    ("sqs", "SendMessageBatch"),
    ("sqs", "ChangeMessageVisibilityBatch"),
    ("sqs", "DeleteMessageBatch"),
    ("sns", "PublishBatch"),
    ("logs", "platform lines"),
}
# Calls nobody in the run makes through the recorder: added from the invocation count.
MODELLED = {("sqs", "ReceiveMessage (event source mapping)"), ("sqs", "DeleteMessageBatch (event source mapping)"),
            ("sqs", "SendMessage (EventBridge target)")}


@dataclass
class Measured:
    """One run: `jobs` distinct job ids; `calls[(service, action)]` HTTP requests seen;
    `units[(service, action, unit)]` billed; `records` handed to the functions (events
    accepted plus messages sent to the work queue); `invocations` of both functions."""

    label: str
    jobs: int
    calls: dict[tuple[str, str], float] = field(default_factory=dict)
    units: dict[tuple[str, str, str], float] = field(default_factory=dict)
    records: int = 0
    invocations: int = 0
    memory_mb: int = 128
    functions: dict[str, dict[str, float]] = field(default_factory=dict)  # each function's lambda_usage

    @property
    def batch(self) -> float:
        """Records per invocation, as measured."""
        return self.records / self.invocations if self.invocations else 0.0


def lambda_usage(messages: list[str], memory_mb: int) -> dict[str, float]:
    """From one function's CloudWatch log events: invocations (REPORT lines), GB-s (their
    billed durations, at least 1 ms each, at `memory_mb`), and the bytes AWS would ingest,
    split into the platform's lines (per invocation) and the function's own (per job)."""
    out = {"invocations": 0, "gb_s": 0.0, "platform_bytes": 0, "function_bytes": 0}
    for text in messages:
        size = len(text.encode("utf-8")) + LOG_EVENT_OVERHEAD
        if text.startswith(("START RequestId:", "END RequestId:", "REPORT RequestId:", "INIT_START")):
            out["platform_bytes"] += size
        else:
            out["function_bytes"] += size
        if text.startswith("REPORT RequestId:"):
            m = re.search(r"Billed Duration: ([\d.]+) ms", text) or re.search(r"Duration: ([\d.]+) ms", text)
            mem = re.search(r"Memory Size: (\d+) MB", text)
            ms = max(1, math.ceil(float(m.group(1)))) if m else 1
            out["invocations"] += 1
            out["gb_s"] += ms / 1000 * (int(mem.group(1)) if mem else memory_mb) / 1024
    return out


def add_lambda(m: Measured, function: str, usage: dict[str, float]) -> None:
    """Adds one function's invocations, GB-s and log bytes to the run, and the event
    source mapping's receive and delete per invocation (one request each on AWS: the
    records are small, far under 64 KB; a batch whose records all failed is not deleted,
    which this counts as deleted)."""
    n = usage["invocations"]
    m.invocations += n
    m.functions[function] = dict(usage)
    for key, amount in {
        ("lambda", "Invoke", "invocations"): n,
        ("lambda", "Invoke", "gb_s"): usage["gb_s"],
        ("sqs", "ReceiveMessage (event source mapping)", "requests"): n,
        ("sqs", "DeleteMessageBatch (event source mapping)", "requests"): n,
        ("logs", "platform lines", "gb"): usage["platform_bytes"] / 1e9,
        ("logs", "function lines", "gb"): usage["function_bytes"] / 1e9,
    }.items():
        m.units[key] = m.units.get(key, 0) + amount
    for action in ("Invoke", "ReceiveMessage (event source mapping)", "DeleteMessageBatch (event source mapping)"):
        service = "lambda" if action == "Invoke" else "sqs"
        m.calls[(service, action)] = m.calls.get((service, action), 0) + n


def _price(service: str, unit: str, arch: str) -> float:
    p = PRICES.get((service, unit))
    if p is None:
        raise KeyError(f"no price for {service} {unit}: add it to PRICES")
    return p[arch] if isinstance(p, dict) else p


def scale(m: Measured, service: str, action: str, batch: float | None) -> float:
    """Factor from the measured run to `batch` records per invocation (None: as measured)."""
    if batch is None or (service, action) not in PER_INVOCATION or not m.batch:
        return 1.0
    return m.batch / batch


def units_per_job(m: Measured, batch: float | None = None) -> dict[tuple[str, str, str], float]:
    return {k: v / m.jobs * scale(m, k[0], k[1], batch) for k, v in m.units.items()}


def cost_per_million(m: Measured, batch: float, arch: str) -> dict[str, float]:
    """Dollars per million jobs by service, and `total`, at `batch` records per invocation."""
    out: dict[str, float] = {}
    for (service, _action, unit), per_job in units_per_job(m, batch).items():
        out[service] = out.get(service, 0.0) + per_job * 1e6 * _price(service, unit, arch)
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- the printed tables


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.2e}"


def _shown(unit: str, amount: float) -> str:
    """An amount of a unit as the tables print it (log volume in KB, not GB)."""
    if unit == "gb":
        return f"{_fmt(amount * 1e6)} KB"
    return f"{_fmt(amount)} {_unit_name(unit)}"


def _unit_name(unit: str) -> str:
    return {"requests": "req", "events": "events", "wru": "WRU", "index_wru": "index WRU", "rru": "RRU", "invocations": "inv",
            "gb_s": "GB-s", "gb": "GB"}.get(unit, unit)


def report(pipeline: Measured, floor: Measured | None = None) -> str:
    """Requests and billed units per job by service and action (as measured), then the
    cost per million jobs at each batch size and architecture."""
    runs = [pipeline] + ([floor] if floor else [])
    lines = [by_service(runs), ""]
    keys = sorted({(s, a) for r in runs for (s, a) in r.calls} | {(s, a) for r in runs for (s, a, _) in r.units})
    head = ["service", "action"]
    for r in runs:
        head += [f"{r.label} calls/job", f"{r.label} billed/job"]
    rows = [head]
    for service, action in keys:
        row = [service, action + (" *" if (service, action) in MODELLED else "")]
        for r in runs:
            per = units_per_job(r)
            billed = ", ".join(_shown(u, v) for (s, a, u), v in sorted(per.items()) if (s, a) == (service, action))
            row += [_fmt(r.calls.get((service, action), 0) / r.jobs), billed]
        rows.append(row)
    lines += [
        "The same by action ("
        + "; ".join(f"{r.label}: {r.jobs} jobs, {r.records} records in {r.invocations} invocations, "
                    f"{r.batch:.1f} per invocation, {_ms_per_invocation(r):.0f} ms each ("
                    + ", ".join(f"{name} {u['invocations']} x {_ms(u, r.memory_mb):.0f} ms"
                                for name, u in sorted(r.functions.items())) + ")" for r in runs)
        + "). * = not seen by the recorder: added per invocation or per event.",
        _table(rows),
        "",
        f"Cost per million jobs, USD, us-east-1 list prices of {PRICES_DATE} (bench/cost.py PRICES); "
        "per-invocation lines scaled to the batch, GB-s at the emulator's durations:",
    ]
    services = sorted({s for (s, _, _) in pipeline.units})
    head = ["batch", "arch", *services, "pipeline"] + (["floor", "ratio"] if floor else [])
    rows = [head]
    for batch in BATCHES:
        for arch in ARCHES:
            c = cost_per_million(pipeline, batch, arch)
            row = [str(batch), arch, *[f"{c.get(s, 0):.2f}" for s in services], f"{c['total']:.2f}"]
            if floor:
                f = cost_per_million(floor, batch, arch)
                row += [f"{f['total']:.2f}", f"{c['total'] / f['total']:.2f}x" if f["total"] else ""]
            rows.append(row)
    lines.append(_table(rows))
    at_rate = cost_per_million(pipeline, BATCHES[0], "arm64")["total"] * 1000 * 86400 * 30 / 1e6
    lines.append(f"At 1,000 jobs/s (2,592 million jobs in 30 days), batch {BATCHES[0]}, arm64: "
                 f"${at_rate:,.0f} a month for the pipeline" + (
                     f", ${cost_per_million(floor, BATCHES[0], 'arm64')['total'] * 2592:,.0f} for the floor"
                     if floor else "") + ".")
    return "\n".join(lines)


def by_service(runs: list[Measured]) -> str:
    """Calls and billed units per job, summed by service, as measured."""
    head = ["service", ""]
    for r in runs:
        head += [f"{r.label} calls/job", f"{r.label} billed/job"]
    rows = [head]
    for service in sorted({k[0] for r in runs for k in [*r.calls, *r.units]}):
        row = [service, ""]
        for r in runs:
            calls = sum(v for (sv, _), v in r.calls.items() if sv == service) / r.jobs
            units: dict[str, float] = {}
            for (sv, _, unit), v in units_per_job(r).items():
                if sv == service:
                    units[unit] = units.get(unit, 0) + v
            row += [_fmt(calls), ", ".join(_shown(u, v) for u, v in sorted(units.items()))]
        rows.append(row)
    return "Requests and billed units per job, by service (calls: HTTP requests, retries included):\n" + _table(rows)


def _ms(usage: dict[str, float], memory_mb: int) -> float:
    return usage["gb_s"] / usage["invocations"] * 1024 / memory_mb * 1000 if usage["invocations"] else 0.0


def _ms_per_invocation(m: Measured) -> float:
    gb_s = m.units.get(("lambda", "Invoke", "gb_s"), 0.0)
    return gb_s / m.invocations * 1024 / m.memory_mb * 1000 if m.invocations else 0.0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]])
