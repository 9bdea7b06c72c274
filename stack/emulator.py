"""The emulator: MiniStack started, found and stopped on this machine.

`start_emulator` reuses a healthy emulator (AWS_ENDPOINT_URL's, or the one whose pid file
is in the state dir) and otherwise starts MiniStack on 127.0.0.1 only, in a process group
of its own, with the environment docker-compose.yml gives its emulator (less the
Docker-only settings), so both paths run the same services. It refuses a port that
something else answers on. `stop_processes` stops only what was started here: MiniStack's
process group by the pid in the state dir, and every function worker whose environment
carries this stack's marker (JOBS_STACK_ID), even one that left that group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, StackError, log

DEFAULT_PORT = 4566


@dataclass
class Stack:
    """A running emulator and where its state lives."""

    endpoint: str
    state_dir: Path
    settings: dict
    region: str = "us-east-1"
    started_here: bool = False
    resources: dict = field(default_factory=dict)
    otlp_endpoint: str | None = None

    def client(self, service: str):
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
        )

    def env(self) -> dict:
        """Environment for tools (generator, tests) pointed at this stack."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            **({"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint} if self.otlp_endpoint else {}),
        }


def healthy(endpoint: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def ministack_binary() -> Path:
    exe = Path(sys.executable).parent / "ministack"
    if not exe.exists():
        raise StackError(f"{exe} not found: run `make venv` (MiniStack is installed in the stack's virtualenv)")
    return exe


def start_emulator(state_dir: Path, port: int, use_existing: bool = True) -> tuple[str, bool]:
    """Returns (endpoint, started_here). Reuses a healthy emulator at AWS_ENDPOINT_URL
    (unless use_existing is False) or at our own pid file; otherwise starts MiniStack
    on 127.0.0.1:port."""
    external = os.environ.get("AWS_ENDPOINT_URL") if use_existing else None
    if external and healthy(external):
        log(f"using the emulator already running at {external}")
        return external, False
    if external:
        log(f"AWS_ENDPOINT_URL={external} does not answer; starting MiniStack instead")
    endpoint = f"http://127.0.0.1:{port}"
    pid = read_pid(state_dir)
    if pid and alive(pid) and healthy(endpoint):
        log(f"MiniStack already running (pid {pid}) at {endpoint}")
        return endpoint, True
    if healthy(endpoint):
        raise StackError(
            f"something else already answers on {endpoint}; stop it, or set AWS_ENDPOINT_URL={endpoint} to use it"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    logfile = open(state_dir / "ministack.log", "ab")
    env = dict(os.environ)
    env.update(ministack_env(port, state_dir))
    proc = subprocess.Popen(
        [str(ministack_binary())],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=state_dir,
        start_new_session=True,  # its own process group: `down` stops it and its workers by pgid
    )
    (state_dir / "ministack.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"MiniStack exited with {proc.returncode}; see {state_dir / 'ministack.log'}")
        if healthy(endpoint):
            log(f"MiniStack started (pid {proc.pid}) at {endpoint}")
            return endpoint, True
        time.sleep(0.25)
    stop_processes(state_dir)
    raise StackError(f"MiniStack did not become healthy within 60 s; see {state_dir / 'ministack.log'}")


COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_EMULATOR = "localstack"  # the compose service that runs LocalStack or MiniStack
# Settings of the compose emulator that only mean something inside Docker; the embedded
# MiniStack sets its own (loopback, its own port, functions as local processes).
DOCKER_ONLY_SETTINGS = {
    "GATEWAY_PORT", "BIND_HOST", "MINISTACK_HOST", "LAMBDA_EXECUTOR", "LAMBDA_DOCKER_NETWORK",
    "DOCKER_NETWORK", "DOCKER_HOST", "LOCALSTACK_AUTH_TOKEN",
}


def compose_emulator_env(compose_file: Path = COMPOSE_FILE) -> dict[str, str]:
    """The environment docker-compose.yml gives its emulator, less the Docker-only
    settings: the embedded MiniStack runs with it, so that a service the compose list
    lacks (SERVICES) fails `make up` and the end-to-end tests too, not only Docker users."""
    import yaml

    try:
        services = yaml.safe_load(compose_file.read_text())["services"]
        env = services[COMPOSE_EMULATOR].get("environment") or {}
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        raise StackError(f"cannot read services.{COMPOSE_EMULATOR}.environment from {compose_file}: {e}") from e
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    out = {}
    for key, value in env.items():
        if key in DOCKER_ONLY_SETTINGS:
            continue
        value = "" if value is None else str(value)
        if "$" in value:
            raise StackError(
                f"{compose_file.name}: services.{COMPOSE_EMULATOR}.environment.{key} is interpolated ({value!r}); "
                "the embedded stack cannot resolve it: add it to DOCKER_ONLY_SETTINGS in stack/emulator.py or give a value"
            )
        out[key] = value
    return out


def ministack_env(port: int, state_dir: Path) -> dict:
    return {
        **compose_emulator_env(),
        "GATEWAY_PORT": str(port),
        "BIND_HOST": "127.0.0.1",  # MiniStack listens on every interface by default
        "MINISTACK_HOST": "127.0.0.1",
        "LAMBDA_WARM_TTL_SECONDS": "300",
        "LOG_LEVEL": os.environ.get("MINISTACK_LOG_LEVEL", "INFO"),
    }


def read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "ministack.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True while the process runs; a zombie (killed, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def marked_pids(marker: str) -> list[int]:
    """Pids of processes whose environment carries this stack's marker: the function
    workers MiniStack started for us, even if they left its process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"JOBS_STACK_ID={marker}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_processes(state_dir: Path) -> list[int]:
    """Stops MiniStack (its whole process group) and every worker carrying our marker."""
    targets = set()
    pid = read_pid(state_dir)
    marker_file = state_dir / "stack-id"
    marker = marker_file.read_text().strip() if marker_file.exists() else None
    if marker:
        targets.update(marked_pids(marker))
    if pid and alive(pid):
        targets.add(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if pid:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for p in list(targets):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                targets.discard(p)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in targets):
            time.sleep(0.1)
        targets = {p for p in targets if alive(p)}
        if not targets:
            break
    for name in ("ministack.pid",):
        (state_dir / name).unlink(missing_ok=True)
    return sorted(targets)
