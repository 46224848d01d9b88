"""Loads the compiled extension (`jax_moe._ffi`) and registers its FFI targets.

Registration happens once, at first use. Registering the CUDA targets on a
machine without a GPU is harmless: XLA queues them until a CUDA plugin exists.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax

logger = logging.getLogger("jax_moe")

try:
    from jax_moe import _ffi
except ImportError as exc:  # pragma: no cover - only without a build
    _ffi = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


def module() -> Any:
    """The nanobind module; raises a clear ImportError if it was not built."""
    if _ffi is None:
        raise ImportError(
            "jax_moe's compiled extension (jax_moe._ffi) is missing: install the package with "
            "`pip install -e '.[test]'` (or `pip install .`) so that CMake builds it. "
            f"Original error: {_IMPORT_ERROR}"
        )
    return _ffi


@functools.cache
def register_targets() -> frozenset[str]:
    """Registers every handler with XLA; returns the platforms registered."""
    platforms = set()
    for platform, targets in module().registrations().items():
        for name, capsule in targets.items():
            jax.ffi.register_ffi_target(name, capsule, platform=platform, api_version=1)
        platforms.add("cuda" if platform == "CUDA" else platform)
        logger.debug("registered %s FFI targets: %s", platform, sorted(targets))
    return frozenset(platforms)


def build_info() -> dict[str, Any]:
    """What the extension was built with: {'cuda': bool, 'cuda_arch': str, 'ffi_api': str}."""
    return dict(module().build_info)


def has_cuda() -> bool:
    """Whether the CUDA handlers were compiled into the extension."""
    return bool(build_info()["cuda"])
