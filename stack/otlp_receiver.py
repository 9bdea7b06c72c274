"""A local OTLP/HTTP receiver for the embedded stack: traces and metrics without Docker.

It listens on 127.0.0.1 only, accepts OTLP/HTTP protobuf (and JSON) on `/v1/traces` and
`/v1/metrics`, and appends every span and metric data point as one JSON line to
`spans.jsonl` / `metrics.jsonl` in the stack's state directory. `waterfall()` prints a
job's trace from those files, indented by parent, with offsets and durations.

Run by `stack.py up` (pid and port in `otlp-receiver.json`), stopped by `stack.py down`.
With Docker, the OpenTelemetry Collector takes its place.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATE_FILE = "otlp-receiver.json"
SPANS = "spans.jsonl"
METRICS = "metrics.jsonl"
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


# --------------------------------------------------------------------------- decoding


def _value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


def spans_of(body: bytes, content_type: str) -> list[dict]:
    """Flattens an ExportTraceServiceRequest into one dict per span."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    if "json" in content_type:
        json_format.Parse(body, req, ignore_unknown_fields=True)
    else:
        req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex() or None,
                    "name": s.name,
                    "kind": KINDS.get(s.kind, str(s.kind)),
                    "start_ns": s.start_time_unix_nano,
                    "end_ns": s.end_time_unix_nano,
                    "status": STATUS.get(s.status.code, str(s.status.code)),
                    "status_message": s.status.message,
                    "attributes": _attrs(s.attributes),
                    "links": [{"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex()} for ln in s.links],
                    "service": resource.get("service.name"),
                    "resource": resource,
                    "scope": ss.scope.name,
                })
    return out


def metrics_of(body: bytes, content_type: str) -> list[dict]:
    """Flattens an ExportMetricsServiceRequest into one dict per data point."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    req = ExportMetricsServiceRequest()
    if "json" in content_type:
        json_format.Parse(body, req, ignore_unknown_fields=True)
    else:
        req.ParseFromString(body)
    out = []
    for rm in req.resource_metrics:
        resource = _attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                for p in getattr(m, kind).data_points:
                    point = {
                        "name": m.name,
                        "unit": m.unit,
                        "type": kind,
                        "service": resource.get("service.name"),
                        "instance": resource.get("service.instance.id"),
                        "attributes": _attrs(p.attributes),
                        "time_ns": p.time_unix_nano,
                    }
                    if kind == "histogram":
                        point.update(count=p.count, sum=p.sum, bounds=list(p.explicit_bounds))
                    elif kind in ("sum", "gauge"):
                        point["value"] = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                    out.append(point)
    return out


# --------------------------------------------------------------------------- server


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, state_dir: Path):
        super().__init__(("127.0.0.1", port), Handler)
        self.state_dir = state_dir
        self.lock = threading.Lock()

    def append(self, name: str, rows: list[dict]) -> None:
        if not rows:
            return
        lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
        with self.lock, open(self.state_dir / name, "a") as f:
            f.write(lines)


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "application/x-protobuf")
        try:
            if self.path == "/v1/traces":
                self.server.append(SPANS, spans_of(body, ctype))
            elif self.path == "/v1/metrics":
                self.server.append(METRICS, metrics_of(body, ctype))
            elif self.path == "/v1/logs":
                pass  # accepted and dropped: the functions log to stdout
            else:
                self.send_error(404)
                return
        except Exception as e:  # a bad request must not stop the receiver
            self.send_error(400, str(e)[:200])
            return
        # An empty Export*ServiceResponse is an empty protobuf message (or `{}` in JSON).
        reply = b"{}" if "json" in ctype else b""
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if "json" in ctype else "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self):  # noqa: N802
        if self.path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        else:
            self.send_error(404)

    def log_message(self, fmt, *args):  # one line per request would drown the log
        pass


def serve(port: int, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    server = Receiver(port, state_dir)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"otlp receiver on http://127.0.0.1:{server.server_address[1]} writing to {state_dir}", flush=True)
    server.serve_forever()


# --------------------------------------------------------------------------- lifecycle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def running(state_dir: Path) -> dict | None:
    """The receiver `start` left running for this state dir, if it still answers."""
    try:
        info = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if _alive(info["pid"]) and _healthy(info["endpoint"]):
        return info
    return None


def start(state_dir: Path, port: int | None = None) -> str:
    """Starts the receiver (or reuses the running one); returns its endpoint."""
    info = running(state_dir)
    if info:
        return info["endpoint"]
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log = open(state_dir / "otlp-receiver.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "serve", "--port", str(port), "--dir", str(state_dir)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    (state_dir / STATE_FILE).write_text(json.dumps({"pid": proc.pid, "endpoint": endpoint}))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the OTLP receiver exited with {proc.returncode}; see {state_dir / 'otlp-receiver.log'}")
        if _healthy(endpoint):
            return endpoint
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the OTLP receiver did not answer within 15 s; see {state_dir / 'otlp-receiver.log'}")


def stop(state_dir: Path) -> None:
    """Stops the receiver `start` started for this state dir, by pid."""
    try:
        pid = json.loads((state_dir / STATE_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
    (state_dir / STATE_FILE).unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading back


def read(state_dir: Path, name: str = SPANS) -> list[dict]:
    try:
        text = (state_dir / name).read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def job_traces(spans: list[dict], job_id: str) -> dict[str, list[dict]]:
    """The traces (by trace id) holding a span about this job (`job.id`)."""
    ids = {s["trace_id"] for s in spans if s["attributes"].get("job.id") == job_id}
    return {t: [s for s in spans if s["trace_id"] == t] for t in ids}


def waterfall(trace: list[dict], width: int = 40) -> str:
    """A trace as an indented tree: offset and duration from the trace's start, a bar."""
    trace = sorted(trace, key=lambda s: s["start_ns"])
    by_id = {s["span_id"]: s for s in trace}
    children: dict[str | None, list[dict]] = {}
    for s in trace:
        parent = s["parent_span_id"] if s["parent_span_id"] in by_id else None
        children.setdefault(parent, []).append(s)
    t0 = trace[0]["start_ns"]
    total = max(max(s["end_ns"] for s in trace) - t0, 1)
    lines = [f"trace {trace[0]['trace_id']}  {len(trace)} spans  {total / 1e6:.1f} ms"]

    def walk(span: dict, depth: int) -> None:
        start = (span["start_ns"] - t0) / total
        length = max((span["end_ns"] - span["start_ns"]) / total, 0)
        a = min(int(start * width), width - 1)
        bar = " " * a + "█" * max(1, int(length * width))
        status = "" if span["status"] != "ERROR" else f"  ERROR {span['status_message']}"
        orphan = "" if depth or not span["parent_span_id"] else "  (parent not in trace)"
        label = f"{'  ' * depth}{span['name']} [{span['kind'].lower()}] {span['service']}"
        lines.append(
            f"{label:<58} {(span['start_ns'] - t0) / 1e6:>9.1f} ms {(span['end_ns'] - span['start_ns']) / 1e6:>9.1f} ms "
            f"|{bar:<{width}}|{status}{orphan}"
        )
        for child in children.get(span["span_id"], []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otlp_receiver", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the receiver in the foreground")
    p_serve.add_argument("--port", type=int, default=4318)
    p_serve.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
