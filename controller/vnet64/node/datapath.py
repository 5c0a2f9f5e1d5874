"""Everything that differs between Open vSwitch's two datapaths, in one place.

``system`` is the Linux kernel's openvswitch module (what real hosts mostly run);
``netdev`` is the userspace datapath inside ovs-vswitchd (what these machines can
run: no openvswitch kernel module here). The node agent asks a :class:`Datapath`
every question whose answer depends on which one runs, and nothing else in the agent
branches on the datapath type.

What could not be verified on the machines vnet64 is developed on is marked
``verified=False`` with the Open vSwitch documentation it relies on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Datapath:
    name: str                       # Bridge.datapath_type and the Datapath table's key
    # CT_Timeout_Policy lives under Open_vSwitch.datapaths[<this key>] (ovs-vswitchd.conf.db,
    # "Datapath" table): one row per datapath type.
    ct_datapath_key: str
    # Userspace tunnelling (Documentation/howto/userspace-tunneling.rst): the underlay
    # address must sit on a netdev bridge (br-phy) that holds the uplink NIC, so that
    # ovs-vswitchd itself routes and ARPs for tunnel packets. The kernel datapath sends
    # Geneve through the host's own IP stack: no br-phy.
    needs_br_phy: bool
    # OVS's userspace tunnel neighbour cache drops the packet that triggers a lookup;
    # seeding it (ovs-appctl tnl/neigh/set) keeps the first packet of every tunnel.
    seed_tunnel_neighbours: bool
    # The userspace datapath mishandles partial checksums of veth/tap transmit offload
    # (TCP/UDP checksums arrive wrong): transmit checksum offload off on every port
    # that is a veth (ethtool -K DEV tx off). The kernel datapath handles them.
    veth_tx_offload_off: bool
    # ovs-vswitchd reads each port of the userspace datapath through a packet socket with
    # the namespace's default receive buffer; 208 KiB dropped bursts whenever it waited
    # for a core. Bytes for net.core.rmem_default, or None to leave it.
    rmem_default: int | None
    # The uplink's kernel side still sees what arrives (ovs-vswitchd reads the NIC with a
    # packet socket) and would answer ARP for the underlay address with its own MAC:
    # net.ipv4.conf.<uplink>.arp_ignore=1 leaves that to br-phy, which holds the address.
    uplink_arp_ignore: bool = False
    # Open_vSwitch other_config keys this datapath wants (userspace TSO stays off: in OVS
    # 3.1 it drops offloaded packets into Geneve).
    other_config: dict[str, str] = field(default_factory=dict)
    # IPv4/IPv6 fragments: both datapaths reassemble in conntrack (ct() action) before
    # NAT; the userspace datapath does it in ovs-vswitchd, the kernel in nf_defrag.
    fragments: str = "reassembled by conntrack (the ct action)"
    # The userspace reassembly drops non-final fragments shorter than 1200 (IPv4) / 1280
    # (IPv6) bytes by default ("v4/v6 frags too small"); RFC 6146 3.4 wants fragments
    # handled, so the limit goes as low as OVS allows (ovs-appctl dpctl/ipf-set-min-frag,
    # at least 400: lib/ipf.c). Runtime state of ovs-vswitchd: set again after a restart.
    # None: no such limit (nf_defrag takes any size).
    min_fragment: int | None = None
    verified: bool = True
    notes: tuple[str, ...] = ()


NETDEV = Datapath(
    name="netdev", ct_datapath_key="netdev", needs_br_phy=True, seed_tunnel_neighbours=True,
    veth_tx_offload_off=True, rmem_default=4 << 20, uplink_arp_ignore=True,
    other_config={"userspace-tso-enable": "false"},
    fragments="reassembled by ovs-vswitchd's userspace conntrack (ct action)",
    min_fragment=400, verified=True)

SYSTEM = Datapath(
    name="system", ct_datapath_key="system", needs_br_phy=False, seed_tunnel_neighbours=False,
    veth_tx_offload_off=False, rmem_default=None,
    fragments="reassembled by the kernel's nf_defrag (ct action)",
    verified=False,
    # docs/deploy.md ("The kernel datapath") lists each of these with the document it
    # relies on; none has carried a packet on the development machines.
    notes=("not run on the development machines (no openvswitch kernel module: modinfo "
           "openvswitch finds none, /proc/modules does not exist): written from "
           "ovs-vswitchd.conf.db(5) (Datapath, CT_Zone, CT_Timeout_Policy with the 'system' "
           "key; Interface options of geneve ports), ovs-actions(7) (ct, nat), ovs-fields(7) "
           "(tun_metadata) and the userspace-tunneling howto (what only netdev needs)",
           "timeout policies become nf_conntrack timeout policies (the kernel's "
           "nfnetlink_cttimeout)",
           "Geneve tunnels use the kernel's geneve module and the host's routing table for "
           "local_ip; the underlay IP stays on the host's NIC",
           "conntrack is Linux nf_conntrack, fragments go through nf_defrag: a re-opened TCP "
           "connection keeps its NAT port (vnet64's userspace conntrack patch is not needed)"))

DATAPATHS = {d.name: d for d in (NETDEV, SYSTEM)}


def kernel_module_loaded(proc_modules: str = "/proc/modules") -> bool:
    """Whether the openvswitch kernel module is loaded (host-wide, any namespace)."""
    try:
        with open(proc_modules) as f:
            return any(line.split(" ", 1)[0] == "openvswitch" for line in f)
    except OSError:
        return os.path.isdir("/sys/module/openvswitch")


def choose(name: str | None, module_loaded: bool | None = None) -> Datapath:
    """``name`` if given ("system" or "netdev"), else ``system`` when the openvswitch
    kernel module is loaded, else ``netdev``."""
    if name:
        try:
            return DATAPATHS[name]
        except KeyError:
            raise ValueError(f"datapath {name!r}: choose system or netdev") from None
    loaded = kernel_module_loaded() if module_loaded is None else module_loaded
    return SYSTEM if loaded else NETDEV
