"""What every module of the stack tool shares: where the repository, the release
binaries and the tool's state live, the one error it explains to its user, and its log line.

`StackError` is for problems the user can fix (a missing binary, a bad setting, a port in
use): the CLI prints its message without a traceback. `log` writes to stderr only, so the
CLI's stdout stays what the command prints (`env`'s exports, `status`'s table).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Release binaries: cargo's target dir, which CARGO_TARGET_DIR may move.
RELEASE = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target").resolve() / "release"
DEFAULT_STATE_DIR = ROOT / ".stack"

class StackError(Exception):
    """A problem `up`/`down` can explain: printed without a traceback."""


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)
