"""Where evaluation caches live (the digits classifier, FID reference statistics)."""

from __future__ import annotations

import os

__all__ = ["default_cache_dir"]


def default_cache_dir() -> str:
    """``$DIFFJAX_CACHE_DIR``, else ``~/.cache/diffjax``."""
    return os.environ.get("DIFFJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "diffjax")
