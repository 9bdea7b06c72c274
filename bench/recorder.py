"""Every AWS request of a run, counted by service and action, with the units AWS bills
for it, derived from the request's body (and, for reads, the answer's).

`Recorder` is an observer for stack/fault_proxy.py (`FaultProxy(upstream, observer=r)`):
the proxy forwards each call unchanged and hands it here once the emulator answered.
The functions and the generator each get a proxy of their own, so the counts say who
called. What each request is billed, by AWS's published rules (pricing pages of SQS,
SNS, EventBridge and DynamoDB; "Item sizes and formats" and "Read/write capacity mode"
in the DynamoDB developer guide):

- SQS and SNS: one request per started 64 KB chunk of the call's whole payload (message
  bodies plus message attribute names, types and values, summed over a batch's entries);
  a `ReceiveMessage` by the size of what it returned; any other call is one request.
- EventBridge `PutEvents`: each accepted entry, per started 64 KB chunk of its size
  (Time 14 bytes, Source, DetailType, Detail, Resources). The rule's delivery of the
  entry to its SQS target is one SQS `SendMessage` of the same chunks (unit `deliveries`).
- DynamoDB writes: per item, one write unit per started 1 KB of the larger of the item
  before and after the write, at least 1; items of a `BatchExecuteStatement`,
  `BatchWriteItem` or transaction each count; a `TransactWriteItems` item counts twice. A
  conditional write that is refused still consumes its units. The item before a write is
  known from the writes seen earlier in the run (`Shadow`); an `UPDATE` of an item not seen
  is sized by its key and the attributes it sets.
- DynamoDB global secondary indexes (keys only, as the outbox index is): an applied write
  that puts an item into an index, or takes it out, is one more write unit; one that
  changes the item's index key is two (the entry is deleted and put again); any other
  write leaves a keys-only index alone (unit `index_wru`). The index keys come from the
  `indexes` the `Shadow` is given, and their values from the writes seen.
- DynamoDB reads: per item, one read unit per started 4 KB of what came back (at least
  one), half for an eventually consistent read, twice in a transaction; a `Query` or
  `Scan` by the total size it returned.

Not seen here, because the emulator makes these calls inside itself: the event source
mappings' receives and deletes, the rule's deliveries (counted from `PutEvents`, above),
and SNS's deliveries to SQS subscribers (free on AWS). bench/cost.py adds the first from
the invocation count and says so.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
from collections import Counter, defaultdict
from urllib.parse import parse_qs

CHUNK = 64 * 1024  # SQS, SNS and EventBridge bill per started 64 KB chunk
WRITE_UNIT = 1024
READ_UNIT = 4096
EVENT_TIME_BYTES = 14  # a PutEvents entry's Time field, when given, counts as 14 bytes


def chunks(payload_bytes: int) -> int:
    """Billed requests (or events) for a payload: one per started 64 KB, at least one."""
    return max(1, math.ceil(payload_bytes / CHUNK))


def utf8(s) -> int:
    return len(str(s).encode("utf-8"))


# --------------------------------------------------------------------------- SQS


def _sqs_attributes_bytes(attrs: dict | None) -> int:
    """Message attributes count toward the payload: name, data type and value."""
    total = 0
    for name, value in (attrs or {}).items():
        total += utf8(name) + utf8(value.get("DataType", ""))
        if "StringValue" in value:
            total += utf8(value["StringValue"])
        if "BinaryValue" in value:
            total += len(base64.b64decode(value["BinaryValue"]))
    return total


def sqs_message_bytes(message: dict) -> int:
    """One SQS message's billed payload (a request entry, or a received message)."""
    return utf8(message.get("MessageBody", message.get("Body", ""))) + _sqs_attributes_bytes(
        message.get("MessageAttributes")
    )


def sqs_units(action: str, body: dict, answer: dict | None = None) -> dict[str, float]:
    """Billed SQS requests of one call of the JSON protocol (`AmazonSQS.<action>`)."""
    if action == "SendMessage":
        return {"requests": chunks(sqs_message_bytes(body))}
    if action == "SendMessageBatch":
        return {"requests": chunks(sum(sqs_message_bytes(e) for e in body.get("Entries", [])))}
    if action == "ReceiveMessage":
        received = (answer or {}).get("Messages", [])
        return {"requests": chunks(sum(sqs_message_bytes(m) for m in received))}
    return {"requests": 1}


# --------------------------------------------------------------------------- SNS


def _form_entries(form: dict[str, list[str]], prefix: str) -> dict[str, dict[str, str]]:
    """Query-protocol members under `prefix` (e.g. `PublishBatchRequestEntries.member.`),
    by member number, each as {rest of the key: value}."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for key, values in form.items():
        if key.startswith(prefix):
            number, _, rest = key[len(prefix):].partition(".")
            out[number][rest] = values[0]
    return out


def _sns_message_bytes(fields: dict[str, str]) -> int:
    """An SNS message's payload: the message, plus each attribute's name, type and value
    (query protocol: `MessageAttributes.entry.N.Name`, `.Value.DataType`, `.Value.StringValue`)."""
    total = utf8(fields.get("Message", ""))
    for key, value in fields.items():
        if key.startswith("MessageAttributes.entry.") and key.endswith(
            (".Name", ".Value.DataType", ".Value.StringValue")
        ):
            total += utf8(value)
        elif key.startswith("MessageAttributes.entry.") and key.endswith(".Value.BinaryValue"):
            total += len(base64.b64decode(value))
    return total


def sns_units(action: str, form: dict[str, list[str]]) -> dict[str, float]:
    """Billed SNS requests of one call of the query protocol (`Action=<action>`). A
    `PublishBatch` is billed like one publish of its aggregate payload: the SNS developer
    guide's "Amazon SNS message batching" says batches cut the cost "by a factor of up to 10"."""
    if action == "Publish":
        return {"requests": chunks(_sns_message_bytes({k: v[0] for k, v in form.items()}))}
    if action == "PublishBatch":
        entries = _form_entries(form, "PublishBatchRequestEntries.member.")
        return {"requests": chunks(sum(_sns_message_bytes(e) for e in entries.values()))}
    return {"requests": 1}


# --------------------------------------------------------------------------- EventBridge


def event_entry_bytes(entry: dict) -> int:
    """A PutEvents entry's size as EventBridge computes it for quotas and billing."""
    size = EVENT_TIME_BYTES if entry.get("Time") else 0
    for field in ("Source", "DetailType", "Detail"):
        if entry.get(field):
            size += utf8(entry[field])
    return size + sum(utf8(r) for r in entry.get("Resources") or [])


def events_units(action: str, body: dict, answer: dict | None = None) -> dict[str, float]:
    """`events`: billed custom events (accepted entries, per 64 KB chunk); `deliveries`:
    the same chunks delivered to the rule's SQS target (one SendMessage each)."""
    if action != "PutEvents":
        return {}
    entries = body.get("Entries", [])
    results = (answer or {}).get("Entries")
    accepted = [e for i, e in enumerate(entries)
                if results is None or (i < len(results) and "EventId" in results[i])]
    billed = sum(chunks(event_entry_bytes(e)) for e in accepted)
    return {"events": billed, "deliveries": billed, "entries": len(accepted)}


# --------------------------------------------------------------------------- DynamoDB


def _number_bytes(text: str) -> int:
    """About 1 byte per two significant digits, plus 1 (leading and trailing zeroes trimmed)."""
    digits = re.sub(r"[^0-9]", "", text.split("e")[0].split("E")[0]).strip("0") or "0"
    return math.ceil(len(digits) / 2) + 1 + (1 if text.startswith("-") else 0)


def value_bytes(value: dict) -> int:
    """The size of one DynamoDB attribute value in the wire's JSON shape ({"S": ...})."""
    (kind, v), = value.items()
    if kind == "S":
        return utf8(v)
    if kind == "N":
        return _number_bytes(v)
    if kind == "B":
        return len(base64.b64decode(v))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(utf8(x) for x in v)
    if kind == "NS":
        return sum(_number_bytes(x) for x in v)
    if kind == "BS":
        return sum(len(base64.b64decode(x)) for x in v)
    if kind == "L":
        return 3 + sum(1 + value_bytes(x) for x in v)
    if kind == "M":
        return 3 + sum(1 + utf8(k) + value_bytes(x) for k, x in v.items())
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def attribute_sizes(item: dict) -> dict[str, int]:
    """Each attribute's share of an item's size: its name plus its value."""
    return {name: utf8(name) + value_bytes(v) for name, v in item.items()}


def item_bytes(item: dict) -> int:
    return sum(attribute_sizes(item).values())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT))
    return units if consistent else units / 2


class Shadow:
    """The size of each item this run wrote, attribute by attribute, by (table, key):
    what a later write of the item is billed on ("the larger of before and after"); and
    the values of its index key attributes, which say what a write costs each index.
    `indexes`: per table, the key attributes of each keys-only global secondary index."""

    def __init__(self, key_names: dict[str, list[str]] | None = None, default_key: tuple[str, ...] = ("pk",),
                 indexes: dict[str, list[tuple[str, ...]]] | None = None):
        self.key_names = key_names or {}
        self.default_key = list(default_key)
        self.items: dict[tuple[str, str], dict[str, int]] = {}
        self.indexes = indexes or {}
        self.index_values: dict[tuple[str, str], dict[str, str]] = {}
        self.index_writes = 0

    def take_index_writes(self) -> int:
        """The index write units of the writes since the last call."""
        n, self.index_writes = self.index_writes, 0
        return n

    def _reindex(self, table: str, key: tuple[str, str], changed: dict[str, dict | None]) -> None:
        """Applies an applied write's new values of index key attributes (None: removed)."""
        attrs = {a for index in self.indexes.get(table, []) for a in index}
        if not attrs:
            return
        before = self.index_values.get(key, {})
        after = dict(before)
        for name, value in changed.items():
            if name not in attrs:
                continue
            if value is None:
                after.pop(name, None)
            else:
                after[name] = json.dumps(value, sort_keys=True)
        for index in self.indexes[table]:
            old = tuple(before[a] for a in index) if all(a in before for a in index) else None
            new = tuple(after[a] for a in index) if all(a in after for a in index) else None
            if old != new:
                self.index_writes += 2 if old is not None and new is not None else 1
        self.index_values[key] = after

    def key_of(self, table: str, item: dict) -> tuple[str, str]:
        names = self.key_names.get(table, self.default_key)
        return table, json.dumps({k: item.get(k) for k in names}, sort_keys=True)

    def put(self, table: str, item: dict, applied: bool) -> int:
        """Billed size of a whole-item write; remembers the item if it was applied."""
        key = self.key_of(table, item)
        before = sum(self.items.get(key, {}).values())
        after = attribute_sizes(item)
        if applied:
            self.items[key] = after
            gone = {a: None for a in self.index_values.get(key, {})}
            self._reindex(table, key, {**gone, **item})
        return max(before, sum(after.values()))

    def update(self, table: str, key_item: dict, sets: dict[str, int], removes: list[str], applied: bool,
               values: dict[str, dict] | None = None) -> int:
        """Billed size of an update that sets attributes (name -> size) and removes others;
        `values`: the values it sets, where known (name -> attribute value)."""
        key = self.key_of(table, key_item)
        known = self.items.get(key)
        before_attrs = dict(known) if known is not None else attribute_sizes(key_item)
        after_attrs = {k: v for k, v in before_attrs.items() if k not in removes}
        after_attrs.update(sets)
        if applied:
            self.items[key] = after_attrs
            self._reindex(table, key, {**(values or {}), **{r: None for r in removes}})
        before = sum(known.values()) if known is not None else 0
        return max(before, sum(after_attrs.values()))

    def delete(self, table: str, key_item: dict, applied: bool) -> int:
        key = self.key_of(table, key_item)
        before = sum(self.items.get(key, {}).values()) or item_bytes(key_item)
        if applied:
            self.items.pop(key, None)
            self._reindex(table, key, {a: None for a in self.index_values.get(key, {})})
        return before


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Splits at `sep` outside parentheses and brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in parts + [current] if p.strip()]


def _top_name(path: str, names: dict[str, str]) -> str:
    head = re.split(r"[.\[]", path.strip(), maxsplit=1)[0].strip().strip('"')
    return names.get(head, head)


def parse_update_expression(expr: str, names: dict[str, str], values: dict[str, dict]) -> tuple[dict[str, int], list[str]]:
    """(attribute -> size it will have, attributes removed) of an UpdateExpression. A
    value built by a function or arithmetic is sized by the placeholders it uses."""
    sets: dict[str, int] = {}
    removes: list[str] = []
    clauses = re.split(r"\b(SET|REMOVE|ADD|DELETE)\b", expr, flags=re.IGNORECASE)
    for keyword, body in zip(clauses[1::2], clauses[2::2]):
        keyword = keyword.upper()
        for part in _split_top(body):
            if keyword == "REMOVE":
                removes.append(_top_name(part, names))
                continue
            if keyword == "SET":
                target, _, rhs = part.partition("=")
            else:  # ADD path value / DELETE path value
                target, _, rhs = part.partition(" ")
            if keyword == "DELETE":
                continue
            name = _top_name(target, names)
            size = sum(value_bytes(values[p]) for p in re.findall(r":\w+", rhs) if p in values)
            sets[name] = utf8(name) + size
    return sets, removes


def update_values(expr: str, names: dict[str, str], values: dict[str, dict]) -> dict[str, dict]:
    """The values an UpdateExpression's plain `SET name = :value` assignments write."""
    out = {}
    clauses = re.split(r"\b(SET|REMOVE|ADD|DELETE)\b", expr, flags=re.IGNORECASE)
    for keyword, body in zip(clauses[1::2], clauses[2::2]):
        if keyword.upper() != "SET":
            continue
        for part in _split_top(body):
            target, _, rhs = part.partition("=")
            if re.fullmatch(r"\s*:\w+\s*", rhs) and rhs.strip() in values:
                out[_top_name(target, names)] = values[rhs.strip()]
    return out


INSERT = re.compile(r'^\s*INSERT\s+INTO\s+"?([^"\s]+)"?\s+VALUE\s*\{(.*)\}\s*$', re.IGNORECASE | re.DOTALL)
UPDATE = re.compile(r'^\s*UPDATE\s+"?([^"\s]+)"?\s+(.*?)\s+WHERE\s+(.*)$', re.IGNORECASE | re.DOTALL)
DELETE = re.compile(r'^\s*DELETE\s+FROM\s+"?([^"\s]+)"?\s+WHERE\s+(.*)$', re.IGNORECASE | re.DOTALL)
SELECT = re.compile(r'^\s*SELECT\s', re.IGNORECASE)
ASSIGN = re.compile(r'"?([A-Za-z_][\w]*)"?\s*=\s*\?')


def partiql_write(statement: str, params: list[dict], shadow: Shadow, applied: bool) -> tuple[str, int] | None:
    """("write", billed size) of an INSERT, UPDATE or DELETE statement; ("read", 0) of a
    SELECT (sized from its answer); None if unrecognised."""
    if m := INSERT.match(statement):
        table, body = m.group(1), m.group(2)
        names = re.findall(r"'([^']+)'\s*:\s*\?", body)
        item = dict(zip(names, params))
        return "write", shadow.put(table, item, applied)
    if m := UPDATE.match(statement):
        table, set_part, where = m.group(1), m.group(2), m.group(3)
        set_params = len(re.findall(r"\?", set_part))
        sets, values = {}, {}
        for i, am in enumerate(ASSIGN.finditer(set_part)):
            sets[am.group(1)] = utf8(am.group(1)) + value_bytes(params[i])
            values[am.group(1)] = params[i]
        removes = re.findall(r'\bREMOVE\s+"?([A-Za-z_]\w*)"?', set_part, flags=re.IGNORECASE)
        keys = shadow.key_names.get(table, shadow.default_key)
        where_values = {am.group(1): params[set_params + i] for i, am in enumerate(re.finditer(r'"?([A-Za-z_]\w*)"?\s*[=<>!]+\s*\?', where))}
        key_item = {k: where_values[k] for k in keys if k in where_values}
        return "write", shadow.update(table, key_item, sets, removes, applied, values)
    if m := DELETE.match(statement):
        table, where = m.group(1), m.group(2)
        values = {am.group(1): params[i] for i, am in enumerate(ASSIGN.finditer(where))}
        keys = shadow.key_names.get(table, shadow.default_key)
        return "write", shadow.delete(table, {k: values[k] for k in keys if k in values}, applied)
    if SELECT.match(statement):
        return "read", 0
    return None


def _write_item_units(op: str, spec: dict, shadow: Shadow, applied: bool) -> int:
    """Write units of one item of a write call (PutItem, UpdateItem, DeleteItem, or an
    item of TransactWriteItems / BatchWriteItem)."""
    table = spec.get("TableName", "")
    if op == "Put":
        return write_units(shadow.put(table, spec["Item"], applied))
    if op == "Update":
        expr, names = spec.get("UpdateExpression", ""), spec.get("ExpressionAttributeNames") or {}
        values = spec.get("ExpressionAttributeValues") or {}
        sets, removes = parse_update_expression(expr, names, values)
        written = update_values(expr, names, values)
        return write_units(shadow.update(table, spec["Key"], sets, removes, applied, written))
    if op == "Delete":
        return write_units(shadow.delete(table, spec["Key"], applied))
    if op == "ConditionCheck":
        key = shadow.key_of(table, spec["Key"])
        return write_units(sum(shadow.items.get(key, {}).values()))
    raise ValueError(f"unknown write {op!r}")


def dynamodb_units(action: str, body: dict, answer: dict | None, ok: bool, shadow: Shadow) -> dict[str, float]:
    """`wru` and `rru` (on-demand write and read request units) of one DynamoDB call.
    `ok`: the call succeeded (HTTP 200); a refused conditional write is billed all the
    same, but leaves the item as it was."""
    answer = answer or {}
    wru = rru = 0.0
    if action in ("PutItem", "UpdateItem", "DeleteItem"):
        wru = _write_item_units(action.removesuffix("Item"), body, shadow, ok)
    elif action == "TransactWriteItems":
        for item in body.get("TransactItems", []):
            (op, spec), = item.items()
            wru += 2 * _write_item_units(op, spec, shadow, ok)
    elif action == "BatchWriteItem":
        unprocessed = answer.get("UnprocessedItems") or {}
        for table, requests in body.get("RequestItems", {}).items():
            skipped = len(unprocessed.get(table, []))
            for req in requests[: len(requests) - skipped]:
                (op, spec), = req.items()
                op = op.removesuffix("Request")
                wru += _write_item_units(op, {"TableName": table, **spec}, shadow, ok)
    elif action in ("BatchExecuteStatement", "ExecuteStatement"):
        statements = body.get("Statements") if action == "BatchExecuteStatement" else [body]
        responses = answer.get("Responses") if action == "BatchExecuteStatement" else [answer]
        for i, st in enumerate(statements or []):
            resp = (responses or [])[i] if responses and i < len(responses) else {}
            applied = ok and not resp.get("Error")
            kind = partiql_write(st.get("Statement", ""), st.get("Parameters") or [], shadow, applied)
            if kind is None:
                continue
            if kind[0] == "write":
                wru += write_units(kind[1])
            else:
                items = resp.get("Items") or ([resp["Item"]] if resp.get("Item") else [])
                rru += read_units(sum(item_bytes(x) for x in items), bool(st.get("ConsistentRead")))
    elif action == "GetItem":
        rru = read_units(item_bytes(answer.get("Item") or {}), bool(body.get("ConsistentRead")))
    elif action == "BatchGetItem":
        for table, items in (answer.get("Responses") or {}).items():
            consistent = bool(body.get("RequestItems", {}).get(table, {}).get("ConsistentRead"))
            rru += sum(read_units(item_bytes(x), consistent) for x in items)
    elif action == "TransactGetItems":
        rru = sum(2 * read_units(item_bytes(r.get("Item") or {}), True) for r in answer.get("Responses") or [])
    elif action in ("Query", "Scan"):
        rru = read_units(sum(item_bytes(x) for x in answer.get("Items") or []), bool(body.get("ConsistentRead")))
    out = {}
    if wru:
        out["wru"] = wru
    if index_wru := shadow.take_index_writes():
        out["index_wru"] = index_wru
    if rru:
        out["rru"] = rru
    return out


# --------------------------------------------------------------------------- the recorder


def _json(data: bytes) -> dict:
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _queue_name(url: str | None) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


class Recorder:
    """Counts what it is handed by a FaultProxy: `calls[(service, action)]` (HTTP
    requests, an SDK's retries included), `units[(service, action, unit)]` (billed), and
    `messages[queue]`, how many messages were sent to each queue (entries of
    SendMessage(Batch), and EventBridge's deliveries to `event_target`)."""

    def __init__(self, key_names: dict[str, list[str]] | None = None, event_target: str = "ingester-queue",
                 indexes: dict[str, list[tuple[str, ...]]] | None = None):
        self.lock = threading.Lock()
        self.calls: Counter = Counter()
        self.units: dict[tuple[str, str, str], float] = defaultdict(float)
        self.messages: Counter = Counter()
        self.shadow = Shadow(key_names, indexes=indexes)
        self.event_target = event_target

    def __call__(self, req, status: int, answer: bytes) -> None:
        self.observe(req.service or "?", req.action or req.method, req.body, req.form, status, answer)

    def observe(self, service: str, action: str, body: bytes, form: dict | None, status: int, answer: bytes) -> None:
        ok = status == 200
        with self.lock:
            self.calls[(service, action)] += 1
            if service == "sqs":
                doc = _json(body) if not form else {k: v[0] for k, v in form.items()}
                units = sqs_units(action, doc, _json(answer))
                if ok and action == "SendMessage":
                    self.messages[_queue_name(doc.get("QueueUrl"))] += 1
                if ok and action == "SendMessageBatch":
                    failed = len(_json(answer).get("Failed") or [])
                    self.messages[_queue_name(doc.get("QueueUrl"))] += len(doc.get("Entries", [])) - failed
            elif service == "sns":
                units = sns_units(action, form or parse_qs(body.decode("utf-8", "replace")))
            elif service == "events":
                units = events_units(action, _json(body), _json(answer))
                if units:
                    accepted = units.pop("entries")
                    self.messages[self.event_target] += accepted
                    # EventBridge's deliveries are SQS requests, on the queue's bill.
                    self.calls[("sqs", "SendMessage (EventBridge target)")] += accepted
                    self.units[("sqs", "SendMessage (EventBridge target)", "requests")] += units.pop("deliveries")
            elif service == "dynamodb":
                units = dynamodb_units(action, _json(body), _json(answer), ok, self.shadow)
            else:
                units = {}
            for unit, amount in units.items():
                self.units[(service, action, unit)] += amount

    def snapshot(self) -> dict:
        with self.lock:
            return {"calls": dict(self.calls), "units": dict(self.units), "messages": dict(self.messages)}
