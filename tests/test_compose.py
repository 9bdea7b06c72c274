"""docker-compose.yml checked without a Docker engine: `docker-compose config` (Debian's
package) must accept it with the shipped .env and with the one-line MiniStack switch, and
the resolved configuration must keep the promises the README makes about it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import stack as stk

ROOT = stk.ROOT
MINISTACK_IMAGE = "ministackorg/ministack:1.5.33"
ONE_SHOT = {"build", "terraform", "job-generator"}  # exit when done; no healthcheck


def compose_config(tmp_path: Path, env_file_text: str, extra_env: dict | None = None) -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: run `make tools` (Debian package docker-compose)"
    env_file = tmp_path / "compose.env"
    env_file.write_text(env_file_text)
    # Only PATH from the caller: a variable exported in the developer's shell must not
    # change what is being checked.
    env = {"PATH": os.environ["PATH"], **(extra_env or {})}
    out = subprocess.run(
        [exe, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(env_file), "config"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )
    assert out.returncode == 0, f"docker-compose config refused the file:\n{out.stderr}"
    return yaml.safe_load(out.stdout)


def shipped_env() -> str:
    return (ROOT / ".env").read_text()


def with_setting(text: str, key: str, value: str) -> str:
    changed, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
    assert n == 1, f".env must set {key} exactly once"
    return changed


@pytest.fixture(scope="module", params=["localstack", "ministack"])
def config(request, tmp_path_factory):
    text = shipped_env()
    if request.param == "ministack":
        text = with_setting(text, "EMULATOR_IMAGE", MINISTACK_IMAGE)
    return request.param, compose_config(tmp_path_factory.mktemp(request.param), text)


def test_the_emulator_is_the_one_env_asks_for(config):
    variant, cfg = config
    image = cfg["services"]["localstack"]["image"]
    if variant == "ministack":
        assert image == MINISTACK_IMAGE
    else:
        assert image.startswith("localstack/localstack:")


def test_every_image_is_pinned(config):
    _, cfg = config
    for name, svc in cfg["services"].items():
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"service {name} uses an unpinned image {image!r}"


def test_every_long_running_service_has_a_healthcheck(config):
    _, cfg = config
    for name, svc in cfg["services"].items():
        if name not in ONE_SHOT:
            assert svc.get("healthcheck", {}).get("test"), f"service {name} has no healthcheck"


def test_ports_are_published_on_loopback_only(config):
    _, cfg = config
    published = 0
    for name, svc in cfg["services"].items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"service {name} publishes {port} beyond loopback"
            published += 1
    assert published >= 5


def test_provisioning_waits_for_a_healthy_emulator_and_a_finished_build(config):
    _, cfg = config
    deps = cfg["services"]["terraform"]["depends_on"]
    assert deps["localstack"]["condition"] == "service_healthy"
    assert deps["build"]["condition"] == "service_completed_successfully"
    tf_env = cfg["services"]["terraform"]["environment"]
    assert tf_env["TF_VAR_endpoint"] == "http://localstack:4566"
    assert tf_env["TF_VAR_lambda_architecture"] == cfg["services"]["build"]["environment"]["LAMBDA_ARCH"]
    # Functions reach the collector by service name over the compose network.
    assert tf_env["TF_VAR_otlp_endpoint"].startswith("http://otel-collector:")


def test_the_auth_token_comes_from_the_environment_not_the_repo(tmp_path):
    assert re.search(r"^LOCALSTACK_AUTH_TOKEN=$", shipped_env(), re.M), ".env must not carry a token"
    cfg = compose_config(tmp_path, shipped_env(), {"LOCALSTACK_AUTH_TOKEN": "ls-token-from-shell"})
    assert cfg["services"]["localstack"]["environment"]["LOCALSTACK_AUTH_TOKEN"] == "ls-token-from-shell"


def test_an_unknown_architecture_is_refused_by_the_build_by_name(tmp_path):
    out = subprocess.run(
        ["bash", str(ROOT / "docker" / "build.sh")],
        env={"PATH": os.environ["PATH"], "LAMBDA_ARCH": "sparc", "DIST_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2 and "LAMBDA_ARCH" in out.stderr


def test_the_observability_files_agree_with_each_other(config):
    _, cfg = config
    services = cfg["services"]
    collector = yaml.safe_load((ROOT / "observability" / "otel-collector.yaml").read_text())
    jaeger_host = collector["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0]
    assert jaeger_host in services
    prom_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    scrape = yaml.safe_load((ROOT / "observability" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"otel-collector:{prom_port}" in targets
    health = collector["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1]
    assert f"localhost:{health}" in " ".join(services["otel-collector"]["healthcheck"]["test"])
    dashboard = json.loads((ROOT / "observability" / "grafana" / "dashboards" / "job-pipeline.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    # The functions export job.end_states (counter) and job.latency (histogram, seconds);
    # Prometheus sees them under these names.
    assert "job_end_states_total" in exprs and "job_latency_seconds_bucket" in exprs
