"""Makes the stack tool importable by the tests, and starts the stacks they run against.

Every end-to-end module starts a stack of its own through `start_stack`, on a free port,
in a fresh state dir, never reusing an emulator that happens to run, and stopped (by pid,
as `make down` does) when the module is done, also when `up` failed half-way. `pipeline`
is that stack as `make up` starts it; a module that needs other settings defines its own
fixture with `start_stack`, or its own `pipeline` in place of this one.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "stack"))

import stack as stk  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402


@pytest.fixture(scope="session")
def free_port():
    """A function returning a free port on 127.0.0.1, for a test's own emulator."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def start_stack(tmp_path_factory, free_port):
    """`with start_stack(name, **up_options) as stack:` runs `stk.up` with those options.
    `settings`: a pipeline.json of the test's own (a dict, written to the state dir), checked
    as `up` checks any. `proxy=True`: a stack/fault_proxy.py in front of the emulator for the
    functions (see `up`'s fault_proxy); the block then gets `(stack, proxy)`."""

    @contextlib.contextmanager
    def start(name: str, *, settings: dict | None = None, proxy: bool = False, **up_options):
        state = tmp_path_factory.mktemp(name)
        port = free_port()
        with contextlib.ExitStack() as cleanup:
            fault_proxy = None
            if proxy:
                fault_proxy = FaultProxy(f"http://127.0.0.1:{port}")
                up_options["fault_proxy"] = fault_proxy.start()
                cleanup.callback(fault_proxy.stop)
            if settings is not None:
                up_options["settings_file"] = state / "pipeline.json"
                up_options["settings_file"].write_text(json.dumps(settings))
            cleanup.callback(stk.down, state)
            stack = stk.up(port=port, state_dir=state, use_existing=False, **up_options)
            yield (stack, fault_proxy) if proxy else stack

    return start


@pytest.fixture(scope="module")
def pipeline(start_stack, request):
    """The stack as `make up` starts it (the local OTLP receiver on, so every job is traced),
    one for each test module that uses it."""
    with start_stack(request.module.__name__.removeprefix("test_"), receiver=True) as stack:
        yield stack
