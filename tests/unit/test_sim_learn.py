"""sim: ``learn`` adds a flow built from the packet, a later ``resubmit`` uses it, and a
``resubmit`` that finds nothing leaves the packet as it was (ovs-actions(7)).

The shape of the direct path on a host: a reply from the tunnel teaches ``direct`` to
send the pair's next packets to the tunnel endpoint it came from; a VM's packet sets
the appliance as the tunnel destination, resubmits to ``direct`` (which may override
it) and goes out on Geneve."""

from __future__ import annotations

import pytest

from vnet64.controller.flows import (ETH_IPV6, Flow, Learn, Match, Output, Resubmit, SetField,
                                     TableMap, flow)
from vnet64.controller.sim import SimError, SimSwitch

TABLES = TableMap("t", (("classify", 0), ("direct", 15), ("out", 20)))
GENEVE, VM = 1, 10
APPLIANCE, HOST_A, HOST_B = "192.168.64.10", "172.31.1.2", "172.31.1.3"
LEARN = Learn("direct", 100, 0x1234, idle_timeout=60, eth_type=ETH_IPV6,
              match_from=(("ipv6_src", "ipv6_dst"), ("ipv6_dst", "ipv6_src")),
              load_from=(("tun_ipv4_src", "tun_ipv4_dst"),))
VM_ADDR, PEER = "fd00:5e:1::10", "fd41::3930:1f:6600:a00:4"


@pytest.fixture
def sw() -> SimSwitch:
    s = SimSwitch(TABLES)
    s.apply([flow("classify", 100, {"in_port": GENEVE, "eth_type": ETH_IPV6}, [LEARN, Output(VM)]),
             flow("classify", 100, {"in_port": VM, "eth_type": ETH_IPV6},
                  [SetField("tun_ipv4_dst", APPLIANCE), Resubmit("direct"), Output(GENEVE)])])
    return s


def reply(sw: SimSwitch, tun_src: str):
    """A reply from PEER to the VM, through the tunnel from ``tun_src``."""
    return sw.trace({"eth_type": ETH_IPV6, "ipv6_src": PEER, "ipv6_dst": VM_ADDR,
                     "tun_ipv4_src": tun_src}, GENEVE)


def from_vm(sw: SimSwitch, dst: str = PEER):
    return sw.trace({"eth_type": ETH_IPV6, "ipv6_src": VM_ADDR, "ipv6_dst": dst}, VM)


def test_a_learned_flow_overrides_the_tunnel_destination(sw):
    t = reply(sw, HOST_A)
    assert t.is_output(VM), str(t)
    want = Flow("direct", 100, Match.of(eth_type=ETH_IPV6, ipv6_src=VM_ADDR, ipv6_dst=PEER),
                (SetField("tun_ipv4_dst", HOST_A),), cookie=0x1234, idle_timeout=60)
    assert t.learned == [want] and sw.flows("direct") == [want]
    out = from_vm(sw)
    assert out.is_output(GENEVE, tun_ipv4_dst=HOST_A) and out.ports() == [GENEVE], str(out)
    assert out.stages() == ["classify", "direct"] and not out.drops


def test_a_second_learn_with_the_same_match_replaces_the_first(sw):
    reply(sw, HOST_A)
    reply(sw, HOST_B)
    [learned] = sw.flows("direct")
    assert learned.actions == (SetField("tun_ipv4_dst", HOST_B),)
    assert from_vm(sw).is_output(GENEVE, tun_ipv4_dst=HOST_B)


def test_a_resubmit_without_a_learned_flow_changes_nothing(sw):
    reply(sw, HOST_A)                          # learned for PEER only
    out = from_vm(sw, "fd41::99")
    assert out.is_output(GENEVE, tun_ipv4_dst=APPLIANCE) and out.ports() == [GENEVE], str(out)
    assert not out.drops and out.steps[-1].flow == "resubmit miss: nothing"


def test_a_goto_miss_still_drops():
    s = SimSwitch(TABLES)
    s.apply([flow("classify", 1, {}, goto="direct")])
    t = s.trace({"eth_type": ETH_IPV6, "ipv6_src": VM_ADDR, "ipv6_dst": PEER}, VM)
    assert t.dropped and t.drops == [("direct", "miss")]


def test_a_learn_the_switch_would_refuse_is_refused():
    s = SimSwitch(TABLES)
    no_eth_type = Learn("direct", 100, 0, match_from=(("ipv6_src", "ipv6_dst"),))
    with pytest.raises(SimError, match="ipv6_src needs eth_type"):
        s.apply(flow("classify", 1, {"eth_type": ETH_IPV6}, [no_eth_type]))
    with pytest.raises(SimError, match="nowhere"):
        s.apply(flow("classify", 1, {"eth_type": ETH_IPV6},
                     [Learn("nowhere", 1, 0, eth_type=ETH_IPV6)]))
    with pytest.raises(SimError, match="ipv6_dst needs eth_type"):   # reads what the packet lacks
        s.apply(flow("classify", 1, {}, [LEARN]))
