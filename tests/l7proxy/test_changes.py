"""What a reload's log line says it changed (changes.describe), as a table."""

from __future__ import annotations

import datetime
from dataclasses import replace

from config.model import Address, Bind
from l7proxy.changes import describe
from tests.helpers import server, simple_config
from tls.status import CertificateStatus

A = Address("127.0.0.1", 8001)
B = Address("127.0.0.1", 8002)
OLD = simple_config([server("web1", A)])


def status(until: int) -> CertificateStatus:
    day = datetime.datetime(2027, 1, until, tzinfo=datetime.UTC)
    return CertificateStatus("/etc/www.pem", "www.example", ("www.example",), day, day)


def test_nothing_changed() -> None:
    assert describe(OLD, OLD, {}, {}) == (
        "configuration reloaded: no bind, server or certificate changed"
    )


def test_binds_servers_and_certificates() -> None:
    vs = OLD.virtual_servers[0]
    pool = replace(vs.pool, real_servers=(vs.pool.real_servers[0], server("web2", B)))
    new_vs = replace(vs, binds=(*vs.binds, Bind(Address("127.0.0.1", 8443))), pool=pool)
    new = replace(OLD, virtual_servers=(new_vs,))
    line = describe(OLD, new, {"x:443": [status(1)]}, {"x:443": [status(20)]})
    assert line == (
        "configuration reloaded: binds: +www 127.0.0.1:8443; servers: +www/web2; "
        "certificates: x:443 www.example until 2027-01-20"
    )
    assert "servers: -www/web2" in describe(new, OLD, {}, {})
