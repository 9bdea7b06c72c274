"""`make compose-smoke` without Docker: its --dry-run plan must agree with the repository
(and must refuse a compose file or generator it cannot work with), and the parts that read
Compose's, the end-state queue's and Jaeger's answers are checked on given inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import yaml

import compose_smoke as smoke
import stack as stk

SCRIPT = stk.ROOT / "stack" / "compose_smoke.py"


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", *args],
                          capture_output=True, text=True, timeout=120, cwd=stk.ROOT)


def test_the_plan_checks_out_against_the_repository():
    out = dry_run("--seed", "7")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "plan checked" in lines[-1], out.stdout
    assert any(line.endswith(" up -d") for line in lines), out.stdout
    (generate,) = [line for line in lines if " run --rm -T -v " in line and f" {smoke.GENERATOR} " in line]
    assert "--manifest /out/manifest.jsonl" in generate and "--seed 7" in generate
    assert f"{smoke.OUT_DIR.resolve()}:/out" in generate, "the manifest lands in the git-ignored .stack/"
    (starts,) = [line for line in lines if line.startswith("# the generator step starts:")]
    started = {s.strip() for s in starts.split(":", 1)[1].split(",")}
    assert smoke.EMULATOR in started and not started & {"build", "terraform"}, starts


def compose_copy(tmp_path, change) -> str:
    cfg = yaml.safe_load((stk.ROOT / "docker-compose.yml").read_text())
    change(cfg["services"])
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("change, named", [
    (lambda s: s.pop("jaeger"), ["names service 'jaeger', which docker-compose.yml lacks", "'jaeger' does not publish 127.0.0.1:16686"]),
    (lambda s: s["localstack"].update(ports=["127.0.0.1:4567:4566"]), ["'localstack' does not publish 127.0.0.1:4566"]),
    (lambda s: s["localstack"].update(ports=["0.0.0.0:4566:4566"]), ["'localstack' does not publish 127.0.0.1:4566"]),
    (lambda s: s["terraform"]["environment"].update(TF_VAR_end_state_queue="false"), ["TF_VAR_end_state_queue"]),
    (lambda s: s["job-generator"]["depends_on"].update(terraform={"condition": "service_completed_successfully"}),
     ["generator step would start ['build', 'terraform']"]),
], ids=["no-jaeger", "emulator-on-another-port", "emulator-beyond-loopback", "no-end-state-queue", "generator-provisions"])
def test_the_dry_run_refuses_a_compose_file_it_cannot_work_with(tmp_path, change, named):
    out = dry_run("--compose-file", compose_copy(tmp_path, change))
    assert out.returncode == 1, out.stdout
    for text in named:
        assert text in out.stderr, out.stderr
    assert "plan checked" not in out.stdout


def test_the_dry_run_refuses_a_generator_without_a_flag_it_passes(tmp_path):
    fake = tmp_path / "job-generator"
    fake.write_text("#!/bin/sh\necho 'Options: --count <N> --rate <R> --seed <S> --malformed-ratio <R> --max-job-seconds <S>'\n")
    fake.chmod(0o755)
    out = dry_run("--generator", str(fake))
    assert out.returncode == 1 and "has no --manifest" in out.stderr, out.stderr
    out = dry_run("--generator", str(tmp_path / "absent"))
    assert out.returncode == 1 and "make build" in out.stderr, out.stderr


def test_compose_ps_json_is_read_in_both_shapes():
    rows = [{"Service": "terraform", "State": "exited", "ExitCode": 0}, {"Service": "build", "State": "running", "ExitCode": 0}]
    assert smoke.parse_ps(json.dumps(rows)) == rows  # Compose before 2.21: one array
    assert smoke.parse_ps("\n".join(json.dumps(r) for r in rows) + "\n") == rows  # later: an object a line
    assert smoke.parse_ps(json.dumps(rows[0])) == rows[:1]
    assert smoke.parse_ps("") == smoke.parse_ps("[]") == []


def sent(job_id, rejection=None, outcome="sent"):
    return {"job_id": job_id, "outcome": outcome, "expected_rejection": rejection, "detail": {"job_type": "x"}}


def end(job_id, status, code=None):
    return {"job_id": job_id, "status": status, "errors": [{"code": code}] if code else []}


def test_end_states_are_checked_job_by_job():
    manifest = [sent("ok"), sent("missing"), sent("twice"), sent("wrong-status"), sent("bad", "missing_field"),
                sent("wrong-code", "out_of_range"), sent("refused", outcome="refused"), sent("lost", outcome="unsent")]
    notes = [end("ok", "COMPLETED"), end("twice", "COMPLETED"), end("twice", "COMPLETED"),
             end("wrong-status", "FAILED", "deadline_exceeded"), end("bad", "REJECTED", "missing_field"),
             end("wrong-code", "REJECTED", "wrong_type"), end("stranger", "COMPLETED")]
    counts, problems = smoke.check_end_states(manifest, notes)
    assert counts == Counter(COMPLETED=4, FAILED=1, REJECTED=2)

    def about(job_id):
        return [p for p in problems if p.startswith(f"job {job_id}:")]

    assert about("missing") == ["job missing: no end states, expected exactly one"]
    assert about("twice") == ["job twice: 2 end states, expected exactly one"]
    assert about("wrong-status") == ["job wrong-status: ended FAILED (last error deadline_exceeded), expected COMPLETED"]
    assert about("wrong-code") == ["job wrong-code: rejected with code wrong_type, expected out_of_range"]
    assert about("stranger") == ["job stranger: ended COMPLETED but this run did not send it"]
    assert about("lost") and not about("ok") and not about("bad") and not about("refused")
    assert len(problems) == 6, problems


def test_a_trace_passes_only_with_the_job_tag_and_every_service():
    names = smoke.service_names()
    services, by = smoke.trace_wanted(names, "COMPLETED", {"job_type": "x"})
    # The relay is in a job's trace only when it announced the job's end.
    assert "relay" in names
    assert by == names["processor"] and services == {names[s] for s in ("job-generator", "ingester", "processor")}
    assert smoke.trace_wanted(names, "REJECTED", {"job_type": "x"}) == ({names["job-generator"], names["ingester"]}, names["ingester"])
    assert smoke.trace_wanted(names, "REJECTED", "not an object")[0] == {names["ingester"]}

    def trace(job_id, *svcs):
        return {"processes": {f"p{i}": {"serviceName": s} for i, s in enumerate(svcs)},
                "spans": [{"processID": f"p{i}", "tags": [{"key": "job.id", "type": "string", "value": job_id}]}
                          for i in range(len(svcs))]}

    every = sorted(services)
    assert smoke.trace_passes([trace("j1", *every)], "j1", services)
    assert not smoke.trace_passes([trace("j1", *every[:-1])], "j1", services)
    assert not smoke.trace_passes([trace("other", *every)], "j1", services)
    assert not smoke.trace_passes([], "j1", services)


def test_the_queue_and_the_service_names_come_from_the_repository(tmp_path, monkeypatch, capsys):
    """In-process, on a copy of the files the dry run reads through smoke.ROOT."""
    for rel in ("terraform/notifications.tf", "job-generator/src/main.rs",
                "functions/ingester/src/main.rs", "functions/processor/src/main.rs"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((stk.ROOT / rel).read_text())
    monkeypatch.setattr(smoke, "ROOT", tmp_path)

    def edit(rel, old, new):
        text = (tmp_path / rel).read_text()
        assert text.count(old) == 1, (rel, old)
        (tmp_path / rel).write_text(text.replace(old, new))

    edit("functions/processor/src/main.rs", 'Telemetry::from_env("processor")', 'Telemetry::from_env("processor-renamed")')
    assert smoke.main(["--dry-run"]) == 0
    assert "api/traces?service=processor-renamed&" in capsys.readouterr().out

    edit("terraform/notifications.tf", "name                      = local.pipeline.demo_subscriber_queue",
         'name                      = "job-end-states"')
    edit("functions/ingester/src/main.rs", 'Telemetry::from_env("ingester")', "Telemetry::disabled()")
    assert smoke.main(["--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "aws_sqs_queue.end_states is not named local.pipeline.demo_subscriber_queue" in err, err
    assert "no Telemetry::from_env(\"...\") in the main.rs of ['ingester']" in err, err
