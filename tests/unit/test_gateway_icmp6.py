"""The service gateway's ICMPv6 errors (RFC 4443): Time Exceeded for hop limit <= 1 and
Packet Too Big above the path MTU - the bytes the controller builds (read back with
scapy), the flows that punt them (through the fake table), and Logic's dispatch."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP, UDPerror
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig,
                                ICMPv6TimeExceeded, IPerror6, IPv6, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop)
from scapy.layers.l2 import Ether

from tests.conftest import DEFAULT_TOPOLOGY
from tests.support.fake import FakeSwitch
from vnet64 import gateway, topology
from vnet64.controller import model as M
from vnet64.controller import ofmsg
from vnet64.controller.flows import (ETH_IPV6, OFPP_CONTROLLER, CheckPktLarger, Controller, Output,
                                     PacketOut, flow)
from vnet64.controller.logic import Logic
from vnet64.controller.pipeline import (ERROR_METER, HOST_TABLES, PRIO_HOP_LIMIT, PRIO_MATCH, PRIO_MISS,
                                        PRIO_TOO_BIG, VNI, Cookie, name_id, tables_for)
from vnet64.controller.roles import service
from vnet64.ports import GENEVE_PORT, XLAT_PORT, vif_port

SVC1, A6 = "fd00:5e:1::10", "fd41::3930:1f:6600:a00:4"
SVC1_MAC = "02:5e:00:00:00:10"
MTU = 1442
GENEVE, SVC1_PORT = 1, 10
HOST2_PORTS = {GENEVE_PORT: GENEVE, XLAT_PORT: 2, vif_port("endpoint", "svc1"): SVC1_PORT}


def udp6(size: int = 100, hlim: int = 64, src: str = SVC1, dst: str = A6, ext=None) -> Ether:
    """svc1 -> ``dst``: an Ethernet frame carrying an IPv6 packet of ``size`` bytes."""
    ip = IPv6(src=src, dst=dst, hlim=hlim)
    if ext is not None:
        ip = ip / ext
    head = ip / UDP(sport=41000, dport=7)
    return Ether(src=SVC1_MAC, dst=gateway.GATEWAY_MAC) / head / (b"x" * (size - len(head)))


def check_error(out: bytes | None, sent: Ether, kind) -> Ether:
    """What every gateway error must be: Ethernet gateway -> sender, IPv6 fe80::1 -> the
    sender's address, at most 1280 bytes, a valid checksum, and the sent packet quoted
    from its first byte (all of it, or as much as fits)."""
    assert out is not None
    p = Ether(out)
    assert p.src == gateway.GATEWAY_MAC and p.dst == SVC1_MAC and p.type == ETH_IPV6
    ip = p[IPv6]
    assert ip.src == str(gateway.SERVICE_GATEWAY_IPV6) and ip.dst == SVC1
    assert ip.nh == 58 and ip.plen == len(ip.payload) and ip.hlim == 64
    assert 40 + ip.plen <= 1280
    err = p[kind]
    sent_cksum = err.cksum
    err.cksum = None
    assert sent_cksum == Ether(bytes(p))[kind].cksum, "ICMPv6 checksum"
    original = bytes(sent[IPv6])
    quoted = out[14 + 48:]          # the raw bytes (scapy rebuilds a truncated quote)
    assert quoted == original[:1280 - 48]
    assert len(quoted) == min(len(original), 1232)
    return p


# -- the packet builder --------------------------------------------------------


def test_time_exceeded_for_hop_limit_1_and_0_quotes_the_packet():
    for hlim in (1, 0):
        sent = udp6(hlim=hlim)
        p = check_error(service.gateway_error(bytes(sent), MTU), sent, ICMPv6TimeExceeded)
        assert (p[ICMPv6TimeExceeded].type, p[ICMPv6TimeExceeded].code) == (3, 0)
        assert p[UDPerror].sport == 41000 and p[IPerror6].hlim == hlim   # scapy reads the quote


def test_time_exceeded_quotes_at_most_what_fits_in_1280_bytes():
    sent = udp6(size=3000, hlim=1)
    p = check_error(service.gateway_error(bytes(sent)), sent, ICMPv6TimeExceeded)
    assert len(p[IPv6]) == 1280


def test_hop_limit_2_and_more_is_forwarded_not_answered():
    assert service.gateway_error(bytes(udp6(hlim=2)), MTU) is None
    assert service.gateway_error(bytes(udp6(hlim=255, size=MTU)), MTU) is None


def test_packet_too_big_above_the_path_mtu_carries_the_mtu():
    for size in (MTU + 1, 1500, 9000):
        sent = udp6(size=size)
        p = check_error(service.gateway_error(bytes(sent), MTU), sent, ICMPv6PacketTooBig)
        ptb = p[ICMPv6PacketTooBig]
        assert (ptb.type, ptb.code, ptb.mtu) == (2, 0, MTU)
        assert len(p[IPv6]) == min(1280, 48 + size)
    assert service.gateway_error(bytes(udp6(size=MTU)), MTU) is None      # exactly the MTU fits
    assert service.gateway_error(bytes(udp6(size=9000))) is None          # no path MTU: no check


def test_hop_limit_is_checked_before_the_size():
    sent = udp6(size=1500, hlim=1)
    check_error(service.gateway_error(bytes(sent), MTU), sent, ICMPv6TimeExceeded)


def test_ethernet_padding_is_not_quoted():
    sent = udp6(size=48, hlim=1)
    padded = bytes(sent) + b"\0" * (60 - len(sent))
    check_error(service.gateway_error(padded, MTU), sent, ICMPv6TimeExceeded)


def test_no_error_about_an_error_or_from_or_to_where_rfc_4443_forbids():
    def icmp(msg, **ip):
        return bytes(Ether(src=SVC1_MAC, dst=gateway.GATEWAY_MAC)
                     / IPv6(src=SVC1, dst=A6, hlim=1, **ip) / msg)
    assert service.gateway_error(icmp(ICMPv6DestUnreach() / IPv6(src=A6, dst=SVC1) / UDP())) is None
    assert service.gateway_error(icmp(ICMPv6TimeExceeded() / IPv6(src=A6, dst=SVC1) / UDP())) is None
    behind = bytes(Ether(src=SVC1_MAC, dst=gateway.GATEWAY_MAC) / IPv6(src=SVC1, dst=A6, hlim=1)
                   / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(offset=0) / ICMPv6DestUnreach()
                   / IPv6(src=A6, dst=SVC1) / UDP())
    assert service.gateway_error(behind) is None                    # behind extension headers
    assert service.gateway_error(icmp(ICMPv6EchoRequest())) is not None   # informational: answered
    assert service.gateway_error(bytes(udp6(hlim=1, src="::"))) is None
    assert service.gateway_error(bytes(udp6(hlim=1, src="ff02::1"))) is None
    assert service.gateway_error(bytes(udp6(hlim=1, dst="ff02::1"))) is None
    assert service.gateway_error(bytes(Ether() / IP(ttl=1) / UDP())) is None
    assert service.gateway_error(bytes(udp6(hlim=1))[:50]) is None        # truncated


def test_errors_quote_extension_headers_too():
    sent = udp6(hlim=1, ext=IPv6ExtHdrHopByHop())
    check_error(service.gateway_error(bytes(sent), MTU), sent, ICMPv6TimeExceeded)


# -- the flows -----------------------------------------------------------------


class Host2:
    """host2 (svc1's host) programmed by a Logic with a path MTU."""

    def __init__(self, path_mtu: int | None = MTU):
        topo = topology.load(DEFAULT_TOPOLOGY)
        self.model = M.from_topology(topo, bindings=M.topology_bindings(topo, vif_port))
        self.logic = Logic(lambda: self.model, path_mtu=path_mtu)
        self.dpid = self.model.node("host2").datapath_id
        tables, msgs = self.logic.switch_connected(self.dpid, HOST2_PORTS)
        self.sw = FakeSwitch(tables)
        self.sw.apply(msgs)
        self.msgs = msgs

    def send(self, size: int = 100, hlim: int = 64, **extra):
        pkt = {"eth_type": ETH_IPV6, "eth_src": SVC1_MAC, "eth_dst": gateway.GATEWAY_MAC,
               "ipv6_src": SVC1, "ipv6_dst": A6, "ip_proto": 17, "udp_src": 41000, "udp_dst": 7,
               "nw_ttl": hlim, "pkt_len": 14 + size, **extra}
        return self.sw.trace({k: v for k, v in pkt.items() if v is not None}, SVC1_PORT)


@pytest.fixture
def host2():
    return Host2()


def test_hop_limit_0_and_1_are_punted_not_encapsulated(host2):
    for hlim in (0, 1):
        t = host2.send(hlim=hlim)
        assert t.punts and t.punts[0][0] == "from_endpoint" and not t.outputs, str(t)
    t = host2.send(hlim=2)
    assert t.is_output(GENEVE, tunnel_id=VNI) and not t.punts, str(t)


def test_larger_than_the_path_mtu_is_punted_the_mtu_itself_is_carried(host2):
    t = host2.send(size=MTU)
    assert t.is_output(GENEVE, tunnel_id=VNI) and not t.punts, str(t)
    for size in (MTU + 1, 9000):
        t = host2.send(size=size)
        assert t.punts and t.punts[0][0] == "to_appliance" and not t.outputs, str(t)
    t = host2.send(size=9000, hlim=1)                # both: the hop-limit flow wins
    assert t.steps[-1].priority == PRIO_HOP_LIMIT, str(t)


def test_headers_ovs_could_not_parse_are_dropped_not_taken_for_hop_limit_0(host2):
    # a jumbo payload (payload length 0): OVS stops at the hop-by-hop header, so the
    # flow has neither an upper layer nor a hop limit
    t = host2.send(hlim=0, ip_proto=0, udp_src=None, udp_dst=None)
    assert t.dropped_at == "from_endpoint" and not t.punts and not t.outputs, str(t)


def test_the_punts_are_metered_and_owned_by_the_endpoint(host2):
    punts = [f for f in host2.sw.flows("from_endpoint") + host2.sw.flows("to_appliance")
             if Controller() in f.actions]
    assert sorted(f.priority for f in punts) == [PRIO_TOO_BIG, PRIO_HOP_LIMIT, PRIO_HOP_LIMIT]
    assert PRIO_HOP_LIMIT > PRIO_TOO_BIG > PRIO_MATCH
    for f in punts:
        assert f.meter == ERROR_METER      # not the new pairs' meter
        # the cookie names why the packet is not forwarded, and the endpoint
        c = Cookie.decode(f.cookie)
        assert c.reason == ("hop_limit_exceeded" if f.priority == PRIO_HOP_LIMIT else "packet_too_big")
        assert c.obj & 0xFFFFFFFF == name_id("svc1")
        assert f.match.get("in_port") == SVC1_PORT
        if f.priority == PRIO_HOP_LIMIT:
            assert f.match.get("ipv6_src") == SVC1 and f.table == "from_endpoint"
    # the size check is the last thing from_endpoint does with a packet it lets through
    # (pipeline.TOO_BIG_REG): only the endpoint's own packets to the platform get it
    steer = next(f for f in host2.sw.flows("from_endpoint") if f.priority == PRIO_MATCH)
    assert steer.match.get("ipv6_src") == SVC1 and steer.match.get("in_port") == SVC1_PORT
    assert steer.actions == (CheckPktLarger(MTU + 14, "reg0", 0),)
    assert steer.goto == "to_appliance"
    assert [f.priority for f in host2.sw.flows("to_appliance")] == [PRIO_TOO_BIG, PRIO_MATCH, PRIO_MISS]


def test_without_a_path_mtu_only_the_hop_limit_is_checked():
    h = Host2(path_mtu=None)
    t = h.send(size=9000)
    assert t.is_output(GENEVE) and not t.punts, str(t)
    assert h.send(hlim=1).punts


def test_the_gateway_still_answers_neighbour_solicitation(host2):
    ns = {"eth_type": ETH_IPV6, "eth_src": SVC1_MAC, "eth_dst": "33:33:ff:00:00:01",
          "ipv6_src": "fe80::5e:1", "ipv6_dst": "ff02::1:ff00:1", "ip_proto": 58, "nw_ttl": 255,
          "icmpv6_type": 135, "icmpv6_code": 0, "ipv6_nd_target": "fe80::1", "pkt_len": 86}
    t = host2.sw.trace(ns, SVC1_PORT)
    assert t.output_packet(SVC1_PORT)["icmpv6_type"] == 136, str(t)


# -- the controller ------------------------------------------------------------


def test_logic_answers_a_punt_from_from_endpoint_out_of_its_port(host2):
    table = HOST_TABLES.id("from_endpoint")
    for sent, kind, stage in ((udp6(hlim=1), ICMPv6TimeExceeded, "from_endpoint"),
                              (udp6(size=1500), ICMPv6PacketTooBig, "to_appliance")):
        msgs = host2.logic.packet_in(host2.dpid, HOST_TABLES.id(stage), SVC1_PORT, bytes(sent))
        assert msgs == [PacketOut(service.gateway_error(bytes(sent), MTU), OFPP_CONTROLLER,
                                  (Output(SVC1_PORT),))]
        check_error(msgs[0].data, sent, kind)
    assert host2.logic.stats["icmp6_time_exceeded_sent"] == 1
    assert host2.logic.stats["icmp6_packet_too_big_sent"] == 1
    assert host2.logic.packet_in(host2.dpid, table, SVC1_PORT, bytes(udp6(hlim=9))) == []
    assert host2.logic.stats["packet_ins_ignored"] == 1


def test_a_from_endpoint_punt_on_the_appliance_is_ignored(host2):
    d = host2.model.node("appliance").datapath_id
    tables, _ = host2.logic.switch_connected(d, {GENEVE_PORT: GENEVE})
    assert tables is tables_for("appliance")
    assert host2.logic.packet_in(d, 1, GENEVE, bytes(udp6(hlim=1))) == []


# -- the OpenFlow encoding -----------------------------------------------------


def test_check_pkt_larger_encoding_is_what_ovs_decodes():
    # ovs-ofctl ofp-print of a flow-mod carrying it: check_pkt_larger(1456)->NXM_NX_REG0[0]
    assert ofmsg.check_pkt_larger(CheckPktLarger(1456, "reg0", 0)) == bytes.fromhex(
        "ffff0018" "00002320" "0031" "05b0" "0000" "00010004" "000000000000")
    assert ofmsg.check_pkt_larger(CheckPktLarger(1500, "reg3", 5))[12:18] == bytes.fromhex("0005" "00010604")


def test_nw_ttl_is_encoded_after_the_eth_type_it_needs():
    f = flow("from_endpoint", PRIO_HOP_LIMIT, {"in_port": 10, "eth_type": ETH_IPV6, "nw_ttl": 1,
                                               "reg0": (1, 1)}, [Controller()])
    dp = ofmsg.protocol()
    (fm,) = ofmsg.to_messages(dp, HOST_TABLES, [f])
    fm.set_xid(0)
    fm.serialize()
    buf = bytes(fm.buf)
    eth_type, nw_ttl = buf.find(bytes.fromhex("80000a02" "86dd")), buf.find(bytes.fromhex("00013a01" "01"))
    assert 0 < eth_type < nw_ttl


def test_an_encoded_single_field_match_is_still_os_kens_order():
    m = ofmsg.EncodedMatch([("reg0", (1, 1)), ("in_port", 10)])
    assert m._tlvs.startswith(bytes.fromhex("00010108"))       # NXM reg0 first, as os-ken


# -- the launcher option -------------------------------------------------------


def test_path_mtu_option(capsys):
    from vnet64.controller import launcher
    assert launcher.parse(["--vnet64-path-mtu", "1442"]).vnet64.path_mtu == 1442
    assert launcher.parse([]).vnet64.path_mtu is None            # default: no size check
    with pytest.raises(SystemExit) as exc:                        # below IPv6's minimum MTU
        raise SystemExit(launcher.main(["--vnet64-path-mtu", "1000"]))
    assert exc.value.code == 2 and "1000" in capsys.readouterr().err
    assert launcher.main(["--vnet64-path-mtu", "1442", "--vnet64-logic",
                          "tests.support.logic:NullLogic"]) == 2   # the default logic only
