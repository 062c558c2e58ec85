"""keepalived.conf for one node of the pair, from ``ha:`` (pure: text in, text out).

The VRRP instance carries the floating addresses; a ``vrrp_script`` asks the local lbproxy
through its admin socket whether every bind is open (``l7proxy.ha_probe``, the light twin of
``lbproxy ctl health``) and puts the node
in FAULT after two failures, so the peer takes the addresses (keepalived's own tracking, as in
its ``track_script`` examples for HAProxy). Transitions go to syslog with tag ``lbproxy-ha``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from config.model import HaNode, HaSettings

INSTANCE = "lbproxy"  # the vrrp_instance and vrrp_script names
SCRIPT_INTERVAL = 1  # seconds between health runs
SCRIPT_FALL = 2  # failures before FAULT: one lost run (a reload) is not a failover
SCRIPT_RISE = 2
SCRIPT_TIMEOUT = 2  # a hung proxy counts as a failure (the probe itself gives up after 1 s)
NOTIFY_COMMAND = "/usr/bin/logger -t lbproxy-ha"  # keepalived appends: TYPE NAME STATE PRIORITY
AUTH_PASS_MAX = 8  # VRRPv2 authentication data is 8 octets (RFC 2338 5.3.10)
# keepalived splits script lines on spaces and ends them at a quote: nothing to escape with.
_SAFE_WORD_RE = re.compile(r"[^\s\"'\\#!]+")


class HaConfigError(Exception):
    """The pair cannot be described to keepalived; the message says why, in one line."""


def this_node(ha: HaSettings, local_addresses: Collection[str], name: str | None) -> HaNode:
    """The node named ``name``, else the one whose address is on this machine."""
    if name is not None:
        node = ha.node_named(name)
        if node is None:
            known = ", ".join(n.name for n in ha.nodes)
            raise HaConfigError(f"no node named {name!r} under ha.nodes (known: {known})")
        return node
    mine = [node for node in ha.nodes if node.address in local_addresses]
    if len(mine) != 1:
        addresses = ", ".join(n.address for n in ha.nodes)
        where = "none" if not mine else "both"
        raise HaConfigError(
            f"{where} of the node addresses ({addresses}) are on this machine; "
            "say which node this is with --node NAME"
        )
    return mine[0]


def command_line(words: Sequence[str]) -> str:
    """One keepalived script line; refuses words keepalived would split or cut."""
    for word in words:
        if not _SAFE_WORD_RE.fullmatch(word):
            raise HaConfigError(f"{word!r} cannot appear in a keepalived script line (spaces?)")
    return " ".join(words)


def read_auth_pass(text: str, path: str) -> str:
    """The first line of the password file, checked for VRRP's 8 octets."""
    lines = text.splitlines()
    password = lines[0].strip() if lines else ""
    if not password:
        raise HaConfigError(f"{path}: the VRRP password file is empty")
    if len(password.encode()) > AUTH_PASS_MAX or not _SAFE_WORD_RE.fullmatch(password):
        raise HaConfigError(
            f"{path}: the VRRP password must be 1 to {AUTH_PASS_MAX} characters without spaces "
            "or quotes (keepalived would cut it)"
        )
    return password


def keepalived_conf(
    ha: HaSettings,
    node: HaNode,
    *,
    health_command: str,
    auth_pass: str | None = None,
) -> str:
    """The whole keepalived.conf for ``node``; the peer is the other node, reached by unicast."""
    peer = ha.peer_of(node)
    master = node.priority > peer.priority
    # nopreempt works only from state BACKUP: both nodes start as BACKUP then.
    state = "MASTER" if master and ha.preempt else "BACKUP"
    advert = f"{ha.advert_interval:g}"
    lines = [
        f"# keepalived.conf for lbproxy node {node.name} ({node.address}),",
        "# made by `lbproxy ha keepalived`; edit ha: in the lbproxy configuration instead.",
        "",
        "global_defs {",
        f"    router_id lbproxy-{node.name}",
        "    script_user root",
        "    enable_script_security",
        "}",
        "",
        f"vrrp_script {INSTANCE}_health {{",
        f'    script "{health_command}"',
        f"    interval {SCRIPT_INTERVAL}",
        f"    timeout {SCRIPT_TIMEOUT}",
        f"    fall {SCRIPT_FALL}",
        f"    rise {SCRIPT_RISE}",
        "}",
        "",
        f"vrrp_instance {INSTANCE} {{",
        f"    state {state}",
        f"    interface {ha.interface}",
        f"    virtual_router_id {ha.router_id}",
        f"    priority {node.priority}",
        f"    advert_int {advert}",
    ]
    if not ha.preempt:
        lines.append("    nopreempt")
    lines += [
        f"    unicast_src_ip {node.address}",
        "    unicast_peer {",
        f"        {peer.address}",
        "    }",
    ]
    if auth_pass is not None:
        lines += [
            "    authentication {",
            "        auth_type PASS",
            f"        auth_pass {auth_pass}",
            "    }",
        ]
    lines.append("    virtual_ipaddress {")
    lines += [f"        {vip.address} dev {vip.interface}" for vip in ha.vips]
    lines += [
        "    }",
        "    track_script {",
        f"        {INSTANCE}_health",
        "    }",
        f'    notify "{NOTIFY_COMMAND}"',
    ]
    if ha.notify_master is not None:
        lines.append(f'    notify_master "{ha.notify_master}"')
    lines += ["}", ""]
    return "\n".join(lines)
