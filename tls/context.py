"""Server ``ssl.SSLContext`` building with Mozilla "intermediate" (guidelines 5.7) defaults.

One context per certificate; ``tls.server_tls`` switches between them in the SNI callback.
OpenSSL copies options, verify mode, groups and ALPN from the context a connection starts on, so
every context of one bind is built from the same settings by this one function.

Python 3.11's ``ssl`` cannot set the key-exchange groups or the TLS 1.3 suites; 3.15 adds
``SSLContext.set_groups``, used where it exists. Otherwise both are plain
``SSL_CTX_ctrl``/``SSL_CTX_set_ciphersuites`` calls on the ``SSL_CTX`` that ``_ssl`` already
holds, made through ctypes against the very libssl ``_ssl`` is linked with, on CPython versions
whose ``_ssl`` object layout is known (``_ContextPrefix``). Where that does not hold, key exchange
falls back to P-256 alone with a warning. The other route, an OpenSSL configuration file with
``Groups = ...``, is process-wide, must be in place before OpenSSL initialises and would silently
do nothing when the variable is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import shutil
import ssl
import sys
import tempfile
from collections.abc import Iterator

from config.model import TlsSettings, Verify

from .certificate import LoadedCertificate
from .keys import write_secret_file

log = logging.getLogger("lbproxy.tls")

# Mozilla server-side TLS guidelines 5.7, "intermediate" profile.
MOZILLA_INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
MOZILLA_INTERMEDIATE_CIPHERSUITES = (
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
)
# Mozilla intermediate: X25519, prime256v1, secp384r1 (OpenSSL's default adds X448 and P-521).
GROUPS = "X25519:P-256:P-384"
# HTTP/1.1 only: h11 speaks nothing else, so a client must never be told h2 is available.
ALPN_PROTOCOLS = ("http/1.1",)
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# RFC 7919 ffdhe2048, the DH group Mozilla's intermediate configuration ships for the DHE suites.
FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""

# OpenSSL ssl.h: SSL_CTX_set1_groups_list and SSL_CTX_set_tlsext_ticket_keys are these ctrls.
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59


# CPython versions whose ``_ssl.c`` declares ``PySSLContext`` as PyObject_HEAD followed by the
# fields of ``_ContextPrefix``: the prefix has not changed from 3.8 through 3.13 (3.13 appends PSK
# callbacks after it). 3.11 is the version tested here (the oldest lbproxy supports); 3.14 and
# later are not assumed: their source was not checked, and 3.15 has ``set_groups`` anyway.
CTYPES_PYTHONS = ((3, 11), (3, 13))


class _ContextPrefix(ctypes.Structure):
    """The start of CPython's ``PySSLContext`` after PyObject_HEAD (``Modules/_ssl.c``)."""

    _fields_ = (
        ("ctx", ctypes.c_void_p),  # SSL_CTX *
        ("alpn_protocols", ctypes.c_void_p),
        ("alpn_protocols_len", ctypes.c_uint),
        ("set_sni_cb", ctypes.c_void_p),  # PyObject *: the sni_callback, NULL when unset
        ("check_hostname", ctypes.c_int),
        ("hostflags", ctypes.c_uint),
        ("protocol", ctypes.c_int),  # the PROTOCOL_* the context was made with
    )


def ctypes_refusal(implementation: str, version: tuple[int, int]) -> str | None:
    """Why ctypes must not reach into ``ssl`` on this interpreter; None when it may."""
    if implementation != "CPython":
        return f"{implementation} is not CPython; its ssl objects have another layout"
    low, high = CTYPES_PYTHONS
    if not low <= version <= high:
        shown = ".".join(map(str, version))
        return f"Python {shown}: the ssl object layout is only known for 3.11 to 3.13"
    return None


def _sni_probe(_obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
    """Set as the SNI callback for an instant, so its address shows up in the object."""


class _LibSsl:
    """The few libssl calls ``ssl`` lacks, bound to the libssl that ``_ssl`` uses."""

    def __init__(self) -> None:
        refusal = ctypes_refusal(platform.python_implementation(), sys.version_info[:2])
        if refusal is not None:
            raise ImportError(refusal)
        import _ssl

        base = _ssl._SSLContext
        self._offset = object.__basicsize__  # PyObject_HEAD, whatever the build adds to it
        if self._offset + ctypes.sizeof(_ContextPrefix) > base.__basicsize__:
            raise ImportError("_ssl._SSLContext is smaller than the layout it should have")
        self._base = base
        # dlsym on _ssl's handle also searches its dependencies, so this finds the same libssl
        # (never the copy bundled inside ``cryptography``) without naming a file.
        lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
        self.ctrl = lib.SSL_CTX_ctrl
        self.ctrl.restype = ctypes.c_long
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.get_options = lib.SSL_CTX_get_options
        self.get_options.restype = ctypes.c_uint64
        self.get_options.argtypes = [ctypes.c_void_p]
        self.set_ciphersuites = lib.SSL_CTX_set_ciphersuites
        self.set_ciphersuites.restype = ctypes.c_int
        self.set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        # A refused call leaves OpenSSL's error queue filled; ``ssl`` would later report it
        # against an unrelated operation.
        self.clear_errors = lib.ERR_clear_error
        self.clear_errors.restype = None
        self.clear_errors.argtypes = []

    def _prefix(self, context: ssl.SSLContext) -> _ContextPrefix:
        # A copy of bytes inside the object itself: __init__ checked that the C type is at
        # least this large, so this reads no memory the object does not own.
        raw = ctypes.string_at(id(context) + self._offset, ctypes.sizeof(_ContextPrefix))
        return _ContextPrefix.from_buffer_copy(raw)

    def ssl_ctx(self, context: ssl.SSLContext) -> int:
        """The ``SSL_CTX *`` inside ``context``; RuntimeError unless proven to be it.

        The proof dereferences nothing before the layout is confirmed. First, from the
        object's own bytes only: the protocol field must equal ``context.protocol`` and the SNI
        callback field the address of the callback ``ssl`` reports (a probe is set for an
        instant when there is none). Only then is the ``ctx`` field, by that confirmed layout
        the SSL_CTX, handed to libssl: flipping an option through ``ssl`` must show up through
        ``SSL_CTX_get_options``, which proves the libssl bound here is the one ``_ssl`` uses.
        """
        if not isinstance(context, self._base):
            raise RuntimeError("not an ssl.SSLContext")
        callback = context.sni_callback
        if callback is None:
            context.sni_callback = _sni_probe
            try:
                prefix = self._prefix(context)
                expected = id(context.sni_callback)
            finally:
                context.sni_callback = None
        else:
            prefix, expected = self._prefix(context), id(callback)
        if prefix.protocol != int(context.protocol) or prefix.set_sni_cb != expected:
            raise RuntimeError("the ssl object does not have the expected layout")
        pointer = prefix.ctx
        if not pointer:
            raise RuntimeError("the ssl object holds no SSL_CTX")
        probe = ssl.OP_NO_TICKET  # toggled and restored: a bit nothing else here depends on
        before = context.options
        try:
            for options in (before ^ probe, before):
                context.options = options
                if self.get_options(pointer) != int(context.options):
                    raise RuntimeError("SSL_CTX_get_options disagrees with SSLContext.options")
        finally:
            context.options = before
        return int(pointer)


_libssl: _LibSsl | None = None
_libssl_error: str | None = None


def _openssl() -> _LibSsl | None:
    global _libssl, _libssl_error
    if _libssl is None and _libssl_error is None:
        try:
            _libssl = _LibSsl()
        except (OSError, AttributeError, ImportError) as exc:
            _libssl_error = str(exc)
    return _libssl


def restrict_groups(context: ssl.SSLContext, groups: str = GROUPS) -> bool:
    """Limit key exchange to ``groups``; False when only the one-curve fallback was possible."""
    set_groups = getattr(context, "set_groups", None)
    if set_groups is not None:  # Python 3.15+
        try:
            set_groups(groups)
        except ssl.SSLError:
            raise ValueError(f"OpenSSL refused the key exchange groups {groups!r}") from None
        return True
    lib = _openssl()
    reason = _libssl_error or "unknown"
    if lib is not None:
        try:
            pointer = lib.ssl_ctx(context)
        except RuntimeError as exc:
            reason = str(exc)
        else:
            if lib.ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
                lib.clear_errors()
                raise ValueError(f"OpenSSL refused the key exchange groups {groups!r}")
            return True
    # Still inside the profile: clients listing P-256 get a HelloRetryRequest at worst, but a
    # client offering X25519 alone cannot connect.
    log.warning(
        "key exchange limited to P-256 only: this Python cannot set a groups list (%s)", reason
    )
    context.set_ecdh_curve("prime256v1")
    return False


def rotate_ticket_keys(context: ssl.SSLContext) -> bool:
    """New random session-ticket keys: tickets issued before no longer resume, so a returning
    client sees a reloaded certificate (docs/architecture.md, "TLS").

    False where libssl cannot be reached; the old keys then stay until the process restarts.
    """
    lib = _openssl()
    if lib is None:
        return False
    try:
        pointer = lib.ssl_ctx(context)
    except RuntimeError:
        return False
    size = int(lib.ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 0, None))  # NULL: size wanted
    if size <= 0:
        lib.clear_errors()
        return False
    keys = ctypes.create_string_buffer(os.urandom(size), size)
    try:
        done = int(lib.ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, size, keys)) == 1
    finally:
        ctypes.memset(keys, 0, size)  # OpenSSL copied them; no second copy stays behind
    if not done:
        lib.clear_errors()
    return done


def _set_ciphersuites(context: ssl.SSLContext, suites: str) -> None:
    lib = _openssl()
    if lib is None:
        raise ValueError(
            f"tls ciphersuites: cannot be changed with this Python ({_libssl_error or 'unknown'})"
        )
    try:
        pointer = lib.ssl_ctx(context)
    except RuntimeError as exc:
        raise ValueError(f"tls ciphersuites: cannot be changed with this Python ({exc})") from None
    wanted = [s for s in suites.split(":") if s]
    if lib.set_ciphersuites(pointer, suites.encode("ascii")) != 1 or not wanted:
        lib.clear_errors()
        raise ValueError(f"tls ciphersuites: OpenSSL accepts none of {suites!r}")
    offered = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"}
    # OpenSSL skips unknown names silently; a typo must not quietly drop a suite.
    unknown = [s for s in wanted if s not in offered]
    if unknown:
        raise ValueError(f"tls ciphersuites: unknown TLS 1.3 suite(s) {', '.join(unknown)}")


@contextlib.contextmanager
def private_files(files: dict[str, bytes]) -> Iterator[dict[str, str]]:
    """Paths holding ``files`` for as long as the block runs, readable by this user only.

    ``ssl`` loads certificates and keys only from paths. Anonymous memory files
    (``memfd_create``, reached through ``/proc/self/fd``) never touch a disk and vanish with the
    process; where they do not exist, a 0700 temporary folder with 0600 files is used and
    removed afterwards, even when loading fails.
    """
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            paths = {}
            for name, data in files.items():
                fd = memfd(f"lbproxy-{name}", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
                paths[name] = f"/proc/self/fd/{fd}"
            yield paths
        finally:
            for fd in fds:
                os.close(fd)
        return
    with temporary_private_files(files) as paths:
        yield paths


@contextlib.contextmanager
def temporary_private_files(files: dict[str, bytes]) -> Iterator[dict[str, str]]:
    """The 0700 folder / 0600 files fallback of ``private_files``, removed on the way out."""
    folder = tempfile.mkdtemp(prefix="lbproxy-tls-")  # mkdtemp creates the folder 0700
    try:
        paths = {}
        for name, data in files.items():
            path = os.path.join(folder, name)
            write_secret_file(path, data)
            paths[name] = path
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _load_chain(context: ssl.SSLContext, cert: LoadedCertificate) -> None:
    with private_files(
        {"chain.pem": cert.chain_pem, "key.pem": cert.key_pem, "dh.pem": FFDHE2048_PEM}
    ) as paths:
        try:
            context.load_cert_chain(paths["chain.pem"], paths["key.pem"])
            context.load_dh_params(paths["dh.pem"])
        except ssl.SSLError as exc:
            # The reason only: OpenSSL's message never contains key bytes, but be terse anyway.
            raise ValueError(
                f"{cert.source}: OpenSSL cannot use this certificate ({exc.reason})"
            ) from None


TLS13_TICKETS = 1


def build_context(cert: LoadedCertificate, settings: TlsSettings) -> ssl.SSLContext:
    """A server context serving ``cert`` with ``settings``; ValueError names what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = MIN_VERSIONS[settings.min_version]
    except KeyError:
        raise ValueError(
            f"tls min_version: {settings.min_version!r} is not one of {', '.join(MIN_VERSIONS)}"
        ) from None
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    # Mozilla intermediate wants the client's preference (it may lack AES hardware: ChaCha20).
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options &= ~ssl.OP_NO_TICKET  # resumption on: tickets and the session cache
    # One TLS 1.3 ticket per handshake instead of OpenSSL's two: a browser resumes with one,
    # and each ticket costs an encryption and a record on every full handshake (~15 µs here).
    context.num_tickets = TLS13_TICKETS
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ciphers = settings.ciphers or MOZILLA_INTERMEDIATE_CIPHERS
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError:
        raise ValueError(f"tls ciphers: OpenSSL accepts none of {ciphers!r}") from None
    if settings.ciphersuites is not None:
        _set_ciphersuites(context, settings.ciphersuites)
    else:
        # Where libssl cannot be reached this changes nothing that matters: OpenSSL's default
        # TLS 1.3 suites are the same three, in another order.
        with contextlib.suppress(ValueError):
            _set_ciphersuites(context, MOZILLA_INTERMEDIATE_CIPHERSUITES)
    restrict_groups(context)
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    _configure_client_auth(context, settings)
    _load_chain(context, cert)
    return context


def _configure_client_auth(context: ssl.SSLContext, settings: TlsSettings) -> None:
    if settings.verify is Verify.NONE:
        return
    if not settings.client_ca:
        raise ValueError(f"tls verify: {settings.verify.value} needs client_ca (a PEM file of CAs)")
    try:
        context.load_verify_locations(cafile=settings.client_ca)
    except FileNotFoundError:
        raise ValueError(f"tls client_ca: {settings.client_ca}: no such file") from None
    except PermissionError:
        raise ValueError(f"tls client_ca: {settings.client_ca}: permission denied") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or "unreadable"
        raise ValueError(f"tls client_ca: {settings.client_ca}: {reason}") from None
    context.verify_mode = (
        ssl.CERT_REQUIRED if settings.verify is Verify.REQUIRED else ssl.CERT_OPTIONAL
    )
