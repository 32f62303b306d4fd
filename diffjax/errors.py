"""The base class of errors caused by what a user asked for (a config, a path, a data set).

``launch.py`` prints such an error as its message alone, without a Python traceback (the
traceback is shown with ``--verbosity=1``). Each concrete error also derives from the
builtin it refines (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError``
keeps working for library users.
"""

from __future__ import annotations

__all__ = ["ConfigError", "UserError"]


class UserError(Exception):
    """A mistake in the user's input whose message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work, named with its full key (``config.train.lr: ...``)."""
