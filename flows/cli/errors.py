"""What the CLI shows a user at the end of a command: the error they can fix, or the run summary.

These live apart from ``flows.cli.main``, which ``python -m flows.cli.main`` imports twice (as
``__main__`` and as ``flows.cli.main``): a ``UserError`` defined there and raised by the
handlers would be another class than the one ``main()`` catches, and every clean error would
become a traceback. Nothing here imports the rest of the package.
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """An error the user can fix; ``code`` is the exit status (2: usage or config, 1: the rest)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def print_summary(summary: dict[str, Any]) -> None:
    width = max(len(k) for k in summary)
    print("\n== pretrainflow summary ==")
    for key, value in summary.items():
        shown = value
        if isinstance(value, float) and key != "seconds":
            shown = f"{value:+.2f}" if key.startswith("lift") else f"{value:.4f}"
        print(f"  {key:<{width}}  {shown}")
