"""ofmsg.py against a real OVS: the bytes os-ken serialises are what Flow.ofctl() says.

One throwaway ovsdb-server + ovs-vswitchd (userspace datapath) in a namespace
of our own (prefix ``v64o-``) with two bridges:

- ``br0`` (geneve port ``remote_ip=flow key=flow``, two internal ports) gets the
  messages ``ofmsg.to_messages`` builds, serialised by os-ken and written over
  an OpenFlow connection of the test's own (the bridge's ``br0.mgmt`` socket,
  the one ``ovs-ofctl`` uses) followed by a barrier, so that any error the switch
  sends back fails the test;
- ``ref`` gets the same flows from ``ovs-ofctl add-flow`` with ``Flow.ofctl()``
  text.

OVS prints both in its own canonical form, so equal dumps mean the same
matches, actions, instructions, timeouts and flags. Both bridges carry the same
``Flow_Table`` names, so ``table=NAME`` in ``Flow.ofctl()`` resolves there.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
from ipaddress import IPv6Network
from pathlib import Path

import pytest
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from vnet64.controller import flows as F
from vnet64.controller import ofmsg
from vnet64_lab import sh
from vnet64_lab.ovs import EnsureBridge, EnsurePort, OvsNode

from .conftest import need_lab

pytestmark = pytest.mark.lab

PREFIX = "v64o-"
TABLES = F.TableMap("ofmsg-test", (("classify", 0), ("ct_fwd", 3), ("ct_rev", 4), ("nd", 5),
                                   ("out", 7), ("pairs", 9)))
GENEVE, P1, P2 = 10, 1, 2

# ---------------------------------------------------------------------------
# A throwaway OVS in a namespace of our own


class OvsSandbox:
    """ovsdb-server + ovs-vswitchd in namespace ``ns``; everything in ``run_dir``.

    :meth:`down` stops only the daemons named by our pidfiles and deletes only
    the namespaces this sandbox created (or a crashed earlier run left).
    """

    def __init__(self, ns: str, run_dir: str | Path, extra_ns: tuple[str, ...] = ()):
        assert ns.startswith(PREFIX) and all(n.startswith(PREFIX) for n in extra_ns)
        self.ns, self.run_dir, self.extra_ns = ns, Path(run_dir), extra_ns
        self.node = OvsNode(ns, ns, self.run_dir / "ovs")

    def up(self) -> OvsSandbox:
        self.down()  # leftovers of an interrupted earlier run
        for ns in (self.ns, *self.extra_ns):
            sh.run([sh.tool("ip"), "netns", "add", ns])
            sh.ip(ns, "link", "set", "lo", "up")
        self.node.start()
        return self

    def down(self) -> None:
        self.node.stop()
        existing = set(sh.netns_list())
        for ns in (self.ns, *self.extra_ns):
            if ns in existing:
                sh.run([sh.tool("ip"), "netns", "del", ns])
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def bridge(self, name: str, ports: dict[str, tuple[int, str, dict]] | None = None,
               controllers: list[str] | None = None, tables: F.TableMap | None = None) -> None:
        """A netdev bridge, fail-mode secure, OpenFlow 1.3; ports: name -> (ofport, type, options)."""
        api = self.node.connect()
        try:
            api.run(EnsureBridge(api, name, datapath_type="netdev", fail_mode="secure", protocols=["OpenFlow13"],
                                 controllers=controllers))
            for port, (ofport, kind, options) in (ports or {}).items():
                api.run(EnsurePort(api, name, port, type=kind, options=options,
                                   ofport_request=ofport))
            self.node.wait_ports(api, list(ports or {}))
        finally:
            api.close()
        for port, (_, kind, _) in (ports or {}).items():
            if kind == "internal":  # its tap lives in our namespace; down, it drops what it gets
                sh.ip(self.ns, "link", "set", port, "up")
        if tables is not None:
            self.name_tables(name, tables)

    def name_tables(self, bridge: str, tables: F.TableMap) -> None:
        args: list[str] = []
        for i, (stage, tid) in enumerate(tables.stages):
            args += ["--", f"--id=@t{i}", "create", "Flow_Table", f"name={stage}"]
        args += ["--", "set", "Bridge", bridge,
                 *(f"flow_tables:{tid}=@t{i}" for i, (_, tid) in enumerate(tables.stages))]
        self.vsctl(*args)

    def vsctl(self, *args: str) -> str:
        return sh.run([sh.tool("ovs-vsctl"), "--timeout=10", *args], env=self.node.env()).stdout

    def ofctl(self, *args: str) -> str:
        return self.node.ofctl("-O", "OpenFlow13", *args)



class OfConnection:
    """A minimal OpenFlow 1.3 client: os-ken serialises, a plain socket carries the bytes."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.dp = ofmsg.protocol()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.xid = 0x1000
        self._send([self.dp.ofproto_parser.OFPHello(self.dp)])
        hello = self.recv()
        assert isinstance(hello, self.dp.ofproto_parser.OFPHello), hello
        assert hello.version == ofp.OFP_VERSION

    def close(self) -> None:
        self.sock.close()

    def _send(self, msgs: list) -> None:
        for m in msgs:
            self.xid += 1
            m.set_xid(self.xid)
        for write in ofmsg.serialize(self.dp, msgs):
            self.sock.sendall(write)

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the switch closed the OpenFlow connection")
            buf += chunk
        return bytes(buf)

    def recv(self):
        head = self._read(8)
        version, msg_type, length, xid = struct.unpack("!BBHI", head)
        data = head + self._read(length - 8)
        return ofproto_parser.msg(self.dp, version, msg_type, length, xid, data)

    def send(self, msgs: list) -> None:
        """Write ``msgs`` then a barrier; fail on any error the switch answers with."""
        errors = self.send_for_errors(msgs)
        assert not errors, f"the switch rejected messages: {errors}"

    def send_for_errors(self, msgs: list) -> list[str]:
        """Write ``msgs`` then a barrier; the errors the switch answered with."""
        barrier = self.dp.ofproto_parser.OFPBarrierRequest(self.dp)
        self._send([*msgs, barrier])
        errors = []
        while True:
            reply = self.recv()
            if isinstance(reply, self.dp.ofproto_parser.OFPErrorMsg) \
                    and reply.type == ofp.OFPET_EXPERIMENTER:
                errors.append(f"experimenter={reply.experimenter:#x} exp_type={reply.exp_type}")
            elif isinstance(reply, self.dp.ofproto_parser.OFPErrorMsg):
                errors.append(f"type={reply.type} code={reply.code} "
                              f"({ofp.ofp_error_code_to_str(reply.type, reply.code)})")
            elif isinstance(reply, self.dp.ofproto_parser.OFPBarrierReply) \
                    and reply.xid == barrier.xid:
                return errors

    def multipart(self, request) -> list:
        """Every part of the reply to ``request`` (following REPLY_MORE)."""
        self._send([request])
        parts = []
        while True:
            reply = self.recv()
            if reply.xid != request.xid:
                continue
            assert not isinstance(reply, self.dp.ofproto_parser.OFPErrorMsg), reply
            parts.append(reply)
            if not reply.flags & ofp.OFPMPF_REPLY_MORE:
                return parts


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def sandbox():
    need_lab()
    box = OvsSandbox(f"{PREFIX}ofmsg", "/run/v64o-ofmsg")
    try:
        box.up()
        box.bridge("br0", {"geneve0": (GENEVE, "geneve", {"remote_ip": "flow", "key": "flow"}),
                           "p1": (P1, "internal", {}), "p2": (P2, "internal", {})},
                   tables=TABLES)
        box.bridge("ref", tables=TABLES)
        yield box
    finally:
        box.down()


@pytest.fixture
def conn(sandbox):
    """An OpenFlow connection to br0; both bridges are emptied after the test."""
    c = OfConnection(sandbox.node.run_dir / "br0.mgmt")
    try:
        yield c
    finally:
        c.close()
        for br in ("br0", "ref"):
            sandbox.ofctl("del-flows", br)
            sandbox.ofctl("del-meters", br)


def dump(sandbox: OvsSandbox, bridge: str, *extra: str) -> dict[int, str]:
    """cookie -> the flow line as OVS prints it (no counters, numeric ports and tables)."""
    out = sandbox.ofctl("--no-stats", "--no-names", *extra, "dump-flows", bridge)
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("cookie=")]
    by_cookie: dict[int, str] = {}
    for line in lines:
        cookie = int(re.match(r"cookie=(0x[0-9a-f]+)", line).group(1), 16)
        assert cookie not in by_cookie, f"two flows with cookie {cookie:#x}:\n{out}"
        by_cookie[cookie] = line
    return by_cookie


# ---------------------------------------------------------------------------
# the flows: every action, instruction and flag the flow language has

METER = F.MeterMod(meter_id=7, rate_pps=200, burst=20)
FLOWS = [
    # forward: ct + SNAT to an IPv6 address with a port range, random, recirculate
    F.flow("classify", 100, {"in_port": GENEVE, "eth_type": F.ETH_IPV6,
                             "ipv6_src": "fd00:5::10", "ipv6_dst": "fd41:0:0:3930:1f:6600:a00:4"},
           [F.CT(zone=64001, commit=True, table="ct_fwd",
                 nat=F.Nat("src", "fd64::100", None, 1024, 2047, random=True))],
           cookie=0x101, idle_timeout=30, send_flow_rem=True),
    # ct + DNAT to one IPv6 address, no ports
    F.flow("ct_fwd", 100, {"eth_type": F.ETH_IPV6, "ct_state": F.ct_state("+trk", "+new"),
                           "ipv6_dst": "fd41:0:0:3930:1f:6600:a00:4"},
           [F.CT(zone=64002, commit=True, table="out", nat=F.Nat("dst", "fd64::a00:4"))],
           cookie=0x102),
    # IPv4 SNAT to an address range with ports, only when NAT happened (masked ct_state)
    F.flow("ct_fwd", 90, {"eth_type": F.ETH_IPV4, "ipv4_src": "172.16.0.5", "ip_proto": F.PROTO_TCP},
           [F.CT(zone=31, commit=True, table="out",
                 nat=F.Nat("src", "100.64.0.1", "100.64.0.4", 40000, 40999))],
           cookie=0x103, hard_timeout=600),
    # un-NAT (nat without arguments) and recirculate; ct without commit
    F.flow("ct_rev", 100, {"eth_type": F.ETH_IPV4, "ct_state": F.ct_state("+trk", "+est", "-new"),
                           "ipv4_dst": "100.64.0.1"},
           [F.CT(zone=31, table="out", nat=F.Nat())], cookie=0x104),
    F.flow("ct_rev", 90, {"eth_type": F.ETH_IPV6}, [F.CT(zone=64002, commit=True)],
           cookie=0x105),
    # tunnel: set tun_dst, output to the geneve port; and the hairpin by move from a register
    F.flow("out", 100, {"eth_type": F.ETH_IPV6, "ipv6_dst": IPv6Network("fd00:5::/64")},
           [F.SetField("tun_ipv4_dst", "192.168.50.2"), F.Output(GENEVE)], cookie=0x106),
    F.flow("out", 90, {"in_port": GENEVE, "tun_ipv4_src": "192.168.50.1",
                       "reg3": (0x5, 0xff)},
           [F.Move("reg0", "tun_ipv4_dst", 32), F.Output(F.OFPP_IN_PORT)], cookie=0x107),
    # registers, resubmit, meter + controller (the packet-in path), goto
    F.flow("classify", 10, {"in_port": P1},
           [F.SetField("reg3", 0x2a), F.Move("reg3", "reg4", 8, src_ofs=0, dst_ofs=8),
            F.Resubmit("nd")], goto="pairs", cookie=0x108),
    F.flow("classify", 0, {}, [F.Controller()], meter=METER.meter_id, cookie=0x109),
    F.flow("pairs", 0, {}, [F.Controller(max_len=128)], cookie=0x10a),
    # neighbour advertisement: set nd_tll on an NA
    F.flow("nd", 100, {"eth_type": F.ETH_IPV6, "ip_proto": F.PROTO_ICMPV6, "icmpv6_type": 136,
                       "icmpv6_code": 0, "ipv6_nd_target": "fd00:5::1"},
           [F.SetField("ipv6_nd_tll", "02:00:00:00:00:01"), F.SetField("eth_src", "02:00:00:00:00:01"),
            F.Output(F.OFPP_IN_PORT)], cookie=0x10b),
    # NS -> NA in the datapath: swap addresses by move, set OVS's ND fields, then nd_tll
    F.flow("nd", 110, {"eth_type": F.ETH_IPV6, "ip_proto": F.PROTO_ICMPV6, "icmpv6_type": 135},
           [F.Move("eth_src", "eth_dst", 48), F.SetField("eth_src", "02:00:00:00:00:01"),
            F.Move("ipv6_src", "ipv6_dst", 128), F.SetField("ipv6_src", "fe80::1"),
            F.SetField("icmpv6_type", 136), F.SetField("nd_reserved", 0xE0000000),
            F.SetField("nd_options_type", 2), F.SetField("tunnel_id", 0x64)],
           goto="out", cookie=0x10f),
    # the IPv4 side: set addresses, masked match
    F.flow("nd", 90, {"eth_type": F.ETH_IPV4, "ipv4_dst": ("10.0.0.0", "255.255.255.0")},
           [F.SetField("ipv4_src", "100.64.0.9"), F.Output(P2)], cookie=0x10c),
    # a flow with no actions (drop) and a goto only
    F.flow("out", 0, {}, [], cookie=0x10d),
    F.flow("nd", 0, {}, [], goto="out", cookie=0x10e),
]


# ---------------------------------------------------------------------------
# tests


def test_flows_are_what_ofctl_text_says(sandbox, conn):
    conn.send(ofmsg.to_messages(conn.dp, TABLES, [METER, *FLOWS]))
    sandbox.ofctl("add-meter", "ref", f"meter={METER.meter_id},pktps,burst,"
                  f"band=type=drop,rate={METER.rate_pps},burst_size={METER.burst}")
    for f in FLOWS:
        sandbox.ofctl("add-flow", "ref", f.ofctl(TABLES))
    got, want = dump(sandbox, "br0"), dump(sandbox, "ref")
    assert set(got) == {f.cookie for f in FLOWS}
    for f in FLOWS:
        assert got[f.cookie] == want[f.cookie], (
            f"{f.ofctl(TABLES)}\n  via os-ken: {got[f.cookie]}\n  via ofctl:  {want[f.cookie]}")
    # the flags survive, not only "both sides dropped them"
    assert "send_flow_rem" in got[0x101] and "idle_timeout=30" in got[0x101]
    assert "hard_timeout=600" in got[0x103]
    assert "nat(src=[fd64::100]:1024-2047,random)" in got[0x101]
    assert "nat(src=100.64.0.1-100.64.0.4:40000-40999)" in got[0x103]
    assert "set_field:192.168.50.2->tun_dst" in got[0x106]
    assert "meter:7" in got[0x109] and "CONTROLLER:65535" in got[0x109]
    assert "set_field:3758096384->nd_reserved" in got[0x10f]  # OVS prints decimal
    assert "set_field:2->nd_options_type" in got[0x10f]


def test_tunnel_token_map_and_flows_are_what_ofctl_says(sandbox, conn):
    """The TLV map (NXT_TLV_TABLE_MOD, encoded by hand) and flows that match and set
    ``tun_metadata0`` as 4 bytes: what ``ovs-ofctl add-tlv-map`` / ``add-flow`` make of the
    same text, and read back by a flow-stats request as the same match. Sending the map
    again fails with NXTTMFC_ALREADY_MAPPED only (which the controller ignores)."""
    from vnet64.controller.pipeline import TOKEN_OPTION
    conn.send(ofmsg.to_messages(conn.dp, None, [TOKEN_OPTION]))
    errors = conn.send_for_errors(ofmsg.to_messages(conn.dp, None, [TOKEN_OPTION]))
    assert errors == [f"experimenter={ofmsg.NX_VENDOR_ID:#x} exp_type={ofmsg.NXTTMFC_ALREADY_MAPPED}"]
    sandbox.ofctl("add-tlv-map", "ref", TOKEN_OPTION.ofctl())
    tlv = sandbox.ofctl("dump-tlv-map", "br0")
    assert tlv.splitlines()[1:] == sandbox.ofctl("dump-tlv-map", "ref").splitlines()[1:]
    assert "0xffff 0x64 4 tun_metadata0" in " ".join(tlv.split()), tlv
    token = [
        F.flow("classify", 100, {"in_port": GENEVE, "tun_ipv4_src": "192.168.50.1",
                                 "tun_metadata0": 0x5EC0E7A1, "eth_type": F.ETH_IPV6},
               goto="out", cookie=0x401),
        F.flow("out", 100, {"eth_type": F.ETH_IPV6, "ipv6_dst": "fd41::9"},
               [F.SetField("tunnel_id", 0x6464), F.SetField("tun_ipv4_dst", "192.168.50.2"),
                F.SetField("tun_metadata0", 0x5EC0E7A1), F.Output(GENEVE)], cookie=0x402),
    ]
    conn.send(ofmsg.to_messages(conn.dp, TABLES, token))
    for f in token:
        sandbox.ofctl("add-flow", "ref", f.ofctl(TABLES))
    got, want = dump(sandbox, "br0"), dump(sandbox, "ref")
    assert got == want
    assert "tun_metadata0=0x5ec0e7a1" in got[0x401], got[0x401]
    assert "set_field:0x5ec0e7a1->tun_metadata0" in got[0x402], got[0x402]
    [part] = conn.multipart(ofmsg.flow_stats_request(conn.dp, 0x401, 0xFFFFFFFFFFFFFFFF))
    [entry] = [ofmsg.flow_entry(s) for s in part.body]
    assert F.Match.of(entry.match) == token[0].match, entry.match


def test_meter_is_what_add_meter_says(sandbox, conn):
    conn.send(ofmsg.to_messages(conn.dp, None, [METER]))
    # again: ADD fails on an existing meter, MODIFY sets the new rate
    errors = conn.send_for_errors(ofmsg.to_messages(conn.dp, None,
                                                    [F.MeterMod(METER.meter_id, 300, 30)]))
    assert len(errors) == 1 and "METER_EXISTS" in errors[0], errors
    sandbox.ofctl("add-meter", "ref", f"meter={METER.meter_id},pktps,burst,"
                  "band=type=drop,rate=300,burst_size=30")
    assert sandbox.ofctl("dump-meters", "br0") == sandbox.ofctl("dump-meters", "ref")
    assert "rate=300 burst_size=30" in sandbox.ofctl("dump-meters", "br0")


def test_resync_reads_back_what_was_installed(sandbox, conn):
    # enough flows that OVS splits the reply (REPLY_MORE)
    pairs = [F.flow("pairs", 200, {"eth_type": F.ETH_IPV6, "ipv6_src": f"fd00:5::{i:x}",
                                   "ipv6_dst": "fd41:0:0:3930:1f:6600:a00:4",
                                   "ct_state": F.ct_state("+trk", "-new"),
                                   "reg3": (i, 0xffff)},
                    [F.CT(zone=64001, commit=True, table="ct_fwd",
                          nat=F.Nat("src", "fd64::100", None, 1024 + i, 1024 + i))],
                    cookie=0x7700_0000 | i, idle_timeout=60, send_flow_rem=True)
             for i in range(1500)]
    others = [f for f in FLOWS if f.table != "pairs"]
    conn.send(ofmsg.to_messages(conn.dp, TABLES, [METER, *others, *pairs]))
    parts = conn.multipart(ofmsg.flow_stats_request(conn.dp, 0x7700_0000, 0xff00_0000))
    assert len(parts) > 1, "expected a reply in several parts"
    entries = [ofmsg.flow_entry(s) for p in parts for s in p.body]
    assert len(entries) == len(pairs)
    want = {f.cookie: f for f in pairs}
    for e in entries:
        f = want.pop(e.cookie)
        assert (e.table_id, e.priority, e.idle_timeout) == (TABLES.id("pairs"), 200, 60)
        assert F.Match.of(e.match) == f.match, (e.match, f.match.as_dict())
    assert not want
    # mask 0: every flow
    everything = conn.multipart(ofmsg.flow_stats_request(conn.dp))
    assert sum(len(p.body) for p in everything) == len(pairs) + len(others)


def test_delete_by_cookie_and_mask(sandbox, conn):
    conn.send(ofmsg.to_messages(conn.dp, TABLES, [METER, *FLOWS]))
    # 0x101..0x10f: delete 0x108..0x10f (mask 0xff8) in every table ...
    conn.send(ofmsg.to_messages(conn.dp, TABLES, [F.DeleteFlows(0x108, 0xff8)]))
    assert set(dump(sandbox, "br0")) == {f.cookie for f in FLOWS if f.cookie < 0x108}
    # ... then cookie 0x100..0x107 only in table ct_fwd
    conn.send(ofmsg.to_messages(conn.dp, TABLES, [F.DeleteFlows(0x100, 0xff8, table="ct_fwd")]))
    assert set(dump(sandbox, "br0")) == {f.cookie for f in FLOWS
                                         if f.cookie < 0x108 and f.table != "ct_fwd"}


def test_delete_strict_removes_exactly_one_flow(sandbox, conn):
    same_match = [F.flow("out", prio, {"eth_type": F.ETH_IPV6, "ipv6_dst": "fd41::9"},
                         [F.Output(P1)], cookie=0x300 + prio) for prio in (10, 20)]
    conn.send(ofmsg.to_messages(conn.dp, TABLES, [METER, *FLOWS, *same_match]))
    before = dump(sandbox, "br0")
    conn.send(ofmsg.to_messages(conn.dp, TABLES, [F.DeleteStrict.of(same_match[0]),
                                                  F.DeleteStrict.of(FLOWS[0])]))
    assert set(before) - set(dump(sandbox, "br0")) == {0x30A, FLOWS[0].cookie}


def test_packet_out_reinjects_into_the_pipeline(sandbox, conn):
    from scapy.layers.inet6 import UDP, IPv6
    from scapy.layers.l2 import Ether
    frame = bytes(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb")
                  / IPv6(src="fd00:5::10", dst="fd41:0:0:3930:1f:6600:a00:4")
                  / UDP(sport=5000, dport=53))
    catch = F.flow("classify", 500, {"in_port": P1, "eth_type": F.ETH_IPV6, "ip_proto": F.PROTO_UDP,
                                     "udp_dst": 53}, [], cookie=0x201)
    out = F.flow("classify", 500, {"in_port": P2}, [F.Output(P1)], cookie=0x202)
    conn.send(ofmsg.to_messages(conn.dp, TABLES, [
        catch, out,
        F.PacketOut(frame, in_port=P1),                                # default: to TABLE
        F.PacketOut(frame, in_port=F.OFPP_CONTROLLER, actions=(F.Output(P1),))]))
    stats = sandbox.ofctl("dump-flows", "br0", "cookie=0x201/-1")
    assert "n_packets=1," in stats, stats
    ports = sandbox.ofctl("dump-ports", "br0", str(P1))
    assert re.search(r"tx pkts=[1-9]", ports), ports
