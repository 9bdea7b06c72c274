"""Makes the stack tool importable by the end-to-end tests."""

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "stack"))


@pytest.fixture(scope="session")
def free_port():
    """A function returning a free port on 127.0.0.1, for a test's own emulator."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick
