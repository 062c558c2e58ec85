"""The ``lbproxy`` command: run, check, demo, ctl, and the certificate toolkit.

Exit status: 0 success, 1 bad input (a clear one-line cause on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

from config.model import ProxyConfig
from tls.toolkit import commands as toolkit

from . import ctl, ha_cli

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2


def _version() -> str:
    try:
        return metadata.version("lbproxy")
    except metadata.PackageNotFoundError:
        return "unknown"


def _load(path: str) -> ProxyConfig | None:
    """The configuration, or None after printing every problem (one per line)."""
    from config.loader import ConfigError, load_file

    try:
        return load_file(path)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return None


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_BAD_INPUT
    problems, cert_warnings = _check_certificates(config)
    if getattr(args, "ha_files", True):  # a staged sync has no node-local ha files beside it
        from .ha_sync import check_files

        problems += check_files(config)
    for problem in problems:
        print(f"{args.config}: {problem}", file=sys.stderr)
    if problems:
        return EXIT_BAD_INPUT
    # Warnings do not fail the check, as with `haproxy -c` (exit 0 with [WARNING] lines).
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    for warning in cert_warnings:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    count = len(config.virtual_servers)
    warnings = len(config.warnings) + len(cert_warnings)
    print(
        f"{args.config}: configuration is valid ({count} virtual server(s), {warnings} warning(s))"
    )
    return EXIT_OK


def _check_certificates(config: ProxyConfig) -> tuple[list[str], list[str]]:
    """Load every TLS bind's certificate files, and the CA and client certificate files of the
    real servers reached over TLS, as ``run`` would (like ``haproxy -c``).

    Problems stop ``run``; warnings (expired, not yet valid, expiring soon) do not: those
    certificates are served, as HAProxy, Pound and nginx serve them.
    """
    import datetime

    from tls.client_context import build_client_contexts
    from tls.status import certificate_status, expiry_warnings
    from tls.store import CertificateError, load_certificates

    now = datetime.datetime.now(datetime.UTC)
    problems: list[str] = []
    warnings: list[str] = []
    for vs in config.virtual_servers:
        for bind in vs.binds:
            if bind.tls is None or not bind.tls.certificates:
                continue
            where = f"virtual server {vs.label}, bind {bind.address}"
            try:
                loaded = load_certificates(bind.tls.certificates)
            except CertificateError as error:
                problems.append(f"{where}: {error}")
                continue
            statuses = [certificate_status(cert) for cert in loaded]
            warnings += [f"{where}: {line}" for line in expiry_warnings(statuses, now)]
    # Re-encryption: the CA and client certificate files of the real servers.
    problems += build_client_contexts(config.all_pools())[1]
    return problems, warnings


def _cmd_run(args: argparse.Namespace) -> int:
    from . import app

    config = _load(args.config)
    if config is None:
        return EXIT_BAD_INPUT
    return app.run(config, config_path=args.config)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(http_port=args.port, https_port=args.tls_port, stats_port=args.stats_port)


def _cmd_import(args: argparse.Namespace) -> int:
    """Translate haproxy.cfg and/or pound.cfg; the YAML to -o (or stdout), the report to stderr
    (and to --report). Exit 0: all carried; 1: something that changes traffic was not carried;
    2: a file cannot be read.
    """
    from config.importers.pipeline import EXIT_UNREADABLE, import_configs

    if args.haproxy is None and args.pound is None:
        print("lbproxy import: give --haproxy FILE, --pound FILE or both", file=sys.stderr)
        return EXIT_USAGE
    result = import_configs(args.haproxy, args.pound)
    if result.error is not None:
        print(f"lbproxy import: {result.error}", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        if result.yaml_text is not None:
            if args.output in (None, "-"):
                sys.stdout.write(result.yaml_text)
            else:
                with open(args.output, "w", encoding="utf-8") as handle:
                    handle.write(result.yaml_text)
        if args.report is not None:
            with open(args.report, "w", encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in result.report)
    except OSError as error:
        print(f"lbproxy import: {error.filename}: cannot write: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    for line in result.report:
        print(line, file=sys.stderr)
    return result.status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbproxy",
        description="Layer-7 load balancer with TLS termination (HAProxy + Pound in one process).",
    )
    parser.add_argument("--version", action="version", version=f"lbproxy {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the proxy from a YAML configuration file")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="check a configuration file and exit (like haproxy -c)")
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file")
    check.set_defaults(func=_cmd_check)

    demo = sub.add_parser(
        "demo", help="run an embedded demo: two real servers, HTTP, HTTPS and the stats page"
    )
    demo.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    demo.add_argument("--tls-port", type=int, default=8443, help="HTTPS port (default 8443)")
    demo.add_argument("--stats-port", type=int, default=8404, help="stats port (default 8404)")
    demo.set_defaults(func=_cmd_demo)

    imp = sub.add_parser(
        "import",
        help="translate haproxy.cfg and/or pound.cfg into an lbproxy configuration",
        description="Exit 0: everything that changes traffic was carried; 1: something was not "
        "(the YAML is written, the report lists it); 2: a file cannot be read.",
    )
    imp.add_argument("--haproxy", metavar="FILE", help="haproxy.cfg to translate")
    imp.add_argument("--pound", metavar="FILE", help="pound.cfg to translate")
    imp.add_argument("-o", "--output", metavar="FILE", help="write the YAML here (default: stdout)")
    imp.add_argument(
        "--report", metavar="FILE", help="also write the report here (always on stderr)"
    )
    imp.set_defaults(func=_cmd_import)

    toolkit.register(sub)
    ctl.register(sub)
    ha_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on usage errors, 0 on --help/--version
        return int(exit_.code or 0)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
