"""The certificate toolkit subcommands: csr, convert-pfx, convert-cer, install-cert, selfsigned,
show-cert. ``register`` adds them to the ``lbproxy`` parser (``l7proxy.cli`` only dispatches).

Handlers are thin: read files and the password, call the toolkit's pure modules, write with
``tls.keys`` helpers, print. Bad input ends as one line on stderr naming the file and the cause,
exit 1; usage errors exit 2. Passwords come from a prompt, a file or an environment variable, never
the command line (``/proc/PID/cmdline`` is world-readable), and never reach any output.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import sys
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization

from tls.keys import (
    DEFAULT_KEY_TYPE,
    KEY_TYPES,
    PrivateKey,
    generate_key,
    key_pem,
    write_public_file,
    write_secret_file,
)
from tls.selfsigned import DEFAULT_DAYS, make_self_signed
from tls.store import (
    CertificateError,
    EncryptedKeyError,
    chain_pem,
    describe_subject,
    order_chain,
    parse_pem_bundle,
)

from .certinfo import describe_file, fingerprint
from .csr import SubjectFields, build_csr, request_names, validate_subject
from .der import CertificateFile, looks_like_pkcs12, read_certificate_file
from .install import assemble_bundle, days_left
from .pfx import PfxContents, PfxOpenError, read_pfx

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2

# Input files are certificates, keys or PFX exports: a few KiB. The cap stops a wrong path (a
# log, a disk image) from being read whole; 1 MiB leaves room for long chains and big bundles.
MAX_INPUT_BYTES = 1024 * 1024
# Password files hold one line; reading more would only mean the wrong file was given.
MAX_PASSWORD_BYTES = 4096
# A certificate beyond 825 days is refused by browsers (CA/B forum); self-signed ones are for
# appliances and labs, so allow up to ten years but not typos like --days 36500.
MAX_SELFSIGNED_DAYS = 3650


class BadInput(Exception):
    """One line for stderr: ``<file>: <cause>`` or ``<option>: <cause>``."""


class UsageError(Exception):
    """Options that do not go together; exit 2 like argparse."""


Handler = Callable[[argparse.Namespace], None]


def _run(handler: Handler, args: argparse.Namespace) -> int:
    try:
        handler(args)
    except UsageError as error:
        print(f"lbproxy {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (BadInput, CertificateError, ValueError) as error:
        # One line whatever the library put in the text.
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return _run(handler, args)

    return run


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _note(message: str) -> None:
    print(message, file=sys.stderr)


# --- files and passwords ----------------------------------------------------------------------


def _read_input(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_INPUT_BYTES + 1)
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory") from None
    except OSError as error:
        raise BadInput(f"{path}: cannot read: {error.strerror or error}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise BadInput(f"{path}: larger than {MAX_INPUT_BYTES} bytes; not a certificate file")
    return data


def _refuse_existing(paths: list[str | None], force: bool) -> None:
    """Check every output before writing any, so a refusal leaves nothing half done."""
    given = [path for path in paths if path]
    if len(set(map(os.path.abspath, given))) != len(given):
        raise UsageError("two outputs name the same file")
    if force:
        return
    for path in given:
        if os.path.lexists(path):
            raise BadInput(f"{path}: already exists (use --force to replace it)")


def _write(path: str, data: bytes, *, secret: bool, force: bool) -> None:
    try:
        if secret:
            write_secret_file(path, data, force=force)
        else:
            write_public_file(path, data, force=force)
    except FileExistsError:
        raise BadInput(f"{path}: already exists (use --force to replace it)") from None
    except OSError as error:
        raise BadInput(f"{path}: cannot write: {error.strerror or error}") from None


def _first_line(data: bytes) -> bytes:
    """The password in a file is its first line, without the line end (LF or CRLF)."""
    return data.split(b"\n", 1)[0].removesuffix(b"\r")


def _password_from_options(args: argparse.Namespace, prefix: str = "") -> bytes | None:
    """The password from ``--<prefix>password-file`` or ``--<prefix>password-env``; None when
    neither is given. ``prefix`` is "" for a PKCS#12 file's password, "key-" for a key's."""
    attribute, option = prefix.replace("-", "_"), f"--{prefix}password"
    path = getattr(args, f"{attribute}password_file")
    variable = getattr(args, f"{attribute}password_env")
    if path is not None:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_PASSWORD_BYTES + 1)
            where = f"{option}-file -"
        else:
            data = _read_password_file(path)
            where = path
        if len(data) > MAX_PASSWORD_BYTES:
            raise BadInput(f"{where}: longer than {MAX_PASSWORD_BYTES} bytes; not a password")
        return _first_line(data)
    if variable is not None:
        # The raw bytes: decoding and re-encoding could fail with an error that quotes them.
        value = os.environb.get(os.fsencode(variable))
        if value is None:
            raise BadInput(f"{option}-env: the variable {variable} is not set")
        return value
    return None


def _read_password_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_PASSWORD_BYTES + 1)
    except OSError as error:
        raise BadInput(f"{path}: cannot read: {error.strerror or error}") from None


def _prompt(text: str) -> bytes | None:
    """Ask on the terminal; None when there is no terminal to ask on."""
    if not sys.stdin.isatty():
        return None
    try:
        return getpass.getpass(text).encode("utf-8", "surrogateescape")
    except EOFError:  # Ctrl-D at the prompt
        raise BadInput("no password given") from None


def _ask_password(path: str, why: str, prefix: str = "") -> bytes:
    """The password typed at the terminal; BadInput naming the options when there is none."""
    prompted = _prompt(f"Password for {path}: ")
    if prompted is None:
        raise BadInput(
            f"{path}: {why}: give --{prefix}password-file FILE or --{prefix}password-env VAR "
            "(no terminal to ask on)"
        )
    return prompted


def _open_pfx(path: str, data: bytes, args: argparse.Namespace) -> tuple[PfxContents, bytes]:
    """Open with the given password; without one, try the empty password, then prompt."""
    password = _password_from_options(args)
    if password is not None:
        return read_pfx(data, password, path), password
    try:
        return read_pfx(data, None, path), b""
    except PfxOpenError:
        prompted = _ask_password(path, "needs a password")
    return read_pfx(data, prompted, path), prompted


def _add_password_options(
    parser: argparse.ArgumentParser, prefix: str = "", what: str = "the password"
) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        f"--{prefix}password-file",
        metavar="FILE",
        help=f"read {what} from FILE (first line; '-' reads standard input)",
    )
    group.add_argument(
        f"--{prefix}password-env", metavar="VAR", help=f"read {what} from environment variable VAR"
    )


# --- csr --------------------------------------------------------------------------------------


def _cmd_csr(args: argparse.Namespace) -> None:
    fields = SubjectFields(
        common_name=args.cn,
        country=args.country or "",
        state=args.state or "",
        locality=args.locality or "",
        organization=args.org or "",
        organizational_unit=args.ou or "",
        email=args.email or "",
    )
    # Validate before the (slow) key generation, so a typo costs nothing.
    request_names(validate_subject(fields).common_name, args.san)
    _refuse_existing([args.key_out, args.csr_out], args.force)
    key = generate_key(args.key_type)
    request = build_csr(key, fields, args.san)
    request_pem = request.public_bytes(serialization.Encoding.PEM)
    _write(args.key_out, key_pem(key), secret=True, force=args.force)
    _write(args.csr_out, request_pem, secret=False, force=args.force)
    _note(f"wrote private key {args.key_out} (mode 0600; keep it for install-cert)")
    _note(f"wrote request {args.csr_out}; send it to your certificate authority:")
    sys.stdout.write(request_pem.decode())


# --- convert-pfx ------------------------------------------------------------------------------


def _cmd_convert_pfx(args: argparse.Namespace) -> None:
    separate = [args.key_out, args.cert_out, args.chain_out]
    if args.out and any(separate):
        raise UsageError("give either --out or --key-out/--cert-out/--chain-out, not both")
    if not args.out and not any(separate):
        raise UsageError("give --out BUNDLE.pem, or --key-out/--cert-out/--chain-out")
    _refuse_existing([args.out, *separate], args.force)
    contents, password = _open_pfx(args.input, _read_input(args.input), args)
    if not contents.chain:
        raise BadInput(f"{args.input}: holds no certificate")
    key_bytes = b""
    if contents.key is not None:
        if args.encrypt_key and not password:
            raise BadInput(f"{args.input}: --encrypt-key needs the file to have a password")
        key_bytes = key_pem(contents.key, password if args.encrypt_key else None)
    if args.key_out and contents.key is None:
        raise BadInput(f"{args.input}: holds no private key (certificate-only export)")
    leaf, intermediates = contents.chain[0], contents.chain[1:] + contents.others
    if args.out:
        bundle = chain_pem(contents.chain + contents.others) + key_bytes
        _write(args.out, bundle, secret=contents.key is not None, force=args.force)
    else:
        if args.key_out:
            _write(args.key_out, key_bytes, secret=True, force=args.force)
        if args.cert_out:
            _write(args.cert_out, chain_pem([leaf]), secret=False, force=args.force)
        if args.chain_out and intermediates:
            _write(args.chain_out, chain_pem(intermediates), secret=False, force=args.force)
        elif args.chain_out:
            _note(f"{args.input}: no intermediate certificates; {args.chain_out} not written")
    _report_pfx(args, contents)


def _report_pfx(args: argparse.Namespace, contents: PfxContents) -> None:
    order = " -> ".join(describe_subject(cert) for cert in contents.chain)
    print(f"{args.input}: {len(contents.chain) + len(contents.others)} certificate(s): {order}")
    if contents.others:
        _warn(f"{len(contents.others)} certificate(s) not on the leaf's chain were kept last")
    if contents.key is None:
        _note(f"{args.input}: no private key in the file; wrote certificates only")
    elif args.encrypt_key:
        _note("the private key is encrypted with the file's password")
    outputs = (args.out, args.key_out, args.cert_out, args.chain_out)
    written = [path for path in outputs if path and os.path.exists(path)]
    print(f"wrote {', '.join(written)}")


# --- convert-cer ------------------------------------------------------------------------------


def _cmd_convert_cer(args: argparse.Namespace) -> None:
    _refuse_existing([args.out], args.force)
    found = read_certificate_file(_read_input(args.input), args.input)
    chain = order_chain(found.certificates)
    rest = [cert for cert in dict.fromkeys(found.certificates) if cert not in chain]
    if found.key is not None:
        _warn(f"{args.input}: holds a private key too; it is not copied to {args.out}")
    _write(args.out, chain_pem(chain + rest), secret=False, force=args.force)
    names = ", ".join(describe_subject(cert) for cert in chain + rest)
    print(
        f"{args.input} ({found.encoding}) -> {args.out}: {len(chain + rest)} certificate(s): "
        f"{names}"
    )


# --- install-cert -----------------------------------------------------------------------------


def _load_key(path: str, args: argparse.Namespace) -> PrivateKey:
    """The pending key, decrypted with the given password, else one asked for on a terminal."""
    data = _read_input(path)
    password = _password_from_options(args, "key-")
    try:
        key, _ = parse_pem_bundle(data, path, key_password=password)
    except EncryptedKeyError:
        prompted = _ask_password(path, "the private key is encrypted", "key-")
        key, _ = parse_pem_bundle(data, path, key_password=prompted)
    if key is None:
        raise BadInput(f"{path}: holds no private key")
    return key


def _cmd_install_cert(args: argparse.Namespace) -> None:
    _refuse_existing([args.out], args.force)
    key = _load_key(args.key, args)
    certs = read_certificate_file(_read_input(args.cert), args.cert).certificates
    for chain_file in args.chain or []:
        certs += read_certificate_file(_read_input(chain_file), chain_file).certificates
    bundle = assemble_bundle(key, certs, cert_source=args.cert, key_source=args.key, now=_now())
    for warning in bundle.warnings:
        _warn(f"{args.cert}: {warning}")
    _write(args.out, bundle.pem, secret=True, force=args.force)
    leaf = bundle.chain[0]
    order = " -> ".join(describe_subject(cert) for cert in bundle.chain)
    print(f"wrote {args.out} (mode 0600, the key unencrypted as a TLS bind needs it): {order}")
    print(f"expires {leaf.not_valid_after_utc:%Y-%m-%d} ({days_left(leaf, _now())} day(s) left)")


# --- selfsigned -------------------------------------------------------------------------------


def _cmd_selfsigned(args: argparse.Namespace) -> None:
    if not 1 <= args.days <= MAX_SELFSIGNED_DAYS:
        raise BadInput(f"--days: must be between 1 and {MAX_SELFSIGNED_DAYS}, got {args.days}")
    # The same checks as a request: a self-signed certificate names hosts the same way.
    common_name = validate_subject(SubjectFields(common_name=args.cn)).common_name
    others = request_names(common_name, args.san)[1:]
    _refuse_existing([args.out], args.force)
    key = generate_key(args.key_type)
    cert = make_self_signed(key, common_name, others, days=args.days, now=_now())
    _write(args.out, chain_pem([cert]) + key_pem(key), secret=True, force=args.force)
    print(f"wrote {args.out} (mode 0600): self-signed {describe_subject(cert)}")
    print(f"expires {cert.not_valid_after_utc:%Y-%m-%d}; sha256 {fingerprint(cert)}")


# --- show-cert --------------------------------------------------------------------------------


def _cmd_show_cert(args: argparse.Namespace) -> None:
    data = _read_input(args.file)
    if looks_like_pkcs12(data):
        contents, _ = _open_pfx(args.file, data, args)
        found = CertificateFile(contents.chain + contents.others, contents.key, "PKCS#12")
    else:
        found = read_certificate_file(data, args.file)
    lines = describe_file(
        args.file,
        found.encoding,
        found.certificates,
        found.key,
        _now(),
        key_encrypted=found.key_encrypted,
    )
    for line in lines:
        print(line)


# --- registration -----------------------------------------------------------------------------


def _add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace existing output files")


def _register_csr(sub: argparse._SubParsersAction[Any]) -> None:
    csr = sub.add_parser(
        "csr", help="make a private key and a certificate signing request to send to a CA"
    )
    csr.add_argument("--cn", required=True, help="common name, e.g. www.example.com")
    csr.add_argument(
        "--san", action="append", default=[], metavar="NAME", help="another name (repeatable)"
    )
    csr.add_argument("--country", help="two-letter country code, e.g. US")
    csr.add_argument("--state", help="state or province, e.g. Delaware")
    csr.add_argument("--locality", help="city, e.g. Wilmington")
    csr.add_argument("--org", help='organisation, e.g. "Example, Inc."')
    csr.add_argument("--ou", help="organisational unit, e.g. Support")
    csr.add_argument("--email", help="contact e-mail address")
    csr.add_argument(
        "--key-type",
        choices=KEY_TYPES,
        default=DEFAULT_KEY_TYPE,
        help=f"key algorithm and size (default {DEFAULT_KEY_TYPE})",
    )
    csr.add_argument("--key-out", required=True, metavar="KEY", help="new private key (0600)")
    csr.add_argument("--csr-out", required=True, metavar="CSR", help="the request (PEM)")
    _add_force(csr)
    csr.set_defaults(func=_command(_cmd_csr))


def _register_convert(sub: argparse._SubParsersAction[Any]) -> None:
    pfx = sub.add_parser("convert-pfx", help="PKCS#12 (.pfx/.p12, e.g. a Windows export) to PEM")
    pfx.add_argument("input", metavar="IN.pfx", help="the PKCS#12 file")
    pfx.add_argument("--out", metavar="BUNDLE.pem", help="one bundle: leaf, chain, key")
    pfx.add_argument("--key-out", metavar="KEY", help="the private key alone (0600)")
    pfx.add_argument("--cert-out", metavar="CERT", help="the leaf certificate alone")
    pfx.add_argument("--chain-out", metavar="CHAIN", help="the intermediates, leaf to root")
    pfx.add_argument(
        "--encrypt-key",
        action="store_true",
        help="encrypt the written key with the file's password (lbproxy binds need it plain)",
    )
    _add_password_options(pfx)
    _add_force(pfx)
    pfx.set_defaults(func=_command(_cmd_convert_pfx))

    cer = sub.add_parser("convert-cer", help="DER/PEM certificates or a PKCS#7 (.p7b) chain to PEM")
    cer.add_argument("input", metavar="IN", help="DER or PEM certificate(s), or a .p7b chain")
    cer.add_argument("--out", required=True, metavar="OUT.pem", help="PEM, leaf first")
    _add_force(cer)
    cer.set_defaults(func=_command(_cmd_convert_cer))


def _register_install(sub: argparse._SubParsersAction[Any]) -> None:
    install = sub.add_parser(
        "install-cert", help="pair the CA's signed certificate with the pending key: one bundle"
    )
    install.add_argument("--key", required=True, metavar="KEY", help="the key from `lbproxy csr`")
    install.add_argument("--cert", required=True, metavar="SIGNED", help="the CA's answer")
    install.add_argument(
        "--chain",
        action="append",
        metavar="CHAIN",
        help="intermediate certificates (PEM, DER or .p7b; repeatable)",
    )
    install.add_argument(
        "--out", required=True, metavar="BUNDLE.pem", help="leaf, chain and key (0600)"
    )
    _add_password_options(install, "key-", "the password of an encrypted --key")
    _add_force(install)
    install.set_defaults(func=_command(_cmd_install_cert))

    selfsigned = sub.add_parser("selfsigned", help="make a self-signed certificate bundle")
    selfsigned.add_argument("--cn", required=True, help="host name, also put in the SAN")
    selfsigned.add_argument(
        "--san", action="append", default=[], metavar="NAME", help="another name (repeatable)"
    )
    selfsigned.add_argument(
        "--out", required=True, metavar="BUNDLE.pem", help="certificate and key (0600)"
    )
    selfsigned.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})"
    )
    selfsigned.add_argument("--key-type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE)
    _add_force(selfsigned)
    selfsigned.set_defaults(func=_command(_cmd_selfsigned))

    show = sub.add_parser(
        "show-cert", help="describe a certificate file (PEM, DER, PKCS#7 or PKCS#12)"
    )
    show.add_argument("file", metavar="FILE", help="PEM, DER, PKCS#7 or PKCS#12 file")
    _add_password_options(show)
    show.set_defaults(func=_command(_cmd_show_cert))


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the toolkit's subcommands to the ``lbproxy`` parser."""
    _register_csr(sub)
    _register_convert(sub)
    _register_install(sub)
