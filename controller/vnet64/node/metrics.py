"""The node agent's Prometheus metrics (issue 20, item 4; ``vnet64-node --metrics
IP:PORT``), read when scraped, never cached:

- ``vnet64_node_info{node,role,datapath}`` 1;
- ``vnet64_conntrack_entries{node,zone}``: the local ovs-vswitchd's conntrack entries
  per zone (a VNet's zone, the IPv6 SNAT / DNAT zones, the endpoints' zone);
- on a customer host, per VM address, protocol and port (``vm``, ``proto``, ``vm_ip``,
  ``vm_port``): ``vnet64_nat_ports_in_use`` - the Platform_IP ports conntrack gave
  connections towards it - and ``vnet64_nat_port_use_ratio``, that over the pair's port
  range: at 1 new connections are refused (the alerting rule in
  ``deploy/prometheus/vnet64-alerts.yml`` fires above 0.8);
- ``vnet64_nat_sessions{node,vm}``: sessions per VM (``vnet64-node sessions`` lists them);
- ``vnet64_nat_new_connections_total{node,vm,proto,vm_ip,vm_port}``: connections to a VM
  address and port first seen at a scrape (counted from the second scrape on): its
  ``rate()`` is the connection rate, ``max_over_time`` of that the highest recent one.
  Every connection is seen while Prometheus scrapes more often than every 30 s (the
  shortest time an entry stays in conntrack: UDP's);
- ``vnet64_dropped_packets_total{node,reason,kind,table}`` (and ``_bytes_total``): packets
  this node did not forward, per reason and stage (``table`` is ``meter N`` for a
  packet-in meter's drops), from the flows' counters (:mod:`vnet64.node.drops`, what
  ``vnet64-node stats`` prints). A counter restarts when its flow is reinstalled;
  Prometheus's ``rate()`` and ``increase()`` handle that;
- ``vnet64_flows{node,table}``: flows per stage of the node's pipeline;
- ``vnet64_node_nb_cfg{node}``: the newest NB change the agent has applied (converged,
  ports bound; ``Platform.nb_cfg``), and ``vnet64_node_nb_lag_seconds{node}`` how long
  after its commit (wall clocks; the agent looks every 0.2 s; none for the first change
  it saw after its start).

Names follow Faucet's style (``<project>_<thing>_<unit>``); values come from the same
code as ``vnet64-node sessions`` (:mod:`vnet64.node.sessions`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import drops as drop_counts
from . import sessions

LOG = logging.getLogger("vnet64.node.metrics")


class NodeCollector(Collector):
    """Metrics of one node. ``conntrack()`` returns ``dpctl/dump-conntrack -s``'s text;
    ``vms()`` the (VNet zone, IPv4, name) of the VMs the node's NB replica holds;
    ``drops()`` the node's ``drops.Count`` list, ``tables()`` its flows per stage (None:
    not exported)."""

    def __init__(self, node: str, role: str, datapath: str, conntrack: Callable[[], str],
                 vms: Callable[[], list[tuple[int, str, str]]],
                 port_range: tuple[int, int] = sessions.PORT_RANGE,
                 drops: Callable[[], list[drop_counts.Count]] | None = None,
                 tables: Callable[[], dict[str, int]] | None = None,
                 nb: Callable[[], tuple[int | None, float | None]] | None = None,
                 translator: Callable[[], dict[str, int] | None] | None = None):
        self.node, self.role, self.datapath = node, role, datapath
        self.conntrack, self.vms, self.port_range = conntrack, vms, port_range
        self.drops, self.tables, self.nb = drops, tables, nb
        self.translator = translator
        self._lock = threading.Lock()        # scrapes may come in parallel
        self._known: set | None = None       # the connections of the last scrape
        self._new: Counter = Counter()       # (vm, proto, vm_ip, vm_port) -> first seen since
    def collect(self) -> Iterator[Any]:
        info = GaugeMetricFamily("vnet64_node_info", "this node (always 1)",
                                 labels=["node", "role", "datapath"])
        info.add_metric([self.node, self.role, self.datapath], 1)
        yield info
        cfg, lag = self.nb() if self.nb else (None, None)
        if cfg is not None:
            applied = GaugeMetricFamily("vnet64_node_nb_cfg", "the newest NB change applied "
                                        "(Platform nb_cfg)", labels=["node"])
            applied.add_metric([self.node], cfg)
            yield applied
        if lag is not None:
            nb_lag = GaugeMetricFamily("vnet64_node_nb_lag_seconds",
                                       "the newest NB change: from its commit to applied here",
                                       labels=["node"])
            nb_lag.add_metric([self.node], lag)
            yield nb_lag
        yield from self._translator()
        yield from self._pipeline()
        yield from self._conntrack()

    def _translator(self) -> Iterator[Any]:
        """The BPF translator's packets (engine bpf only: TAYGA counts nothing)."""
        try:
            stats = self.translator() if self.translator else None
        except Exception as exc:    # noqa: BLE001 - a scrape reports what it can
            LOG.warning("metrics: the BPF translator's counters not read: %s", exc)
            return
        if stats is None:
            return
        packets = CounterMetricFamily(
            "vnet64_node_translator_bpf_packets",
            "packets the BPF translator translated (6to4, 4to6) or handed on to TAYGA "
            "(to_tayga: ICMP errors, fragments, options, ...)", labels=["node", "path"])
        for path, n in stats.items():
            packets.add_metric([self.node, path], n)
        yield packets

    def _pipeline(self) -> Iterator[Any]:
        try:
            counts = self.drops() if self.drops else None
            tables = self.tables() if self.tables else None
        except Exception as exc:    # noqa: BLE001 - a scrape reports what it can
            LOG.warning("metrics: flows not read: %s", exc)
            return
        if counts is not None:
            labels = ["node", "reason", "kind", "table"]
            packets = CounterMetricFamily("vnet64_dropped_packets",
                                          "packets not forwarded, per reason and stage "
                                          "(vnet64-node stats --explain)", labels=labels)
            octets = CounterMetricFamily("vnet64_dropped_bytes", "their bytes", labels=labels)
            summed: dict[tuple, list[int]] = {}
            for c in counts:     # a reason may have several flows in one stage
                n = summed.setdefault((c.reason, c.kind, c.where), [0, 0])
                n[0] += c.packets
                n[1] += c.bytes
            for (reason, kind, where), (n_packets, n_bytes) in sorted(summed.items()):
                packets.add_metric([self.node, reason, kind, where], n_packets)
                octets.add_metric([self.node, reason, kind, where], n_bytes)
            yield packets
            yield octets
        if tables is not None:
            flows = GaugeMetricFamily("vnet64_flows", "flows per stage of the pipeline",
                                      labels=["node", "table"])
            for table, n in tables.items():
                flows.add_metric([self.node, table], n)
            yield flows

    def _conntrack(self) -> Iterator[Any]:
        try:
            entries = sessions.parse(self.conntrack())
        except Exception as exc:    # noqa: BLE001 - a scrape reports what it can
            LOG.warning("metrics: conntrack not read: %s", exc)
            return
        zones = GaugeMetricFamily("vnet64_conntrack_entries", "conntrack entries per zone",
                                  labels=["node", "zone"])
        for zone, n in sorted(Counter(e.zone for e in entries).items()):
            zones.add_metric([self.node, str(zone)], n)
        yield zones
        if self.role != "host":
            return
        names = {(zone, ip): name for zone, ip, name in self.vms()}
        found = sessions.join(entries, lambda zone, ip: names.get((zone, ip)), lambda ip: None)
        labels = ["node", "vm", "proto", "vm_ip", "vm_port"]
        in_use = GaugeMetricFamily("vnet64_nat_ports_in_use",
                                   "Platform_IP ports in use towards a VM address and port",
                                   labels=labels)
        ratio = GaugeMetricFamily("vnet64_nat_port_use_ratio",
                                  "in use over the pair's Platform_IP port range (1: refusing)",
                                  labels=labels)
        for u in sessions.port_use(found, self.port_range):
            key = [self.node, u["vm"], u["proto"], u["vm_ip"], str(u["vm_port"])]
            in_use.add_metric(key, u["in_use"])
            ratio.add_metric(key, u["in_use"] / u["of"])
        yield in_use
        yield ratio
        with self._lock:
            if self._known is not None:
                self._new.update(sessions.new_connections(self._known, found))
            self._known = {sessions.connection_key(s) for s in found}
            for u in sessions.port_use(found, self.port_range):
                self._new.setdefault((u["vm"], u["proto"], u["vm_ip"], u["vm_port"]), 0)
            seen = sorted(self._new.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
        new = CounterMetricFamily("vnet64_nat_new_connections",
                                  "connections to a VM address and port, first seen at a scrape",
                                  labels=labels)
        for (vm, proto, vm_ip, vm_port), n in seen:
            new.add_metric([self.node, vm, proto, vm_ip, str(vm_port)], n)
        yield new
        per_vm = GaugeMetricFamily("vnet64_nat_sessions", "NAT sessions per VM", labels=["node", "vm"])
        for vm, n in sorted(Counter(s.vm for s in found).items()):
            per_vm.add_metric([self.node, vm], n)
        yield per_vm
