"""One line instead of a traceback for ``python -m monai.bundle run`` commands.

MONAI's bundle runner lets every exception escape to the interpreter, so a missing input or a
truncated checkpoint — already explained by our one-line error — arrives under 60-120 lines of
config-parser traceback. :func:`one_line_errors` (listed in the configs' ``initialize``) installs
an exception hook that prints the innermost of our errors as ``error: <message>`` and exits with
status 1; the full traceback goes to the file named by ``CRYOET_MONAI_TRACEBACK`` when set, and
``CRYOET_MONAI_DEBUG=1`` keeps Python's own output.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

__all__ = ["error_line", "innermost_error", "one_line_errors"]


def innermost_error(err: BaseException) -> BaseException:
    """The innermost ``ValueError``/``OSError`` (our error types derive from them) of the
    ``__cause__``/``__context__`` chain of ``err`` — MONAI wraps them in ``RuntimeError("Failed to
    instantiate ...")`` — else the innermost exception."""
    chain, seen = [], set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    ours = [e for e in chain if isinstance(e, (ValueError, OSError))]
    return ours[-1] if ours else chain[-1]


def error_line(err: BaseException) -> str:
    """``error: <first line of the message>`` (with the type for anything but our error types)."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, (ValueError, OSError)):
        return f"error: {message}"
    return f"error: {type(err).__name__}: {message}"


def _hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    log = os.environ.get("CRYOET_MONAI_TRACEBACK")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            traceback.print_exception(kind, err, tb, file=f)
    print(error_line(innermost_error(err)), file=sys.stderr)
    raise SystemExit(1)


def one_line_errors() -> None:
    """Install the hook (idempotent); no-op with ``CRYOET_MONAI_DEBUG=1``."""
    if os.environ.get("CRYOET_MONAI_DEBUG", "") not in ("", "0"):
        return
    sys.excepthook = _hook
