"""Shared fixtures: trio test runner hook, one session-scoped trustme CA."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import trio.testing
import trustme


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests under trio (no plugin needed)."""
    func: Callable[..., Any] = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    trio.testing.trio_test(func)(**kwargs)
    return True


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()
