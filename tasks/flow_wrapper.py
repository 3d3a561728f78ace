"""`wraps_flow`: `functools.wraps` for the decorators that sit between `@flow` and a flow function.

Prefect validates a flow run's parameters with a pydantic model built from `inspect.signature` of the
function `@flow` was given. Under `from __future__ import annotations` the annotations there are
strings (`"PipelineParams"`, `"Path | None"`), which Prefect resolves in that function's module: the
outermost decorator's, not the flow's. A decorator module that happened not to import a type a flow
names broke every run of that flow ("`Evaluate_ClustersModel` is not fully defined; you should
define `Path`"), at run time only. So the wrapper carries the flow function's signature with its
annotations already resolved where the flow was written (`inspect.signature(eval_str=True)`), and no
decorator module needs to import the flows' types.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

W = TypeVar("W", bound=Callable[..., Any])


def wraps_flow(fn: Callable[..., Any]) -> Callable[[W], W]:
    """As `functools.wraps(fn)`, and the wrapper's `__signature__` is `fn`'s, annotations resolved."""

    def decorate(wrapper: W) -> W:
        wrapped = functools.wraps(fn)(wrapper)
        wrapped.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
        return wrapped

    return decorate
