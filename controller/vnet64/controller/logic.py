"""The controller's brain: per-switch state and the reactions to events.

Pure with respect to I/O: every method takes plain values (datapath id, port
names, packet bytes, the clock) and returns flow-language messages; the os-ken
app (``app.py``) sends them. The NB model comes from a callable, so tests hand
in fixed models.

Per switch it keeps: the node (picked from the NB by datapath id), its ports,
the proactive flows last sent (to diff against when the NB changes), and, on
hosts, the pair allocator.

A switch's ``Ports`` are rebuilt from its port descriptions and the NB's port
bindings to its node whenever either changes: a VM or endpoint is wired where it is
bound (``roles.Ports``), so a port bound, rebound elsewhere (live migration) or
unbound moves its flows on the next NB change. A pair whose VM is no longer wired on
the switch under the port its flows use is deleted; its next packet sets it up again
where the VM now is.
"""

from __future__ import annotations

import functools
import logging
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Callable, Iterable

from ..ports import translator_mac
from .flows import (CACHE_SIZE, ETH_IPV6, OFPP_CONTROLLER, DeleteFlows, DeleteStrict, Flow, Match,
                    Message, MeterMod, Output, PacketOut, Resubmit, TableMap)
from .model import Delta, Model, Node
from .pipeline import (ERROR_METER, PACKET_IN_METER, TOKEN_OPTION, Cookie, cookie, tables_for)
from .roles import Ports, appliance, customer, service

LOG = logging.getLogger(__name__)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _ipv6(text: str) -> IPv6Address:
    """An address of a pair flow read back from the switch: a resync reads 10,000s of
    pairs over a few hundred endpoint and VM addresses, and parsing each text again
    was a seventh of a restarted controller's work (py-spy, benchmarks/resync.py)."""
    return IPv6Address(text)


EXACT = 0xFFFFFFFFFFFFFFFF       # cookie mask: this cookie only
PAIR_COOKIE_MASK = 0xFFFF << 48  # cookie mask: every flow of a role and feature (every pair's)
OFPRR_IDLE_TIMEOUT, OFPRR_HARD_TIMEOUT = 0, 1
DEFAULT_PACKET_IN_RATE = 5000    # pps on the new-pair path; the excess is dropped by the meter
DEFAULT_ERROR_PUNT_RATE = 1000   # pps of ICMP errors and refusals to the controller (own meter)
SUMMARY_EVERY = 10.0            # s between INFO lines of pair counters


@dataclass
class Switch:
    dpid: int
    node: Node
    ports: Ports
    tables: TableMap
    port_names: dict = field(default_factory=dict)         # the switch's ports: name -> ofport
    proactive: dict = field(default_factory=dict)          # flow key -> Flow last sent
    owned: dict = field(default_factory=dict)              # owner -> its flows' keys (see owned_flows)
    allocator: customer.Allocator = field(default_factory=customer.Allocator)
    pairs: dict = field(default_factory=dict)              # alias index -> (endpoint, vm) names
    pair_ports: dict = field(default_factory=dict)         # alias index -> the VM port its flows use
    pairs_of: dict = field(default_factory=dict)           # ("vm"|"endpoint", name) -> {alias index}
    direct: dict = field(default_factory=dict)             # alias index -> its direct_flows sent


# A proactive flow's owner: what it is derived from, so that a change of one NB object
# recomputes only its owners' flows (``Logic.nb_changed(delta)``). Every flow key has one
# owner: ("base",) the node-wide flows (they depend on the platform, the nodes and the
# node's own ports); ("vm", name) a local VM's; ("endpoint", name) a local endpoint's;
# ("to_service", name) the return path to an endpoint anywhere; ("route", ipv6) the
# appliance's host mapping.
Owner = tuple


def owned_flows(model: Model, node: Node, ports: Ports, path_mtu: int | None = None) -> dict[Owner, list[Flow]]:
    """Every proactive flow a node should hold for this model, by owner."""
    owners: list[Owner] = [("base",)]
    if node.role == "appliance":
        owners += [("route", r.ipv6) for r in model.iter_routes()]
    else:
        owners += [("endpoint", ep.name) for ep in model.endpoints_on(node.name)]
        owners += [("vm", vm.name) for vm in model.vms_on(node.name)]
        owners += [("to_service", ep.name) for ep in model.endpoints]
    return {o: owner_flows(model, node, ports, o, path_mtu) for o in owners}


def owner_flows(model: Model, node: Node, ports: Ports, owner: Owner,
                path_mtu: int | None = None) -> list[Flow]:
    """The flows of one owner on ``node`` ([] when it has none there, e.g. gone or moved)."""
    kind = owner[0]
    if kind == "base":
        if node.role == "appliance":
            return appliance.base_flows(model, ports)
        return (service.nd_responder_flows() + service.miss_flows() + service.peer_flows(model, node)
                + customer.base_flows(model, ports, translator_mac(node.name)))
    if kind == "route":
        r = model.route(owner[1])
        return appliance.route_flows(model, ports, r) if r and node.role == "appliance" else []
    if node.role == "appliance":
        return []
    if kind == "vm":
        vm = model.vm(owner[1])
        return customer.vm_flows(model, node, ports, vm) if vm and vm.host == node.name else []
    ep = model.endpoint(owner[1])
    if ep is None:
        return []
    if kind == "endpoint":
        return service.one_endpoint_flows(model, ports, ep, path_mtu) if ep.host == node.name else []
    if kind == "to_service":
        return customer.to_service_flow(model, node, ports, ep)
    raise ValueError(f"unknown flow owner {owner!r}")


def desired_flows(model: Model, node: Node, ports: Ports, path_mtu: int | None = None) -> list[Flow]:
    """Every proactive flow a node should hold for this model."""
    return [f for flows in owned_flows(model, node, ports, path_mtu).values() for f in flows]


def changed_vifs(before: Ports, after: Ports) -> set[Owner]:
    """The VMs and endpoints whose wiring differs between two ``Ports`` of a switch, as
    owners (a vif key is ("vm" | "endpoint", name))."""
    out = set(before.vifs.keys() ^ after.vifs.keys())
    out.update(k for k, port in before.vifs.items() if after.vifs.get(k, port) != port)
    return out


def affected_owners(sw_node: str, role: str, delta: Delta, ports_before: Ports,
                    ports_after: Ports) -> set[Owner]:
    """The owners on node ``sw_node`` whose flows ``delta`` (and a change of the node's
    ports from ``ports_before`` to ``ports_after``) may change. Not for a delta that
    changes the platform or a node: those recompute everything."""
    if role == "appliance":
        return {("route", ipv6) for ipv6 in delta.routes}
    out: set[Owner] = changed_vifs(ports_before, ports_after)
    # a VM or endpoint that is not (or no longer) on this node has no flows of its
    # own here: recomputing it gives [] (nothing, or the deletion of what it had)
    for name in delta.vms:
        out.add(("vm", name))
    for name in delta.endpoints:
        out.add(("endpoint", name))
        out.add(("to_service", name))
    return out


def parse_ipv6_pair(data: bytes) -> tuple[IPv6Address, IPv6Address] | None:
    """(source, destination) of an untagged Ethernet/IPv6 frame, else None."""
    if len(data) < 54 or struct.unpack_from("!H", data, 12)[0] != ETH_IPV6:
        return None
    return IPv6Address(data[22:38]), IPv6Address(data[38:54])


class Logic:
    """Implements the app's ``Logic`` protocol for vnet64's roles."""

    def __init__(self, load_model: Callable[[], Model], packet_in_rate: int = DEFAULT_PACKET_IN_RATE,
                 clock: Callable[[], float] = time.monotonic,
                 error_punt_rate: int = DEFAULT_ERROR_PUNT_RATE,
                 snat_ports: tuple[int, int] = customer.PORT_RANGE, path_mtu: int | None = None,
                 node: str | None = None):
        """``node``: serve only that node's switch (a controller per node); None: every
        node of the NB (one central controller)."""
        self._load_model = load_model
        self.only_node = node
        self._clock = clock
        self._last_summary = float("-inf")
        self._last_refusal_log: dict[str, float] = {}
        self.model = load_model()
        self.packet_in_rate = packet_in_rate
        self.error_punt_rate = error_punt_rate
        self.snat_ports = snat_ports
        self.path_mtu = path_mtu     # endpoints' packets above it get Packet Too Big (None: off)
        self.switches: dict[int, Switch] = {}
        self.stats: Counter = Counter()

    # -- switches -----------------------------------------------------------

    def switch_connected(self, dpid: int, port_names: dict[str, int]) -> tuple[TableMap, list[Message]] | None:
        node = self.model.node_by_dpid(dpid)
        if node is None:
            LOG.warning("switch %016x is not a node of the NB; leaving it alone", dpid)
            return None
        if self.only_node is not None and node.name != self.only_node:
            LOG.warning("switch %016x is %s's, not %s's: this controller serves only %s; "
                        "leaving it alone", dpid, node.name, self.only_node, self.only_node)
            return None
        ports = self._ports(node, port_names)
        sw = Switch(dpid, node, ports, tables_for(node.role), port_names=dict(port_names))
        old = self.switches.get(dpid)
        if old is not None and old.node == node:   # a reconnect keeps allocations
            sw.allocator, sw.pairs, sw.pair_ports, sw.pairs_of = (old.allocator, old.pairs,
                                                                  old.pair_ports, old.pairs_of)
        self.switches[dpid] = sw
        sw.owned, sw.proactive = {}, {}
        for o, fl in owned_flows(self.model, node, ports, self.path_mtu).items():
            if fl:
                mine = {f.key: f for f in fl}      # (one flow per key, as the switch keeps)
                sw.owned[o] = tuple(mine)
                sw.proactive.update(mine)
        flows = list(sw.proactive.values())
        LOG.info("switch %016x is %s (%s): %d proactive flows", dpid, node.name, node.role, len(flows))
        if self.model.tunnel_token is None:
            LOG.warning("the NB has no tunnel token: %s accepts Geneve by outer source address only "
                        "(`vnet64 platform rotate-token` sets one)", node.name)
        msgs: list[Message] = [TOKEN_OPTION]   # before the flows that match or set it
        if node.role == "host":
            msgs.append(MeterMod(PACKET_IN_METER, self.packet_in_rate, burst=self.packet_in_rate // 10))
            msgs.append(MeterMod(ERROR_METER, self.error_punt_rate, burst=self.error_punt_rate // 10))
        return sw.tables, msgs + flows

    def switch_disconnected(self, dpid: int) -> None:
        # Allocations stay: flows survive in the switch (fail-mode secure) and the
        # reconnect's resync re-adopts them.
        LOG.info("switch %016x disconnected", dpid)

    def ports_changed(self, dpid: int, port_names: dict[str, int]) -> list[Message]:
        sw = self.switches.get(dpid)
        if sw is None:
            return []
        sw.port_names = dict(port_names)
        before = sw.ports
        node = self.model.node(sw.node.name)
        if node is None or node.datapath_id != sw.dpid:
            return self._reconcile(sw)      # says why it does nothing
        sw.ports = self._ports(node, sw.port_names, before=before)
        if (sw.ports.geneve, sw.ports.xlat) != (before.geneve, before.xlat):
            return self._reconcile(sw)
        owners = changed_vifs(before, sw.ports)
        return self._recompute(sw, owners) + self._check_pairs(sw, self._pairs_of(sw, owners))

    def _ports(self, node: Node, port_names: dict[str, int], before: Ports | None = None) -> Ports:
        """The switch's ports as the roles see them: its own ports plus the VMs and
        endpoints bound to ``node`` whose interfaces it has. An interface bound more
        than once is logged when that starts (``before``: the ports until now)."""
        ports = Ports.of(self.model, node.name, port_names)
        if ports.contested and ports.contested != (before.contested if before else ()):
            LOG.warning("%s: %s bound to more than one VM or endpoint in the NB: not wired",
                        node.name, ", ".join(ports.contested))
        return ports

    def adoption_read(self, dpid: int) -> tuple[int, int, int] | None:
        """What a resync reads first: (table id, cookie, cookie mask) of the pairs' own
        flows in the ``pair`` table (one per pair) on a host; None (one whole read) on
        the appliance, which has no pairs."""
        sw = self.switches.get(dpid)
        if sw is None or sw.node.role != "host":
            return None
        return sw.tables.id("pair"), cookie("host", "pair", 0), PAIR_COOKIE_MASK

    def resynced(self, dpid: int, found: Iterable[tuple[int, int, int, dict]],
                 complete: bool = True) -> list[Message]:
        """After connect: adopt live pairs, delete what the NB no longer wants.

        ``found`` holds (cookie, table id, priority, match dict) of the switch's flows:
        all of them (``complete``), or only the ``pair`` table's pair flows - what the app
        asks for first, so that a host with many pairs is ready after reading one flow
        per pair. Then pairs are adopted from those alone, and :meth:`swept` with the
        whole table (asked for at the same time, read after) finishes the job: stale
        proactive flows, the pairs' other flows, leftovers of pairs not adopted.
        """
        sw = self.switches.get(dpid)
        if sw is None:
            return []
        seen = _pair_flows(sw, found)
        out = self._adopt(sw, seen, checked=complete)
        if complete:
            out += self._sweep(sw, found, seen)
        return out

    def swept(self, dpid: int, found: Iterable[tuple[int, int, int, dict]]) -> list[Message]:
        """The whole flow table, read right after the pair-table flows ``resynced`` adopted
        from (``complete=False``): delete the proactive flows the NB no longer wants, the
        flows of pairs that were not adopted (e.g. a pair whose pair-table flow idled out
        while no controller listened, so the flow-removed that deletes the rest went
        nowhere), and adopted pairs that turn out incomplete or wired to another port.
        Pairs set up since the dump was asked for are not in it and are left alone."""
        sw = self.switches.get(dpid)
        if sw is None:
            return []
        return self._sweep(sw, found, _pair_flows(sw, found))

    def _adopt(self, sw: Switch, seen: "_PairFlows", checked: bool) -> list[Message]:
        out: list[Message] = []
        adopted: set[int] = set()
        for index in sorted(seen.rules):
            # checked (the whole table was read): a pair missing some of its flows is
            # deleted whole; its next packet sets it up again (see ``swept``)
            if checked and not customer.pair_complete(seen.tables[index]):
                out.append(DeleteFlows(cookie("host", "pair", index), EXACT))
                self.stats["incomplete_pairs_swept"] += 1
                continue
            match = seen.rules[index]
            src, dst = match.get("ipv6_src"), match.get("ipv6_dst")
            pair = customer.Pair(_ipv6(src), _ipv6(dst)) if src and dst else None
            allowed = self.model.allowed(pair.service, pair.vm) if pair else None
            vm_port = sw.ports.vif("vm", allowed[1].name) if allowed else None
            if (allowed and allowed[1].host == sw.node.name and vm_port is not None
                    and seen.vm_ports.get(index, vm_port) == vm_port and sw.allocator.adopt(pair, index)):
                self._hold(sw, index, allowed[0].name, allowed[1].name, vm_port)
                # its direct-path flow, if the switch holds one, is taken to be the current one
                want = tuple(customer.direct_flows(self.model, allowed[0], allowed[1], index))
                if bool(want) == ("from_tunnel" in seen.tables[index]):
                    sw.direct[index] = want
                adopted.add(index)
                self.stats["pairs_adopted"] += 1
            else:
                out.append(DeleteFlows(cookie("host", "pair", index), EXACT))
                self.stats["stale_pairs_swept"] += 1
        # Pairs kept from before whose flows the switch no longer holds (it restarted):
        # no flow-removed will ever free them. A returning pair gets its alias back.
        for index in set(sw.pairs) - adopted:
            self._release(sw, index)
            self.stats["pairs_lost"] += 1
        return out

    def _sweep(self, sw: Switch, found: Iterable[tuple[int, int, int, dict]],
               seen: "_PairFlows") -> list[Message]:
        out: list[Message] = []
        for ck, table_id, priority, match in found:
            try:
                c = Cookie.decode(ck)
            except ValueError:
                continue
            if c.feature in ("pair", "deny", "learned"):
                continue
            try:
                key = (sw.tables.name(table_id), priority, _match_of(match))
            except ValueError:
                continue
            if key not in sw.proactive:
                out.append(DeleteStrict(*key))
                self.stats["stale_flows_swept"] += 1
        for index in sorted(seen.tables):
            if index not in sw.pairs:
                if index not in seen.rules:     # the rest of a pair whose pair flow is gone
                    out.append(DeleteFlows(cookie("host", "pair", index), EXACT))
                    self.stats["incomplete_pairs_swept"] += 1
            elif (not customer.pair_complete(seen.tables[index])
                  or seen.vm_ports.get(index, sw.pair_ports.get(index)) != sw.pair_ports.get(index)):
                out.append(DeleteFlows(cookie("host", "pair", index), EXACT))
                self._release(sw, index)
                self.stats["incomplete_pairs_swept"] += 1
        return out

    # -- NB -----------------------------------------------------------------

    def nb_changed(self, delta: Delta | None = None) -> dict[int, list[Message]]:
        """The NB changed: the messages that bring each switch to the new model.

        ``delta`` None: the model was rebuilt (``load_model()`` gives the new one), so
        every switch's flows are recomputed and diffed, and every pair checked. A
        ``Delta``: the model ``load_model()`` returns was changed in place, and only
        those objects changed; only the flows and pairs that depend on them are looked
        at (a change of the platform or of a node still recomputes everything)."""
        self.model = self._load_model()
        if delta is None or delta.platform or delta.nodes:
            return {dpid: msgs for dpid, sw in list(self.switches.items()) if (msgs := self._reconcile(sw))}
        if not delta:
            return {}
        out = {}
        for dpid, sw in list(self.switches.items()):
            msgs = self._apply(sw, delta)
            if msgs:
                out[dpid] = msgs
        return out

    def _apply(self, sw: Switch, delta: Delta) -> list[Message]:
        """Incremental ``_reconcile``: only the owners and pairs ``delta`` touches."""
        before, here = sw.ports, sw.node.name
        for lp, old in delta.bindings.items():
            new = self.model.binding(lp)
            if (old is not None and old.node == here) or (new is not None and new.node == here):
                sw.ports = self._ports(sw.node, sw.port_names, before=before)
                break
        owners = affected_owners(here, sw.node.role, delta, before, sw.ports)
        out = self._recompute(sw, owners)
        if sw.pairs:
            indexes = self._pairs_of(sw, owners)
            out += self._check_pairs(sw, indexes)
            out += self._refresh_direct(sw, [i for i in indexes if i in sw.pairs])
        return out

    def _reconcile(self, sw: Switch) -> list[Message]:
        node = self.model.node(sw.node.name)
        if node is None or node.datapath_id != sw.dpid:
            LOG.warning("node %s left the NB; its switch keeps its flows", sw.node.name)
            return []
        sw.node = node
        sw.ports = self._ports(node, sw.port_names, before=sw.ports)
        wanted = owned_flows(self.model, node, sw.ports, self.path_mtu)
        out = self._replace(sw, {o: wanted.get(o, []) for o in set(sw.owned) | set(wanted)})
        out += self._check_pairs(sw, list(sw.pairs))
        return out + self._refresh_direct(sw, list(sw.pairs))

    def _recompute(self, sw: Switch, owners: Iterable[Owner]) -> list[Message]:
        return self._replace(sw, {o: owner_flows(self.model, sw.node, sw.ports, o, self.path_mtu)
                                  for o in owners})

    def _replace(self, sw: Switch, flows_of: dict[Owner, list[Flow]]) -> list[Message]:
        """Give each owner in ``flows_of`` exactly those flows: the deletions (first) and
        additions that take the switch from what it holds there."""
        held: dict = {}                    # key -> Flow, as the switch holds it now
        for owner in flows_of:
            for key in sw.owned.pop(owner, ()):
                if key in sw.proactive:
                    held[key] = sw.proactive.pop(key)
        wanted: dict = {}
        for owner, flows in flows_of.items():
            if flows:
                mine = {f.key: f for f in flows}
                sw.owned[owner] = tuple(mine)
                wanted.update(mine)
        out: list[Message] = [DeleteStrict(*key) for key in held
                              if key not in wanted and key not in sw.proactive]
        out += [f for key, f in wanted.items() if held.get(key, sw.proactive.get(key)) != f]
        sw.proactive.update(wanted)
        return out

    def _pairs_of(self, sw: Switch, owners: Iterable[Owner]) -> list[int]:
        """The alias indexes of the pairs of these VMs and endpoints (owners)."""
        out: set[int] = set()
        for o in owners:
            out |= sw.pairs_of.get(o, set())
        return sorted(out)

    def _check_pairs(self, sw: Switch, indexes: Iterable[int]) -> list[Message]:
        """Delete the pairs (of ``indexes``) the model no longer allows on this switch."""
        out: list[Message] = []
        for index in indexes:
            pair = sw.allocator.by_index.get(index)
            allowed = self.model.allowed(pair.service, pair.vm) if pair else None
            # gone, moved elsewhere, or its port here is not the one the pair's flows use
            if (allowed is None or allowed[1].host != sw.node.name
                    or sw.ports.vif("vm", allowed[1].name) != sw.pair_ports.get(index)
                    or sw.pairs.get(index) != (allowed[0].name, allowed[1].name)):
                out.append(DeleteFlows(cookie("host", "pair", index), EXACT))
                self._release(sw, index)
                self.stats["pairs_revoked"] += 1
        return out

    def _refresh_direct(self, sw: Switch, indexes: Iterable[int]) -> list[Message]:
        """Bring the direct-path flow of these (held) pairs to the model: it matches the
        endpoint's host, the tunnel token and the setting, each of which may change while
        the pair lives."""
        out: list[Message] = []
        for index in indexes:
            names = sw.pairs.get(index)
            ep, vm = (self.model.endpoint(names[0]), self.model.vm(names[1])) if names else (None, None)
            if ep is None or vm is None:
                continue
            want = tuple(customer.direct_flows(self.model, ep, vm, index))
            if sw.direct.get(index) != want:
                out.append(DeleteFlows(cookie("host", "pair", index), EXACT, "from_tunnel"))
                out.extend(want)
                sw.direct[index] = want
        return out

    # -- packet path --------------------------------------------------------

    def packet_in(self, dpid: int, table_id: int, in_port: int, data: bytes) -> list[Message]:
        sw = self.switches.get(dpid)
        self.stats["packet_ins"] += 1
        if sw is not None and sw.node.role == "host" and sw.tables.name(table_id) == "to_vm":
            return self._refuse_no_port(sw, data)
        if sw is not None and sw.node.role == "host" and sw.tables.name(table_id) in ("from_endpoint",
                                                                                  "to_appliance"):
            return self._gateway_error(sw, in_port, data)
        if sw is not None and sw.node.role == "host" and sw.tables.name(table_id) == "from_translator":
            return self._routing_header_error(sw, data)
        if sw is not None and sw.node.role == "host" and sw.tables.name(table_id) == "from_vm":
            return self._time_exceeded(sw, in_port, data)
        if sw is None or sw.node.role != "host" or sw.tables.name(table_id) != "pair":
            self.stats["packet_ins_ignored"] += 1
            return []
        addrs = parse_ipv6_pair(data)
        if addrs is None:
            self.stats["packet_ins_ignored"] += 1
            return []
        src, dst = addrs
        allowed = self.model.allowed(src, dst)
        if allowed is None or allowed[1].host != sw.node.name or sw.ports.vif("vm", allowed[1].name) is None:
            self.stats["pairs_denied"] += 1
            # Refusals stay at INFO: an audit trail, rare in normal operation, and
            # bounded by the meter and the deny flow that follows each one.
            LOG.info("%s: refused pair %s -> %s (no active subscription here)", sw.node.name, src, dst)
            return [customer.deny_flow(src, dst)]
        ep, vm = allowed
        pair = customer.Pair(src, dst)
        avoid = self.model.vm_ipv4s_on(sw.node.name)
        try:
            index = sw.allocator.allocate(pair, avoid)
        except customer.PoolExhausted:
            self.stats["pairs_pool_exhausted"] += 1
            LOG.error("%s: alias pool exhausted; pair %s -> %s refused", sw.node.name, src, dst)
            return [customer.deny_flow(src, dst)]
        if index not in sw.pairs:
            self.stats["pairs_installed"] += 1
            LOG.debug("%s: pair %s (%s) -> %s (%s) gets alias %s", sw.node.name, ep.name, src,
                      vm.name, dst, sw.allocator.alias(index))
            self._summary()
        self._hold(sw, index, ep.name, vm.name, sw.ports.vif("vm", vm.name))
        flows = customer.pair_flows(self.model, sw.ports, ep, vm, index, sw.allocator.alias(index),
                                    port_range=self.snat_ports)
        sw.direct[index] = tuple(f for f in flows if f.table in customer.DIRECT_TABLES)
        return [*flows, PacketOut(data, in_port, (Resubmit("pair"),))]

    def _refuse_no_port(self, sw: Switch, data: bytes) -> list[Message]:
        """A new connection found no Platform_IP port (``to_vm`` punts it): refuse it
        towards the service through TAYGA (customer module doc, "Port exhaustion")."""
        frame = customer.refusal(data, translator_mac(sw.node.name))
        if frame is None or sw.ports.xlat is None:
            self.stats["packet_ins_ignored"] += 1
            return []
        self.stats["connections_refused_no_port"] += 1
        dst = ".".join(str(b) for b in data[30:34])
        now = self._clock()
        if now - self._last_refusal_log.get(dst, float("-inf")) >= SUMMARY_EVERY:
            self._last_refusal_log[dst] = now
            LOG.warning("%s: no %s port left towards %s (ports %d-%d, closed connections held "
                        "62 s): new connections refused (TCP reset, else ICMP administratively "
                        "prohibited); "
                        "%d refused so far", sw.node.name, "Platform_IP", dst, *self.snat_ports,
                        self.stats["connections_refused_no_port"])
        return [PacketOut(frame, OFPP_CONTROLLER, (Output(sw.ports.xlat),))]

    def _time_exceeded(self, sw: Switch, in_port: int, data: bytes) -> list[Message]:
        """A VM's packet with TTL 0 or 1 (``from_vm`` punts them): its gateway's Time
        Exceeded goes back out of the VM's port (customer module doc, "Hop limits")."""
        name = next((n for (kind, n), port in sw.ports.vifs.items() if kind == "vm" and port == in_port), None)
        vm = self.model.vm(name) if name else None
        frame = customer.time_exceeded(data, vm) if vm else None
        if frame is None:
            self.stats["packet_ins_ignored"] += 1
            return []
        self.stats["icmp_time_exceeded_sent"] += 1
        return [PacketOut(frame, OFPP_CONTROLLER, (Output(in_port),))]

    def _routing_header_error(self, sw: Switch, data: bytes) -> list[Message]:
        """A packet the translator namespace bounced (a routing header with Segments Left
        != 0; ``from_translator`` punts it): the Parameter Problem goes to the service,
        straight to its host (customer module doc, "Routing headers")."""
        pair = None
        if len(data) >= 14 + 40 and struct.unpack_from("!H", data, 12)[0] == ETH_IPV6:
            alias = IPv4Address(data[14 + 8 + 12:14 + 8 + 16])     # the low 32 bits of the source
            pair = sw.allocator.by_index.get(sw.allocator.index_of(alias))
        ep = self.model.endpoint_by_ipv6(pair.service) if pair else None
        frame = customer.routing_header_error(data, pair.service, pair.vm, ep.mac) if ep else None
        if frame is None:
            self.stats["packet_ins_ignored"] += 1
            return []
        if ep.host == sw.node.name:
            actions: list = [service.to_endpoint()]
        else:
            actions = customer.to_host(self.model, sw.ports, ep.host)
        if not actions:
            self.stats["packet_ins_ignored"] += 1
            return []
        self.stats["icmp6_param_problems_sent"] += 1
        return [PacketOut(frame, OFPP_CONTROLLER, tuple(actions))]

    def _gateway_error(self, sw: Switch, in_port: int, data: bytes) -> list[Message]:
        """An endpoint's packet the gateway must not forward (hop limit <= 1, or larger
        than the path MTU; ``from_endpoint`` or ``to_appliance`` punts it): the ICMPv6 error goes back out of
        the port it came in on (service module doc)."""
        frame = service.gateway_error(data, self.path_mtu)
        if frame is None:
            self.stats["packet_ins_ignored"] += 1
            return []
        kind = "time_exceeded" if frame[54] == service.ICMP6_TIME_EXCEEDED else "packet_too_big"
        self.stats[f"icmp6_{kind}_sent"] += 1
        return [PacketOut(frame, OFPP_CONTROLLER, (Output(in_port),))]

    def flow_removed(self, dpid: int, ck: int, reason: int = OFPRR_IDLE_TIMEOUT) -> list[Message]:
        """A pair's flow timed out: free its alias and remove the pair's other flows.

        Removals we asked for ourselves (reason DELETE) were already released when
        we asked; acting on them late could free a newer pair on the same alias.
        """
        sw = self.switches.get(dpid)
        try:
            c = Cookie.decode(ck)
        except ValueError:
            return []
        if sw is None or c.feature != "pair" or reason not in (OFPRR_IDLE_TIMEOUT, OFPRR_HARD_TIMEOUT):
            return []
        self._release(sw, c.obj)
        self.stats["pairs_expired"] += 1
        return [DeleteFlows(ck, EXACT)]

    def _summary(self) -> None:
        """One INFO line of counters at most every SUMMARY_EVERY seconds (per-pair lines
        are DEBUG: at a few hundred pairs/s, logging each cost ~20% of the handler)."""
        now = self._clock()
        if now - self._last_summary >= SUMMARY_EVERY:
            self._last_summary = now
            LOG.info("pairs: %s", ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items())))

    def _hold(self, sw: Switch, index: int, ep: str, vm: str, vm_port: int | None) -> None:
        """Record a pair's alias ``index`` as held by endpoint ``ep`` and VM ``vm``."""
        old = sw.pairs.get(index)
        if old is not None and old != (ep, vm):
            self._unindex_pair(sw, index, old)
        sw.pairs[index] = (ep, vm)
        sw.pair_ports[index] = vm_port
        sw.pairs_of.setdefault(("endpoint", ep), set()).add(index)
        sw.pairs_of.setdefault(("vm", vm), set()).add(index)

    def _release(self, sw: Switch, index: int) -> None:
        sw.allocator.release(index)
        sw.direct.pop(index, None)
        names = sw.pairs.pop(index, None)
        sw.pair_ports.pop(index, None)
        if names is not None:
            self._unindex_pair(sw, index, names)

    @staticmethod
    def _unindex_pair(sw: Switch, index: int, names: tuple[str, str]) -> None:
        for owner in (("endpoint", names[0]), ("vm", names[1])):
            held = sw.pairs_of.get(owner)
            if held is not None:
                held.discard(index)
                if not held:
                    del sw.pairs_of[owner]


@dataclass
class _PairFlows:
    """What a flow dump says of the pairs: per alias index, its pair-table flow's match,
    the tables holding its flows, and the VM port its return rule matches."""

    rules: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    vm_ports: dict = field(default_factory=dict)


def _pair_flows(sw: Switch, found: Iterable[tuple[int, int, int, dict]]) -> _PairFlows:
    out = _PairFlows()
    for ck, table_id, _priority, match in found:
        try:
            c = Cookie.decode(ck)
        except ValueError:
            continue
        if c.feature != "pair":
            continue
        try:
            table = sw.tables.name(table_id)
        except ValueError:      # not a table of ours: the pair is not whole
            table = str(table_id)
        out.tables.setdefault(c.obj, set()).add(table)
        if table == "pair":
            out.rules[c.obj] = match
        elif table == "vm_return" and "in_port" in match:
            out.vm_ports[c.obj] = match["in_port"]
    return out


def _match_of(fields: dict) -> Match:
    return Match.of(fields)
