"""The one error type the ``pecgw`` verbs raise for the person at the terminal.

It lives in its own module, not in :mod:`gateway.cli`, because ``python -m gateway.cli`` runs
that file as ``__main__``: a helper module importing ``gateway.cli`` would get a second copy of
the module with a second ``CliError`` class, which ``main()`` would not catch.
"""

from __future__ import annotations

__all__ = ["CliError"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""
