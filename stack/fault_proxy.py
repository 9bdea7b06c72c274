"""A fault-injecting HTTP proxy between the functions and the emulator, with rules per AWS action.

It forwards every request (method, path, headers, body) to an upstream base URL and returns
the upstream's answer, unless a rule matching the request's service, action or body says
otherwise: lose the answer after the call took effect, slow the call down, answer with an AWS
error in the protocol's own shape, or refuse the call as if the dependency were down. Tests
drive it at run time, in process (`FaultProxy`) or over HTTP (`/_fault/...` on the same port).

Why our own, stdlib only: nothing on PyPI fits. toxiproxy works on TCP streams and cannot
tell one AWS action from another (nor answer with an AWS error); mitmproxy could, through a
script, but is a heavy dependency with its own event loop and CA machinery, for what is here a
few hundred lines of http.server + http.client. LocalStack's chaos API is not in MiniStack.

What the proxy understands of AWS:
- the action: the `X-Amz-Target` suffix after the dot for JSON protocols (DynamoDB
  `DynamoDB_20120810.PutItem`, SQS's JSON protocol `AmazonSQS.SendMessageBatch` as the Rust
  SDK and botocore send it, EventBridge `AWSEvents.PutEvents`), else `Action` from a
  form-encoded body or the query string (query protocol: SNS `Action=Publish`, old SQS);
- the service: the SigV4 credential scope (`Credential=.../<date>/<region>/<service>/aws4_request`
  in `Authorization`, or `X-Amz-Credential` in a presigned URL), else the target's prefix;
- error answers both SDKs (botocore, and the Rust SDK's aws-smithy classifiers) parse and
  classify: JSON protocols `{"__type": code, "message": ...}` (plus `x-amzn-query-error:
  code;Sender` for SQS, which is awsQueryCompatible and takes the code from that header),
  query protocol `<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`,
  REST-JSON `x-amzn-ErrorType`. Codes such as ThrottlingException,
  ProvisionedThroughputExceededException, Throttling are throttling errors to both SDKs,
  and statuses 500/502/503/504 transient: both retry those (botocore's standard mode up to
  `max_attempts`, the Rust SDK's standard retry strategy 3 attempts by default).

The request is forwarded with its original `Host` header (SigV4 signs it; the SDK signed the
proxy's address) and every other header unchanged, except hop-by-hop ones (Connection,
Transfer-Encoding: a chunked body is forwarded with a Content-Length). MiniStack does not check
signatures unless AUTH=true, and since stack/emulator.py pins MINISTACK_HOST, its queue URLs keep naming
the emulator whatever Host a request carries.

Rules (a JSON list; a request gets the first rule, in order, whose filters match it, that has
let its first `after` matches through and that has been applied fewer than `times` times):

    {"service": "sqs",            # optional; the credential scope's service name
     "action": "SendMessage",     # optional; a name or a list of names
     "body_contains": "job-42",   # optional; substring of the body (form bodies also decoded)
     "after": 0,                  # optional; let the first N matching requests through
     "times": 1,                  # optional; then apply to this many (default: every one)
     # and one effect:
     "status": 400, "error_code": "ThrottlingException", "message": "Rate exceeded",
     #   answer with an AWS error, not forwarded (status alone: 400 ThrottlingException,
     #   500 InternalFailure, 503 ServiceUnavailable...; error_code alone: status 400)
     # or "drop_answer": true   forward (the call takes effect), then close without answering
     # or "refuse": true        close without forwarding (the dependency is down)
     # "reset": true            with drop_answer/refuse: reset (RST) instead of a clean close
     # "delay_ms": 1500         wait first; alone: a slow call, forwarded and answered
    }

Each rule counts every request its filters match (`after` counts those), whether or not an
earlier rule took it; `times` counts the requests it was applied to. So
`[{"action": "PutItem", "times": 2, "status": 500}, {"action": "PutItem", "after": 2, "drop_answer": true}]`
fails the first two PutItems and loses the answer of every later one.

Control API on the proxy's own port (never forwarded):
    PUT    /_fault/rules   a JSON list (or {"rules": [...]}) replaces every rule and its counters
    GET    /_fault/rules   the rules with how many requests each matched and hit
    DELETE /_fault/rules   no more rules: pure forwarding
    GET    /_fault/log     recent requests, oldest first (?since=SEQ for newer ones only): seq,
                           time, method, path, service, action, rule (index), effect, status
                           (to the client), upstream_status, duration_ms, and the SDK's
                           invocation id and attempt number, which tell its retries apart
    DELETE /_fault/log     forget them
    GET    /_fault/health  {"status": "ok", "upstream": ...}

In process: `p = FaultProxy(upstream).start()` gives the URL; then `p.set_rules([...])`,
`p.clear()`, `p.log()`, `p.stop()`. `FaultProxy(upstream, observer=f)` also calls
`f(request, status, answer)` for each forwarded request, once the upstream answered
(`request` a `Request`: service, action, body, form; `answer` the upstream's body): a
recording mode that sees what the log does not keep (bench/requests.py prices it). From a shell:
`python stack/fault_proxy.py --upstream http://127.0.0.1:4566 --port 4567 [--rules rules.json]`.
It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape as xml_escape

CONTROL_PREFIX = "/_fault"
LOG_SIZE = 5000
HOST = "127.0.0.1"

# Headers that belong to one connection, not to the request: never forwarded as they came.
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "expect",
}

# JSON-protocol target prefixes (version suffix removed) and their SigV4 service names,
# for requests without a credential scope.
TARGET_SERVICES = {
    "DynamoDB": "dynamodb",
    "DynamoDBStreams": "dynamodb",
    "AmazonSQS": "sqs",
    "AWSEvents": "events",
    "Logs": "logs",
    "Kinesis": "kinesis",
    "AmazonSSM": "ssm",
    "secretsmanager": "secretsmanager",
    "AWSStepFunctions": "states",
    "TrentService": "kms",
    "Firehose": "firehose",
    "AWSCognitoIdentityProviderService": "cognito-idp",
    "GraniteServiceVersion20100801": "monitoring",
}
# Query-protocol XML namespaces, as the real services put them on their errors.
QUERY_NAMESPACES = {
    "sns": "http://sns.amazonaws.com/doc/2010-03-31/",
    "sqs": "http://queue.amazonaws.com/doc/2012-11-05/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
    "monitoring": "http://monitoring.amazonaws.com/doc/2010-08-01/",
}
DEFAULT_CODES = {400: "ThrottlingException", 429: "TooManyRequestsException", 500: "InternalFailure",
                 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}
CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
QUERY_CREDENTIAL = re.compile(r"^[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request$")

RULE_KEYS = {"service", "action", "body_contains", "times", "after", "drop_answer", "delay_ms", "status",
             "error_code", "message", "refuse", "reset", "note"}


# --------------------------------------------------------------------------- requests


class Request:
    """What a rule can look at: the service, the action, the protocol and the body."""

    def __init__(self, method: str, path: str, headers, body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.target = headers.get("X-Amz-Target")
        content_type = (headers.get("Content-Type") or "").lower()
        self.form: dict[str, list[str]] = {}
        if "application/x-www-form-urlencoded" in content_type and body:
            self.form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        query = parse_qs(urlsplit(path).query, keep_blank_values=True)
        if self.target:
            self.protocol = "json"
            self.action = self.target.rsplit(".", 1)[-1]
        elif "Action" in self.form or "Action" in query:
            self.protocol = "query"
            self.action = (self.form.get("Action") or query.get("Action"))[0]
        else:
            self.protocol = "rest"
            self.action = None
        self.service = self._service(headers, query)
        self.content_type = content_type if "x-amz-json" in content_type else "application/x-amz-json-1.0"

    def _service(self, headers, query) -> str | None:
        m = CREDENTIAL_SCOPE.search(headers.get("Authorization") or "")
        if m:
            return m.group(2)
        m = QUERY_CREDENTIAL.match((query.get("X-Amz-Credential") or [""])[0])
        if m:
            return m.group(2)
        if self.target:
            prefix = re.sub(r"_?\d{8}$", "", self.target.rsplit(".", 1)[0])
            return TARGET_SERVICES.get(prefix, prefix.lower())
        return None

    def contains(self, needle: str) -> bool:
        if needle in self.body.decode("utf-8", "replace"):
            return True
        return any(needle in v for values in self.form.values() for v in values)


# --------------------------------------------------------------------------- rules


class Rule:
    def __init__(self, spec: dict, index: int):
        if not isinstance(spec, dict):
            raise ValueError(f"rule {index}: expected an object, got {spec!r}")
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ValueError(f"rule {index}: unknown keys {sorted(unknown)}; known: {sorted(RULE_KEYS)}")
        self.spec, self.index = dict(spec), index
        self.service = spec.get("service")
        action = spec.get("action")
        self.actions = None if action is None else ({action} if isinstance(action, str) else set(action))
        self.body_contains = spec.get("body_contains")
        self.after = _count(spec, "after", 0, index)
        self.times = _count(spec, "times", None, index)
        self.delay_ms = _count(spec, "delay_ms", 0, index)
        effects = [e for e in ("drop_answer", "refuse") if spec.get(e)]
        if "status" in spec or "error_code" in spec:
            effects.append("error")
            self.status = int(spec.get("status", 400))
            if not 400 <= self.status <= 599:
                raise ValueError(f"rule {index}: status must be 400..599, got {self.status}")
            self.error_code = str(spec.get("error_code") or DEFAULT_CODES.get(self.status, "InternalFailure"))
            self.message = str(spec.get("message") or f"{self.error_code} (injected by fault_proxy)")
        if len(effects) > 1:
            raise ValueError(f"rule {index}: one effect per rule, got {effects}")
        if not effects and not self.delay_ms:
            raise ValueError(f"rule {index}: needs an effect: status/error_code, drop_answer, refuse or delay_ms")
        self.effect = effects[0] if effects else "delay"
        self.reset = bool(spec.get("reset"))
        if self.reset and self.effect not in ("drop_answer", "refuse"):
            raise ValueError(f"rule {index}: reset goes with drop_answer or refuse")
        self.matched = 0  # requests its filters matched
        self.hits = 0  # requests it applied to

    def matches(self, req: Request) -> bool:
        if self.service is not None and (req.service or "").lower() != self.service.lower():
            return False
        if self.actions is not None and req.action not in self.actions:
            return False
        if self.body_contains is not None and not req.contains(self.body_contains):
            return False
        return True

    def is_open(self) -> bool:
        """Past its first `after` matches and not yet applied `times` times."""
        return self.matched > self.after and (self.times is None or self.hits < self.times)

    def describe(self) -> dict:
        return {**self.spec, "index": self.index, "effect": self.effect, "matched": self.matched, "hits": self.hits}


def _count(spec: dict, key: str, default, index: int):
    value = spec.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"rule {index}: {key} must be a whole number >= 0, got {value!r}")
    return value


def parse_rules(specs) -> list[Rule]:
    if isinstance(specs, dict) and "rules" in specs:
        specs = specs["rules"]
    if not isinstance(specs, list):
        raise ValueError("rules must be a JSON list of objects")
    return [Rule(s, i) for i, s in enumerate(specs)]


def sdk_attempt(headers) -> dict:
    """Which try of one SDK call this is: botocore and the Rust SDK send the same
    `amz-sdk-invocation-id` on every retry of a call and count in `amz-sdk-request`."""
    out = {}
    m = re.search(r"attempt=(\d+)", headers.get("amz-sdk-request") or "")
    if m:
        out["attempt"] = int(m.group(1))
    if headers.get("amz-sdk-invocation-id"):
        out["invocation"] = headers["amz-sdk-invocation-id"]
    return out


def error_answer(req: Request, rule: Rule) -> tuple[int, list[tuple[str, str]], bytes]:
    """An AWS error in the request's protocol, as the SDKs parse it."""
    request_id = str(uuid.uuid4())
    fault = "Sender" if rule.status < 500 else "Receiver"
    headers = [("x-amzn-RequestId", request_id)]
    if req.protocol == "query":
        ns = QUERY_NAMESPACES.get(req.service or "")
        body = (
            f'<ErrorResponse{f" xmlns={chr(34)}{ns}{chr(34)}" if ns else ""}><Error><Type>{fault}</Type>'
            f"<Code>{xml_escape(rule.error_code)}</Code><Message>{xml_escape(rule.message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        headers.append(("Content-Type", "text/xml"))
    elif req.protocol == "json":
        body = json.dumps({"__type": rule.error_code, "message": rule.message}).encode()
        headers.append(("Content-Type", req.content_type))
        if req.service == "sqs":  # awsQueryCompatible: both SDKs take the code from this header
            headers.append(("x-amzn-query-error", f"{rule.error_code};{fault}"))
    else:
        body = json.dumps({"__type": rule.error_code, "message": rule.message}).encode()
        headers += [("Content-Type", "application/json"), ("x-amzn-ErrorType", rule.error_code)]
    return rule.status, headers, body


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, proxy: "FaultProxy"):
        self.proxy = proxy
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Ends the kept-alive client connections too, so nothing is served after stop()."""
        with self.connections_lock:
            conns = list(self.open_connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    timeout = 300  # an idle client connection is closed after this long
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        started = time.monotonic()
        body = self._read_body()
        path = urlsplit(self.path).path
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            self._control(body)
            return
        proxy = self.server.proxy
        req = Request(self.command, self.path, self.headers, body)
        rule = proxy._select(req)
        entry = {
            "time": time.time(), "method": self.command, "path": self.path, "service": req.service,
            "action": req.action, "rule": rule.index if rule else None, "effect": rule.effect if rule else None,
            "status": None, "upstream_status": None, **sdk_attempt(self.headers),
        }
        recorded = False

        def record(status: int | None = None, **extra) -> None:
            """Logs the request before the client hears anything: a test that got its
            answer (or lost it) finds the entry already there."""
            nonlocal recorded
            entry.update(status=status, duration_ms=round((time.monotonic() - started) * 1000, 1), **extra)
            proxy._record(entry)
            recorded = True

        try:
            if rule and rule.delay_ms and proxy._stopping.wait(rule.delay_ms / 1000):
                record(effect="stopped")
                self._close(reset=True)
                return
            if rule and rule.effect == "refuse":
                record()
                self._close(reset=rule.reset)
                return
            if rule and rule.effect == "error":
                status, headers, payload = error_answer(req, rule)
                record(status)
                self._answer(status, None, headers, payload)
                return
            try:
                status, reason, headers, payload = proxy._forward(self.command, self.path, self.headers.items(), body)
            except (OSError, http.client.HTTPException) as e:
                timeout = isinstance(e, TimeoutError)
                code = 504 if timeout else 502
                record(code, upstream_error=f"{type(e).__name__}: {e}")
                msg = json.dumps({"__type": "GatewayTimeout" if timeout else "BadGateway", "message": str(e)})
                self._answer(code, None, [("Content-Type", "application/json")], msg.encode())
                return
            entry["upstream_status"] = status
            if rule and rule.effect == "drop_answer":
                record()
                self._close(reset=rule.reset)
                return
            record(status)
            proxy._observe(req, status, payload)
            self._answer(status, reason, headers, payload, head=self.command == "HEAD")
        finally:
            if not recorded:  # an unexpected failure: still logged
                record(error="proxy failure")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle

    def _answer(self, status: int, reason, headers, payload: bytes, head: bool = False) -> None:
        self.send_response_only(status, reason)
        for k, v in headers:
            if k.lower() in HOP_BY_HOP or (k.lower() == "content-length" and not head):
                continue
            self.send_header(k, v)
        if not head:
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            if not head:
                self.wfile.write(payload)
        except OSError:  # the client went away: nothing to tell it
            self.close_connection = True

    def _close(self, reset: bool) -> None:
        """Ends the connection without a word: a clean close (EOF), or a reset (RST)."""
        self.close_connection = True
        if reset:
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass

    def _control(self, body: bytes) -> None:
        proxy = self.server.proxy
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        method = self.command
        try:
            if path == f"{CONTROL_PREFIX}/health" and method == "GET":
                out = {"status": "ok", "upstream": proxy.upstream, "rules": len(proxy._rules)}
            elif path == f"{CONTROL_PREFIX}/rules" and method == "PUT":
                proxy.set_rules(json.loads(body or b"null"))
                out = {"rules": proxy.rules()}
            elif path == f"{CONTROL_PREFIX}/rules" and method == "GET":
                out = {"rules": proxy.rules()}
            elif path == f"{CONTROL_PREFIX}/rules" and method == "DELETE":
                proxy.clear()
                out = {"rules": []}
            elif path == f"{CONTROL_PREFIX}/log" and method == "GET":
                since = int((parse_qs(parts.query).get("since") or ["0"])[0])
                out = {"log": proxy.log(since=since)}
            elif path == f"{CONTROL_PREFIX}/log" and method == "DELETE":
                proxy.clear_log()
                out = {"log": []}
            else:
                self._json(404, {"error": f"no {method} {path}; see the fault_proxy module doc"})
                return
        except ValueError as e:  # bad JSON or a bad rule
            self._json(400, {"error": str(e)})
            return
        self._json(200, out)

    def _json(self, status: int, doc) -> None:
        self._answer(status, None, [("Content-Type", "application/json")], json.dumps(doc).encode())


# --------------------------------------------------------------------------- the proxy


class FaultProxy:
    """The proxy, in a background thread: `url = FaultProxy(upstream).start()`."""

    def __init__(self, upstream: str, port: int = 0, log_size: int = LOG_SIZE, upstream_timeout: float = 300.0,
                 observer=None):
        u = urlsplit(upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"upstream must be an http(s) base URL, got {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._up = (u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80), u.path.rstrip("/"))
        self.port = port
        self.upstream_timeout = upstream_timeout
        self.observer = observer  # called with (Request, status, answer) per forwarded request
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._log: deque[dict] = deque(maxlen=log_size)
        self._seq = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> str:
        """Listens on 127.0.0.1 (port 0: a free one) and serves in a daemon thread; returns the URL."""
        if self._server is not None:
            return self.url
        self._stopping.clear()
        self._server = _Server((HOST, self.port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"fault-proxy-{self._server.server_address[1]}", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stops listening, ends open client connections and pending delays."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_rules(self, rules: list[dict]) -> None:
        """Replaces every rule (and their counters); raises ValueError naming a bad rule."""
        parsed = parse_rules(rules)
        with self._lock:
            self._rules = parsed

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def rules(self) -> list[dict]:
        with self._lock:
            return [r.describe() for r in self._rules]

    def log(self, since: int = 0) -> list[dict]:
        """Recent requests, oldest first; `since`: only those with a larger `seq`."""
        with self._lock:
            return [dict(e) for e in self._log if e["seq"] > since]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _select(self, req: Request) -> Rule | None:
        chosen = None
        with self._lock:
            for rule in self._rules:
                if not rule.matches(req):
                    continue
                rule.matched += 1
                if chosen is None and rule.is_open():
                    rule.hits += 1
                    chosen = rule
        return chosen

    def _record(self, entry: dict) -> None:
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._log.append(entry)

    def _observe(self, req: Request, status: int, payload: bytes) -> None:
        """Hands a forwarded request and its answer to the observer; its failure is logged,
        never the client's problem."""
        if self.observer is None:
            return
        try:
            self.observer(req, status, payload)
        except Exception as e:  # noqa: BLE001 - a recorder's bug must not break the call
            print(f"fault_proxy: observer failed on {req.service} {req.action}: {e!r}", file=sys.stderr)

    def _forward(self, method: str, path: str, headers, body: bytes):
        scheme, host, port, prefix = self._up
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        if path.startswith(("http://", "https://")):  # absolute form: keep path and query
            p = urlsplit(path)
            path = p.path + (f"?{p.query}" if p.query else "")
        conn = cls(host, port, timeout=self.upstream_timeout)
        try:
            conn.putrequest(method, prefix + path, skip_host=True, skip_accept_encoding=True)
            has_host = False
            for k, v in headers:
                lk = k.lower()
                if lk in HOP_BY_HOP or lk == "content-length":
                    continue
                has_host |= lk == "host"
                conn.putheader(k, v)
            if not has_host:
                conn.putheader("Host", f"{host}:{port}")
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp.reason, resp.getheaders(), payload
        finally:
            conn.close()


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fault_proxy", description=__doc__.split("\n\n")[0],
        epilog="Rules and the control API are described in the module doc (python -m pydoc stack/fault_proxy.py).",
    )
    parser.add_argument("--upstream", required=True, help="base URL to forward to, e.g. http://127.0.0.1:4566")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 to listen on (0: a free one)")
    parser.add_argument("--rules", type=argparse.FileType("r"), help="JSON file with the rules to start with")
    parser.add_argument("--log-size", type=int, default=LOG_SIZE, help="how many requests /_fault/log keeps")
    args = parser.parse_args(argv)
    try:
        proxy = FaultProxy(args.upstream, port=args.port, log_size=args.log_size)
        if args.rules:
            proxy.set_rules(json.load(args.rules))
        url = proxy.start()
    except (ValueError, OSError) as e:
        print(f"fault_proxy: {e}", file=sys.stderr)
        return 2
    print(f"fault proxy at {url} -> {proxy.upstream}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
