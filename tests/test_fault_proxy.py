"""The fault proxy (stack/fault_proxy.py): first against a tiny fake upstream in this file,
then in front of a real MiniStack started through `stack.up(..., fault_proxy=...)`, with
boto3 and the functions' Rust SDK as the clients whose behaviour the faults must provoke.

Every server here listens on 127.0.0.1, every wait is bounded, and each test stops what it
started (the proxy object, the fake upstream object, the CLI by its pid, MiniStack by
`stack.down`).
"""

from __future__ import annotations

import errno
import http.client
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

import fault_proxy as fp
import stack as stk
from helpers import SETTINGS, onboarding, put_jobs

SCOPE = "AWS4-HMAC-SHA256 Credential=test/20261123/us-east-1/{service}/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc"


# --------------------------------------------------------------------------- a fake upstream


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.seen.append({"method": self.command, "path": self.path, "headers": self.headers.items(), "body": body})
        status, headers, payload = self.server.answer
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any


class FakeUpstream:
    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
        self.server.daemon_threads = True
        self.server.seen, self.server.lock = [], threading.Lock()
        self.server.answer = (200, [("Content-Type", "application/x-amz-json-1.0"), ("x-upstream", "yes")], b'{"ok":true}')
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def seen(self) -> list[dict]:
        with self.server.lock:
            return list(self.server.seen)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def upstream():
    u = FakeUpstream()
    try:
        yield u
    finally:
        u.stop()


@pytest.fixture
def proxy(upstream):
    p = fp.FaultProxy(upstream.url)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def call(url: str, method="POST", path="/", body=b"", headers=None, conn=None, timeout=5):
    """One request through the proxy; returns (status, headers dict, body)."""
    own = conn is None
    if own:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        if own:
            conn.close()


def ddb_put(job="job-1") -> dict:
    return {
        "body": json.dumps({"TableName": "jobs", "Item": {"pk": {"S": job}}}).encode(),
        "headers": {"X-Amz-Target": "DynamoDB_20120810.PutItem", "Content-Type": "application/x-amz-json-1.0",
                    "Authorization": SCOPE.format(service="dynamodb"), "Host": "signed.example:4566"},
    }


def sqs_send(body="hello") -> dict:
    return {
        "body": json.dumps({"QueueUrl": "http://q/000000000000/q", "MessageBody": body}).encode(),
        "headers": {"X-Amz-Target": "AmazonSQS.SendMessage", "Content-Type": "application/x-amz-json-1.0",
                    "Authorization": SCOPE.format(service="sqs")},
    }


def sns_publish(message="hi") -> dict:
    body = f"Action=Publish&Version=2010-03-31&TopicArn=arn%3Aaws%3Asns%3Aus-east-1%3A0%3At&Message={quote(message)}"
    return {
        "body": body.encode(),
        "headers": {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                    "Authorization": SCOPE.format(service="sns")},
    }


# --------------------------------------------------------------------------- (a) unit level


def test_forwards_everything_and_keeps_the_signed_host(proxy, upstream):
    req = ddb_put()
    status, headers, body = call(proxy.url, path="/some/path?x=1", **req)
    assert (status, body, headers.get("x-upstream")) == (200, b'{"ok":true}', "yes")
    (seen,) = upstream.seen
    sent = dict(seen["headers"])
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/some/path?x=1", req["body"])
    assert sent["Host"] == "signed.example:4566", "the Host the SDK signed goes upstream unchanged"
    assert sent["Authorization"] == req["headers"]["Authorization"]
    assert sent["X-Amz-Target"] == "DynamoDB_20120810.PutItem"


def test_a_chunked_request_goes_upstream_whole(proxy, upstream):
    host, port = proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", "/", body=iter([b'{"a":', b"1}"]), headers={"X-Amz-Target": "AmazonSQS.ListQueues"},
                     encode_chunked=True)
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    (seen,) = upstream.seen
    assert seen["body"] == b'{"a":1}'
    assert dict(seen["headers"])["Content-Length"] == "7"


def test_logs_the_sdk_attempt(proxy):
    call(proxy.url, body=b"{}", headers={"X-Amz-Target": "AmazonSQS.ListQueues", "amz-sdk-invocation-id": "inv-1",
                                         "amz-sdk-request": "ttl=20261123T000000Z; attempt=2; max=3"})
    call(proxy.url, **sqs_send())
    assert [(e.get("invocation"), e.get("attempt")) for e in proxy.log()] == [("inv-1", 2), (None, None)]


def test_detects_json_protocol_actions(proxy):
    call(proxy.url, **ddb_put())
    call(proxy.url, body=b"{}", headers={"X-Amz-Target": "AmazonSQS.SendMessageBatch"})  # no credential scope
    call(proxy.url, body=b"{}", headers={"X-Amz-Target": "AWSEvents.PutEvents", "Authorization": SCOPE.format(service="events")})
    assert [(e["service"], e["action"]) for e in proxy.log()] == [
        ("dynamodb", "PutItem"), ("sqs", "SendMessageBatch"), ("events", "PutEvents")
    ]


def test_detects_query_protocol_actions(proxy):
    call(proxy.url, **sns_publish())
    call(proxy.url, method="GET", path="/?Action=ListQueues&Version=2012-11-05",
         headers={"Authorization": SCOPE.format(service="sqs")})
    call(proxy.url, method="GET", path="/2015-03-31/functions", headers={"Authorization": SCOPE.format(service="lambda")})
    assert [(e["service"], e["action"]) for e in proxy.log()] == [("sns", "Publish"), ("sqs", "ListQueues"), ("lambda", None)]


def test_drop_answer_forwards_then_closes_without_an_answer(proxy, upstream):
    proxy.set_rules([{"action": "SendMessage", "drop_answer": True}])
    with pytest.raises(http.client.RemoteDisconnected):  # a clean close: EOF before any answer
        call(proxy.url, **sqs_send("lost answer"))
    assert [json.loads(s["body"])["MessageBody"] for s in upstream.seen] == ["lost answer"], "it took effect upstream"
    (entry,) = proxy.log()
    assert (entry["effect"], entry["upstream_status"], entry["status"]) == ("drop_answer", 200, None)
    # Other actions still pass.
    assert call(proxy.url, **ddb_put())[0] == 200


def test_drop_answer_with_reset_resets_the_connection(proxy, upstream):
    proxy.set_rules([{"action": "SendMessage", "drop_answer": True, "reset": True}])
    with pytest.raises(ConnectionResetError) as e:
        call(proxy.url, **sqs_send())
    assert not isinstance(e.value, http.client.RemoteDisconnected), "a reset, not a clean close"
    assert e.value.errno == errno.ECONNRESET
    assert len(upstream.seen) == 1


def test_refuse_closes_without_forwarding(proxy, upstream):
    proxy.set_rules([{"service": "dynamodb", "refuse": True}])
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        call(proxy.url, **ddb_put())
    assert upstream.seen == []
    assert call(proxy.url, **sqs_send())[0] == 200
    assert len(upstream.seen) == 1


def test_delay_slows_the_call_then_answers(proxy, upstream):
    proxy.set_rules([{"action": "PutItem", "delay_ms": 600}])
    t0 = time.monotonic()
    status, _, body = call(proxy.url, **ddb_put())
    slow = time.monotonic() - t0
    t0 = time.monotonic()
    assert call(proxy.url, **sqs_send())[0] == 200
    fast = time.monotonic() - t0
    assert (status, body) == (200, b'{"ok":true}')
    assert 0.6 <= slow < 3 and fast < 0.5, (slow, fast)
    assert len(upstream.seen) == 2


def test_json_error_answers_as_the_sdks_parse_them(proxy, upstream):
    from botocore.parsers import create_parser

    proxy.set_rules([
        {"action": "PutItem", "status": 400, "error_code": "ProvisionedThroughputExceededException"},
        {"action": "SendMessage", "status": 400, "error_code": "ThrottlingException", "message": "Rate exceeded"},
        {"action": "PutEvents", "status": 503},
    ])
    status, headers, body = call(proxy.url, **ddb_put())
    doc = json.loads(body)
    assert status == 400 and doc["__type"] == "ProvisionedThroughputExceededException" and doc["message"]
    assert headers["content-type"] == "application/x-amz-json-1.0" and headers["x-amzn-requestid"]
    assert "x-amzn-query-error" not in headers

    status, headers, body = call(proxy.url, **sqs_send())
    assert (status, json.loads(body)) == (400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
    assert headers["x-amzn-query-error"] == "ThrottlingException;Sender"  # SQS is awsQueryCompatible
    parsed = create_parser("json").parse({"status_code": status, "headers": headers, "body": body}, None)
    assert parsed["Error"]["Code"] == "ThrottlingException"

    status, headers, body = call(proxy.url, body=b"{}", headers={"X-Amz-Target": "AWSEvents.PutEvents",
                                                                 "Content-Type": "application/x-amz-json-1.1"})
    assert (status, json.loads(body)["__type"], headers["content-type"]) == (503, "ServiceUnavailable", "application/x-amz-json-1.1")
    assert upstream.seen == [], "error answers are not forwarded"


def test_query_error_answers_are_error_response_xml(proxy, upstream):
    from botocore.parsers import create_parser

    proxy.set_rules([{"service": "sns", "action": "Publish", "status": 400, "error_code": "Throttling"},
                     {"service": "sqs", "status": 500}])
    status, headers, body = call(proxy.url, **sns_publish())
    assert status == 400 and headers["content-type"] == "text/xml"
    root = ET.fromstring(body)
    ns = {"sns": "http://sns.amazonaws.com/doc/2010-03-31/"}
    assert root.tag == "{http://sns.amazonaws.com/doc/2010-03-31/}ErrorResponse"
    assert [root.findtext(f"sns:Error/sns:{k}", namespaces=ns) for k in ("Type", "Code")] == ["Sender", "Throttling"]
    assert root.findtext("sns:Error/sns:Message", namespaces=ns) and root.findtext("sns:RequestId", namespaces=ns)
    parsed = create_parser("query").parse({"status_code": status, "headers": headers, "body": body}, None)
    assert parsed["Error"]["Code"] == "Throttling" and parsed["ResponseMetadata"]["RequestId"]

    status, _, body = call(proxy.url, method="GET", path="/?Action=ListQueues", headers={"Authorization": SCOPE.format(service="sqs")})
    root = ET.fromstring(body)
    assert status == 500 and root.find("{*}Error/{*}Type").text == "Receiver" and root.find("{*}Error/{*}Code").text == "InternalFailure"
    assert upstream.seen == []


def test_times_and_after_bound_the_window(proxy, upstream):
    proxy.set_rules([{"action": "PutItem", "after": 1, "times": 2, "status": 500}])
    statuses = [call(proxy.url, **ddb_put())[0] for _ in range(5)]
    assert statuses == [200, 500, 500, 200, 200]
    assert len(upstream.seen) == 3
    (rule,) = proxy.rules()
    assert (rule["matched"], rule["hits"]) == (5, 2)
    assert [e["rule"] for e in proxy.log()] == [None, 0, 0, None, None]


def test_rules_apply_in_order_and_count_independently(proxy):
    proxy.set_rules([
        {"action": "PutItem", "times": 2, "status": 500},
        {"action": "PutItem", "after": 2, "status": 400, "error_code": "ThrottlingException"},
        {"status": 503},  # everything else
    ])
    assert [call(proxy.url, **ddb_put())[0] for _ in range(4)] == [500, 500, 400, 400]
    assert call(proxy.url, **sqs_send())[0] == 503
    assert [(r["matched"], r["hits"]) for r in proxy.rules()] == [(4, 2), (4, 2), (5, 1)]
    # `times` counts what a rule was applied to, not what an earlier rule took.
    proxy.set_rules([{"action": "PutItem", "status": 500}, {"times": 1, "status": 503}])
    assert [call(proxy.url, **r)[0] for r in (ddb_put(), sqs_send(), sqs_send())] == [500, 503, 200]


def test_body_contains_picks_one_job(proxy, upstream):
    proxy.set_rules([{"body_contains": "job-7", "status": 500},
                     {"action": "Publish", "body_contains": '"job_id":"job-9"', "status": 400, "error_code": "Throttling"}])
    assert call(proxy.url, **ddb_put("job-6"))[0] == 200
    assert call(proxy.url, **ddb_put("job-7"))[0] == 500
    # A form body is matched decoded too: the needle is URL-encoded on the wire.
    assert call(proxy.url, **sns_publish(json.dumps({"job_id": "job-9"}, separators=(",", ":"))))[0] == 400
    assert call(proxy.url, **sns_publish(json.dumps({"job_id": "job-8"}, separators=(",", ":"))))[0] == 200
    assert len(upstream.seen) == 2


def test_bad_rules_are_refused_by_name(proxy):
    for bad, words in [
        ({"action": "PutItem"}, "needs an effect"),
        ({"action": "PutItem", "refuse": True, "status": 500}, "one effect"),
        ({"action": "PutItem", "time": 1, "status": 500}, "unknown keys ['time']"),
        ({"status": 200}, "400..599"),
        ({"status": 500, "times": -1}, "times"),
        ({"delay_ms": 10, "reset": True}, "reset"),
    ]:
        with pytest.raises(ValueError, match=r"rule 1: .*" + re.escape(words)):
            proxy.set_rules([{"status": 500}, bad])
    with pytest.raises(ValueError):
        proxy.set_rules({"action": "PutItem"})


def test_control_api(proxy, upstream):
    def control(method, path, doc=None):
        status, _, body = call(proxy.url, method=method, path=path,
                               body=json.dumps(doc).encode() if doc is not None else b"")
        return status, json.loads(body)

    assert control("GET", "/_fault/health") == (200, {"status": "ok", "upstream": upstream.url, "rules": 0})
    status, out = control("PUT", "/_fault/rules", [{"action": "PutItem", "times": 1, "status": 500}])
    assert status == 200 and [r["effect"] for r in out["rules"]] == ["error"]
    assert control("PUT", "/_fault/rules", [{"action": "PutItem"}])[0] == 400, "a bad rule is refused"
    assert control("GET", "/_fault/rules")[1]["rules"][0]["times"] == 1, "and the old rules stay"
    assert call(proxy.url, **ddb_put())[0] == 500
    assert call(proxy.url, **ddb_put())[0] == 200
    status, out = control("GET", "/_fault/log")
    assert [(e["action"], e["rule"], e["status"], e["upstream_status"]) for e in out["log"]] == [
        ("PutItem", 0, 500, None), ("PutItem", None, 200, 200)
    ]
    first = out["log"][0]
    assert set(first) >= {"seq", "time", "service", "action", "rule", "effect", "status", "upstream_status", "duration_ms"}
    assert [e["seq"] for e in control("GET", f"/_fault/log?since={first['seq']}")[1]["log"]] == [first["seq"] + 1]
    control("PUT", "/_fault/rules", {"rules": [{"status": 500}]})
    assert [r["status"] for r in control("GET", "/_fault/rules")[1]["rules"]] == [500], "PUT replaces"
    assert call(proxy.url, **sqs_send())[0] == 500
    assert control("DELETE", "/_fault/rules") == (200, {"rules": []})
    assert call(proxy.url, **sqs_send())[0] == 200
    assert control("DELETE", "/_fault/log") == (200, {"log": []})
    assert control("GET", "/_fault/log") == (200, {"log": []})
    assert control("GET", "/_fault/nothing")[0] == 404
    assert not any(s["path"].startswith("/_fault") for s in upstream.seen), "control calls are never forwarded"
    assert len(upstream.seen) == 2


def test_the_log_is_a_bounded_ring(upstream):
    with fp.FaultProxy(upstream.url, log_size=3) as p:
        for _ in range(5):
            call(p.url, **sqs_send())
        assert [e["seq"] for e in p.log()] == [3, 4, 5]


def test_upstream_down_answers_502(free_port):
    with fp.FaultProxy(f"http://127.0.0.1:{free_port()}") as p:
        status, _, body = call(p.url, **sqs_send())
        assert status == 502 and json.loads(body)["__type"] == "BadGateway"
        assert "upstream_error" in p.log()[0]


def test_stop_ends_kept_alive_connections_and_frees_the_port(upstream):
    p = fp.FaultProxy(upstream.url)
    url = p.start()
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        assert call(url, conn=conn, **sqs_send())[0] == 200
        p.stop()
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, OSError)):
            call(url, conn=conn, **sqs_send())
    finally:
        conn.close()
        p.stop()
    assert len(upstream.seen) == 1, "nothing is served after stop()"
    with fp.FaultProxy(upstream.url, port=int(port)) as again:  # the port is free again
        assert again.url == url


def test_cli_serves_and_stops_on_sigterm(upstream, free_port, tmp_path):
    script = stk.ROOT / "stack" / "fault_proxy.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--upstream" in out.stdout
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"action": "SendMessage", "status": 500}]))
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), "--upstream", upstream.url, "--port", str(port),
                             "--rules", str(rules)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_fault/health", timeout=1) as r:
                    assert json.loads(r.read())["rules"] == 1
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the CLI did not come up"
                time.sleep(0.1)
        assert call(url, **sqs_send())[0] == 500
        assert call(url, **ddb_put())[0] == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0
    assert f"fault proxy at http://127.0.0.1:{port}" in proc.stdout.read()


# --------------------------------------------------------------------------- (b) with MiniStack


@pytest.fixture(scope="module")
def faulty(start_stack):
    """MiniStack through `stack.up`, with the proxy in front of it for the functions."""
    with start_stack("fault-proxy", proxy=True) as (stack, proxy):
        yield stack, proxy


@pytest.fixture
def live(faulty):
    stack, proxy = faulty
    proxy.clear()
    yield stack, proxy
    proxy.clear()


def via(proxy: fp.FaultProxy, service: str, attempts: int = 3):
    import boto3
    from botocore.config import Config

    return boto3.client(
        service, endpoint_url=proxy.url, region_name=SETTINGS["region"], aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": attempts, "mode": "standard"}, connect_timeout=5, read_timeout=10),
    )


def bodies(stack: stk.Stack, url: str) -> list[str]:
    return [m["Body"] for m in stk.drain(stack.client("sqs"), url, wait=1)]


@pytest.fixture
def test_queue(live):
    stack, _ = live
    sqs = stack.client("sqs")
    url = sqs.create_queue(QueueName=f"fault-proxy-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


def test_functions_are_pointed_at_the_proxy_and_the_tools_are_not(live):
    stack, proxy = live
    for name in stk.PACKAGED:
        env = stack.client("lambda").get_function_configuration(FunctionName=name)["Environment"]["Variables"]
        assert env["AWS_ENDPOINT_URL"] == proxy.url
    assert stack.endpoint != proxy.url and stack.env()["AWS_ENDPOINT_URL"] == stack.endpoint


def test_a_throttled_send_message_is_retried_by_boto3(live, test_queue):
    stack, proxy = live
    proxy.set_rules([{"service": "sqs", "action": "SendMessage", "times": 1, "status": 400,
                      "error_code": "ThrottlingException", "message": "Rate exceeded"}])
    since = proxy.log()[-1]["seq"] if proxy.log() else 0
    out = via(proxy, "sqs").send_message(QueueUrl=test_queue, MessageBody="throttled once")
    assert out["ResponseMetadata"]["RetryAttempts"] == 1
    sends = [e for e in proxy.log(since) if e["action"] == "SendMessage"]
    assert [(e["rule"], e["status"], e["attempt"]) for e in sends] == [(0, 400, 1), (None, 200, 2)], sends
    assert sends[0]["invocation"] == sends[1]["invocation"], "one call, retried by the SDK"
    assert bodies(stack, test_queue) == ["throttled once"]


def test_a_lost_answer_still_leaves_the_message_in_the_queue(live, test_queue):
    from botocore.exceptions import ConnectionClosedError

    stack, proxy = live
    proxy.set_rules([{"service": "sqs", "action": "SendMessage", "drop_answer": True}])
    with pytest.raises(ConnectionClosedError):
        via(proxy, "sqs", attempts=1).send_message(QueueUrl=test_queue, MessageBody="answer lost")
    assert bodies(stack, test_queue) == ["answer lost"], "the call took effect although the client saw an error"

    # With retries, a lost answer is a duplicate: the client succeeds, the queue has it twice.
    proxy.set_rules([{"service": "sqs", "action": "SendMessage", "times": 1, "drop_answer": True}])
    via(proxy, "sqs").send_message(QueueUrl=test_queue, MessageBody="sent twice")
    assert bodies(stack, test_queue) == ["sent twice", "sent twice"]


def test_a_500_on_put_item_is_an_error(live):
    from botocore.exceptions import ClientError

    stack, proxy = live
    table = f"fault-proxy-{uuid.uuid4().hex[:8]}"
    direct = stack.client("dynamodb")
    direct.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    try:
        proxy.set_rules([{"service": "dynamodb", "action": "PutItem", "status": 500}])
        ddb = via(proxy, "dynamodb", attempts=2)
        with pytest.raises(ClientError) as e:
            ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})
        err = e.value.response
        assert (err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]) == ("InternalFailure", 500)
        assert err["ResponseMetadata"]["RetryAttempts"] == 1, "a 500 is transient: retried, then surfaced"
        assert "Item" not in direct.get_item(TableName=table, Key={"pk": {"S": "a"}})
        proxy.clear()
        ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})
        assert direct.get_item(TableName=table, Key={"pk": {"S": "a"}})["Item"]["pk"] == {"S": "a"}
    finally:
        direct.delete_table(TableName=table)


def test_the_functions_calls_go_through_the_proxy_and_retry_its_throttling(live):
    """The Rust SDK through the proxy: one job goes end to end while the first DynamoDB call
    about it is throttled; the SDK retries that call, so the job completes with no error.
    (Which DynamoDB and SNS actions the functions use is theirs to choose: any will do.)"""
    stack, proxy = live
    job = f"fp-{uuid.uuid4().hex[:8]}"
    proxy.set_rules([{"service": "dynamodb", "body_contains": job, "times": 1,
                      "status": 400, "error_code": "ThrottlingException"}])
    since = proxy.log()[-1]["seq"] if proxy.log() else 0
    put_jobs(stack, [onboarding(job)])
    (note,) = stk.await_end_states(stack, {job}, timeout=30, linger=0)
    assert (note["status"], note["errors"], note["attempts"]) == ("COMPLETED", [], 1), note
    (rule,) = proxy.rules()
    assert rule["hits"] == 1 and rule["matched"] >= 2, rule
    log = proxy.log(since)
    (throttled,) = [e for e in log if e["rule"] == 0]
    assert throttled["attempt"] == 1 and throttled["invocation"], throttled
    # The SDK's own retry (same invocation id, attempt 2), not the function trying again.
    retried = [(e["action"], e["status"]) for e in log if e.get("invocation") == throttled["invocation"] and e["attempt"] == 2]
    assert retried == [(throttled["action"], 200)], f"the throttled {throttled['action']} was not retried by the SDK: {log}"
    answered = {e["service"] for e in log if e["status"] == 200}
    assert {"dynamodb", "sqs", "sns"} <= answered, log
    assert all(e["action"] for e in log if e["service"] in ("dynamodb", "sqs", "sns")), "every action recognised"
