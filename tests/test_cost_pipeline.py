"""The request count of bench/run.py against a real MiniStack: 30 jobs of the generator's
mix through the pipeline with every AWS call recorded, in well under 90 s. It checks
that the counts add up (each accepted event billed and delivered once, the functions'
invocations and records found), not what they are: bench/README.md has those."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import cost  # noqa: E402
import run  # noqa: E402
import stack as stk  # noqa: E402


@pytest.mark.skipif(not (stk.RELEASE / "ingester").exists(), reason="needs the release builds (make build)")
def test_thirty_jobs_of_the_mix_are_counted_and_priced():
    m = run.count_requests(stk.RELEASE, 30, "pipeline", timeout=80)
    assert m.jobs >= 25  # some of the 30 are second copies of the same job
    events = m.units[("events", "PutEvents", "events")]
    assert m.units[("sqs", "SendMessage (EventBridge target)", "requests")] == events
    assert m.calls[("events", "PutEvents")] >= 3  # 10 entries at most per call
    assert m.units[("dynamodb", "BatchExecuteStatement", "wru")] >= m.jobs  # each job claimed at least once
    assert 0 < m.invocations <= m.records and m.batch <= 10
    assert m.units[("lambda", "Invoke", "gb_s")] > 0
    c = cost.cost_per_million(m, 10, "arm64")
    assert c["total"] > c["dynamodb"] > 0 and c["events"] > 0


@pytest.mark.skipif(not (stk.RELEASE / "ingester").exists(), reason="needs the release builds (make build)")
def test_a_job_that_completes_at_once_costs_three_state_writes():
    """The rule of docs/design.md (State writes per job): a valid job sent once and
    completed on its first attempt is written three times (the processor's claim, end
    and mark) and never by the ingester; each item is under 1 KB, so one unit each."""
    m = run.count_requests(stk.RELEASE, 20, "happy path", timeout=80, mix=run.HAPPY_MIX)
    assert m.jobs == 20
    assert run.state_write_units(m) == 3 * m.jobs, dict(m.units)
    # And twice in the outbox index: the end puts the job's entry, the mark removes it.
    assert run.state_write_units(m, "index_wru") == 2 * m.jobs, dict(m.units)


def test_a_saga_costs_two_state_writes_per_step_more():
    """A saga that completes on its first attempt is written as any job (three times), and
    twice more per step: the step's effect (UpdateItem under its key) and its record in
    the saga's log (PutItem); none of it lands in the outbox index."""
    m = run.count_requests(stk.RELEASE, 20, "sagas", timeout=80, mix=run.SAGA_MIX)
    assert m.jobs == 20
    units = {action: v for (svc, action, unit), v in m.units.items() if svc == "dynamodb" and unit == "wru"}
    steps = units.get("UpdateItem", 0)
    # The generator's sagas have one to four steps.
    assert m.jobs <= steps <= 4 * m.jobs, units
    assert units.get("PutItem", 0) == steps, units
    assert run.state_write_units(m) == 3 * m.jobs + 2 * steps, units
    assert run.state_write_units(m, "index_wru") == 2 * m.jobs, dict(m.units)


def test_a_keyed_job_costs_the_same_writes_and_two_reads():
    """A job with an ordering key is written as any job (three times); its processor
    reads its record (both stages', consistently) once before the claim, to learn the
    attempt its FIFO record's body cannot say."""
    m = run.count_requests(stk.RELEASE, 20, "keyed", timeout=80, mix=run.KEYED_MIX)
    assert m.jobs == 20
    assert m.records == 2 * m.jobs, "each job once on ingester-queue, once on jobs-todo.fifo"
    assert run.state_write_units(m) == 3 * m.jobs, dict(m.units)
    reads = {action: v for (svc, action, unit), v in m.units.items() if svc == "dynamodb" and unit == "rru"}
    assert reads == {"GetItem": 2 * m.jobs}, reads
