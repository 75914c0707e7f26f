"""musegen: conditional music generation. ``musegen.load(checkpoint)`` is the Python API (musegen.api)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

#: the package version (pyproject.toml reads it from here)
__version__ = "0.1.0"

if TYPE_CHECKING:
    from musegen.api import load

__all__ = ["load"]


def __getattr__(name: str) -> Any:
    # `import musegen.features` (data work, tests) should not pay for the generation stack's imports
    if name == "load":
        from musegen.api import load  # noqa: PLC0415

        return load
    raise AttributeError(f"module 'musegen' has no attribute {name!r}")
