"""The request count's billing rules (bench/recorder.py) and the price model
(bench/cost.py), on hand-made requests: no emulator, no network but a loopback proxy
test against a fake upstream in this file."""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import cost  # noqa: E402
import recorder as rec  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402

KB = 1024


def s(text: str) -> dict:
    return {"S": text}


def form(pairs: dict[str, str]) -> dict[str, list[str]]:
    return parse_qs(urlencode(pairs))


# --------------------------------------------------------------------------- SQS, SNS, EventBridge


def test_an_sqs_message_is_billed_per_started_64_kb_chunk():
    assert rec.sqs_units("SendMessage", {"MessageBody": "x" * (70 * KB)}) == {"requests": 2}
    assert rec.sqs_units("SendMessage", {"MessageBody": "x" * (64 * KB)}) == {"requests": 1}
    assert rec.sqs_units("SendMessage", {"MessageBody": ""}) == {"requests": 1}


def test_message_attributes_count_toward_the_sqs_payload():
    body = {"MessageBody": "x" * (64 * KB - 10),
            "MessageAttributes": {"traceparent": {"DataType": "String", "StringValue": "00-abc"}}}
    assert rec.sqs_units("SendMessage", body) == {"requests": 2}


def test_an_sqs_batch_is_billed_on_its_whole_payload():
    entries = [{"Id": str(i), "MessageBody": "x" * (10 * KB)} for i in range(10)]
    assert rec.sqs_units("SendMessageBatch", {"Entries": entries}) == {"requests": 2}  # 100 KB
    assert rec.sqs_units("SendMessageBatch", {"Entries": entries[:6]}) == {"requests": 1}  # 60 KB


def test_a_receive_is_billed_on_what_it_returned():
    answer = {"Messages": [{"Body": "x" * (40 * KB)}, {"Body": "y" * (40 * KB)}]}
    assert rec.sqs_units("ReceiveMessage", {}, answer) == {"requests": 2}
    assert rec.sqs_units("ReceiveMessage", {}, {}) == {"requests": 1}


def test_sns_publish_and_publish_batch_are_billed_per_chunk_of_their_payload():
    assert rec.sns_units("Publish", form({"Action": "Publish", "Message": "x" * (70 * KB)})) == {"requests": 2}
    batch = {"Action": "PublishBatch"}
    for i in range(1, 11):
        batch[f"PublishBatchRequestEntries.member.{i}.Id"] = str(i)
        batch[f"PublishBatchRequestEntries.member.{i}.Message"] = "x" * (10 * KB)
    assert rec.sns_units("PublishBatch", form(batch)) == {"requests": 2}
    small = {k: v for k, v in batch.items() if not k.startswith(("PublishBatchRequestEntries.member.1",))}
    small["PublishBatchRequestEntries.member.1.Message"] = "tiny"
    small["PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Name"] = "status"
    small["PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Value.DataType"] = "String"
    small["PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Value.StringValue"] = "x" * (5 * KB)
    assert rec.sns_units("PublishBatch", form(small)) == {"requests": 2}  # 9 x 10 KB + 5 KB > 64 KB


def test_put_events_bills_each_accepted_entry_by_its_own_chunks():
    entries = [
        {"Source": "jobs", "DetailType": "JobEvent", "Detail": "x" * (70 * KB)},  # 2 chunks
        {"Source": "jobs", "DetailType": "JobEvent", "Detail": "{}"},  # 1
        {"Source": "jobs", "DetailType": "JobEvent", "Detail": "refused"},  # failed: not billed
    ]
    answer = {"FailedEntryCount": 1, "Entries": [{"EventId": "a"}, {"EventId": "b"}, {"ErrorCode": "MalformedDetail"}]}
    assert rec.events_units("PutEvents", {"Entries": entries}, answer) == {"events": 3, "deliveries": 3, "entries": 2}


def test_an_event_entry_is_sized_as_eventbridge_sizes_it():
    entry = {"Time": "2026-12-01T00:00:00Z", "Source": "jobs", "DetailType": "JobEvent", "Detail": "{}",
             "Resources": ["arn:x"]}
    assert rec.event_entry_bytes(entry) == 14 + 4 + 8 + 2 + 5


# --------------------------------------------------------------------------- DynamoDB


def test_dynamodb_values_are_sized_by_the_documented_rules():
    assert rec.value_bytes(s("héllo")) == 6
    assert rec.value_bytes({"N": "12345"}) == 4  # 5 significant digits: 3 bytes, plus 1
    assert rec.value_bytes({"N": "1000"}) == 2  # trailing zeroes trimmed
    assert rec.value_bytes({"BOOL": True}) == 1
    assert rec.value_bytes({"M": {"a": s("xy")}}) == 3 + 1 + 1 + 2
    assert rec.value_bytes({"L": [s("x"), {"NULL": True}]}) == 3 + (1 + 1) + (1 + 1)
    assert rec.item_bytes({"pk": s("ingester#1"), "n": {"N": "7"}}) == (2 + 10) + (1 + 2)


def insert(pk: str, size: int) -> dict:
    """A claim-like INSERT statement whose item is `size` bytes."""
    pad = size - (2 + len(pk)) - len("detail")
    return {"Statement": "INSERT INTO \"jobs\" VALUE {'pk': ?, 'detail': ?}", "Parameters": [s(pk), s("x" * pad)]}


def test_a_batch_execute_statement_of_ten_1_5_kb_inserts_is_20_write_units():
    body = {"Statements": [insert(f"ingester#{i}", 1536) for i in range(10)]}
    answer = {"Responses": [{"TableName": "jobs"} for _ in range(10)]}
    assert rec.dynamodb_units("BatchExecuteStatement", body, answer, True, rec.Shadow()) == {"wru": 20}


def test_a_transact_write_items_of_two_items_costs_twice_their_units():
    body = {"TransactItems": [
        {"Put": {"TableName": "jobs", "Item": {"pk": s("processor#1"), "progress": s("DONE")}}},
        {"Update": {"TableName": "jobs", "Key": {"pk": s("ingester#1")}, "UpdateExpression": "SET progress = :p",
                    "ExpressionAttributeValues": {":p": s("FAILED")}}},
    ]}
    assert rec.dynamodb_units("TransactWriteItems", body, {}, True, rec.Shadow()) == {"wru": 4}
    single = {"TableName": "jobs", "Item": {"pk": s("processor#2"), "progress": s("DONE")}}
    assert rec.dynamodb_units("PutItem", single, {}, True, rec.Shadow()) == {"wru": 1}


def test_an_update_is_billed_on_the_larger_of_the_item_before_and_after():
    shadow = rec.Shadow()
    rec.dynamodb_units("BatchExecuteStatement", {"Statements": [insert("ingester#1", 2500)]}, {"Responses": [{}]},
                       True, shadow)
    small_update = {"Statements": [{
        "Statement": 'UPDATE "jobs" SET "announced" = ? SET "updated_ms" = ? WHERE "pk" = ?',
        "Parameters": [{"BOOL": True}, {"N": "1764547200000"}, s("ingester#1")],
    }]}
    # 2,500 bytes before, a little more after: 3 units, not the 1 the update's own values weigh.
    assert rec.dynamodb_units("BatchExecuteStatement", small_update, {"Responses": [{}]}, True, shadow) == {"wru": 3}
    # An UpdateItem that removes the big attribute is still billed on the item before it.
    remove = {"TableName": "jobs", "Key": {"pk": s("ingester#1")}, "UpdateExpression": "REMOVE detail"}
    assert rec.dynamodb_units("UpdateItem", remove, {}, True, shadow) == {"wru": 3}
    assert rec.dynamodb_units("UpdateItem", remove, {}, True, shadow) == {"wru": 1}


def test_a_refused_conditional_write_is_billed_and_leaves_the_item_as_it_was():
    shadow = rec.Shadow()
    rec.dynamodb_units("BatchExecuteStatement", {"Statements": [insert("ingester#1", 3000)]}, {"Responses": [{}]},
                       True, shadow)
    again = {"Statements": [insert("ingester#1", 100)]}
    refused = {"Responses": [{"Error": {"Code": "DuplicateItem"}}]}
    assert rec.dynamodb_units("BatchExecuteStatement", again, refused, True, shadow) == {"wru": 3}
    assert sum(shadow.items[shadow.key_of("jobs", {"pk": s("ingester#1")})].values()) == 3000


def test_a_keys_only_index_is_written_when_an_item_enters_leaves_or_moves_in_it():
    """The outbox index's bill, from the store's own statements: a claim writes
    `lease_until` but no `outbox` (not in the index), the end adds `outbox` (1), the
    mark removes it (1); a take that moves an entry's `lease_until` deletes and puts
    it (2); a refused write, or one of attributes outside the index, costs it nothing."""
    shadow = rec.Shadow(indexes={"jobs": [("outbox", "lease_until")]})

    def index_units(action, body, answer=None, ok=True):
        return rec.dynamodb_units(action, body, answer or {"Responses": [{}]}, ok, shadow).get("index_wru", 0)

    claim = {"Statements": [{"Statement": "INSERT INTO \"jobs\" VALUE {'pk': ?, 'lease_until': ?}",
                             "Parameters": [s("processor#1"), {"N": "100"}]}]}
    end = {"Statements": [{
        "Statement": 'UPDATE "jobs" SET "progress" = ? SET "outbox" = ? WHERE "pk" = ? AND "attempt" = ?',
        "Parameters": [s("COMPLETED"), s("7"), s("processor#1"), {"N": "1"}]}]}
    mark = {"Statements": [{
        "Statement": 'UPDATE "jobs" SET "announced" = ? REMOVE "outbox" WHERE "pk" = ?',
        "Parameters": [{"BOOL": True}, s("processor#1")]}]}
    take = {"TableName": "jobs", "Key": {"pk": s("processor#1")},
            "UpdateExpression": "SET lease_until = :until, holder = :h",
            "ExpressionAttributeValues": {":until": {"N": "200"}, ":h": s("relay:r1")}}
    other = {"TableName": "jobs", "Key": {"pk": s("processor#1")}, "UpdateExpression": "SET detail = :d",
             "ExpressionAttributeValues": {":d": s("x")}}
    assert index_units("BatchExecuteStatement", claim) == 0
    assert index_units("BatchExecuteStatement", end) == 1
    assert index_units("UpdateItem", other, {}) == 0
    assert index_units("UpdateItem", take, {}, ok=False) == 0, "a refused take changes nothing"
    assert index_units("UpdateItem", take, {}) == 2
    assert index_units("BatchExecuteStatement", mark) == 1
    assert index_units("UpdateItem", take, {}) == 0, "out of the index, its lease is no index key"
    # A table without indexes is billed as before.
    assert "index_wru" not in rec.dynamodb_units("BatchExecuteStatement", end, {"Responses": [{}]}, True, rec.Shadow())


def test_reads_are_billed_per_4_kb_and_half_when_eventually_consistent():
    item = {"Item": {"pk": s("a"), "blob": s("x" * (5 * KB))}}
    assert rec.dynamodb_units("GetItem", {"ConsistentRead": True}, item, True, rec.Shadow()) == {"rru": 2}
    assert rec.dynamodb_units("GetItem", {}, item, True, rec.Shadow()) == {"rru": 1.0}
    assert rec.dynamodb_units("GetItem", {"ConsistentRead": True}, {}, True, rec.Shadow()) == {"rru": 1}


def test_update_expressions_name_what_they_set_and_remove():
    sets, removes = rec.parse_update_expression(
        "SET #p = :p, lease_until = if_not_exists(lease_until, :z) REMOVE holder, claim_token",
        {"#p": "progress"}, {":p": s("DONE"), ":z": {"N": "0"}},
    )
    assert sets == {"progress": 8 + 4, "lease_until": 11 + 2}
    assert removes == ["holder", "claim_token"]


# --------------------------------------------------------------------------- the recorder


def test_the_recorder_counts_calls_units_and_messages_by_queue():
    r = rec.Recorder(event_target="ingester-queue")
    body = json.dumps({"QueueUrl": "http://127.0.0.1:4566/000000000000/jobs-todo",
                       "Entries": [{"Id": "0", "MessageBody": "a"}, {"Id": "1", "MessageBody": "b"}]}).encode()
    r.observe("sqs", "SendMessageBatch", body, {}, 200, b'{"Successful": [], "Failed": [{"Id": "1"}]}')
    events = json.dumps({"Entries": [{"Source": "jobs", "DetailType": "JobEvent", "Detail": "{}"}] * 3}).encode()
    r.observe("events", "PutEvents", events, {}, 200, json.dumps({"Entries": [{"EventId": "e"}] * 3}).encode())
    snap = r.snapshot()
    assert snap["calls"] == {("sqs", "SendMessageBatch"): 1, ("events", "PutEvents"): 1,
                             ("sqs", "SendMessage (EventBridge target)"): 3}
    assert snap["messages"] == {"jobs-todo": 1, "ingester-queue": 3}
    assert snap["units"][("events", "PutEvents", "events")] == 3
    assert snap["units"][("sqs", "SendMessage (EventBridge target)", "requests")] == 3


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        payload = b'{"Item": {"pk": {"S": "' + b"x" * 5000 + b'"}}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def test_the_fault_proxy_hands_each_forwarded_call_and_its_answer_to_its_observer():
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    r = rec.Recorder()
    proxy = FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}", observer=r)
    try:
        url = proxy.start()
        req = urllib.request.Request(url + "/", data=json.dumps({"ConsistentRead": True}).encode(), method="POST",
                                     headers={"X-Amz-Target": "DynamoDB_20120810.GetItem",
                                              "Content-Type": "application/x-amz-json-1.0"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    finally:
        proxy.stop()
        upstream.shutdown()
        upstream.server_close()
    assert r.snapshot()["units"] == {("dynamodb", "GetItem", "rru"): 2}


# --------------------------------------------------------------------------- the price model


REPORT = "REPORT RequestId: {id}\tDuration: {ms} ms\tBilled Duration: {ms} ms\tMemory Size: 128 MB\tMax Memory Used: 10 MB"


def test_lambda_usage_reads_invocations_gb_s_and_log_bytes_from_the_log_group():
    lines = ["START RequestId: a Version: $LATEST", '{"msg": "job forwarded"}', "END RequestId: a",
             REPORT.format(id="a", ms=100), REPORT.format(id="b", ms=0)]
    u = cost.lambda_usage(lines, 128)
    assert u["invocations"] == 2
    assert u["gb_s"] == pytest.approx((100 + 1) / 1000 * 128 / 1024)  # at least 1 ms billed
    assert u["function_bytes"] == len(lines[1]) + 26
    assert u["platform_bytes"] == sum(len(x) + 26 for x in lines) - u["function_bytes"]


def a_run(batch_records: int = 10) -> cost.Measured:
    """100 jobs, 200 records in 20 invocations (10 per invocation) of 0.1 GB-s each, 300 WRU,
    100 events, 20 SendMessageBatch requests."""
    m = cost.Measured(label="pipeline", jobs=100, records=200)
    m.units = {("dynamodb", "BatchExecuteStatement", "wru"): 300, ("events", "PutEvents", "events"): 100,
               ("sqs", "SendMessageBatch", "requests"): 20}
    cost.add_lambda(m, "ingester", {"invocations": 20, "gb_s": 2.0, "platform_bytes": 0, "function_bytes": 0})
    return m


def test_cost_per_million_prices_each_unit_from_the_table():
    m = a_run()
    assert m.batch == 10
    c = cost.cost_per_million(m, 10, "arm64")
    # Per job: 3 WRU, 1 event, 0.2 SendMessageBatch + 0.2 receives + 0.2 deletes, 0.2 invocations of 0.1 GB-s.
    assert c["dynamodb"] == pytest.approx(3 * 0.625)
    assert c["events"] == pytest.approx(1.00)
    assert c["sqs"] == pytest.approx(0.6 * 0.40)
    assert c["lambda"] == pytest.approx(0.2 * 0.20 + 0.02 * 1e6 * 0.0000133334)
    assert c["total"] == pytest.approx(sum(v for k, v in c.items() if k != "total"))


def test_a_smaller_batch_scales_only_what_is_paid_per_invocation():
    m = a_run()
    at10, at1 = cost.cost_per_million(m, 10, "x86_64"), cost.cost_per_million(m, 1, "x86_64")
    assert at1["lambda"] == pytest.approx(10 * at10["lambda"])
    assert at1["sqs"] == pytest.approx(10 * at10["sqs"])
    assert at1["dynamodb"] == at10["dynamodb"] and at1["events"] == at10["events"]


def test_arm64_is_cheaper_only_in_gb_s():
    m = a_run()
    arm, x86 = cost.cost_per_million(m, 5, "arm64"), cost.cost_per_million(m, 5, "x86_64")
    gb_s = cost.units_per_job(m, 5)[("lambda", "Invoke", "gb_s")] * 1e6
    assert x86["lambda"] - arm["lambda"] == pytest.approx(gb_s * (0.0000166667 - 0.0000133334))
    assert {k: v for k, v in arm.items() if k not in ("lambda", "total")} == \
           {k: v for k, v in x86.items() if k not in ("lambda", "total")}


def test_a_unit_without_a_price_is_an_error_not_free():
    m = a_run()
    m.units[("kinesis", "PutRecord", "payload_units")] = 1
    with pytest.raises(KeyError, match="kinesis"):
        cost.cost_per_million(m, 10, "arm64")


def test_the_report_shows_both_runs_per_job_and_the_ratio():
    pipeline, floor = a_run(), a_run()
    floor.label = "floor"
    floor.units = {k: v for k, v in floor.units.items() if k[0] != "dynamodb"}
    text = cost.report(pipeline, floor)
    assert "BatchExecuteStatement" in text and "3.000 WRU" in text
    assert "ReceiveMessage (event source mapping) *" in text
    ratio_rows = [line for line in text.splitlines() if line.startswith(("10 ", "1 "))]
    assert len(ratio_rows) == 4 and all(line.rstrip().endswith("x") for line in ratio_rows)
    assert "a month for the pipeline" in text
