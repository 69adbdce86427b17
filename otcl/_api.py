"""Helpers for the public surface: keyword checking with a helpful message."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["checked_keywords"]


def checked_keywords(fn: F) -> F:
    """Wrap ``fn`` so that an unknown keyword raises ``TypeError`` naming it, the closest
    accepted name and every accepted keyword (Python's own message names only the unknown
    one). The signature seen by ``inspect`` and the docs is ``fn``'s own."""
    sig = inspect.signature(fn)
    params = sig.parameters
    accepted = [name for name, p in params.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    owner = fn.__qualname__.removesuffix(".__init__")

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not takes_any:
            unknown = [k for k in kwargs if k not in params]
            if unknown:
                hints = []
                for k in unknown:
                    close = difflib.get_close_matches(k, accepted, n=1)
                    hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
                raise TypeError(
                    f"{owner}() got unexpected keyword argument(s) {', '.join(hints)}; "
                    f"accepted: {', '.join(accepted)}"
                )
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
