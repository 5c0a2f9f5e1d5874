"""vnet64-controller without root: options, --help, the app's event handling, clean stops.

The app is driven with os-ken's own message classes and a fake datapath that
records every write; the stoppable listener is exercised on loopback with a
plain socket as the switch.
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from tests.support.logic import NullLogic
from tests.support.ofswitch import RecordingDatapath, record_datapaths
from vnet64.controller import app as vapp
from vnet64.controller import flows as F
from vnet64.controller import launcher

ROOT = Path(__file__).resolve().parents[2]

TABLES = F.TableMap("test", (("classify", 0), ("pair", 3)))
DPID = 0x3E4024C22B47

# ---------------------------------------------------------------------------
# options and --help


def test_help_lists_what_the_command_honours(capsys):
    with pytest.raises(SystemExit) as exc:
        launcher.parse(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())   # argparse wraps lines
    for option in ("--ofp-listen-host", "--ofp-tcp-listen-port", "--vnet64-nb-remote",
                   "--vnet64-logic", "--log-level", "--log-file", "--config-file",
                   "--ctl-privkey", "--ctl-cert", "--ca-certs", "--vnet64-nb-private-key",
                   "--vnet64-nb-certificate", "--vnet64-nb-ca-cert"):
        assert option in out
    assert "default 6653" in out and "default INFO" in out and "default 0.0.0.0" in out
    assert launcher.DEFAULT_LOGIC in out
    assert "None" not in out.replace("Defaults to None", "")   # no default printed as None
    # os-ken's CONF carries options this launcher does not serve: none of them is offered
    # (its TLS options are served, by this launcher's own listener)
    for absent in ("ofp-ssl-listen-port", "ciphers", "switch-address", "test-switch", "zapi",
                   "bgp", "ofp-switch-connect-interval"):
        assert absent not in out


def test_nb_remote_default_follows_the_environment(monkeypatch, capsys):
    monkeypatch.delenv("VNET64_NB", raising=False)
    monkeypatch.setenv("VNET64_RUN_DIR", "/srv/v64")
    assert launcher.parse([]).vnet64.nb_remote == "unix:/srv/v64/nb.sock"
    monkeypatch.setenv("VNET64_NB", "tcp:10.9.0.1:6641")
    assert launcher.parse([]).vnet64.nb_remote == "tcp:10.9.0.1:6641"
    with pytest.raises(SystemExit):
        launcher.parse(["--help"])
    assert "now tcp:10.9.0.1:6641" in " ".join(capsys.readouterr().out.split())


def test_the_lab_command_line_parses(monkeypatch):
    monkeypatch.delenv("VNET64_NB", raising=False)
    conf = launcher.parse(["--ofp-listen-host", "172.31.255.1", "--ofp-tcp-listen-port", "6653",
                           "--vnet64-nb-remote", "tcp:172.31.255.1:6641"])
    assert (conf.ofp_listen_host, conf.ofp_tcp_listen_port, conf.vnet64.nb_remote) == (
        "172.31.255.1", 6653, "tcp:172.31.255.1:6641")
    assert (conf.log_level, conf.log_file, conf.vnet64.logic) == ("INFO", None, launcher.DEFAULT_LOGIC)


def test_config_file_and_command_line_precedence(tmp_path):
    conf_file = tmp_path / "controller.conf"
    conf_file.write_text("[DEFAULT]\nofp_tcp_listen_port = 7000\nlog_level = debug\n"
                         "[vnet64]\nnb_remote = tcp:10.0.0.1:6641\n")
    conf = launcher.parse(["--config-file", str(conf_file)])
    assert (conf.ofp_tcp_listen_port, conf.vnet64.nb_remote) == (7000, "tcp:10.0.0.1:6641")
    assert conf.log_level.upper() == "DEBUG"
    conf = launcher.parse(["--config-file", str(conf_file), "--ofp-tcp-listen-port", "7100"])
    assert conf.ofp_tcp_listen_port == 7100


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--log-level", "chatty"], "chatty"),
    (["--ofp-tcp-listen-port", "70000"], "70000"),
    (["--vnet64-logic", "no_such_module_v64:X"], "cannot load the role logic no_such_module_v64:X"),
    (["--vnet64-logic", "vnet64.controller.app:Nope"], "vnet64.controller.app has no Nope"),
    (["--vnet64-logic", "justamodule"], "wants MODULE:CLASS"),
    (["--config-file", "/nonexistent/v64.conf"], "v64.conf"),
    (["--vnet64-switch", "br-int.mgmt"], "wants unix:/ABSOLUTE/PATH or tcp:IP:PORT"),
    (["--vnet64-switch", "unix:relative/br-int.mgmt"], "wants unix:/ABSOLUTE/PATH"),
    (["--vnet64-switch", "tcp:127.0.0.1"], "got 'tcp:127.0.0.1'"),
    (["--vnet64-switch", "tcp:not-an-ip:6653"], "wants unix:/ABSOLUTE/PATH or tcp:IP:PORT"),
    (["--vnet64-switch", "tcp:127.0.0.1:70000"], "wants unix:/ABSOLUTE/PATH or tcp:IP:PORT"),
    (["--log-file", "/nonexistent/dir/c.log", "--vnet64-logic", "tests.support.logic:NullLogic"],
     "cannot open the log file"),
])
def test_bad_usage_exits_2_and_says_why(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        code = launcher.main(argv)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_node_option_on_the_command_line_and_in_a_config_file(tmp_path, capsys):
    assert launcher.parse([]).vnet64.node is None   # default: every node (central)
    assert launcher.parse(["--vnet64-node", "host1"]).vnet64.node == "host1"
    conf_file = tmp_path / "controller.conf"
    conf_file.write_text("[vnet64]\nnode = appliance\n")
    assert launcher.parse(["--config-file", str(conf_file)]).vnet64.node == "appliance"
    with pytest.raises(SystemExit):
        launcher.parse(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--vnet64-node NAME serve only this node's switch" in out
    assert "vnet64 node set NAME --controller tcp:127.0.0.1:6653" in out
    assert "Default: every node of the NB (one central controller)" in out
    assert "with --vnet64-node only that node's" in out   # the description says it too


@pytest.fixture
def started(monkeypatch):
    """main() up to run(): the Settings it would serve with (nothing listens, no signal
    handler or logging set up stays behind)."""
    got = []
    monkeypatch.setattr(launcher, "run", lambda settings, stop: got.append(settings) or 0)
    monkeypatch.setattr(launcher, "setup_logging", lambda level, log_file: None)
    monkeypatch.setattr(launcher.signal, "signal", lambda *a: None)
    monkeypatch.setattr(launcher.faulthandler, "register", lambda *a, **k: None)
    monkeypatch.setattr(launcher.logging, "shutdown", lambda: None)
    return got


def test_node_reaches_the_logic_and_the_settings(started):
    from vnet64 import topology
    from vnet64.controller.logic import Logic
    from vnet64.controller.model import from_topology

    assert launcher.main(["--vnet64-node", "host1", "--vnet64-path-mtu", "1442",
                          "--ofp-listen-host", "127.0.0.1"]) == 0
    [settings] = started
    assert (settings.node, settings.listen_host, settings.listen_port) == ("host1", "127.0.0.1", 6653)
    factory = settings.logic_factory
    assert factory.func is Logic and factory.keywords == {"path_mtu": 1442, "node": "host1"}
    model = from_topology(topology.load(ROOT / "topologies" / "two-tenants.yaml"))
    logic = factory(lambda: model)
    assert logic.only_node == "host1" and logic.path_mtu == 1442
    host2 = next(n for n in model.nodes if n.name == "host2")
    assert logic.switch_connected(host2.datapath_id, {}) is None   # another node's: left alone


def test_without_node_the_controller_serves_every_node(started):
    from vnet64.controller.logic import Logic

    assert launcher.main([]) == 0
    [settings] = started
    assert settings.node is None and settings.logic_factory is Logic


@pytest.mark.parametrize("argv, message", [
    (["--vnet64-node", ""], "--vnet64-node wants a node name"),
    (["--vnet64-node", "host 1"], "got 'host 1'"),
    (["--vnet64-node", "1host"], "--vnet64-node wants a node name"),
    (["--vnet64-node", "host1", "--vnet64-logic", "tests.support.logic:NullLogic"],
     "--vnet64-node applies to the default logic only"),
])
def test_a_bad_node_option_exits_2(argv, message, started, capsys):
    assert launcher.main(argv) == 2
    assert message in capsys.readouterr().err and not started


def test_resolve_logic():
    assert launcher.resolve_logic("tests.support.logic:NullLogic") is NullLogic
    assert callable(launcher.resolve_logic(launcher.DEFAULT_LOGIC))


def test_python_m_and_help_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "vnet64.controller", "--help"], check=False,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: vnet64-controller")
    assert proc.stderr == ""   # no warnings either (eventlet's deprecation is filtered)


# ---------------------------------------------------------------------------
# the app, with a fake datapath


class FakeDatapath(RecordingDatapath):
    def __init__(self, dpid: int = DPID, ports: dict[str, int] | None = None):
        super().__init__(dpid, ("127.0.0.1", 40000))
        self.ports = {no: port(name, no) for name, no in (ports or {"geneve0": 10, "v-a": 3}).items()}

    def take(self) -> list[list]:
        """The writes so far, each as its list of (msg type, parsed flow-mod or raw bytes)."""
        out = []
        for w in self.writes:
            msgs, off = [], 0
            while off < len(w):
                version, msg_type, length, xid = struct.unpack_from("!BBHI", w, off)
                raw = w[off:off + length]
                if msg_type == ofp.OFPT_FLOW_MOD:
                    msgs.append((msg_type, ofproto_parser.msg(self, version, msg_type, length, xid, raw)))
                else:
                    msgs.append((msg_type, raw))
                off += length
            out.append(msgs)
        self.writes = []
        return out


def port(name: str, no: int):
    return parser.OFPPort(port_no=no, hw_addr="02:00:00:00:00:01", name=name.encode(), config=0,
                          state=0, curr=0, advertised=0, supported=0, peer=0, curr_speed=0,
                          max_speed=0)


class RecordingLogic:
    """Records calls; answers with what the test scripted."""

    def __init__(self, load_model=None):
        self.calls: list[tuple] = []
        self.connected: tuple | None = (TABLES, [F.MeterMod(1, 100),
                                                 F.flow("classify", 0, {}, [F.Controller()], meter=1)])
        self.on_packet_in: list = []
        self.on_nb: dict = {}
        self.fail: set[str] = set()

    def _record(self, name, *args):
        self.calls.append((name, *args))
        if name in self.fail:
            raise RuntimeError(f"{name} exploded")

    def switch_connected(self, dpid, ports):
        self._record("switch_connected", dpid, ports)
        return self.connected

    def resynced(self, dpid, flows):
        self._record("resynced", dpid, flows)
        return [F.DeleteFlows(0x99, -1 & 0xFFFFFFFFFFFFFFFF)]

    def switch_disconnected(self, dpid):
        self._record("switch_disconnected", dpid)

    def ports_changed(self, dpid, ports):
        self._record("ports_changed", dpid, ports)
        return []

    def packet_in(self, dpid, table_id, in_port, data):
        self._record("packet_in", dpid, table_id, in_port, data)
        return list(self.on_packet_in)

    def flow_removed(self, dpid, cookie, reason):
        self._record("flow_removed", dpid, cookie, reason)
        return []

    def nb_changed(self, delta=None):
        self._record("nb_changed")
        return dict(self.on_nb)


def new_app() -> vapp.Vnet64App:
    a = vapp.Vnet64App(vnet64=vapp.Settings(nb_remote="unix:/nonexistent", logic_factory=RecordingLogic))
    a.logic = RecordingLogic()
    return a


@pytest.fixture
def vnet64():
    return new_app()


def state(dp, st):
    ev = ofp_event.EventOFPStateChange(dp)
    ev.state = st
    return ev


def packet_in(dp, data=b"\x02" * 60, in_port=3, table_id=3):
    return ofp_event.EventOFPPacketIn(parser.OFPPacketIn(
        dp, buffer_id=ofp.OFP_NO_BUFFER, total_len=len(data), reason=ofp.OFPR_ACTION,
        table_id=table_id, cookie=7, match=parser.OFPMatch(in_port=in_port), data=data))


def stats_reply(dp, xid, flows, more=False):
    body = [parser.OFPFlowStats(table_id=t, duration_sec=1, duration_nsec=0, priority=p,
                                idle_timeout=i, hard_timeout=0, flags=0, cookie=c, packet_count=0,
                                byte_count=0, match=parser.OFPMatch(**m), instructions=[])
            for c, t, p, m, i in flows]
    msg = parser.OFPFlowStatsReply(dp, body=body, flags=ofp.OFPMPF_REPLY_MORE if more else 0)
    msg.xid = xid
    return ofp_event.EventOFPFlowStatsReply(msg)


def connect(a, dp):
    a._on_features(SimpleNamespace(msg=SimpleNamespace(datapath=dp)))
    a._on_state(state(dp, MAIN_DISPATCHER))
    return a.switches[dp.id]


def test_connect_sends_set_config_then_pipeline_and_dump_in_one_write(vnet64):
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    [[(t1, set_config)], pipeline] = dp.take()
    assert t1 == ofp.OFPT_SET_CONFIG
    assert struct.unpack_from("!HH", set_config, 8) == (0, 0xFFFF)   # miss_send_len: whole packets
    assert [t for t, _ in pipeline] == [ofp.OFPT_METER_MOD, ofp.OFPT_METER_MOD, ofp.OFPT_FLOW_MOD,
                                        ofp.OFPT_EXPERIMENTER, ofp.OFPT_MULTIPART_REQUEST]
    assert struct.unpack_from("!II", pipeline[-2][1], 8) == (0x2320, 25)   # NXT_TLV_TABLE_REQUEST
    assert vnet64.logic.calls == [("switch_connected", DPID, {"geneve0": 10, "v-a": 3})]
    assert sw.state == "resyncing" and sw.stats_xid == struct.unpack_from("!I", pipeline[-1][1], 4)[0]


class TwoReadLogic(RecordingLogic):
    """A logic that asks the resync to read the pairs' flows first (``adoption_read``)."""

    def adoption_read(self, dpid):
        return 3, 0x0107000000000000, 0xFFFF000000000000

    def resynced(self, dpid, flows, complete=True):
        self._record("resynced", dpid, flows, complete)
        return []

    def swept(self, dpid, flows):
        self._record("swept", dpid, flows)
        return [F.DeleteFlows(0x98, -1 & 0xFFFFFFFFFFFFFFFF)]


def test_a_resync_reads_the_pairs_first_then_the_whole_table(vnet64):
    """Ready (held packet-ins served) after the small first read; the sweep follows."""
    vnet64.logic = TwoReadLogic()
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    [_, pipeline] = dp.take()
    first, whole = pipeline[-2:]
    assert first[0] == whole[0] == ofp.OFPT_MULTIPART_REQUEST
    # ofp_flow_stats_request after the 16-byte multipart header: table, out_port, out_group,
    # cookie, cookie mask
    table, cookie, mask = (struct.unpack_from("!B", first[1], 16)[0],
                           *struct.unpack_from("!QQ", first[1], 16 + 16))
    assert (table, cookie, mask) == (3, 0x0107000000000000, 0xFFFF000000000000)
    assert struct.unpack_from("!B", whole[1], 16)[0] == ofp.OFPTT_ALL
    assert struct.unpack_from("!QQ", whole[1], 32) == (0, 0)
    first_xid, whole_xid = (struct.unpack_from("!I", m[1], 4)[0] for m in (first, whole))
    vnet64._on_packet_in(packet_in(dp))                      # held until the first read is in
    vnet64._on_flow_stats(stats_reply(dp, first_xid, [(0x0107000000000001, 3, 100, {}, 300)]))
    assert sw.state == "ready"
    assert [c[0] for c in vnet64.logic.calls] == ["switch_connected", "resynced", "packet_in"]
    assert vnet64.logic.calls[1][3] is False                 # not the whole table
    vnet64._on_flow_stats(stats_reply(dp, whole_xid, [(0x0107000000000001, 3, 100, {}, 300),
                                                      (0x0101000000000001, 0, 0, {}, 0)]))
    assert vnet64.logic.calls[-1][0] == "swept" and len(vnet64.logic.calls[-1][2]) == 2
    [write] = dp.take()
    assert [t for t, _ in write] == [ofp.OFPT_FLOW_MOD]      # the sweep's delete


def test_a_tlv_map_that_is_not_ours_is_logged_as_an_error(vnet64, caplog):
    dp = FakeDatapath()
    connect(vnet64, dp)

    def reply(*maps: bytes):
        body = bytes.fromhex("00000100" "0040") + bytes(10) + b"".join(maps)
        return ofp_event.EventOFPExperimenter(parser.OFPExperimenter(dp, 0x2320, 26, body))
    vnet64._on_experimenter(reply(bytes.fromhex("ffff" "64" "04" "0000" "0000")))      # ours
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    vnet64._on_experimenter(reply(bytes.fromhex("0102" "01" "08" "0000" "0000")))      # someone else's
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "tun_metadata0 is mapped to {class=0x102,type=0x1,len=8}" in error.getMessage()


def test_resync_follows_reply_more_and_holds_packet_ins(vnet64):
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    dp.take()
    vnet64.logic.on_packet_in = [F.flow("pair", 100, {"in_port": 3}, [F.Output(10)], cookie=0x5),
                                 F.PacketOut(b"\x02" * 60, 3)]
    vnet64._on_packet_in(packet_in(dp))                 # before the dump is in: held
    assert [c[0] for c in vnet64.logic.calls] == ["switch_connected"] and dp.take() == []
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, [
        (0x7700, 3, 200, {"eth_type": 0x86DD, "ipv6_src": "fd00:5::10"}, 60)], more=True))
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid + 1, [(0x1, 0, 1, {}, 0)]))  # not ours
    assert [c[0] for c in vnet64.logic.calls] == ["switch_connected"]
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, [
        (0x7701, 3, 200, {"eth_type": 0x86DD, "ipv6_dst": ("fd41::", "ffff::")}, 0)]))
    name, dpid, found = vnet64.logic.calls[1]
    assert (name, dpid) == ("resynced", DPID)
    assert found == [(0x7700, 3, 200, {"eth_type": 0x86DD, "ipv6_src": "fd00:5::10"}),
                     (0x7701, 3, 200, {"eth_type": 0x86DD, "ipv6_dst": ("fd41::", "ffff::")})]
    assert vnet64.logic.calls[2][:4] == ("packet_in", DPID, 3, 3)
    # resync's delete, then the held packet's flow and packet-out: one write
    [write] = dp.take()
    assert [t for t, _ in write] == [ofp.OFPT_FLOW_MOD, ofp.OFPT_FLOW_MOD, ofp.OFPT_PACKET_OUT]
    assert write[0][1].command == ofp.OFPFC_DELETE and write[1][1].cookie == 0x5
    assert sw.state == "ready"


def test_a_flow_dump_that_never_completes_is_asked_for_again(vnet64, caplog):
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    dp.take()
    first = sw.stats_xid
    vnet64._on_flow_stats(stats_reply(dp, first, [(0x7700, 3, 200, {}, 0)], more=True))
    vnet64._on_tick(vapp.EventTick())                  # not yet due
    assert dp.take() == [] and sw.stats_xid == first
    sw.resync_started -= vapp.RESYNC_TIMEOUT + 1       # the rest of the reply never came
    vnet64._on_tick(vapp.EventTick())
    [[(msg_type, raw)]] = dp.take()
    assert msg_type == ofp.OFPT_MULTIPART_REQUEST and struct.unpack_from("!H", raw, 8)[0] == ofp.OFPMP_FLOW
    assert sw.stats_xid == struct.unpack_from("!I", raw, 4)[0] != first and sw.found == []
    assert "no complete flow dump" in caplog.text and "asking again" in caplog.text
    vnet64._on_flow_stats(stats_reply(dp, first, [(0x7701, 3, 200, {}, 0)]))    # late: ignored
    assert sw.state == "resyncing"
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, [(0x7702, 3, 200, {}, 0)]))
    assert sw.state == "ready"
    assert [f[0] for f in vnet64.logic.calls[-1][2]] == [0x7702]
    vnet64._on_tick(vapp.EventTick())                  # ready: nothing to do
    assert [t for w in dp.take() for t, _ in w] == [ofp.OFPT_FLOW_MOD]   # only resync's delete


def test_ticks_keep_their_pace_under_a_stream_of_posts(vnet64):
    """The resync watchdog's clock: a post every 0.1 s must not hold the ticks back."""
    got: list = []
    vnet64.send_event = lambda name, ev: got.append(ev)
    poster = threading.Thread(target=vnet64._post_loop, daemon=True)
    poster.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5 * vapp.TICK:
        vnet64._post_to_self(vapp.EventPortsChanged(None))
        time.sleep(0.1)
    vnet64._posts.put(None)
    poster.join(5)
    assert not poster.is_alive()
    assert sum(isinstance(e, vapp.EventTick) for e in got) >= 2   # 0 when posts held them back
    assert sum(isinstance(e, vapp.EventPortsChanged) for e in got) >= 20


def flow_removed_event(dp, cookie, reason=ofp.OFPRR_IDLE_TIMEOUT):
    return ofp_event.EventOFPFlowRemoved(parser.OFPFlowRemoved(
        dp, cookie=cookie, priority=100, reason=reason, table_id=3, duration_sec=61,
        duration_nsec=0, idle_timeout=60, hard_timeout=0, packet_count=1, byte_count=80,
        match=parser.OFPMatch()))


def test_a_flow_removed_during_resync_is_applied_after_the_dump_then_held_packets(vnet64):
    """The dump may predate the removal: applied first, resynced() would adopt the pair
    again from the dump; applied after it, the pair is released. A held first packet of
    the same pair comes last, so it finds the pair released and sets it up anew."""
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    dp.take()
    vnet64._on_packet_in(packet_in(dp))
    vnet64._on_flow_removed(flow_removed_event(dp, 0x7705))
    assert [c[0] for c in vnet64.logic.calls] == ["switch_connected"] and dp.take() == []
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, [
        (0x7705, 3, 100, {"eth_type": 0x86DD, "ipv6_src": "fd00:5::10"}, 60)]))
    assert [c[0] for c in vnet64.logic.calls] == ["switch_connected", "resynced", "flow_removed",
                                                   "packet_in"]
    assert vnet64.logic.calls[2] == ("flow_removed", DPID, 0x7705, ofp.OFPRR_IDLE_TIMEOUT)
    assert sw.state == "ready" and not sw.removed
    vnet64._on_flow_removed(flow_removed_event(dp, 0x7706))    # ready: at once
    assert vnet64.logic.calls[-1] == ("flow_removed", DPID, 0x7706, ofp.OFPRR_IDLE_TIMEOUT)


def test_packet_in_flow_mod_and_packet_out_leave_in_one_write(vnet64):
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, []))
    dp.take()
    vnet64.logic.on_packet_in = [F.flow("pair", 100, {"in_port": 3}, [F.Output(10)], cookie=0x5,
                                        idle_timeout=60, send_flow_rem=True),
                                 F.PacketOut(b"\x02" * 60, 3, (F.Resubmit("pair"),))]
    vnet64._on_packet_in(packet_in(dp, data=b"\x07" * 80, in_port=3, table_id=3))
    assert vnet64.logic.calls[-1] == ("packet_in", DPID, 3, 3, b"\x07" * 80)
    [write] = dp.take()
    assert [t for t, _ in write] == [ofp.OFPT_FLOW_MOD, ofp.OFPT_PACKET_OUT]
    assert write[0][1].flags == ofp.OFPFF_SEND_FLOW_REM


def test_flow_removed_port_status_and_errors(vnet64, caplog):
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, []))
    vnet64._on_flow_removed(flow_removed_event(dp, 0x7705))
    assert vnet64.logic.calls[-1] == ("flow_removed", DPID, 0x7705, ofp.OFPRR_IDLE_TIMEOUT)
    posted = []
    vnet64._post_to_self = posted.append
    vnet64._on_port_status(ofp_event.EventOFPPortStatus(
        parser.OFPPortStatus(dp, reason=ofp.OFPPR_ADD, desc=port("v-b", 4))))
    vnet64._on_port_status(ofp_event.EventOFPPortStatus(
        parser.OFPPortStatus(dp, reason=ofp.OFPPR_ADD, desc=port("v-c", 5))))
    # a burst: one reconcile, posted behind it, with both ports
    assert vnet64.logic.calls[-1][0] == "flow_removed" and len(posted) == 1
    vnet64._on_ports_changed(posted.pop())
    assert vnet64.logic.calls[-1] == ("ports_changed", DPID, {"geneve0": 10, "v-a": 3, "v-b": 4, "v-c": 5})
    vnet64._on_port_status(ofp_event.EventOFPPortStatus(
        parser.OFPPortStatus(dp, reason=ofp.OFPPR_DELETE, desc=port("v-a", 3))))
    vnet64._on_ports_changed(posted.pop())
    assert vnet64.logic.calls[-1] == ("ports_changed", DPID, {"geneve0": 10, "v-b": 4, "v-c": 5})
    assert not posted
    caplog.set_level(logging.WARNING)
    vnet64._on_error(ofp_event.EventOFPErrorMsg(parser.OFPErrorMsg(
        dp, type_=ofp.OFPET_METER_MOD_FAILED, code=ofp.OFPMMFC_METER_EXISTS, data=b"\x04\x1d" + b"\0" * 6)))
    assert not caplog.records   # expected: ofmsg adds then modifies a meter
    vnet64._on_error(ofp_event.EventOFPErrorMsg(parser.OFPErrorMsg(
        dp, type_=ofp.OFPET_BAD_ACTION, code=ofp.OFPBAC_BAD_OUT_PORT,
        data=struct.pack("!BBHI", 4, ofp.OFPT_FLOW_MOD, 8, 0x1234))))
    [record] = caplog.records
    assert "OFPBAC_BAD_OUT_PORT" in record.getMessage() and "xid 4660" in record.getMessage()
    assert f"{DPID:016x}" in record.getMessage()
    assert vnet64.errors == {"switch: OFPBAC_BAD_OUT_PORT": 1}    # counted (metrics), not the meter's


def test_a_port_burst_queued_for_a_connection_that_was_replaced_is_dropped(vnet64):
    old, new = FakeDatapath(), FakeDatapath()
    sw = connect(vnet64, old)
    vnet64._on_flow_stats(stats_reply(old, sw.stats_xid, []))
    posted = []
    vnet64._post_to_self = posted.append
    vnet64._on_port_status(ofp_event.EventOFPPortStatus(
        parser.OFPPortStatus(old, reason=ofp.OFPPR_ADD, desc=port("v-b", 4))))
    connect(vnet64, new)                    # reconnected: programmed whole on its own
    calls = len(vnet64.logic.calls)
    old.take()
    vnet64._on_ports_changed(posted.pop())
    assert len(vnet64.logic.calls) == calls and not old.take()


def port_burst_through_a_full_queue() -> None:
    """The app's real event loop with a full queue and a port-status burst (see the test)."""
    vnet64 = new_app()
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, []))
    n = vnet64.events.maxsize * 3
    gate, flow_removed = threading.Event(), vnet64.logic.flow_removed
    vnet64.logic.flow_removed = lambda *a: (gate.wait(10), flow_removed(*a))[1]   # a slow handler
    log = sw.log   # each port-status handler yields after the loop freed a slot: the sender takes it

    class YieldingLog:
        def info(self, *a):
            log.info(*a)
            time.sleep(0.002)

        def __getattr__(self, name):
            return getattr(log, name)
    sw.log = YieldingLog()

    def burst():
        vnet64.send_event(vnet64.name, flow_removed_event(dp, 0x7705))   # holds the loop
        for i in range(n):
            vnet64.send_event(vnet64.name, ofp_event.EventOFPPortStatus(
                parser.OFPPortStatus(dp, reason=ofp.OFPPR_ADD, desc=port(f"v-{i}", 100 + i))))
    sender = threading.Thread(target=burst, daemon=True)
    app_manager.register_app(vnet64)   # its handlers, and send_event finds it
    vnet64.start()
    sender.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not vnet64.events.full():
        time.sleep(0.01)
    assert vnet64.events.full()
    gate.set()   # the loop goes on with a full queue and a sender waiting for room
    sender.join(20)
    assert not sender.is_alive(), "the burst could not be delivered: the app's event loop is stuck"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
            vnet64.logic.calls[-1][0] == "ports_changed" and len(vnet64.logic.calls[-1][2]) == n + 2):
        time.sleep(0.05)
    last = vnet64.logic.calls[-1]
    assert last[0] == "ports_changed" and len(last[2]) == n + 2, last[:2]
    reconciles = sum(c[0] == "ports_changed" for c in vnet64.logic.calls)
    assert 1 <= reconciles < n / 10, reconciles   # coalesced, not one per port
    vnet64.stop()
    app_manager.unregister_app(vnet64)
    assert not vnet64._poster.is_alive()


def test_a_port_burst_larger_than_the_event_queue_does_not_stop_the_app():
    """Regression: the first port-status of a burst posted the reconcile into the app's
    own queue with a send_event that waits for room, and only the waiting thread makes
    room: with the queue full, the app stopped for good (growth benchmark, host1 adding
    1,000 ports). In a process of its own: a stuck app's threads cannot be stopped."""
    code = ("import os, traceback\n"
            "try:\n"
            "    from tests.unit.test_launcher import port_burst_through_a_full_queue as run\n"
            "    run()\n"
            "except BaseException:\n"
            "    traceback.print_exc()\n"
            "    os._exit(1)\n"
            "os._exit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_disconnect_and_a_reconnect_that_overtakes_the_old_connection(vnet64):
    old, new = FakeDatapath(), FakeDatapath()
    connect(vnet64, old)
    connect(vnet64, new)                    # the switch came back before the old socket died
    vnet64._on_state(state(old, DEAD_DISPATCHER))
    assert "switch_disconnected" not in [c[0] for c in vnet64.logic.calls]
    assert vnet64.switches[DPID].dp is new
    vnet64._on_state(state(new, DEAD_DISPATCHER))
    assert vnet64.logic.calls[-1] == ("switch_disconnected", DPID) and not vnet64.switches


def test_unknown_switch_is_left_alone_until_the_nb_knows_it(vnet64):
    vnet64.logic.connected = None
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    assert sw.state == "unknown"
    dp.take()
    vnet64._on_packet_in(packet_in(dp))
    assert [c[0] for c in vnet64.logic.calls] == ["switch_connected"]   # nothing passed on
    vnet64.logic.connected = (TABLES, [])
    vnet64._on_nb_changed(vapp.EventNbChanged())
    assert [c[0] for c in vnet64.logic.calls] == ["switch_connected", "nb_changed", "switch_connected"]
    assert sw.state == "resyncing"


def test_nb_change_sends_each_switch_its_messages(vnet64):
    a, b = FakeDatapath(1), FakeDatapath(2)
    for dp in (a, b):
        sw = connect(vnet64, dp)
        vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, []))
        dp.take()
    vnet64.logic.on_nb = {2: [F.DeleteStrict("pair", 100, F.Match.of(in_port=3))], 99: [F.flow("pair", 1)]}
    vnet64._on_nb_changed(vapp.EventNbChanged())
    assert a.take() == []
    [[(_, fm)]] = b.take()
    assert fm.command == ofp.OFPFC_DELETE_STRICT


def test_logic_built_on_first_nb_replica_then_waiting_switches_programmed():
    a = vapp.Vnet64App(vnet64=vapp.Settings(logic_factory=RecordingLogic))
    dp = FakeDatapath()
    sw = connect(a, dp)
    assert sw.state == "waiting" and a.logic is None
    a._on_nb_changed(vapp.EventNbChanged())
    assert isinstance(a.logic, RecordingLogic)
    assert [c[0] for c in a.logic.calls] == ["switch_connected"] and sw.state == "resyncing"


def test_a_logic_that_cannot_be_built_is_fatal():
    reasons = []

    def broken(load_model):
        raise RuntimeError("no model")

    a = vapp.Vnet64App(vnet64=vapp.Settings(logic_factory=broken, on_fatal=reasons.append))
    a._on_nb_changed(vapp.EventNbChanged())
    assert a.logic is None and reasons == ["the role logic could not be built"]


def test_a_failing_logic_is_logged_with_the_switch_and_nothing_is_sent(vnet64, caplog):
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, []))
    dp.take()
    vnet64.logic.fail.add("packet_in")
    vnet64._on_packet_in(packet_in(dp))
    assert dp.take() == []
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "role logic packet_in failed" in record.getMessage()
    assert f"{DPID:016x}" in record.getMessage() and record.exc_info
    assert vnet64.errors["logic: packet_in"] == 1


def test_a_message_that_cannot_be_translated_is_skipped_not_the_batch(vnet64, caplog):
    dp = FakeDatapath()
    sw = connect(vnet64, dp)
    vnet64._on_flow_stats(stats_reply(dp, sw.stats_xid, []))
    dp.take()
    vnet64.logic.on_packet_in = [F.flow("nowhere", 1), F.PacketOut(b"\x02" * 60, 3)]
    vnet64._on_packet_in(packet_in(dp))
    [write] = dp.take()
    assert [t for t, _ in write] == [ofp.OFPT_PACKET_OUT]
    assert any("'nowhere' is not a stage" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# the stoppable listener, on loopback


@pytest.fixture
def server(monkeypatch):
    made = record_datapaths(monkeypatch)
    before = set(threading.enumerate())
    srv = launcher.OpenFlowServer("127.0.0.1", 0)
    srv.start()
    srv.made = made
    yield srv
    srv.stop()
    assert set(threading.enumerate()) <= before, "threads left behind"


def switch(srv) -> socket.socket:
    s = socket.create_connection(srv.address, timeout=5)
    head = s.recv(8)
    assert head[1] == ofp.OFPT_HELLO   # the controller speaks first
    return s


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_switch_that_disconnects_leaves_no_thread_and_is_declared_dead(server):
    before = threading.active_count()
    s = switch(server)
    wait_until(lambda: server.made)
    s.close()
    wait_until(lambda: threading.active_count() <= before and not server._conns)
    assert server.made[0].state == DEAD_DISPATCHER   # close() ran: the app hears DEAD_DISPATCHER


def test_stop_closes_live_connections_and_the_listener(server):
    socks = [switch(server) for _ in range(3)]
    wait_until(lambda: len(server.made) == 3)
    server.stop(timeout=5)
    for s in socks:
        s.settimeout(5)
        assert s.recv(100) == b""   # the controller side is gone
        s.close()
    assert not server._conns and all(dp.state == DEAD_DISPATCHER for dp in server.made)
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1)


# ---------------------------------------------------------------------------
# --vnet64-switch: the controller connects to its switch (a bridge's management socket)


def test_switch_targets_parse():
    assert launcher.parse_switch_target(None) is None
    assert launcher.parse_switch_target("unix:/run/ovs/br-int.mgmt") == "/run/ovs/br-int.mgmt"
    assert launcher.parse_switch_target("tcp:127.0.0.1:6654") == ("127.0.0.1", 6654)
    assert launcher.parse_switch_target("tcp:[::1]:6654") == ("::1", 6654)


class FakeSwitch:
    """A bridge's management socket: a unix listener that accepts the controller."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.sock.settimeout(5)

    def accept(self) -> socket.socket:
        conn, _ = self.sock.accept()
        conn.settimeout(5)
        head = conn.recv(8)
        assert head[1] == ofp.OFPT_HELLO   # the controller speaks first
        return conn

    def close(self):
        self.sock.close()


@pytest.fixture
def connector(monkeypatch, tmp_path):
    made = record_datapaths(monkeypatch)
    before = set(threading.enumerate())
    path = tmp_path / "br-int.mgmt"
    conn = launcher.OpenFlowConnector(str(path))
    conn.made, conn.path = made, path
    yield conn
    conn.stop()
    assert set(threading.enumerate()) <= before, "threads left behind"


def test_the_connector_waits_for_the_socket_then_reconnects_when_the_switch_restarts(connector, caplog):
    caplog.set_level(logging.INFO, logger="vnet64.controller.launcher")
    connector.start()
    time.sleep(0.3)                                   # no socket yet: it keeps trying
    fails = [r for r in caplog.records if "cannot connect to the switch" in r.getMessage()]
    assert len(fails) == 1, "logged once per reason, not every retry"
    sw = FakeSwitch(connector.path)
    try:
        first = sw.accept()                           # within its retry interval (<= 1 s)
        wait_until(lambda: len(connector.made) == 1)
        assert connector.made[0].address == f"unix:{connector.path}"
        first.close()                                 # the switch restarts
        second = sw.accept()                          # and the controller is back
        wait_until(lambda: len(connector.made) == 2)
        assert connector.made[0].state == DEAD_DISPATCHER
        connector.stop(timeout=5)
        assert second.recv(100) == b""                # stop() closed the live connection
        second.close()
        assert connector.made[1].state == DEAD_DISPATCHER
    finally:
        sw.close()
    text = caplog.text
    assert text.count("connected to the switch at unix:") == 2, text
    assert "closed the connection; connecting again" in text


def test_stop_while_the_switch_is_missing_leaves_no_thread(connector):
    connector.start()
    time.sleep(0.2)
    connector.stop(timeout=5)
    assert not connector._thread.is_alive()
