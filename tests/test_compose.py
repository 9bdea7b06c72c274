"""docker-compose.yml checked without a Docker engine: `docker-compose config` (Debian's
package) must accept it with the shipped .env and with the one-line MiniStack switch, and
the resolved configuration must keep the promises docs/compose.md makes about it."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import yaml

import aws_services as aws
import stack as stk
from hcl_eval import Module

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


def emulator_env(cfg: dict) -> dict[str, str]:
    """The emulator service's environment as docker-compose resolved it."""
    return {k: "" if v is None else str(v) for k, v in cfg["services"]["localstack"]["environment"].items()}


def test_the_emulator_serves_every_service_the_pipeline_calls(config):
    """Guards against `Unsupported service` at run time: Terraform's resources and the
    functions' and generator's SDK clients must all be among the services MiniStack
    (and LocalStack, which reads the same names) enables with compose's SERVICES."""
    _, cfg = config
    registry = aws.ministack_enabled(emulator_env(cfg))
    needed = {
        aws.ministack_name([svc, *aws.endpoint_keys(svc)], registry): f"terraform ({', '.join(sorted(types))})"
        for svc, types in aws.terraform_services(Module(ROOT / "terraform")).items()
    }
    needed |= {aws.ministack_name([crate], registry): f"crate aws-sdk-{crate}" for crate in aws.sdk_crates()}
    missing = {svc: why for svc, why in needed.items() if svc not in registry["enabled"]}
    assert "dynamodb" in needed and "lambda" in needed, needed
    assert not missing, f"SERVICES={emulator_env(cfg).get('SERVICES')!r} leaves out what these need: {missing}"


def test_ministack_in_compose_can_start_the_functions(tmp_path):
    """Guards against every invocation failing with an entrypoint error: MiniStack's
    image is Alpine (musl), so its default local executor cannot start the glibc
    bootstraps the build makes. Asked of MiniStack's own settings code, with compose's
    environment: either functions run in provided.al2023 containers on the compose
    network with the Docker socket mounted, or the bootstraps must need no libc."""
    # (LocalStack always runs functions in containers of their own.)
    cfg = compose_config(tmp_path, with_setting(shipped_env(), "EMULATOR_IMAGE", MINISTACK_IMAGE))
    svc = cfg["services"]["localstack"]
    executor, network, image = aws.ministack_probe(
        "import json; from ministack.services import lambda_svc as l; "
        "print(json.dumps([l.LAMBDA_EXECUTOR, l.LAMBDA_DOCKER_NETWORK, l._docker_image_for_runtime('provided.al2023')]))",
        emulator_env(cfg),
    )
    runtimes = {Module(ROOT / "terraform").attribute(f"aws_lambda_function.{fn}", "runtime") for fn in stk.PACKAGED}
    if executor == "docker":
        assert image, "MiniStack has no container image for provided.al2023"
        assert runtimes == {"provided.al2023"}, runtimes
        mounts = [v["source"] if isinstance(v, dict) else v.split(":")[0] for v in svc.get("volumes", [])]
        assert "/var/run/docker.sock" in mounts, "the docker executor needs the Docker socket mounted"
        attached = {cfg["networks"][n].get("name", n) for n in svc["networks"]}
        assert network in attached, f"functions would join network {network!r}; the emulator is on {attached}"
    else:
        for fn in stk.PACKAGED:
            binary = stk.RELEASE / fn
            assert binary.exists(), f"{binary} is missing: make build"
            headers = subprocess.run(["readelf", "-l", str(binary)], capture_output=True, text=True).stdout
            assert "INTERP" not in headers, (
                f"LAMBDA_EXECUTOR={executor!r} runs {fn} inside MiniStack's Alpine container, "
                "but it is a dynamically linked glibc binary"
            )


def depends_closure(cfg: dict, name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for dep in cfg["services"][todo.pop()].get("depends_on", {}) or {}:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_a_generator_run_neither_rebuilds_nor_reprovisions(config):
    """`docker compose run job-generator` starts the services it depends on, and theirs."""
    _, cfg = config
    started = depends_closure(cfg, "job-generator")
    assert "localstack" in started
    assert not started & {"build", "terraform"}, f"a generator run would start {sorted(started)}"


def test_terraform_in_compose_creates_the_end_state_queue(config):
    _, cfg = config
    assert cfg["services"]["terraform"]["environment"]["TF_VAR_end_state_queue"] == "true"
    variables = Module(ROOT / "terraform").variables
    assert "end_state_queue" in variables


def test_the_build_packages_the_same_binary_into_the_same_bytes(tmp_path):
    """Guards against every `terraform apply` pushing new code: the zip's hash is what
    Terraform compares. Runs build.sh's packaging step twice on the host, with the
    binaries re-touched, another umask and another time zone in between."""
    target = tmp_path / "target" / "x86_64-unknown-linux-gnu" / "release"
    target.mkdir(parents=True)
    for fn in stk.PACKAGED:
        (target / fn).write_bytes(os.urandom(64 * 1024) + fn.encode())
    runs = []
    for i, (tz, umask) in enumerate([("UTC", "022"), ("America/New_York", "077")]):
        if i:
            time.sleep(2.1)  # zip keeps times in two-second steps: make sure the clock moves on
            for fn in stk.PACKAGED:
                os.utime(target / fn)
        dist = tmp_path / f"dist{i}"
        out = subprocess.run(
            ["bash", "-c", f"umask {umask} && exec bash {ROOT / 'docker' / 'build.sh'} package"],
            env={"PATH": os.environ["PATH"], "LAMBDA_ARCH": "x86_64", "DIST_DIR": str(dist),
                 "CARGO_TARGET_DIR": str(tmp_path / "target"), "TZ": tz},
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        runs.append({fn: (dist / f"{fn}.zip").read_bytes() for fn in stk.PACKAGED})
    assert runs[0] == runs[1], "the same binaries gave different zips"
    with zipfile.ZipFile(io.BytesIO(runs[0]["ingester"])) as z:
        (info,) = z.infolist()
        assert info.filename == "bootstrap" and (info.external_attr >> 16) & 0o777 == 0o755
        assert z.read("bootstrap") == (target / "ingester").read_bytes()


def test_the_observability_files_agree_with_each_other(config):
    _, cfg = config
    services = cfg["services"]
    collector = yaml.safe_load((ROOT / "observability" / "otel-collector.yaml").read_text())
    jaeger_host = collector["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0]
    assert jaeger_host in services
    # Metrics are pushed into Prometheus' OTLP receiver, so that each worker's first
    # data point (its counters at 0) is stored: a scrape would keep only the latest.
    (metrics_exporter,) = collector["service"]["pipelines"]["metrics"]["exporters"]
    assert metrics_exporter.startswith("otlphttp"), metrics_exporter
    url = collector["exporters"][metrics_exporter]["metrics_endpoint"]
    host = url.split("//", 1)[1].split("/", 1)[0].split(":")[0]
    assert url.endswith("/api/v1/otlp/v1/metrics") and host in services, url
    assert "--web.enable-otlp-receiver" in services[host]["command"]
    health = collector["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1]
    assert f"localhost:{health}" in " ".join(services["otel-collector"]["healthcheck"]["test"])
    dashboard = json.loads((ROOT / "observability" / "grafana" / "dashboards" / "job-pipeline.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    # The functions export job.end_states (counter) and job.latency (histogram, seconds);
    # Prometheus sees them under these names.
    assert "job_end_states_total" in exprs and "job_latency_seconds_bucket" in exprs
