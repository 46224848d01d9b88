"""Where a benchmark ran: the commit it measures."""

from __future__ import annotations

import os
import subprocess


def commit() -> str:
    """JAX_MOE_COMMIT if set (the device copy of the tree may carry stale git
    metadata, so the caller pins it), else `git rev-parse HEAD`."""
    return os.environ.get("JAX_MOE_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
