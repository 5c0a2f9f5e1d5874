"""NB commands: each builds its rows inside one OVSDB transaction (``run_idl``).

A command validates against the IDL replica with the same rules as topology
files (``vnet64.topology``) and raises an ``NbError`` before anything is sent,
so a failed call leaves nothing behind. Several commands can share one
transaction (``LoadTopologyCommand`` does): rows inserted earlier in it are
already in the replica's tables and indexes, so later commands find them.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Iterable

from ovsdbapp.backend.ovs_idl import command, idlutils

from .. import address, topology
from ..topology import TopologyError


class NbError(RuntimeError):
    """A request the NB refuses; the message names the object and the problem."""


class NotFound(NbError):
    pass


class Conflict(NbError):
    pass


class Invalid(NbError):
    pass


# Conntrack zones 1..MAX_VNET_ZONE belong to VNets (allocated here, one per VNet,
# platform-wide); the zones above are the controller's own.
MAX_VNET_ZONE = 65279

# Name-indexed tables and the IDL indexes commands use (created by NbApi).
NAMED_TABLES = ("Region", "VNet", "Node", "VM", "Service", "Endpoint")
# Only string columns that no command ever modifies: python-ovs cannot keep an
# index on a reference column consistent when a transaction that inserted a row
# aborts, nor an index whose column this client changes in a transaction.
EXTRA_INDEXES = {
    "Port_Binding": ["logical_port"],
    "Subscription": ["ipv6"],
    "Host_Mapping": ["ipv6"],
    "VM": ["ipv4"],
    "Endpoint": ["ipv6"],
}


def _one(rows: Any) -> Any:
    return next(iter(rows), None)


def find(api: Any, table: str, name: str) -> Any:
    """The row of ``table`` named ``name``, or None.

    The IDL indexes include rows inserted earlier in the current (uncommitted)
    transaction, so commands that share a transaction see each other's rows.
    """
    return _one(idlutils.index_lookup_all(api.tables[table], name=name))


def get(api: Any, table: str, name: str) -> Any:
    row = find(api, table, name)
    if row is None:
        raise NotFound(f"{table_label(table)} {name!r} does not exist")
    return row


def _same(value: Any, wanted: Any) -> bool:
    if hasattr(wanted, "uuid"):
        return getattr(value, "uuid", None) == wanted.uuid
    return value == wanted


def lookup(api: Any, table: str, **match: Any) -> list:
    """Rows of ``table`` whose columns equal ``match`` (references compared by row).

    Uses the table's string index when one of the columns has one, else scans.
    """
    tab = api.tables[table]
    indexed = next((c for c in match if c in tab.rows.indexes), None)
    rows = idlutils.index_lookup_all(tab, **{indexed: match[indexed]}) if indexed \
        else tab.rows.values()
    return [r for r in rows if all(_same(getattr(r, c), v) for c, v in match.items())]


def table_label(table: str) -> str:
    return {"Node": "node", "Service": "service", "Endpoint": "endpoint", "Region": "region",
            "Subnet": "subnet", "Subscription": "subscription"}.get(table, table)


def _opt(value: list) -> Any:
    return value[0] if value else None


# ---------------------------------------------------------------------------
# Row -> model (so rows are checked by the same rules as topology files)


def vnet_model(api: Any, row: Any) -> topology.VNet:
    subnets = tuple(
        topology.Subnet(s.name, s.subnet_id, IPv4Network(s.cidr))
        for s in sorted(lookup(api, "Subnet", vnet=row), key=lambda s: s.name))
    vip = _opt(row.snat_vip)
    return topology.VNet(row.name, row.region.name, row.vnet_id,
                         tuple(IPv4Network(c) for c in sorted(row.cidrs)), subnets,
                         IPv4Address(vip) if vip else None)


def vm_address(vm_row: Any) -> address.PlatformAddress:
    """The platform IPv6 address the codec gives a VM row (no range check)."""
    vnet = vm_row.vnet
    vip = _opt(vnet.snat_vip)
    return address.PlatformAddress(
        region=vnet.region.region_id, vnet=vnet.vnet_id, subnet=vm_row.subnet.subnet_id,
        ipv4=IPv4Address(vm_row.ipv4), snat_vip=IPv4Address(vip) if vip else address.DEFAULT_SNAT_VIP)


def platform_address(api: Any, vm_row: Any) -> address.PlatformAddress:
    """The platform IPv6 address of a VM row, validated against its VNet."""
    try:
        vnet_model(api, vm_row.vnet).check_vm_ipv4(IPv4Address(vm_row.ipv4))
    except (TopologyError, address.AddressError) as exc:
        raise Invalid(f"VM {vm_row.name}: {exc}") from None
    return vm_address(vm_row)


def subscriptions_of(api: Any, vm_row: Any, service_row: Any = None) -> list:
    """A VM's subscriptions (to one service, if given), found through the ipv6 index."""
    match = {"ipv6": str(vm_address(vm_row).ipv6), "vm": vm_row}
    if service_row is not None:
        match["service"] = service_row
    return lookup(api, "Subscription", **match)


# ---------------------------------------------------------------------------
# Helpers shared by the add commands


class _Command(command.BaseCommand):
    def _existing(self, table: str, name: str, may_exist: bool, wanted: dict[str, Any],
                  current: Any) -> Any:
        """Handle a name that already exists: identical + may_exist -> reuse, else Conflict."""
        row = find(self.api, table, name)
        if row is None:
            return None
        label = f"{table_label(table)} {name!r}"
        def show(key: str, value: Any) -> str:
            return f"{value:#018x}" if key == "datapath_id" else repr(value)

        diffs = [f"{k} is {show(k, current(row, k))}, not {show(k, v)}" for k, v in wanted.items()
                 if current(row, k) != v]
        if diffs:
            raise Conflict(f"{label} already exists with different settings: {'; '.join(diffs)}")
        if not may_exist:
            raise Conflict(f"{label} already exists (use --may-exist to accept an identical one)")
        return row

    def _insert(self, txn: Any, table: str, **columns: Any) -> Any:
        row = txn.insert(self.api.tables[table])
        for col, val in columns.items():
            setattr(row, col, val)
        return row


def _attr(row: Any, col: str) -> Any:
    value = getattr(row, col)
    if hasattr(value, "name"):
        return value.name
    if isinstance(value, list):
        return sorted(str(v) for v in value)
    return value


class SetPlatformCommand(_Command):
    def __init__(self, api: Any, platform: topology.Platform):
        super().__init__(api)
        self.platform = platform

    def run_idl(self, txn: Any) -> None:
        p = self.platform
        region = get(self.api, "Region", p.region)
        appliance = get(self.api, "Node", p.appliance)
        if appliance.role != "appliance":
            raise Invalid(f"node {p.appliance!r} has role {appliance.role}, not appliance")
        row = _one(self.api.tables["Platform"].rows.values()) or txn.insert(self.api.tables["Platform"])
        row.platform_ip = str(p.platform_ip)
        row.translator_prefix = str(p.translator_prefix)
        row.region = [region]
        row.appliance = [appliance]
        if not getattr(row, "tunnel_token", None):   # made once (a new row has none yet); kept on reload
            row.tunnel_token = [new_tunnel_token()]
        self.result = row.uuid


class SetDirectPathCommand(_Command):
    """Turn the direct path on (True), off (False), or back to the default (None); result:
    whether the setting changed."""

    def __init__(self, api: Any, enabled: bool | None):
        super().__init__(api)
        self.enabled = enabled

    def run_idl(self, txn: Any) -> None:
        row = _one(self.api.tables["Platform"].rows.values())
        if row is None:
            raise NotFound("the NB has no platform settings yet (load a topology first)")
        wanted = [] if self.enabled is None else [self.enabled]
        self.result = list(row.direct_path) != wanted
        if self.result:
            row.direct_path = wanted


def new_tunnel_token() -> int:
    """A fresh tunnel token: 32 random bits, never 0 (pipeline.TOKEN_OPTION)."""
    return secrets.randbelow(0xFFFFFFFF) + 1


class RotateTunnelTokenCommand(_Command):
    """Give the platform a new tunnel token (result: the new token)."""

    def run_idl(self, txn: Any) -> None:
        row = _one(self.api.tables["Platform"].rows.values())
        if row is None:
            raise NotFound("the NB has no platform settings yet (load a topology first)")
        old = row.tunnel_token[0] if row.tunnel_token else None
        token = new_tunnel_token()
        while token == old:
            token = new_tunnel_token()
        row.tunnel_token = [token]
        self.result = token


class NextCfgCommand(_Command):
    """Number the transaction's change (OVN's ``NB_Global.nb_cfg``): ``Platform.nb_cfg``
    goes up by one (an OVSDB ``mutate``: concurrent writers never conflict on it) and
    ``Platform.nb_cfg_timestamp`` becomes the writer's clock in milliseconds. Every
    controller and node agent reports the newest number it has applied and how long
    after this timestamp it did (the NB's propagation lag). Added last to every write
    transaction by ``NbApi.run``; a transaction that changes nothing (every value it
    writes is the one already there: an idempotent command run again) is left alone, and
    so is an NB without platform settings, or of a schema older than 1.5.0. Result:
    True if it numbered the transaction."""

    def __init__(self, api: Any, clock: Any = None):
        super().__init__(api)
        self.clock = clock or time.time

    def run_idl(self, txn: Any) -> None:
        self.result = False
        table = self.api.tables.get("Platform")
        row = _one(table.rows.values()) if table is not None else None
        if row is None or "nb_cfg" not in table.columns or not changes_anything(txn):
            return
        row.increment("nb_cfg")
        row.nb_cfg_timestamp = int(self.clock() * 1000)
        self.result = True


def changes_anything(txn: Any) -> bool:
    """Whether an IDL transaction, as built so far, changes the database: a row inserted
    or deleted, a set or map mutated, a column given a value it does not have. (The C IDL
    drops a transaction of equal writes itself; python-ovs sends it.) Unsure: True."""
    rows = getattr(txn, "_txn_rows", None)
    if rows is None:
        return True
    for row in rows.values():
        data, changes = row._data, row._changes
        if data is None or changes is None:
            return True
        if any(row._mutations.get(kind) for kind in ("_inserts", "_removes")):
            return True
        if any(data.get(column) != datum for column, datum in changes.items()):
            return True
    return False


def applied_nb_cfg(previous: int | None, current: tuple[int, int],
                   now: float) -> tuple[int, float | None]:
    """A reader (controller, node agent) has applied the NB up to ``current``
    (``Platform`` nb_cfg, nb_cfg_timestamp in ms), having applied ``previous`` before
    (None: nothing yet). Returns the number now applied and the propagation lag in
    seconds (``now``, a wall clock, minus the change's timestamp), or None where there is
    no lag to tell: the number did not move, the change was not timed, or it is the
    reader's first (made before the reader was there). Wall clocks of two machines:
    as exact as NTP keeps them (never below 0)."""
    cfg, stamp = current
    if previous is None or cfg == previous or not stamp:
        return cfg, None
    return cfg, max(0.0, now - stamp / 1000)


# ---------------------------------------------------------------------------
# Client remotes of the NB server (``--remote=db:...,Platform,connections``)

_PORT = r"(?:6553[0-5]|655[0-2]\d|65[0-4]\d{2}|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}|0)"
_HOST = r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\])"
REMOTE_FORMS = {
    "ptcp": re.compile(rf"{_PORT}(?::{_HOST})?"), "pssl": re.compile(rf"{_PORT}(?::{_HOST})?"),
    "tcp": re.compile(rf"{_HOST}:{_PORT}"), "ssl": re.compile(rf"{_HOST}:{_PORT}"),
    "punix": re.compile(r"/.+"), "unix": re.compile(r"/.+"),
}


def check_remote(target: str) -> str:
    """``target`` if it is a remote ovsdb-server understands (ovsdb-server(1)), else Invalid."""
    kind, _, rest = target.partition(":")
    form = REMOTE_FORMS.get(kind)
    if form is None or not form.fullmatch(rest):
        raise Invalid(f"{target!r} is not an OVSDB remote: use ptcp:PORT[:IP], pssl:PORT[:IP], "
                      f"tcp:IP:PORT, ssl:IP:PORT, punix:/PATH or unix:/PATH")
    host = {"ptcp": rest.partition(":")[2], "pssl": rest.partition(":")[2],
            "tcp": rest.rpartition(":")[0], "ssl": rest.rpartition(":")[0]}.get(kind)
    if host:                           # ptcp/pssl may leave it out (all addresses)
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise Invalid(f"{target!r}: {host} is not an IP address") from None
    return target


_CONTROLLER_TARGET = re.compile(r"(tcp|ssl):(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):(\d{1,5})")


def check_controller_target(node: str, target: str) -> str:
    """``target`` if it is an OpenFlow controller target of br-int (``tcp:IP:PORT`` or
    ``ssl:IP:PORT``, IPv6 in brackets, port 1..65535), else Invalid naming node and value."""
    form = _CONTROLLER_TARGET.fullmatch(target) if isinstance(target, str) else None
    if form is None:
        raise Invalid(f"node {node}: controller target {target!r} is not tcp:IP:PORT or ssl:IP:PORT "
                      f"(e.g. tcp:172.31.255.1:6653, ssl:[fd00::1]:6653)")
    host, port = form.group(2), int(form.group(3))
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise Invalid(f"node {node}: controller target {target!r}: {host} is not an IP address") from None
    if ip.version == 4 and host.startswith("["):     # (the form has IPv6 only in brackets)
        raise Invalid(f"node {node}: controller target {target!r}: an IPv4 address goes without "
                      f"brackets (tcp:{ip}:{port})")
    if not 1 <= port <= 65535:
        raise Invalid(f"node {node}: controller target {target!r}: port {port} is not in 1..65535")
    return target


class SetNodeControllersCommand(_Command):
    """The OpenFlow controller targets of a node's br-int, replacing the ones set before
    (result: True if they changed)."""

    def __init__(self, api: Any, node: str, targets: Iterable[str]):
        super().__init__(api)
        self.node = node
        self.targets = [check_controller_target(node, t) for t in targets]
        twice = sorted({t for t in self.targets if self.targets.count(t) > 1})
        if twice:
            raise Invalid(f"node {node}: controller target {twice[0]!r} is given twice")

    def run_idl(self, txn: Any) -> None:
        row = get(self.api, "Node", self.node)
        self.result = sorted(row.controllers) != sorted(self.targets)
        if self.result:
            row.controllers = sorted(self.targets)


class SetConnectionsCommand(_Command):
    """The NB server's extra client remotes, replacing the ones set before; each with
    ``inactivity_probe`` ms (None: ovsdb-server's 5 s default; 0: no probes)."""

    def __init__(self, api: Any, targets: Iterable[str], inactivity_probe: int | None = None):
        super().__init__(api)
        self.targets = [check_remote(t) for t in targets]
        if len(set(self.targets)) != len(self.targets):
            raise Invalid("a target is given twice")
        if inactivity_probe is not None and inactivity_probe < 0:
            raise Invalid("the inactivity probe is in milliseconds, 0 or more (0 turns it off)")
        self.probe = inactivity_probe

    def run_idl(self, txn: Any) -> None:
        platform = _one(self.api.tables["Platform"].rows.values())
        if platform is None:
            raise Invalid("the NB has no platform settings yet: load a topology first")
        wanted = {(t, self.probe) for t in self.targets}
        if {(c.target, _opt(c.inactivity_probe)) for c in platform.connections} == wanted:
            self.result = False
            return
        rows = []
        for target in self.targets:
            row = txn.insert(self.api.tables["Connection"])
            row.target = target
            row.inactivity_probe = [] if self.probe is None else [self.probe]
            rows.append(row)
        platform.connections = rows          # the old rows go: strongly referenced only here
        self.result = True


class DelConnectionsCommand(_Command):
    def run_idl(self, txn: Any) -> None:
        platform = _one(self.api.tables["Platform"].rows.values())
        self.result = bool(platform is not None and platform.connections)
        if self.result:
            platform.connections = []


class AddRegionCommand(_Command):
    def __init__(self, api: Any, region: topology.Region, may_exist: bool = False):
        super().__init__(api)
        self.region = region
        self.may_exist = may_exist

    def run_idl(self, txn: Any) -> None:
        r = self.region
        row = self._existing("Region", r.name, self.may_exist, {"region_id": r.region_id}, _attr)
        if row is None:
            clash = _one(r2 for r2 in self.api.tables["Region"].rows.values() if r2.region_id == r.region_id)
            if clash is not None:
                raise Conflict(f"region id {r.region_id:#x} is already used by region {clash.name!r}")
            row = self._insert(txn, "Region", name=r.name, region_id=r.region_id)
        self.result = row.uuid


class AddNodeCommand(_Command):
    def __init__(self, api: Any, node: topology.Node, may_exist: bool = False):
        super().__init__(api)
        self.node = node
        self.may_exist = may_exist

    def run_idl(self, txn: Any) -> None:
        n = self.node
        wanted = {"role": n.role, "underlay_ip": str(n.underlay_ip), "datapath_id": n.datapath_id}
        row = self._existing("Node", n.name, self.may_exist, wanted, _attr)
        if row is None:
            for other in self.api.tables["Node"].rows.values():
                if other.underlay_ip == str(n.underlay_ip):
                    raise Conflict(f"underlay IP {n.underlay_ip} is already used by node {other.name!r}")
                if other.datapath_id == n.datapath_id:
                    raise Conflict(f"datapath id {n.datapath_id:#018x} is already used by node "
                                   f"{other.name!r}")
            row = self._insert(txn, "Node", name=n.name, **wanted)
        self.result = row.uuid


class AddVNetCommand(_Command):
    def __init__(self, api: Any, vnet: topology.VNet, may_exist: bool = False):
        super().__init__(api)
        self.vnet = vnet
        self.may_exist = may_exist

    def run_idl(self, txn: Any) -> None:
        v = self.vnet
        region = get(self.api, "Region", v.region)
        existing = find(self.api, "VNet", v.name)
        if existing is not None:
            current = vnet_model(self.api, existing)
            if current.normalized() != v.normalized():
                raise Conflict(f"VNet {v.name!r} already exists with different settings "
                               f"(id {current.vnet_id:#x}, ranges {', '.join(map(str, current.cidrs))}, "
                               f"subnets {', '.join(f'{s.name} {s.subnet_id:#x} {s.cidr}' for s in current.subnets)})")
            if not self.may_exist:
                raise Conflict(f"VNet {v.name!r} already exists (use --may-exist to accept an identical one)")
            self.result = existing.uuid
            return
        used_zones = set()
        for other in self.api.tables["VNet"].rows.values():
            used_zones.add(other.ct_zone)
            if other.region.uuid == region.uuid and other.vnet_id == v.vnet_id:
                raise Conflict(f"VNet id {v.vnet_id:#x} is already used by VNet {other.name!r} "
                               f"in region {v.region}")
        zone = next((z for z in range(1, MAX_VNET_ZONE + 1) if z not in used_zones), None)
        if zone is None:
            raise Conflict(f"no conntrack zone left for VNet {v.name!r} (all {MAX_VNET_ZONE} in use)")
        row = self._insert(txn, "VNet", name=v.name, region=region, vnet_id=v.vnet_id, ct_zone=zone,
                           cidrs=[str(c) for c in v.cidrs],
                           snat_vip=[str(v.snat_vip)] if v.snat_vip else [])
        for sub in v.subnets:
            self._insert(txn, "Subnet", name=sub.name, vnet=row,
                         subnet_id=sub.subnet_id, cidr=str(sub.cidr))
        self.result = row.uuid


class AddVMCommand(_Command):
    """Add a VM: name, VNet, IPv4 (checked against the VNet), subnet, MAC, host."""

    def __init__(self, api: Any, name: str, vnet: str, ipv4: IPv4Address, host: str,
                 mac: str | None = None, subnet: str | None = None, may_exist: bool = False):
        super().__init__(api)
        try:   # "10.0.0.9" or IPv4Address("10.0.0.9"); anything else is the caller's error
            ipv4 = IPv4Address(ipv4 if isinstance(ipv4, IPv4Address) else str(ipv4))
        except ValueError:
            raise Invalid(f"VM {name}: {ipv4!r} is not an IPv4 address") from None
        self.name, self.vnet, self.ipv4, self.host = name, vnet, ipv4, host
        self.mac = mac or topology.default_mac(name)
        self.subnet, self.may_exist = subnet, may_exist

    def run_idl(self, txn: Any) -> None:
        vnet_row = get(self.api, "VNet", self.vnet)
        host = get(self.api, "Node", self.host)
        if host.role != "host":
            raise Invalid(f"VM {self.name}: {self.host!r} is the {host.role}, not a host")
        model = vnet_model(self.api, vnet_row)
        try:
            model.check_vm_ipv4(self.ipv4)
            subnet = model.subnet_for(self.ipv4, self.subnet)
        except (TopologyError, address.AddressError) as exc:
            raise Invalid(f"VM {self.name}: {exc}") from None
        wanted = {"vnet": self.vnet, "ipv4": str(self.ipv4), "mac": self.mac, "host": self.host,
                  "subnet": subnet.name}
        row = self._existing("VM", self.name, self.may_exist, wanted, _attr)
        if row is None:
            clash = lookup(self.api, "VM", vnet=vnet_row, ipv4=str(self.ipv4))
            if clash:
                raise Conflict(f"IPv4 {self.ipv4} is already used in VNet {self.vnet} by VM "
                               f"{clash[0].name!r}")
            subnet_row = _one(s for s in lookup(self.api, "Subnet", vnet=vnet_row)
                              if s.name == subnet.name)
            row = self._insert(txn, "VM", name=self.name, vnet=vnet_row, subnet=subnet_row,
                               ipv4=str(self.ipv4), mac=self.mac, host=host)
        self.result = row.uuid


class AddServiceCommand(_Command):
    """Add a service with its endpoints (each: name, IPv6, host, MAC)."""

    def __init__(self, api: Any, service: topology.Service, may_exist: bool = False):
        super().__init__(api)
        self.service = service
        self.may_exist = may_exist

    def run_idl(self, txn: Any) -> None:
        s = self.service
        row = find(self.api, "Service", s.name)
        if row is not None and not self.may_exist:
            raise Conflict(f"service {s.name!r} already exists (use --may-exist, or "
                           f"'service add-endpoint' to add endpoints)")
        if row is None:
            row = self._insert(txn, "Service", name=s.name)
        for ep in s.endpoints:
            AddEndpointCommand(self.api, s.name, ep, may_exist=self.may_exist).run_idl(txn)
        self.result = row.uuid


class AddEndpointCommand(_Command):
    def __init__(self, api: Any, service: str, endpoint: topology.Endpoint, may_exist: bool = False):
        super().__init__(api)
        self.service = service
        self.endpoint = endpoint
        self.may_exist = may_exist

    def run_idl(self, txn: Any) -> None:
        e = self.endpoint
        service = get(self.api, "Service", self.service)
        host = get(self.api, "Node", e.host)
        if host.role != "host":
            raise Invalid(f"endpoint {e.name}: {e.host!r} is the {host.role}, not a host")
        wanted = {"service": self.service, "ipv6": str(e.ipv6), "host": e.host, "mac": e.mac}
        row = self._existing("Endpoint", e.name, self.may_exist, wanted, _attr)
        if row is None:
            clash = _one(idlutils.index_lookup_all(self.api.tables["Endpoint"], ipv6=str(e.ipv6)))
            if clash is not None:
                raise Conflict(f"IPv6 {e.ipv6} is already used by endpoint {clash.name!r}")
            row = self._insert(txn, "Endpoint", name=e.name, service=service,
                               ipv6=str(e.ipv6), host=host, mac=e.mac)
        self.result = row.uuid


class SubscribeCommand(_Command):
    """Subscribe a VM to a service: assign its platform IPv6, record the host mapping.

    Result: a dict describing the subscription (see ``NbApi.subscription_info``).
    """

    def __init__(self, api: Any, vm: str, service: str, may_exist: bool = False):
        super().__init__(api)
        self.vm, self.service, self.may_exist = vm, service, may_exist

    def run_idl(self, txn: Any) -> None:
        vm = get(self.api, "VM", self.vm)
        service = get(self.api, "Service", self.service)
        # Verified so that a concurrent change of the VM (moved, readdressed)
        # makes this transaction retry against the new state.
        if vm.uuid not in txn._txn_rows:  # not inserted by this transaction
            for col in ("vnet", "ipv4", "subnet", "host"):
                vm.verify(col)
        addr = platform_address(self.api, vm)
        existing = _one(subscriptions_of(self.api, vm, service))
        if existing is not None:
            if not self.may_exist:
                raise Conflict(f"VM {self.vm} is already subscribed to {self.service} "
                               f"(address {existing.ipv6})")
            self.result = existing.uuid
            return
        ipv6 = str(addr.ipv6)
        self._insert(txn, "Subscription", vm=vm, service=service,
                     ipv6=ipv6, state="active")
        mapping = _one(lookup(self.api, "Host_Mapping", ipv6=ipv6))
        if mapping is None:
            self._insert(txn, "Host_Mapping", ipv6=ipv6, vnet=vm.vnet,
                         ipv4=vm.ipv4, host=vm.host)
        elif mapping.host.uuid != vm.host.uuid:
            mapping.host = vm.host
        self.result = (self.vm, self.service)


class UnsubscribeCommand(_Command):
    def __init__(self, api: Any, vm: str, service: str, if_exists: bool = False):
        super().__init__(api)
        self.vm, self.service, self.if_exists = vm, service, if_exists

    def run_idl(self, txn: Any) -> None:
        vm = get(self.api, "VM", self.vm)
        service = get(self.api, "Service", self.service)
        sub = _one(subscriptions_of(self.api, vm, service))
        self.result = False
        if sub is None:
            if self.if_exists:
                return
            raise NotFound(f"VM {self.vm} is not subscribed to {self.service}")
        others = [s for s in subscriptions_of(self.api, vm) if s.uuid != sub.uuid]
        if not others:
            for mapping in lookup(self.api, "Host_Mapping", ipv6=sub.ipv6):
                mapping.delete()
        sub.delete()
        self.result = True


class MoveVMCommand(_Command):
    """Move a VM to another host: the VM row and its host mapping change together."""

    def __init__(self, api: Any, vm: str, host: str):
        super().__init__(api)
        self.vm, self.host = vm, host

    def run_idl(self, txn: Any) -> None:
        vm = get(self.api, "VM", self.vm)
        host = get(self.api, "Node", self.host)
        if host.role != "host":
            raise Invalid(f"{self.host!r} is the {host.role}, not a host")
        vm.host = host
        addr = str(platform_address(self.api, vm).ipv6)
        for mapping in lookup(self.api, "Host_Mapping", ipv6=addr):
            mapping.host = host
        self.result = True


# ---------------------------------------------------------------------------
# Port bindings: which node's OVS interface is a VM's or an endpoint's port (written
# by the node agent, which finds the interface by its external_ids:iface-id)

OFPORT_RANGE = (1, 65279)      # what OVS gives an interface (Interface.ofport_request's range)


def logical_object(api: Any, name: str) -> tuple[str, Any]:
    """("vm", row) or ("endpoint", row) of the NB object a logical port names."""
    vm, ep = find(api, "VM", name), find(api, "Endpoint", name)
    if vm is not None and ep is not None:
        raise Conflict(f"logical port {name!r} is ambiguous: a VM and an endpoint are both called so")
    if vm is not None:
        return "vm", vm
    if ep is not None:
        return "endpoint", ep
    raise NotFound(f"logical port {name!r} is neither a VM nor an endpoint of the NB")


def binding_of(api: Any, logical_port: str) -> Any:
    return _one(lookup(api, "Port_Binding", logical_port=logical_port))


class BindPortCommand(_Command):
    """Record that ``port`` (an OVS interface on ``node``) is the port of the VM or
    endpoint ``logical_port``. The object follows its binding in the same transaction:
    its host becomes ``node`` (a VM's host mapping with it, as MoveVMCommand does).

    Result: the binding as a dict (``NbApi.binding_info``) plus ``moved_from``, the
    object's previous host when it moved, else None. Identical input writes nothing.
    """

    def __init__(self, api: Any, node: str, logical_port: str, port: str, mac: str,
                 ofport: int | None = None):
        super().__init__(api)
        label = f"logical port {logical_port}"
        if not isinstance(port, str) or not port or any(c.isspace() or not c.isprintable() for c in port):
            raise Invalid(f"{label}: port {port!r} is not an interface name")
        if mac:
            try:
                mac = topology.parse_mac(mac)
            except TopologyError as exc:
                raise Invalid(f"{label}: {exc}") from None
        if ofport is not None and (isinstance(ofport, bool) or not isinstance(ofport, int)
                                   or not OFPORT_RANGE[0] <= ofport <= OFPORT_RANGE[1]):
            raise Invalid(f"{label}: ofport {ofport!r} is not in {OFPORT_RANGE[0]}..{OFPORT_RANGE[1]}")
        self.node, self.logical_port, self.port = node, logical_port, port
        self.mac, self.ofport = mac or "", ofport

    def run_idl(self, txn: Any) -> None:
        kind, obj = logical_object(self.api, self.logical_port)
        node = get(self.api, "Node", self.node)
        if node.role != "host":
            raise Invalid(f"logical port {self.logical_port}: node {self.node!r} is the {node.role}, "
                          f"not a host")
        binding = binding_of(self.api, self.logical_port)
        # Verified so that a concurrent rebind (or move) makes this transaction retry
        # against the new state instead of overwriting it unseen.
        if obj.uuid not in txn._txn_rows:
            obj.verify("host")
        if binding is not None and binding.uuid not in txn._txn_rows:
            binding.verify("node")
        moved_from = None
        if obj.host.uuid != node.uuid:
            moved_from = obj.host.name
            if kind == "vm":
                MoveVMCommand(self.api, obj.name, node.name).run_idl(txn)
            else:
                obj.host = node
        wanted = {"kind": kind, "node": node, "port": self.port,
                  "ofport": [] if self.ofport is None else [self.ofport], "mac": self.mac}
        if binding is None:
            binding = self._insert(txn, "Port_Binding", logical_port=self.logical_port, **wanted)
        else:
            for col, value in wanted.items():
                if not _same(getattr(binding, col), value):
                    setattr(binding, col, value)
        self.result = {"logical_port": self.logical_port, "kind": kind, "node": node.name,
                       "port": self.port, "ofport": self.ofport, "mac": self.mac,
                       "moved_from": moved_from}


class UnbindPortCommand(_Command):
    """Delete a logical port's binding if it is bound to ``node`` (result: whether it was).

    A binding to another node is left alone: the VM migrated, and the node it left
    reports its port gone after the new node bound it.
    """

    def __init__(self, api: Any, node: str, logical_port: str):
        super().__init__(api)
        self.node, self.logical_port = node, logical_port

    def run_idl(self, txn: Any) -> None:
        node = get(self.api, "Node", self.node)
        binding = binding_of(self.api, self.logical_port)
        self.result = binding is not None and binding.node.uuid == node.uuid
        if self.result:
            binding.verify("node")      # a rebind racing with this makes it retry
            binding.delete()


class LoadTopologyCommand(_Command):
    """Write a whole validated topology in one transaction (identical objects are kept)."""

    def __init__(self, api: Any, topo: topology.Topology):
        super().__init__(api)
        self.topo = topo

    def run_idl(self, txn: Any) -> None:
        t = self.topo
        for region in t.regions:
            AddRegionCommand(self.api, region, True).run_idl(txn)
        for node in t.nodes:
            AddNodeCommand(self.api, node, True).run_idl(txn)
        SetPlatformCommand(self.api, t.platform).run_idl(txn)
        for vnet in t.vnets:
            AddVNetCommand(self.api, vnet, True).run_idl(txn)
        for vm in t.vms:
            AddVMCommand(self.api, vm.name, vm.vnet, vm.ipv4, vm.host, vm.mac, vm.subnet,
                         True).run_idl(txn)
        for service in t.services:
            AddServiceCommand(self.api, service, True).run_idl(txn)
        for sub in t.subscriptions:
            SubscribeCommand(self.api, sub.vm, sub.service, True).run_idl(txn)
        self.result = {"regions": len(t.regions), "nodes": len(t.nodes), "vnets": len(t.vnets),
                       "vms": len(t.vms), "services": len(t.services),
                       "subscriptions": len(t.subscriptions)}


def is_constraint_violation(exc: BaseException) -> bool:
    return "constraint violation" in str(exc) or "referential integrity" in str(exc)


__all__ = [name for name in dir() if name.endswith("Command")] + [
    "NbError", "NotFound", "Conflict", "Invalid"]
