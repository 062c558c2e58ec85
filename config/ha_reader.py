"""Reading ``ha:``: the keepalived pair, its floating addresses and the sync channel.

Pure like the rest of the loader: files named here (the sync certificate, the VRRP password)
are not opened; ``lbproxy check`` opens them (``l7proxy.ha_check``).
"""

from __future__ import annotations

import ipaddress
import re

from yaml.nodes import Node, ScalarNode

from .fields import FieldReader
from .model import (
    DEFAULT_HA_ADVERT,
    DEFAULT_HA_SYNC_PORT,
    HA_ROLE_PRIORITY,
    HaNode,
    HaSettings,
    HaSync,
    HaVip,
)
from .nodes import Entry
from .scalars import MAX_PORT

HA_KEYS = (
    "router_id",
    "interface",
    "vips",
    "nodes",
    "advert_interval",
    "preempt",
    "auth_pass_file",
    "notify_master",
    "sync",
)
VIP_KEYS = ("address", "interface")
NODE_KEYS = ("address", "priority", "role", "sync_cert", "fingerprint")
SYNC_KEYS = ("key", "port", "bind")
ROUTER_ID_MAX = 255  # VRRP virtual router identifier is one octet (RFC 5798 5.2.3)
PRIORITY_MAX = 254  # 255 is reserved for the address owner (RFC 5798 5.2.4)
ADVERT_MAX = 255.0  # keepalived's advert_int limit
_INTERFACE_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")  # IFNAMSIZ - 1
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")


def normal_fingerprint(text: str) -> str:
    """``AB:CD:...`` (openssl x509 -fingerprint) or plain hex, as lower-case hex."""
    return text.replace(":", "").strip().lower()


class HaReader(FieldReader):
    def ha_settings(self, entry: Entry) -> HaSettings | None:
        m = self.mapping(
            entry.value, entry.path, HA_KEYS, required=("router_id", "interface", "vips", "nodes")
        )
        if m is None:
            return None
        router_id = self.opt_int(m.get("router_id"), 0, 1, ROUTER_ID_MAX)
        interface = self.interface_name(m.get("interface"))
        vips = self.vips(m.get("vips"), interface)
        nodes = self.ha_nodes(m.get("nodes"))
        advert = self.opt_duration(m.get("advert_interval"), DEFAULT_HA_ADVERT)
        if advert is not None and advert > ADVERT_MAX:
            entry_ = m.get("advert_interval")
            assert entry_ is not None
            self.problem(entry_.value, entry_.path, f"at most {ADVERT_MAX:g}s")
        preempt = self.opt_bool(m.get("preempt"), True)
        auth_entry = m.get("auth_pass_file")
        auth = self.path_value(auth_entry, None) if auth_entry is not None else None
        notify = self.opt_string(m.get("notify_master"))
        sync_entry = m.get("sync")
        sync = self.ha_sync(sync_entry) if sync_entry is not None else None
        if sync is not None and nodes is not None:
            for node in nodes:
                if node.sync_cert is None:
                    self.problem(
                        m.node, f"{entry.path}.nodes.{node.name}.sync_cert", "required with sync"
                    )
        if (
            router_id is None
            or interface is None
            or vips is None
            or nodes is None
            or advert is None
            or preempt is None
            or self.failed_since(m)
        ):
            return None
        return HaSettings(
            router_id=router_id,
            interface=interface,
            vips=vips,
            nodes=nodes,
            advert_interval=advert,
            preempt=preempt,
            auth_pass_file=auth,
            notify_master=notify,
            sync=sync,
        )

    def interface_name(self, entry: Entry | None) -> str | None:
        text = self.opt_string(entry)
        if text is not None and entry is not None and not _INTERFACE_RE.fullmatch(text):
            self.problem(entry.value, entry.path, f"{text!r} is not an interface name")
            return None
        return text

    def vips(self, entry: Entry | None, interface: str | None) -> tuple[HaVip, ...] | None:
        if entry is None:
            return None
        items = self.sequence(entry.value, entry.path, allow_empty=False)
        if items is None:
            return None
        vips: list[HaVip] = []
        for index, item in enumerate(items):
            vip = self.vip(item, f"{entry.path}[{index}]", interface)
            if vip is not None:
                vips.append(vip)
        return tuple(vips) if len(vips) == len(items) else None

    def vip(self, node: Node, path: str, interface: str | None) -> HaVip | None:
        """``10.0.0.10/24`` or ``{address: 10.0.0.10/24, interface: eth1}``."""
        address_node, own_interface = node, interface
        if not isinstance(node, ScalarNode):
            m = self.mapping(node, path, VIP_KEYS, required=("address",))
            if m is None:
                return None
            address_entry = m.get("address")
            if address_entry is None:
                return None
            address_node, path = address_entry.value, address_entry.path
            if "interface" in m:
                own_interface = self.interface_name(m.get("interface"))
        text = self.string(address_node, path)
        if text is None or own_interface is None:
            return None
        if "/" not in text:
            self.problem(address_node, path, f"{text!r}: give the prefix length, like {text}/24")
            return None
        try:
            address = ipaddress.ip_interface(text)
        except ValueError as error:
            self.problem(address_node, path, str(error))
            return None
        return HaVip(address, own_interface)

    def ha_nodes(self, entry: Entry | None) -> tuple[HaNode, ...] | None:
        if entry is None:
            return None
        m = self.mapping(entry.value, entry.path, None)
        if m is None:
            return None
        nodes = [node for node in (self.ha_node(e) for e in m) if node is not None]
        if len(m.entries) != 2:
            self.problem(m.node, entry.path, f"a pair has two nodes, got {len(m.entries)}")
            return None
        if len(nodes) != 2:
            return None
        if nodes[0].address == nodes[1].address:
            self.problem(m.node, entry.path, "the two nodes have the same address")
        if nodes[0].priority == nodes[1].priority:
            self.problem(
                m.node,
                entry.path,
                "the two nodes have the same priority; the higher one is the master "
                "(or give role: master and role: backup)",
            )
        return None if self.failed_since(m) else tuple(nodes)

    def ha_node(self, entry: Entry) -> HaNode | None:
        name = entry.key.value
        if not self.label_text(entry.key, entry.path, name, "node name"):
            return None
        m = self.mapping(entry.value, entry.path, NODE_KEYS, required=("address",))
        if m is None:
            return None
        address_entry = m.get("address")
        address = self.opt_string(address_entry)
        if address is not None and address_entry is not None:
            try:
                address = str(ipaddress.ip_address(address))
            except ValueError:
                self.problem(address_entry.value, address_entry.path, "expected an IP address")
                address = None
        role_entry = m.get("role")
        role = self.opt_choice(role_entry, tuple(HA_ROLE_PRIORITY), None)
        priority_entry = m.get("priority")
        if priority_entry is None and role_entry is None:
            self.problem(m.node, f"{entry.path}.priority", "give priority (1-254) or role")
        default = HA_ROLE_PRIORITY.get(role or "", 0)
        priority = self.opt_int(priority_entry, default, 1, PRIORITY_MAX)
        cert_entry = m.get("sync_cert")
        sync_cert = self.path_value(cert_entry, None) if cert_entry is not None else None
        fingerprint_entry = m.get("fingerprint")
        fingerprint = self.opt_string(fingerprint_entry)
        if fingerprint is not None and fingerprint_entry is not None:
            fingerprint = normal_fingerprint(fingerprint)
            if not _FINGERPRINT_RE.fullmatch(fingerprint):
                self.problem(
                    fingerprint_entry.value,
                    fingerprint_entry.path,
                    "expected a SHA-256 fingerprint: 64 hex digits (colons allowed)",
                )
        if address is None or priority is None or self.failed_since(m):
            return None
        return HaNode(name, address, priority, sync_cert, fingerprint)

    def ha_sync(self, entry: Entry) -> HaSync | None:
        m = self.mapping(entry.value, entry.path, SYNC_KEYS, required=("key",))
        if m is None:
            return None
        key = self.path_value(m.get("key"), None)
        port = self.opt_int(m.get("port"), DEFAULT_HA_SYNC_PORT, 1, MAX_PORT)
        bind = self.opt_string(m.get("bind"))
        if key is None or port is None or self.failed_since(m):
            return None
        return HaSync(key=key, port=port, bind=bind)
