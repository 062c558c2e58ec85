"""Small builders for pools and servers used by the balancing tests."""

from __future__ import annotations

from collections.abc import Sequence

from config.model import (
    Address,
    AdminState,
    Balance,
    HealthCheck,
    Persistence,
    Pool,
    RealServer,
)


def server(
    label: str, port: int = 8000, weight: int = 1, state: AdminState = AdminState.READY
) -> RealServer:
    return RealServer(label=label, address=Address("127.0.0.1", port), weight=weight, state=state)


def make_pool(
    labels: Sequence[str | tuple[str, int]],
    *,
    balance: Balance = Balance.ROUNDROBIN,
    persistence: Persistence | None = None,
    fallback: bool = False,
    check: HealthCheck | None = None,
) -> Pool:
    servers = []
    for i, item in enumerate(labels):
        label, weight = (item, 1) if isinstance(item, str) else item
        servers.append(server(label, 8001 + i, weight))
    return Pool(
        name="www",
        real_servers=tuple(servers),
        balance=balance,
        fallback=server("fallback", 9000) if fallback else None,
        persistence=persistence,
        health_check=check or HealthCheck(),
    )
