"""Which AWS services the pipeline calls, derived from what it is made of rather than
listed by hand, so a new resource type or SDK crate cannot slip past the emulator's
settings:

- Terraform: every resource and data-source type in terraform/*.tf, mapped to its
  provider service by the provider's own resource-prefix table
  (aws_provider_services.json, read from the provider's names data). A type no prefix
  matches is an error, not a skip.
- Rust: every `aws-sdk-*` crate the workspace depends on.

And how MiniStack names and filters services: asked of its own code, run with the
settings under test (its `SERVICES` filter, its Lambda executor settings).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from hcl_eval import Module

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_TABLE = Path(__file__).resolve().parent / "aws_provider_services.json"


def provider_table() -> dict:
    return json.loads(PROVIDER_TABLE.read_text())


def provider_service(type_name: str, table: dict | None = None) -> str | None:
    """The provider service a resource or data-source type belongs to (longest matching
    prefix), or None for a data source computed locally."""
    table = table or provider_table()
    if type_name in table.get("local_data_sources", {}):
        return None
    best, length = None, -1
    for name, svc in table["services"].items():
        m = re.match(svc["prefix"], type_name)
        if m and m.end() > length:
            best, length = name, m.end()
    if best is None:
        raise AssertionError(f"{type_name}: no AWS provider service has a matching resource prefix")
    return best


def terraform_types(module: Module) -> set[str]:
    """Every resource and data-source type the module declares."""
    types = {r.split(".")[0] for r in module.resources()}
    types |= {r.split(".")[0] for r in module.resources("data")}
    return types


def terraform_services(module: Module) -> dict[str, set[str]]:
    """Provider service -> the types of the module that call it."""
    table = provider_table()
    out: dict[str, set[str]] = {}
    for t in terraform_types(module):
        svc = provider_service(t, table)
        if svc:
            out.setdefault(svc, set()).add(t)
    return out


def endpoint_keys(service: str) -> list[str]:
    """The names the provider's `endpoints {}` block accepts for a service."""
    return provider_table()["services"][service]["endpoint_keys"]


def sdk_crates() -> set[str]:
    """Services the Rust code calls: the `aws-sdk-*` crates of the workspace."""
    deps = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["dependencies"]
    return {d.removeprefix("aws-sdk-") for d in deps if d.startswith("aws-sdk-")}


def ministack_probe(code: str, env: dict[str, str]) -> object:
    """Runs `code` (which prints one JSON value) in MiniStack's own interpreter, with the
    given settings as its environment, and returns that value."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def ministack_enabled(env: dict[str, str]) -> dict:
    """What MiniStack serves with these settings, and how it names services."""
    return ministack_probe(
        "import json, ministack.app as a; print(json.dumps({"
        "'enabled': sorted(a.SERVICE_HANDLERS), 'known': sorted(a.SERVICE_REGISTRY), "
        "'aliases': a.SERVICE_NAME_ALIASES}))",
        env,
    )


def ministack_name(candidates: list[str], registry: dict) -> str:
    """The first of `candidates` (a service's names) that MiniStack knows, resolved."""
    for c in candidates:
        c = c.lower()
        resolved = registry["aliases"].get(c, c)
        if resolved in registry["known"]:
            return resolved
    raise AssertionError(f"MiniStack knows none of the names {candidates}")
