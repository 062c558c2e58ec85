"""``global.workers``: the real ``lbproxy run`` with a master and worker processes, real servers
(docs/operations.md, "Worker processes")."""

from __future__ import annotations

import http.client
import os
import pathlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from .process import Lbproxy, backend, free_port, lbproxy
from .test_admin_socket import ask

WAIT = 30.0  # upper bound for anything the test waits on (a loaded machine starts slowly)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def config_text(port: int, stats: int, admin: pathlib.Path, servers: dict[str, int]) -> str:
    lines = "".join(
        f"      - {{label: {label}, address: '127.0.0.1:{p}'}}\n" for label, p in servers.items()
    )
    return (
        "global:\n"
        "  workers: 2\n"
        "  grace: 10s\n"
        "  access_log: false\n"
        f"  stats: {{bind: '127.0.0.1:{stats}'}}\n"
        f"  admin_socket: {admin}\n"
        "virtual_servers:\n"
        "  - label: web\n"
        f"    bind: '127.0.0.1:{port}'\n"
        "    real_servers:\n" + lines
    )


def get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def workers_of(proxy: Lbproxy) -> list[int]:
    """The master's children (trio starts processes from a helper thread: every task's)."""
    found: list[int] = []
    for task in pathlib.Path(f"/proc/{proxy.proc.pid}/task").glob("*"):
        try:
            found.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    return sorted(found)


class Setup:
    def __init__(self, tmp: pathlib.Path, proxy: Lbproxy, port: int, stats: int) -> None:
        self.tmp, self.proxy, self.port, self.stats = tmp, proxy, port, stats
        self.admin = tmp / "admin.sock"

    def ready(self) -> None:
        wait_for("READY", lambda: "ready: " in self.proxy.stderr())
        assert len(workers_of(self.proxy)) == 2

    def frontend_total(self) -> int:
        """req_tot of the FRONTEND row of the master's CSV."""
        _, csv = get(self.stats, "/;csv")
        lines = csv.splitlines()
        column = lines[0].lstrip("# ").split(",").index("req_tot")
        for line in lines[1:]:
            fields = line.split(",")
            if fields[:2] == ["web", "FRONTEND"]:
                return int(fields[column])
        raise AssertionError(csv)


@contextmanager
def running(tmp_path: pathlib.Path, servers: tuple[str, ...] = ("a", "b")) -> Iterator[Setup]:
    port, stats = free_port(), free_port()
    ports = {label: free_port() for label in servers}
    config = tmp_path / "lb.yaml"
    config.write_text(config_text(port, stats, tmp_path / "admin.sock", ports))
    with ExitStack() as stack:
        for label, p in ports.items():
            stack.enter_context(backend(label, p))
        proxy = stack.enter_context(lbproxy(config, wait_for=("127.0.0.1", port)))
        setup = Setup(tmp_path, proxy, port, stats)
        setup.ready()
        yield setup


class Load:
    """Clients in threads, one connection per request, until stopped (bounded in count)."""

    def __init__(self, port: int, threads: int = 4, limit: int = 20000) -> None:
        self.port, self.limit = port, limit
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set() and self.ok + self.failed < self.limit:
            try:
                status, _ = get(self.port)
                good = status == 200
                error = f"status {status}"
            except (OSError, http.client.HTTPException) as exc:
                good, error = False, repr(exc)
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.errors.append(error)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(WAIT)


def test_workers_serve_and_the_master_sums_their_counters(tmp_path: pathlib.Path) -> None:
    with running(tmp_path) as s:
        seen = {get(s.port)[1].split()[0] for _ in range(100)}
        assert seen == {"a", "b"}
        wait_for("the summed counters", lambda: s.frontend_total() == 100)
        assert s.proxy.terminate() == 0
        out = s.proxy.stderr()
    served = [
        int(line.split(", ")[-1].split()[0])
        for line in out.splitlines()
        if "lbproxy.master: worker" in line and "finished" in line
    ]
    assert len(served) == 2, out
    assert sum(served) == 100, out


def test_an_admin_change_reaches_every_worker(tmp_path: pathlib.Path) -> None:
    with running(tmp_path) as s:
        ask(s.admin, "set server web/a state maint")
        time.sleep(0.3)  # the master pushes within 50 ms; a margin for a loaded machine
        labels = [get(s.port)[1].split()[0] for _ in range(40)]
        assert set(labels) == {"b"}
        ask(s.admin, "set server web/a state ready")
        ask(s.admin, "set server web/b weight 0")
        time.sleep(0.3)
        labels = [get(s.port)[1].split()[0] for _ in range(40)]
        assert set(labels) == {"a"}


def test_reloads_under_load_fail_no_request(tmp_path: pathlib.Path) -> None:
    with running(tmp_path) as s, Load(s.port) as load:
        wait_for("some load", lambda: load.ok > 20)
        for n in range(1, 4):
            before = set(workers_of(s.proxy))
            s.proxy.proc.send_signal(signal.SIGHUP)
            reloads = n

            def reloaded(reloads: int = reloads) -> bool:
                return s.proxy.stderr().count("serve the new configuration") == reloads

            def old_gone(before: set[int] = before) -> bool:
                return not before & set(workers_of(s.proxy))

            wait_for(f"reload {n}", reloaded)
            wait_for("the old workers to leave", old_gone)
            done = load.ok

            def new_load(done: int = done) -> bool:
                return load.ok > done + 20

            wait_for("load on the new workers", new_load)
        load.stop.set()
    assert load.failed == 0, load.errors[:5]
    assert load.ok > 60


def test_a_killed_worker_is_replaced_and_the_others_go_on(tmp_path: pathlib.Path) -> None:
    with running(tmp_path) as s, Load(s.port, threads=4) as load:
        wait_for("some load", lambda: load.ok > 20)
        victim = workers_of(s.proxy)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for("a replacement", lambda: "started in place of" in s.proxy.stderr())
        wait_for("two workers", lambda: len(workers_of(s.proxy)) == 2)
        done = load.ok
        wait_for("load after the replacement", lambda: load.ok > done + 50)
        load.stop.set()
    out = s.proxy.stderr()
    assert f"worker {victim} died (killed by SIGKILL)" in out
    assert load.failed <= 4, load.errors  # at most the requests it had in flight


def _slow_server(delay: float) -> tuple[socket.socket, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    data = conn.recv(65536)
                    if data.startswith(b"GET /slow"):
                        time.sleep(delay)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nslow\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_sigterm_lets_every_worker_finish_its_requests(tmp_path: pathlib.Path) -> None:
    listener, _ = _slow_server(2.0)
    port, stats = free_port(), free_port()
    config = tmp_path / "lb.yaml"
    config.write_text(
        config_text(port, stats, tmp_path / "admin.sock", {"slow": listener.getsockname()[1]})
    )
    try:
        with lbproxy(config, wait_for=("127.0.0.1", port)) as proxy:
            Setup(tmp_path, proxy, port, stats).ready()
            results: list[tuple[int, str]] = []
            clients = [
                threading.Thread(target=lambda: results.append(get(port, "/slow")))
                for _ in range(4)
            ]
            for c in clients:
                c.start()
            time.sleep(0.5)  # the requests reach the workers and wait on the server
            workers = workers_of(proxy)
            assert proxy.terminate(timeout=WAIT) == 0
            for c in clients:
                c.join(WAIT)
            assert results == [(200, "slow\n")] * 4
            for pid in workers:
                assert f"worker {pid} finished (exit status 0)" in proxy.stderr()
    finally:
        listener.close()


def test_ready_is_notified_once_every_worker_serves(tmp_path: pathlib.Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(WAIT)
    port, stats, a = free_port(), free_port(), free_port()
    config = tmp_path / "lb.yaml"
    config.write_text(config_text(port, stats, tmp_path / "admin.sock", {"a": a}))
    env_before = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    try:
        with backend("a", a), lbproxy(config) as proxy:
            message = notify.recv(4096).decode()
            assert message.startswith("READY=1"), message
            assert "2 worker(s)" in message
            assert len(workers_of(proxy)) == 2
            assert get(port)[0] == 200
            assert proxy.terminate() == 0
    finally:
        if env_before is None:
            del os.environ["NOTIFY_SOCKET"]
        else:
            os.environ["NOTIFY_SOCKET"] = env_before
        notify.close()


def test_one_worker_is_the_single_process(tmp_path: pathlib.Path) -> None:
    port, a = free_port(), free_port()
    config = tmp_path / "lb.yaml"
    config.write_text(
        "global: {workers: 1}\nvirtual_servers:\n  - label: web\n"
        f"    bind: '127.0.0.1:{port}'\n"
        f"    real_servers: [{{label: a, address: '127.0.0.1:{a}'}}]\n"
    )
    with backend("a", a), lbproxy(config, wait_for=("127.0.0.1", port)) as proxy:
        assert get(port)[0] == 200
        assert workers_of(proxy) == []
        assert proxy.terminate() == 0
    assert "lbproxy.master" not in proxy.stderr()


def _get_from(source: str, port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        return conn.getresponse().read().decode().split()[0]
    finally:
        conn.close()


def test_source_persistence_gives_one_server_whichever_worker_accepts(
    tmp_path: pathlib.Path,
) -> None:
    port, stats = free_port(), free_port()
    ports = {label: free_port() for label in ("a", "b", "c")}
    text = config_text(port, stats, tmp_path / "admin.sock", ports)
    text = text.replace(
        "    real_servers:\n", "    persistence: {source: {mask: 32}}\n    real_servers:\n"
    )
    config = tmp_path / "lb.yaml"
    config.write_text(text)
    with ExitStack() as stack:
        for label, p in ports.items():
            stack.enter_context(backend(label, p))
        proxy = stack.enter_context(lbproxy(config, wait_for=("127.0.0.1", port)))
        Setup(tmp_path, proxy, port, stats).ready()
        # Background load keeps both workers accepting, so each client's connections spread.
        stack.enter_context(Load(port, threads=4))
        seen = {
            f"127.0.0.{n}": {_get_from(f"127.0.0.{n}", port) for _ in range(6)}
            for n in range(2, 42)
        }
    split = [source for source, labels in seen.items() if len(labels) > 1]
    assert split == [], (len(split), seen)
    assert len({label for labels in seen.values() for label in labels}) == 3  # all used
