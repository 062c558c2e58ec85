"""``lbproxy ha keepalived|receive|keygen`` and ``lbproxy sync``: the pair's commands.

Exit status as the rest of ``lbproxy``: 0 done, 1 a clear one-line cause on stderr (for sync:
the peer's error lines), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from config.model import ProxyConfig

EXIT_OK = 0
EXIT_FAILED = 1
SYNC_CERT_DAYS = 3650  # pinned, not chained: expiry only matters to OpenSSL's check


def _load(path: str) -> ProxyConfig | None:
    from .cli import _load as load

    return load(path)


def _cmd_keepalived(args: argparse.Namespace) -> int:
    from .ha_keepalived import HaConfigError, command_line, keepalived_conf, read_auth_pass
    from .ha_sync import SyncError, nodes_of

    config = _load(args.config)
    if config is None:
        return EXIT_FAILED
    admin = config.global_.admin_socket
    if admin is None:
        print(f"lbproxy ha: {args.config}: keepalived asks global.admin_socket", file=sys.stderr)
        return EXIT_FAILED
    try:
        ha, node, _ = nodes_of(config, args.node)
        python = args.python or sys.executable
        health = command_line([python, "-m", "l7proxy.ha_probe", admin.path])
        auth_pass = None
        if ha.auth_pass_file is not None:
            with open(ha.auth_pass_file, encoding="utf-8") as handle:
                auth_pass = read_auth_pass(handle.read(4096), ha.auth_pass_file)
        if ha.notify_master is not None and '"' in ha.notify_master:
            raise HaConfigError("ha.notify_master must not contain '\"' (keepalived quoting)")
        text = keepalived_conf(ha, node, health_command=health, auth_pass=auth_pass)
    except (HaConfigError, SyncError) as error:
        print(f"lbproxy ha: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, UnicodeDecodeError) as error:
        print(f"lbproxy ha: auth_pass_file: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.output:
        from tls.keys import write_secret_file

        # It holds the VRRP password: owner-only, like keepalived's own packaging.
        write_secret_file(args.output, text.encode(), force=True)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cmd_sync(args: argparse.Namespace) -> int:
    from .ha_sync import SyncError, send

    config = _load(args.config)
    if config is None:
        return EXIT_FAILED
    try:
        answer, peer = send(config, args.config, args.node)
    except SyncError as error:
        print(f"lbproxy sync: {error}", file=sys.stderr)
        return EXIT_FAILED
    stream = sys.stdout if answer.ok else sys.stderr
    for line in answer.lines:
        print(line, file=stream)
    if not answer.ok:
        print(f"lbproxy sync: {peer} refused the configuration", file=sys.stderr)
        return EXIT_FAILED
    print(f"lbproxy sync: {peer} took the configuration")
    return EXIT_OK


def _cmd_receive(args: argparse.Namespace) -> int:
    import logging

    import trio

    from .ha_sync import SyncError, receive_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if _load(args.config) is None:
        return EXIT_FAILED
    try:
        trio.run(receive_forever, args.config, args.node)
    except SyncError as error:
        print(f"lbproxy ha receive: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"lbproxy ha receive: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from tls.keys import generate_key, key_pem, write_public_file, write_secret_file

    from .ha_sync import fingerprint_of

    key = generate_key()
    # Not tls.selfsigned's server certificate: this one authenticates both ends of the channel
    # (its serverAuth-only key usage would fail the client side), and it is its own anchor.
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, f"lbproxy-ha {args.name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SYNC_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    # The key has one name on every node, so the configuration (ha.sync.key) is the same text.
    key_path = os.path.join(args.dir, "sync.key")
    cert_path = os.path.join(args.dir, f"{args.name}.pem")
    try:
        os.makedirs(args.dir, exist_ok=True)
        write_secret_file(key_path, key_pem(key))
        write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    except FileExistsError as error:
        print(f"lbproxy ha keygen: {error.filename} exists; not overwritten", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"lbproxy ha keygen: {error.filename}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILED
    der = cert.public_bytes(serialization.Encoding.DER)
    print(f"{key_path} (0600, stays on this node), {cert_path} (copy to the peer)")
    print(f"fingerprint: {fingerprint_of(der)}")
    return EXIT_OK


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file")
    parser.add_argument(
        "--node", metavar="NAME", help="which of ha.nodes this is (default: by its address)"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ha = sub.add_parser("ha", help="the clustered pair: keepalived.conf, sync receiver, keys")
    ha_sub = ha.add_subparsers(dest="ha_command", metavar="COMMAND", required=True)

    keepalived = ha_sub.add_parser("keepalived", help="print keepalived.conf for this node")
    _config_args(keepalived)
    keepalived.add_argument("-o", "--output", metavar="FILE", help="write it here (mode 0600)")
    keepalived.add_argument(
        "--python",
        metavar="PATH",
        help="the interpreter that has lbproxy, for the health probe (default: this one)",
    )
    keepalived.set_defaults(func=_cmd_keepalived)

    receive = ha_sub.add_parser("receive", help="take configuration syncs from the peer")
    _config_args(receive)
    receive.set_defaults(func=_cmd_receive)

    keygen = ha_sub.add_parser("keygen", help="make this node's sync key and certificate")
    keygen.add_argument("name", help="the node's name under ha.nodes")
    keygen.add_argument("--dir", default=".", help="where to write sync.key and NAME.pem")
    keygen.set_defaults(func=_cmd_keygen)

    sync = sub.add_parser(
        "sync", help="copy the configuration, its certificates and server states to the peer"
    )
    _config_args(sync)
    sync.set_defaults(func=_cmd_sync)
