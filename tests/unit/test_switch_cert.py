"""A switch over TLS is served only as the node its certificate names (no root).

The rule (vnet64.controller.switch_cert) on the names ``ovs-pki`` really writes; the app
binding each connection before it is served, with a fake datapath and a fake NB model;
the listener handing the app the CN of a real handshake; the option.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from types import SimpleNamespace

import pytest
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from tests.support.ofswitch import RecordingDatapath, record_datapaths
from tests.support.pki import Pki
from vnet64.controller import app as vapp
from vnet64.controller import flows as F
from vnet64.controller import launcher
from vnet64.controller import switch_cert as sc

UUID = "0e0b1c44-d17e-4311-861e-20ee131bf463"
HOST1, HOST2, STRAY = 0x11, 0x12, 0x99

# ---------------------------------------------------------------------------
# the rule


@pytest.mark.parametrize("cn, template, node", [
    (f"switch-host1 id:{UUID}", sc.DEFAULT_TEMPLATE, "host1"),   # ovs-pki req switch-host1
    ("switch-host1 id:2026 Dec 07 14:16:52", sc.DEFAULT_TEMPLATE, "host1"),  # no uuidgen: a date
    ("switch-host1", sc.DEFAULT_TEMPLATE, "host1"),                  # ovs-pki req -u switch-host1
    ("switch-sdn-appliance.2", sc.DEFAULT_TEMPLATE, "sdn-appliance.2"),
    (f"host1 id:{UUID}", "{node}", "host1"),                         # OVN's: CN = chassis name
    ("ovs.host1.example", "ovs.{node}.example", "host1"),
    ("host1", sc.DEFAULT_TEMPLATE, None),
    ("switch-", sc.DEFAULT_TEMPLATE, None),
    ("switch-host1 id:", sc.DEFAULT_TEMPLATE, None),
    ("switch-host1 extra", sc.DEFAULT_TEMPLATE, None),
    ("Switch-host1", sc.DEFAULT_TEMPLATE, None),
    ("switch-1host", sc.DEFAULT_TEMPLATE, None),     # not a node name
    ("controller-host1 id:x", sc.DEFAULT_TEMPLATE, None),
    ("", sc.DEFAULT_TEMPLATE, None),
    (None, sc.DEFAULT_TEMPLATE, None),
])
def test_the_node_a_certificate_names(cn, template, node):
    assert sc.certificate_node(cn, template) == node


def test_a_certificate_may_serve_only_its_own_node():
    cn = f"switch-host1 id:{UUID}"
    assert sc.binding_problem(cn, "host1") is None
    assert sc.binding_problem(cn, "host2") == \
        f"its certificate (CN '{cn}') is host1's, not host2's (switch-host2)"
    assert sc.binding_problem("controller-host1", "host1") == \
        "its certificate (CN 'controller-host1') names no node; host1's must be switch-host1"
    assert sc.binding_problem(None, "host1") == \
        "its certificate has no (single) common name; host1's must be switch-host1"
    assert sc.binding_problem("host1", "host1", "{node}") is None


@pytest.mark.parametrize("template",
                         ["switch", "{node}-{node}", "sw {node}", "{node}{x}", "{nodes}"])
def test_a_template_that_binds_nothing_is_refused(template):
    with pytest.raises(ValueError):
        sc.check_template(template)


def test_the_common_name_as_getpeercert_gives_it():
    def cert(*cns):
        return {"subject": ((("organizationName", "Open vSwitch"),),
                            *((("commonName", cn),) for cn in cns))}
    assert sc.common_name(cert("switch-host1 id:x")) == "switch-host1 id:x"
    assert sc.common_name(cert()) is None
    assert sc.common_name(cert("a", "b")) is None          # two names: ambiguous
    assert sc.common_name(None) is None and sc.common_name({}) is None


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    pki = Pki.make(tmp_path_factory.mktemp("pki"))
    pki.issue_many([("ctl", "controller"), ("switch-host1", "switch")])
    return pki


def test_what_ovs_pki_writes_names_the_node(pki):
    cn = sc.common_name(ssl._ssl._test_decode_cert(str(pki.cert("switch-host1"))))
    assert cn.startswith("switch-host1 id:")                # ovs-pki req NAME: "NAME id:<uuid>"
    assert sc.certificate_node(cn) == "host1"


# ---------------------------------------------------------------------------
# the app binds every TLS connection before serving it


class FakeSocket:
    def __init__(self, common_name):
        self.common_name = common_name
        self.shut = False

    def shutdown(self, how):
        self.shut = True


class FakeDatapath(RecordingDatapath):
    def __init__(self, dpid, common_name, port=40000):
        super().__init__(dpid, ("172.31.255.250", port))
        self.socket = FakeSocket(common_name)

    def types(self) -> list[int]:
        return [w[1] for w in self.writes]


class FakeView:
    """What the app reads of the NB view: the model's nodes by datapath id."""

    def __init__(self, nodes):
        self.nodes = dict(nodes)     # dpid -> name
        self.model = SimpleNamespace(node_by_dpid=lambda dpid: (
            SimpleNamespace(name=self.nodes[dpid]) if dpid in self.nodes else None))
        self.delta = None
        self.nb_cfg = (0, 0)        # the newest NB change number (none here)

    def update(self):
        return self.delta

    def node_name(self, dpid):
        return self.nodes.get(dpid)


class Logic:
    def __init__(self, load_model=None):
        self.calls: list[tuple] = []

    def switch_connected(self, dpid, ports):
        self.calls.append(("switch_connected", dpid))
        return F.TableMap("test", (("classify", 0),)), [F.flow("classify", 0, {}, [F.Controller()])]

    def switch_disconnected(self, dpid):
        self.calls.append(("switch_disconnected", dpid))

    def nb_changed(self, delta=None):
        self.calls.append(("nb_changed",))
        return {}


def new_app(nodes, template=sc.DEFAULT_TEMPLATE, built=True):
    a = vapp.Vnet64App(vnet64=vapp.Settings(
        nb_remote="unix:/nonexistent", logic_factory=Logic,
        ofp_tls=SimpleNamespace(switch_cert_name=template)))
    a.nb = FakeView(nodes)
    if built:
        a.logic = Logic()
    return a


def connect(a, dp):
    a._on_features(SimpleNamespace(msg=SimpleNamespace(datapath=dp)))
    ev = ofp_event.EventOFPStateChange(dp)
    ev.state = MAIN_DISPATCHER
    a._on_state(ev)


def disconnect(a, dp):
    ev = ofp_event.EventOFPStateChange(dp)
    ev.state = DEAD_DISPATCHER
    a._on_state(ev)


def cert(node):
    return f"switch-{node} id:{UUID}"


def refusals(caplog):
    return [r for r in caplog.records if "refused the switch" in r.getMessage()]


def test_a_switch_with_its_own_nodes_certificate_is_served():
    a = new_app({HOST1: "host1"})
    dp = FakeDatapath(HOST1, cert("host1"))
    connect(a, dp)
    assert a.switches[HOST1].dp is dp and a.switches[HOST1].state == "resyncing"
    assert ofp.OFPT_FLOW_MOD in dp.types() and not dp.socket.shut


def test_another_nodes_certificate_claiming_host1_is_refused_and_host1_keeps_its_connection(caplog):
    a = new_app({HOST1: "host1", HOST2: "host2"})
    real = FakeDatapath(HOST1, cert("host1"))
    connect(a, real)
    real.writes.clear()
    rogue = FakeDatapath(HOST1, cert("host2"), port=41234)
    connect(a, rogue)
    [record] = refusals(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "[host1 0000000000000011] refused the switch at 172.31.255.250:41234: it claims node "
        f"host1 (datapath id 0000000000000011), but its certificate (CN '{cert('host2')}') is "
        "host2's, not host1's (switch-host1); connection closed")
    assert rogue.socket.shut
    assert ofp.OFPT_FLOW_MOD not in rogue.types()        # set_config only: not one flow
    assert a.switches[HOST1].dp is real and not real.socket.shut and real.writes == []
    assert a.logic.calls == [("switch_connected", HOST1)]
    assert "reconnected" not in caplog.text
    disconnect(a, rogue)                                 # its end changes nothing
    assert a.switches[HOST1].dp is real and a.logic.calls == [("switch_connected", HOST1)]


@pytest.mark.parametrize("cn", [None, "controller-host1 id:x", "host1"])
def test_a_certificate_that_names_no_node_is_refused(cn, caplog):
    a = new_app({HOST1: "host1"})
    dp = FakeDatapath(HOST1, cn)
    connect(a, dp)
    assert dp.socket.shut and not a.switches and len(refusals(caplog)) == 1


def test_the_template_sets_the_name(caplog):
    a = new_app({HOST1: "host1"}, template="{node}")
    ok, other = FakeDatapath(HOST1, f"host1 id:{UUID}"), FakeDatapath(HOST1, cert("host1"))
    connect(a, ok)
    connect(a, other)
    assert a.switches[HOST1].dp is ok and other.socket.shut


def test_before_the_nb_both_wait_and_only_the_right_one_is_served(caplog):
    caplog.set_level(logging.INFO)
    a = new_app({HOST1: "host1", HOST2: "host2"}, built=False)
    real, rogue = FakeDatapath(HOST1, cert("host1")), FakeDatapath(HOST1, cert("host2"), 41234)
    connect(a, real)
    connect(a, rogue)
    assert not a.switches and set(a.unbound) == {real, rogue}
    assert "not served until its node is known and its certificate names it" in caplog.text
    a._on_nb_changed(vapp.EventNbChanged())           # the model is built: nodes known
    assert a.switches[HOST1].dp is real and a.switches[HOST1].state == "resyncing"
    assert rogue.socket.shut and not real.socket.shut and not a.unbound
    assert ofp.OFPT_FLOW_MOD not in rogue.types() and len(refusals(caplog)) == 1


def test_a_switch_of_no_node_waits_until_the_nb_has_its_node():
    a = new_app({HOST1: "host1"})
    stray = FakeDatapath(STRAY, cert("host3"))
    connect(a, stray)
    assert not a.switches and stray in a.unbound
    a.nb.nodes[STRAY] = "host3"
    a.nb.delta = SimpleNamespace(nodes={"host3": None})
    a._on_nb_changed(vapp.EventNbChanged())
    assert a.switches[STRAY].dp is stray and not a.unbound
    disconnect(a, stray)
    assert not a.switches


def test_a_waiting_switch_that_goes_away_is_forgotten():
    a = new_app({})
    dp = FakeDatapath(STRAY, cert("host3"))
    connect(a, dp)
    disconnect(a, dp)
    assert not a.unbound


def test_when_the_nb_gives_its_datapath_id_to_another_node_the_switch_is_refused(caplog):
    a = new_app({HOST1: "host1"})
    dp = FakeDatapath(HOST1, cert("host1"))
    connect(a, dp)
    a.nb.nodes[HOST1] = "host2"
    a.nb.delta = SimpleNamespace(nodes={"host1": object(), "host2": None})
    a._on_nb_changed(vapp.EventNbChanged())
    assert dp.socket.shut and not a.switches and len(refusals(caplog)) == 1
    assert a.logic.calls[-2:] == [("switch_disconnected", HOST1), ("nb_changed",)]


def test_without_tls_nothing_is_checked():
    a = new_app({})
    a.settings.ofp_tls = None
    dp = FakeDatapath(STRAY, None)
    connect(a, dp)
    assert a.switches[STRAY].dp is dp and not dp.socket.shut


# ---------------------------------------------------------------------------
# the listener gives the app the CN of the handshake; the option


def test_the_listener_hands_over_the_certificates_common_name(monkeypatch, pki):
    made = record_datapaths(monkeypatch)
    tls = launcher.ofp_tls(str(pki.key("ctl")), str(pki.cert("ctl")), str(pki.ca("switch")))
    assert tls.switch_cert_name == "switch-{node}"
    srv = launcher.OpenFlowServer("127.0.0.1", 0, tls=tls)
    srv.start()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(pki.ca("controller")))
        ctx.load_cert_chain(str(pki.cert("switch-host1")), str(pki.key("switch-host1")))
        s = ctx.wrap_socket(socket.create_connection(srv.address, timeout=5))
        assert s.recv(8)[1] == ofp.OFPT_HELLO
        deadline = time.monotonic() + 5
        while not made and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sc.certificate_node(made[0].socket.common_name) == "host1"
        s.close()
    finally:
        srv.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("of-")]


def test_the_option(pki, capsys):
    files = ["--ctl-privkey", str(pki.key("ctl")), "--ctl-cert", str(pki.cert("ctl")),
             "--ca-certs", str(pki.ca("switch"))]
    conf = launcher.parse([*files, "--vnet64-switch-cert-name", "{node}"])
    tls = launcher.ofp_tls(conf.ctl_privkey, conf.ctl_cert, conf.ca_certs,
                           conf.vnet64.switch_cert_name)
    assert tls.switch_cert_name == "{node}"
    assert launcher.main(["--vnet64-switch-cert-name", "switch-{node}"]) == 2
    assert "--vnet64-switch-cert-name is for OpenFlow over TLS" in capsys.readouterr().err
    assert launcher.main([*files, "--vnet64-switch-cert-name", "switch"]) == 2
    assert "--vnet64-switch-cert-name wants {node} exactly once" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        launcher.parse(["--help"])
    assert "--vnet64-switch-cert-name" in capsys.readouterr().out
