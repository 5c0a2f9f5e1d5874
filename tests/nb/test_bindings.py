"""Port bindings and node controller targets (schema 1.4.0+), against a real ovsdb-server.

A node agent binds an OVS interface to the VM or endpoint its external_ids:iface-id
names (``bind_port``); the VM or endpoint follows its binding to that node in the same
transaction, a VM's host mapping with it, as ``move_vm`` does.
"""

from __future__ import annotations

import json
import re
import subprocess
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_TOPOLOGY
from vnet64 import topology
from vnet64.nb import api as nbapi
from vnet64.nb.api import Conflict, Invalid, NotFound
from vnet64.nb.commands import MoveVMCommand

OLD_SCHEMA = Path(__file__).with_name("vnet64_nb-1.3.0.ovsschema")   # git show <1.3.0>:...ovsschema
A_VM1_MAC = topology.default_mac("a-vm1")
SVC1_MAC = topology.default_mac("svc1")


def _written(nb_server) -> int:
    """Bytes of the database file: every committed transaction appends to it."""
    return nb_server.db_path.stat().st_size


def _state(api) -> dict:
    """Everything a binding may touch."""
    return {"bindings": api.list_bindings(), "vms": api.list("vm"), "services": api.list("service"),
            "host_mappings": api.list("host-mapping"), "nodes": api.list("node")}


def _mapped_host(api, vm: str) -> str:
    return api.subscription_info(vm, "analytics")["host"]


def test_bind_records_the_port_and_the_object_stays_where_it_is(loaded_nb):
    got = loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC, ofport=7)
    assert got == {"logical_port": "a-vm1", "kind": "vm", "node": "host1", "port": "vnet7",
                   "ofport": 7, "mac": A_VM1_MAC, "moved_from": None}
    assert loaded_nb.list_bindings() == [{"logical_port": "a-vm1", "kind": "vm", "node": "host1",
                                          "port": "vnet7", "ofport": 7, "mac": A_VM1_MAC}]
    assert loaded_nb.vm_info("a-vm1")["binding"] == {"node": "host1", "port": "vnet7", "ofport": 7,
                                                     "mac": A_VM1_MAC}
    assert loaded_nb.vm_info("b-vm1")["binding"] is None
    assert loaded_nb.logical_port("a-vm1") == {
        "name": "a-vm1", "kind": "vm", "mac": A_VM1_MAC, "host": "host1",
        "binding": {"node": "host1", "port": "vnet7", "ofport": 7, "mac": A_VM1_MAC}}
    assert loaded_nb.logical_port("svc1") == {"name": "svc1", "kind": "endpoint", "mac": SVC1_MAC,
                                              "host": "host2", "binding": None}
    # no ofport known (yet): optional
    got = loaded_nb.bind_port("host2", "svc1", "tap-svc1", SVC1_MAC)
    assert (got["kind"], got["ofport"], got["moved_from"]) == ("endpoint", None, None)
    assert loaded_nb.show("svc1")["binding"] == {"node": "host2", "port": "tap-svc1", "ofport": None,
                                                 "mac": SVC1_MAC}


def test_rebinding_a_vm_elsewhere_moves_it_and_its_host_mapping(loaded_nb):
    """Live migration: the VM's port appears on host2; no `vm move` needed."""
    loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC, ofport=7)
    got = loaded_nb.bind_port("host2", "a-vm1", "vnet3", A_VM1_MAC, ofport=3)
    assert got["moved_from"] == "host1" and got["node"] == "host2"
    assert loaded_nb.vm_info("a-vm1")["host"] == "host2"
    assert _mapped_host(loaded_nb, "a-vm1") == "host2"
    assert {m["vnet"]: m["host"] for m in loaded_nb.list("host-mapping")} == {
        "customer-a": "host2", "customer-b": "host1"}
    assert loaded_nb.list_bindings("host1") == []
    assert [b["port"] for b in loaded_nb.list_bindings("host2")] == ["vnet3"]
    # and back, by the same path
    got = loaded_nb.bind_port("host1", "a-vm1", "vnet9", A_VM1_MAC)
    assert got["moved_from"] == "host2" and _mapped_host(loaded_nb, "a-vm1") == "host1"
    assert loaded_nb.count("Port_Binding") == 1


def test_binding_moves_a_vm_exactly_as_vm_move_does(loaded_nb):
    """Same rows afterwards (bindings aside), whichever way the VM got to host2."""
    def rows() -> dict:
        state = _state(loaded_nb)
        del state["bindings"]
        state["vms"] = [{k: v for k, v in vm.items() if k != "binding"} for vm in state["vms"]]
        return state

    loaded_nb.move_vm("a-vm1", "host2")
    moved = rows()
    loaded_nb.move_vm("a-vm1", "host1")
    assert rows() != moved
    loaded_nb.bind_port("host2", "a-vm1", "vnet3", A_VM1_MAC)
    assert rows() == moved


def test_rebinding_an_endpoint_elsewhere_moves_it(loaded_nb):
    loaded_nb.bind_port("host2", "svc1", "s-svc1", SVC1_MAC, ofport=10)
    got = loaded_nb.bind_port("host1", "svc1", "tap0", SVC1_MAC, ofport=4)
    assert got["moved_from"] == "host2"
    service = loaded_nb.service_info("analytics")
    assert service["endpoints"][0]["host"] == "host1"
    assert loaded_nb.show("svc1")["host"] == "host1"
    assert loaded_nb.count("Host_Mapping") == 2   # endpoints have none


def test_a_renamed_interface_rebinds_on_the_same_node(loaded_nb):
    loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC, ofport=7)
    got = loaded_nb.bind_port("host1", "a-vm1", "vnet8", A_VM1_MAC, ofport=8)
    assert (got["port"], got["ofport"], got["moved_from"]) == ("vnet8", 8, None)
    assert loaded_nb.count("Port_Binding") == 1


def test_identical_input_writes_nothing(nb_server, loaded_nb):
    first = loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC, ofport=7)
    assert loaded_nb.set_node_controllers("host1", ["tcp:172.31.255.1:6653"]) is True
    size = _written(nb_server)
    assert loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC.upper(), ofport=7) == first
    assert loaded_nb.set_node_controllers("host1", ["tcp:172.31.255.1:6653"]) is False
    assert loaded_nb.unbind_port("host2", "a-vm1") is False
    assert loaded_nb.unbind_port("host1", "b-vm1") is False
    assert _written(nb_server) == size
    # a change does write (the measure above is not blind)
    loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC, ofport=8)
    assert _written(nb_server) > size


def test_unbind_deletes_only_a_binding_to_that_node(loaded_nb):
    loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC, ofport=7)
    loaded_nb.bind_port("host2", "a-vm1", "vnet3", A_VM1_MAC, ofport=3)   # migrated
    # host1 sees its old port go away afterwards: the binding is host2's now
    assert loaded_nb.unbind_port("host1", "a-vm1") is False
    assert [b["node"] for b in loaded_nb.list_bindings()] == ["host2"]
    assert loaded_nb.vm_info("a-vm1")["host"] == "host2"
    assert loaded_nb.unbind_port("host2", "a-vm1") is True
    assert loaded_nb.list_bindings() == [] and loaded_nb.vm_info("a-vm1")["binding"] is None
    assert loaded_nb.vm_info("a-vm1")["host"] == "host2"       # unbinding moves nothing
    assert loaded_nb.unbind_port("host2", "a-vm1") is False
    assert loaded_nb.unbind_port("host2", "nobody") is False   # no binding: nothing to do
    with pytest.raises(NotFound, match="node 'hostx' does not exist"):
        loaded_nb.unbind_port("hostx", "a-vm1")


@pytest.mark.parametrize("args,kwargs,error,message", [
    (("host1", "nobody", "vnet7", A_VM1_MAC), {}, NotFound,
     "logical port 'nobody' is neither a VM nor an endpoint of the NB"),
    (("appliance", "a-vm1", "vnet7", A_VM1_MAC), {}, Invalid,
     "logical port a-vm1: node 'appliance' is the appliance, not a host"),
    (("hostx", "a-vm1", "vnet7", A_VM1_MAC), {}, NotFound, "node 'hostx' does not exist"),
    (("host2", "a-vm1", "", A_VM1_MAC), {}, Invalid, "logical port a-vm1: port '' is not an interface name"),
    (("host2", "a-vm1", "vnet 7", A_VM1_MAC), {}, Invalid, "port 'vnet 7' is not an interface name"),
    (("host2", "a-vm1", "vnet7", "02:00:00:00:00"), {}, Invalid,
     "logical port a-vm1: MAC must look like 02:00:00:00:00:01"),
    (("host2", "a-vm1", "vnet7", A_VM1_MAC), {"ofport": 0}, Invalid, "ofport 0 is not in 1..65279"),
    (("host2", "a-vm1", "vnet7", A_VM1_MAC), {"ofport": 65280}, Invalid, "ofport 65280 is not in 1..65279"),
    (("host2", "a-vm1", "vnet7", A_VM1_MAC), {"ofport": -1}, Invalid, "ofport -1 is not in"),
])
def test_bad_bindings_are_refused_and_write_nothing(nb_server, loaded_nb, args, kwargs, error, message):
    loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC, ofport=7)
    before, size = _state(loaded_nb), _written(nb_server)
    with pytest.raises(error, match=message):
        loaded_nb.bind_port(*args, **kwargs)
    assert _state(loaded_nb) == before and _written(nb_server) == size


def test_a_name_that_is_both_a_vm_and_an_endpoint_is_refused(loaded_nb):
    loaded_nb.add_service(topology.Service("backup", (topology.Endpoint(
        "a-vm1", IPv6Address("fd00:5e:2::10"), "host2", topology.default_mac("bk1")),)))
    with pytest.raises(Conflict, match="logical port 'a-vm1' is ambiguous"):
        loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC)
    with pytest.raises(Conflict, match="ambiguous"):
        loaded_nb.logical_port("a-vm1")
    assert loaded_nb.list_bindings() == []


def test_reads_name_unknown_objects(loaded_nb):
    with pytest.raises(NotFound, match="logical port 'nobody' is neither"):
        loaded_nb.logical_port("nobody")
    with pytest.raises(NotFound, match="node 'hostx' does not exist"):
        loaded_nb.list_bindings("hostx")


def test_a_second_client_sees_bindings_and_their_moves(nb_server, loaded_nb):
    with nbapi.connect(nb_server.remote) as other:
        loaded_nb.bind_port("host1", "b-vm1", "vnet5", topology.default_mac("b-vm1"), ofport=5)
        assert nbapi.wait_for(lambda: [b["node"] for b in other.list_bindings()] == ["host1"])
        other.bind_port("host2", "b-vm1", "vnet6", topology.default_mac("b-vm1"), ofport=6)
        assert nbapi.wait_for(lambda: loaded_nb.vm_info("b-vm1")["host"] == "host2")
        assert _mapped_host(loaded_nb, "b-vm1") == "host2"


# ---------------------------------------------------------------------------
# Node.controllers


def test_node_controllers_are_set_replaced_and_cleared(nb_server, loaded_nb):
    node = lambda: next(n for n in loaded_nb.list("node") if n["name"] == "host1")   # noqa: E731
    assert node()["controllers"] == []
    targets = ["tcp:172.31.255.1:6653", "ssl:[fd00::1]:6653", "ssl:10.0.0.1:1"]
    assert loaded_nb.set_node_controllers("host1", targets) is True
    assert node()["controllers"] == sorted(targets)
    assert loaded_nb.set_node_controllers("host1", list(reversed(targets))) is False   # a set
    assert loaded_nb.set_node_controllers("host1", ["tcp:172.31.255.1:65535"]) is True
    assert node()["controllers"] == ["tcp:172.31.255.1:65535"]
    assert loaded_nb.set_node_controllers("appliance", ["tcp:172.31.255.1:6653"]) is True
    assert loaded_nb.show("appliance")["controllers"] == ["tcp:172.31.255.1:6653"]
    assert loaded_nb.set_node_controllers("host1", []) is True and node()["controllers"] == []


@pytest.mark.parametrize("target,message", [
    ("tcp:172.31.255.1", "is not tcp:IP:PORT or ssl:IP:PORT"),
    ("ptcp:6653", "is not tcp:IP:PORT or ssl:IP:PORT"),
    ("unix:/run/ctl.sock", "is not tcp:IP:PORT or ssl:IP:PORT"),
    ("udp:172.31.255.1:6653", "is not tcp:IP:PORT or ssl:IP:PORT"),
    ("tcp:ctl.example:6653", "is not tcp:IP:PORT or ssl:IP:PORT"),
    ("tcp:172.31.255.1:0", "port 0 is not in 1..65535"),
    ("tcp:172.31.255.1:65536", "port 65536 is not in 1..65535"),
    ("tcp:172.31.255.300:6653", "172.31.255.300 is not an IP address"),
    ("ssl:[fd00::zz]:6653", "is not tcp:IP:PORT or ssl:IP:PORT"),
    ("ssl:[fd00:::1]:6653", "[fd00:::1] is not an IP address"),
    ("ssl:fd00::1:6653", "is not tcp:IP:PORT or ssl:IP:PORT"),
    ("tcp:[10.0.0.1]:6653", "an IPv4 address goes without brackets (tcp:10.0.0.1:6653)"),
])
def test_bad_controller_targets_are_refused_and_write_nothing(nb_server, loaded_nb, target, message):
    loaded_nb.set_node_controllers("host1", ["tcp:172.31.255.1:6653"])
    size = _written(nb_server)
    with pytest.raises(Invalid, match=re.escape(f"node host1: controller target '{target}'")) as err:
        loaded_nb.set_node_controllers("host1", ["ssl:10.0.0.1:6653", target])
    assert message in str(err.value) or pytest.fail(f"{message!r} not in {err.value}")
    assert loaded_nb.show("host1")["controllers"] == ["tcp:172.31.255.1:6653"]
    assert _written(nb_server) == size


def test_controller_targets_of_an_unknown_node_or_given_twice_are_refused(loaded_nb):
    with pytest.raises(NotFound, match="node 'hostx' does not exist"):
        loaded_nb.set_node_controllers("hostx", ["tcp:172.31.255.1:6653"])
    with pytest.raises(Invalid, match="node host1: controller target 'tcp:172.31.255.1:6653' is given twice"):
        loaded_nb.set_node_controllers("host1", ["tcp:172.31.255.1:6653"] * 2)
    assert all(n["controllers"] == [] for n in loaded_nb.list("node"))


# ---------------------------------------------------------------------------
# Upgrade


def test_a_1_3_0_database_with_a_loaded_topology_converts_and_keeps_its_data(tmp_path, monkeypatch):
    """An NB written by the 1.3.0 schema (no Node.controllers, no Port_Binding), holding the
    default topology, is converted in place when the server starts; nothing is lost."""
    from vnet64.nb import server as nbserver
    assert json.loads(OLD_SCHEMA.read_text())["version"] == "1.3.0"
    current = json.loads(nbserver.SCHEMA_PATH.read_text())["version"]
    server = nbserver.NbServer(tmp_path / "nb")
    # written by a 1.3.0 server and client
    monkeypatch.setattr(nbserver, "SCHEMA_PATH", OLD_SCHEMA)
    monkeypatch.setattr(nbapi, "SCHEMA_PATH", OLD_SCHEMA)
    server.start()
    try:
        with nbapi.connect(server.remote) as old:
            assert "Port_Binding" not in old.tables and "controllers" not in old.tables["Node"].columns
            old.load_topology(topology.load(DEFAULT_TOPOLOGY))
            old.run(MoveVMCommand(old, "b-vm1", "host2"))   # (move_vm's answer reads bindings)
            before = {"subscriptions": old.list("subscription"), "host_mappings": old.list("host-mapping"),
                      "vnets": old.list("vnet"), "services": old.list("service"),
                      "platform": old.platform_info(),
                      "vms": sorted((r.name, r.vnet.name, r.subnet.name, r.ipv4, r.mac, r.host.name)
                                    for r in old.tables["VM"].rows.values()),
                      "nodes": sorted((r.name, r.role, r.underlay_ip, r.datapath_id)
                                      for r in old.tables["Node"].rows.values())}
    finally:
        server.stop()
    version = subprocess.run(["ovsdb-tool", "db-version", str(server.db_path)],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "1.3.0"
    # started by this version: converted
    monkeypatch.undo()
    server.start()
    try:
        version = subprocess.run(["ovsdb-client", "get-schema-version", server.remote, "VNet64_Northbound"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        assert version == current == "1.5.0"
        with nbapi.connect(server.remote) as api:
            assert api.list("subscription") == before["subscriptions"]
            assert api.list("host-mapping") == before["host_mappings"]
            assert api.list("vnet") == before["vnets"] and api.list("service") == before["services"]
            assert api.platform_info() == before["platform"]
            assert sorted((v["name"], v["vnet"], v["subnet"], v["ipv4"], v["mac"], v["host"])
                          for v in api.list("vm")) == before["vms"]
            assert all(vm["binding"] is None for vm in api.list("vm"))
            nodes = api.list("node")
            assert sorted((n["name"], n["role"], n["underlay_ip"], int(n["datapath_id"], 16))
                          for n in nodes) == before["nodes"]
            assert all(n["controllers"] == [] for n in nodes) and api.list_bindings() == []
            # and the new parts work on it
            assert api.bind_port("host1", "b-vm1", "vnet5", topology.default_mac("b-vm1"))["moved_from"] == "host2"
            assert api.set_node_controllers("host1", ["tcp:172.31.255.1:6653"]) is True
            # 1.5.0's change numbers start at 0 on a converted NB: the two writes above
            assert before["platform"]["nb_cfg"] == 0 and api.platform_info()["nb_cfg"] == 2
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# The controller reads them


def test_the_controller_model_reads_bindings_and_a_rebind_moves_the_flows(loaded_nb):
    """NB -> model -> Logic: a VM's flows follow its binding from host1 to host2."""
    from vnet64.controller import model as M
    from vnet64.controller.flows import DeleteStrict, Flow
    from vnet64.controller.logic import Logic
    from vnet64.controller.pipeline import cookie
    assert M.from_nb(loaded_nb).bindings == ()
    loaded_nb.bind_port("host1", "a-vm1", "vnet7", A_VM1_MAC, ofport=7)
    loaded_nb.bind_port("host2", "svc1", "tap0", SVC1_MAC)
    model = M.from_nb(loaded_nb)
    assert model.bindings == (M.Binding("a-vm1", "vm", "host1", "vnet7", 7),
                              M.Binding("svc1", "endpoint", "host2", "tap0", None))
    logic = Logic(lambda: M.from_nb(loaded_nb))
    ports = {"host1": {"geneve0": 1, "xlat0": 2, "vnet7": 7},
             "host2": {"geneve0": 1, "xlat0": 2, "tap0": 3, "vnet3": 4}}
    dpid = {n: model.node(n).datapath_id for n in ports}
    a_vm1 = cookie("host", "vm", "a-vm1")
    for node, names in ports.items():
        _, msgs = logic.switch_connected(dpid[node], names)
        assert any(isinstance(m, Flow) and m.cookie == a_vm1 for m in msgs) == (node == "host1")
    assert logic.nb_changed() == {}                     # nothing changed since
    loaded_nb.bind_port("host2", "a-vm1", "vnet3", A_VM1_MAC, ofport=4)
    moved = M.from_nb(loaded_nb)
    assert moved != model and next(v for v in moved.vms if v.name == "a-vm1").host == "host2"
    changes = logic.nb_changed()
    assert {f.match.get("in_port") for f in changes[dpid["host2"]]
            if isinstance(f, Flow) and f.cookie == a_vm1} >= {4}
    assert any(isinstance(m, DeleteStrict) and m.match.get("in_port") == 7 for m in changes[dpid["host1"]])
    assert loaded_nb.unbind_port("host2", "a-vm1") is True
    changes = logic.nb_changed()
    assert any(isinstance(m, DeleteStrict) and m.match.get("in_port") == 4 for m in changes[dpid["host2"]])
    assert dpid["host1"] not in changes


# ---------------------------------------------------------------------------
# A node agent's replica: only the rows its ports name (conditional monitoring)


def _replica(api) -> dict:
    t = api.tables
    return {"VM": sorted(r.name for r in t["VM"].rows.values()),
            "Endpoint": sorted(r.name for r in t["Endpoint"].rows.values()),
            "Port_Binding": sorted(r.logical_port for r in t["Port_Binding"].rows.values()),
            "Host_Mapping": sorted(r.ipv6 for r in t["Host_Mapping"].rows.values()),
            "Subscription": len(t["Subscription"].rows)}


def test_a_node_agent_replicates_only_the_rows_its_ports_name(nb_server, loaded_nb):
    from vnet64.node.agent import Agent, Options, nb_conditions
    a_vm1 = loaded_nb.vm_info("a-vm1")["platform_ipv6"]
    loaded_nb.bind_port("host1", "b-vm1", "vnet5", topology.default_mac("b-vm1"), ofport=5)
    agent = Agent(Options(name="host2", nb=nb_server.remote, datapath=None))
    agent.nb = nbapi.connect(nb_server.remote, conditions=nb_conditions(None, (), ()))
    try:
        # before it knows its ports: the small tables only
        assert _replica(agent.nb) == {"VM": [], "Endpoint": [], "Port_Binding": [],
                                      "Host_Mapping": [], "Subscription": 0}
        assert {r.name for r in agent.nb.tables["Node"].rows.values()} >= {"host1", "host2"}
        assert agent.follow_conditions({"a-vm1", "svc1", "nobody"}, wait=5.0)
        assert _replica(agent.nb) == {"VM": ["a-vm1"], "Endpoint": ["svc1"], "Port_Binding": [],
                                      "Host_Mapping": [a_vm1], "Subscription": 0}
        # binding a-vm1 here (it is on host1 in the NB) moves it and its host mapping
        got = agent.nb.bind_port("host2", "a-vm1", "vnet9", A_VM1_MAC, ofport=9)
        assert got["moved_from"] == "host1"
        assert nbapi.wait_for(lambda: _mapped_host(loaded_nb, "a-vm1") == "host2")
        assert loaded_nb.vm_info("a-vm1")["host"] == "host2"
        # its port gone: the binding to this node stays replicated, to be unbound
        assert agent.follow_conditions(set(), wait=5.0)
        assert _replica(agent.nb) == {"VM": [], "Endpoint": [], "Port_Binding": ["a-vm1"],
                                      "Host_Mapping": [], "Subscription": 0}
        assert agent.nb.unbind_port("host2", "a-vm1")
        assert nbapi.wait_for(lambda: _replica(agent.nb)["Port_Binding"] == [])
        # a port whose object comes later: its row arrives when it is created
        assert agent.follow_conditions({"late-vm"}, wait=5.0)
        loaded_nb.add_vm("late-vm", "customer-a", IPv4Address("10.0.0.77"), "host2")
        assert nbapi.wait_for(lambda: _replica(agent.nb)["VM"] == ["late-vm"])
        assert agent.follow_conditions({"late-vm"}, wait=5.0)
        assert _replica(agent.nb)["Host_Mapping"] == []      # not subscribed: no mapping yet
        loaded_nb.subscribe("late-vm", "analytics")
        late = loaded_nb.vm_info("late-vm")["platform_ipv6"]
        assert nbapi.wait_for(lambda: _replica(agent.nb)["Host_Mapping"] == [late])
        assert _replica(agent.nb)["Subscription"] == 0
    finally:
        agent.nb.close()
