"""One configuration that uses every kind of rule a real haproxy.cfg or pound.cfg carries:
conditions and routing, header rules both ways, redirects, deny rules, the method filter, the
body and connection limits, error pages, several fallbacks, maxconn with its queue,
re-encryption to real servers, and the PROXY protocol both ways. It passes `lbproxy check`,
and each part works through real sockets while the others are configured beside it."""

from __future__ import annotations

import pathlib

import trio
import trustme

from config.loader import load_file
from config.model import ProxyVersion
from l7proxy.cli import main
from l7proxy.proxy_protocol import encode
from tests.helpers import Backend, free_port, request, serve_raw, start_proxy
from tests.l7proxy.test_proxy_protocol_pipeline import ProxyReadingServer
from tests.l7proxy.test_reencryption import ca_file, tls_backend

CONFIG = """\
global: {{access_log: false}}
virtual_servers:
  - label: www
    bind: ["127.0.0.1:{port}", {{address: "127.0.0.1:{pp_port}", accept_proxy: [127.0.0.0/8]}}]
    acls: {{api: {{path_prefix: /api/}}, legacy: {{path_prefix: /pp/}}}}
    rules:
      - {{if: api, pool: secure}}
      - {{if: legacy, pool: proxied}}
      - {{if: {{path_prefix: /down/}}, pool: gone}}
    request_headers:
      - {{set: {{X-Client: "%[src]"}}}}
      - {{delete: X-Debug, if: {{not: {{src: 10.0.0.0/8}}}}}}
    response_headers: [{{add: {{X-Served-By-Rule: "%[srv_name]"}}}}]
    redirects: [{{if: {{path: /old}}, location: /new, code: 302}}]
    deny: [{{if: {{path_prefix: /admin}}, status: 403}}]
    methods: [GET, HEAD, POST]
    limits: {{max_body: 1k, max_connections: 100}}
    error_pages: {{503: {page}}}
    maxconn: 10
    timeouts: {{queue: 2s}}
    real_servers: [{{label: web1, address: "127.0.0.1:{web}"}}]
pools:
  gone:
    real_servers: [{{label: dead1, address: "127.0.0.1:{dead}"}}]
    fallback:
      - {{address: "127.0.0.1:{dead}", label: sorry1}}
      - {{address: "127.0.0.1:{dead}", label: sorry2}}
    fallback_mode: all
  secure:
    tls: {{ca: {ca}, sni: backend.example}}
    real_servers: [{{label: tls1, address: "127.0.0.1:{tls}"}}]
  proxied:
    send_proxy: v2
    real_servers: [{{label: pp1, address: "127.0.0.1:{pp_server}"}}]
"""


async def test_one_configuration_with_every_rule(tmp_path: pathlib.Path, ca: trustme.CA) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            await nursery.start(web.serve)
            secure = tls_backend("tls1", ca, "backend.example")
            await nursery.start(secure.serve)
            reader = ProxyReadingServer()
            reader.port = await nursery.start(serve_raw, reader.handle)
            page = tmp_path / "503.http"
            page.write_bytes(b"<h1>sorry, all down</h1>\n")
            port, pp_port = free_port(), free_port()
            path = tmp_path / "lb.yaml"
            path.write_text(
                CONFIG.format(
                    port=port,
                    pp_port=pp_port,
                    page=page,
                    web=web.port,
                    dead=free_port(),
                    ca=ca_file(ca, tmp_path),
                    tls=secure.port,
                    pp_server=reader.port,
                )
            )
            assert await trio.to_thread.run_sync(main, ["check", "-c", str(path)]) == 0
            await start_proxy(nursery, load_file(str(path)))

            plain = await request(port, "GET", "/x", headers={"X-Debug": "1"})
            assert plain.status == 200
            assert plain.header("x-served-by-rule") == "web1"
            assert web.seen[-1].header(b"x-client") == b"127.0.0.1"
            assert web.seen[-1].header(b"x-debug") is None
            api = await request(port, "GET", "/api/v1")
            assert api.header("x-served-by-rule") == "tls1"  # re-encrypted, verified
            assert secure.server_names[-1] == "backend.example"
            legacy = await request(port, "GET", "/pp/a")
            assert legacy.status == 200
            assert reader.headers[-1].version == 2  # the server got a PROXY v2 header
            redirect = await request(port, "GET", "/old")
            assert (redirect.status, redirect.header("location")) == (302, "/new")
            assert (await request(port, "GET", "/admin/")).status == 403
            assert (await request(port, "PUT", "/x", body=b"a")).status == 405
            assert (await request(port, "POST", "/x", body=b"a" * 2048)).status == 413

            # A client behind another balancer: its PROXY header names the real client.
            stream = await trio.open_tcp_stream("127.0.0.1", pp_port)
            header = encode(ProxyVersion.V1, ("192.0.2.55", 4000), ("127.0.0.1", pp_port))
            await stream.send_all(header + b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
            await stream.aclose()
            assert web.seen[-1].header(b"x-client") == b"192.0.2.55"

            # No real server and no fallback can take it: the virtual server's own 503 page.
            down = await request(port, "GET", "/down/z")
            assert (down.status, down.body) == (503, b"<h1>sorry, all down</h1>\n")
            nursery.cancel_scope.cancel()
