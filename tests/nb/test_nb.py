"""The NB database and the subscription workflow, against a real ovsdb-server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from tests.conftest import DEFAULT_TOPOLOGY, ROOT
from vnet64 import topology
from vnet64.nb import api as nbapi
from vnet64.nb.api import Conflict, Invalid, NbError, NotFound


def _counts(api) -> dict:
    return {t: api.count(t) for t in ("Region", "Node", "VNet", "Subnet", "VM", "Service",
                                       "Endpoint", "Subscription", "Host_Mapping", "Platform")}


def test_load_default_topology_subscribes_both_vms_with_different_ipv6(loaded_nb):
    subs = {s["vm"]: s for s in loaded_nb.list("subscription")}
    assert set(subs) == {"a-vm1", "b-vm1"}
    assert subs["a-vm1"]["ipv4"] == subs["b-vm1"]["ipv4"] == "10.0.0.4"
    assert subs["a-vm1"]["ipv6"] == "fd41::3930:1f:6600:a00:4"
    assert subs["b-vm1"]["ipv6"] == "fd41::3930:20:6600:a00:4"
    assert subs["a-vm1"]["host"] == subs["b-vm1"]["host"] == "host1"
    mapping = {m["ipv6"]: (m["vnet"], m["ipv4"], m["host"]) for m in loaded_nb.list("host-mapping")}
    assert mapping == {"fd41::3930:1f:6600:a00:4": ("customer-a", "10.0.0.4", "host1"),
                       "fd41::3930:20:6600:a00:4": ("customer-b", "10.0.0.4", "host1")}
    info = loaded_nb.platform_info()
    assert info == {"platform_ip": "100.100.0.1", "translator_prefix": "fd64:64::/96",
                    "region": "westeurope", "appliance": "appliance", "tunnel_token": info["tunnel_token"],
                    "direct_path": "default (on)", "nb_cfg": 1, "nb_cfg_time": info["nb_cfg_time"]}


def test_each_vnet_gets_its_own_conntrack_zone(loaded_nb):
    zones = {v["name"]: v["ct_zone"] for v in loaded_nb.list("vnet")}
    assert sorted(zones.values()) == [1, 2]
    loaded_nb.add_vnet(topology.VNet("c3", "westeurope", 0x21, (IPv4Network("10.0.0.0/16"),),
                                     (topology.Subnet("s", 1, IPv4Network("10.0.0.0/24")),)))
    assert loaded_nb.vnet_info("c3")["ct_zone"] == 3


def test_load_is_idempotent(loaded_nb, default_topology):
    before = _counts(loaded_nb)
    uuids = {r.name: r.uuid for r in loaded_nb.tables["VM"].rows.values()}
    loaded_nb.load_topology(default_topology)
    assert _counts(loaded_nb) == before
    assert {r.name: r.uuid for r in loaded_nb.tables["VM"].rows.values()} == uuids


@pytest.mark.parametrize("path", sorted((ROOT / "topologies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_topology_loads_twice_unchanged(nb, path):
    topo = topology.load(path)
    nb.load_topology(topo)
    before = _counts(nb)
    assert before["Subscription"] == len(topo.subscriptions) and before["VM"] == len(topo.vms)
    nb.load_topology(topo)
    assert _counts(nb) == before


def test_vnet_order_of_ranges_and_subnets_does_not_matter(loaded_nb):
    vnet = topology.VNet("multi", "westeurope", 0x77,
                         (IPv4Network("10.2.0.0/16"), IPv4Network("10.1.0.0/16")),
                         (topology.Subnet("zeta", 2, IPv4Network("10.2.0.0/24")),
                          topology.Subnet("alpha", 1, IPv4Network("10.1.0.0/24"))))
    loaded_nb.add_vnet(vnet)
    loaded_nb.add_vnet(vnet, may_exist=True)
    with pytest.raises(Conflict, match="already exists with different settings"):
        loaded_nb.add_vnet(topology.VNet("multi", "westeurope", 0x77, vnet.cidrs, vnet.subnets[:1]),
                           may_exist=True)


def test_conflicting_load_writes_nothing(loaded_nb, default_topology):
    """A file that fails half-way through (at its VMs) leaves no region, node or VNet behind."""
    before = _counts(loaded_nb)
    loaded_nb.add_vm("squatter", "customer-a", IPv4Address("10.0.0.9"), "host1")
    before["VM"] += 1
    text = DEFAULT_TOPOLOGY.read_text()
    text = text.replace("  - {name: westeurope, id: 0x3930}",
                        "  - {name: westeurope, id: 0x3930}\n  - {name: northeurope, id: 0x3931}")
    text = text.replace("  - {name: host2, role: host, underlay_ip: 192.168.64.12}",
                        "  - {name: host2, role: host, underlay_ip: 192.168.64.12}\n"
                        "  - {name: host3, role: host, underlay_ip: 192.168.64.13}")
    text = text.replace("vms:\n", "vms:\n  - {name: c-vm1, vnet: customer-a, ipv4: 10.0.0.9, host: host3}\n")
    topo = topology.loads(text, "conflict.yaml")
    with pytest.raises(Conflict, match="IPv4 10.0.0.9 is already used in VNet customer-a by VM 'squatter'"):
        loaded_nb.load_topology(topo)
    assert _counts(loaded_nb) == before
    assert {r.name for r in loaded_nb.tables["Region"].rows.values()} == {"westeurope"}
    # The replica is still consistent after the aborted transaction: writes still work.
    loaded_nb.add_vm("after-abort", "customer-b", IPv4Address("10.0.0.10"), "host1")
    assert loaded_nb.vm_info("after-abort")["host"] == "host1"


def test_changed_object_in_a_topology_is_a_conflict_not_an_overwrite(loaded_nb):
    text = DEFAULT_TOPOLOGY.read_text().replace("id: 0x1f", "id: 0x2f")
    with pytest.raises(Conflict, match=r"VNet 'customer-a' already exists with different settings \(id 0x1f"):
        loaded_nb.load_topology(topology.loads(text, "changed.yaml"))
    assert loaded_nb.vnet_info("customer-a")["vnet_id"] == "0x001f"


def test_subscribe_validates_vm_and_service(loaded_nb):
    with pytest.raises(NotFound, match="VM 'nope' does not exist"):
        loaded_nb.subscribe("nope", "analytics")
    with pytest.raises(NotFound, match="service 'nope' does not exist"):
        loaded_nb.subscribe("a-vm1", "nope")
    with pytest.raises(Conflict, match="VM a-vm1 is already subscribed to analytics "
                                       r"\(address fd41::3930:1f:6600:a00:4\)"):
        loaded_nb.subscribe("a-vm1", "analytics")
    again = loaded_nb.subscribe("a-vm1", "analytics", may_exist=True)
    assert again["ipv6"] == "fd41::3930:1f:6600:a00:4"
    assert loaded_nb.count("Subscription") == 2


def test_add_vm_takes_its_ipv4_as_text_and_names_a_bad_one(loaded_nb):
    assert loaded_nb.add_vm("texted", "customer-a", "10.0.0.21", "host1")["ipv4"] == "10.0.0.21"
    vms = loaded_nb.count("VM")
    for bad in ("10.0.0.300", "fd00::1", None, 167772182):
        with pytest.raises(Invalid, match=rf"VM bad: {re.escape(repr(bad))} is not an IPv4 address"):
            loaded_nb.add_vm("bad", "customer-a", bad, "host1")
    assert loaded_nb.count("VM") == vms


def test_subscribe_refuses_a_vm_whose_ipv4_left_its_vnet(loaded_nb):
    """Rows written behind the API's back are re-checked: nothing is assigned."""
    loaded_nb.add_vm("drifter", "customer-a", IPv4Address("10.0.0.20"), "host1")
    vnet = next(r for r in loaded_nb.tables["VNet"].rows.values() if r.name == "customer-a")
    loaded_nb.db_set("VNet", vnet.uuid, ("cidrs", ["10.1.0.0/16"])).execute(check_error=True, log_errors=False)
    with pytest.raises(Invalid, match=r"VM drifter: IPv4 10.0.0.20 is outside the ranges of VNet customer-a"):
        loaded_nb.subscribe("drifter", "analytics")
    assert loaded_nb.count("Subscription") == 2 and loaded_nb.count("Host_Mapping") == 2


def test_unsubscribe_keeps_the_host_mapping_while_another_service_uses_it(loaded_nb):
    loaded_nb.add_service(topology.Service("backup", (topology.Endpoint(
        "bk1", IPv6Address("fd00:5e:2::10"), "host2", topology.default_mac("bk1")),)))
    loaded_nb.subscribe("a-vm1", "backup")
    assert loaded_nb.count("Host_Mapping") == 2
    assert loaded_nb.unsubscribe("a-vm1", "analytics") is True
    assert {m["ipv6"] for m in loaded_nb.list("host-mapping")} >= {"fd41::3930:1f:6600:a00:4"}
    assert loaded_nb.unsubscribe("a-vm1", "backup") is True
    assert {m["ipv6"] for m in loaded_nb.list("host-mapping")} == {"fd41::3930:20:6600:a00:4"}
    with pytest.raises(NotFound, match="VM a-vm1 is not subscribed to analytics"):
        loaded_nb.unsubscribe("a-vm1", "analytics")
    assert loaded_nb.unsubscribe("a-vm1", "analytics", if_exists=True) is False


def test_moving_a_vm_moves_its_host_mapping(loaded_nb):
    loaded_nb.move_vm("a-vm1", "host2")
    assert loaded_nb.subscription_info("a-vm1", "analytics")["host"] == "host2"
    assert loaded_nb.vm_info("a-vm1")["host"] == "host2"
    assert loaded_nb.subscription_info("b-vm1", "analytics")["host"] == "host1"
    with pytest.raises(Invalid, match="'appliance' is the appliance, not a host"):
        loaded_nb.move_vm("a-vm1", "appliance")


def test_concurrent_subscribes_of_one_pair_give_one_subscription(nb_server, loaded_nb):
    """Two clients race on the same (VM, service): the schema's index lets one win."""
    loaded_nb.unsubscribe("a-vm1", "analytics")
    clients = [nbapi.connect(nb_server.remote) for _ in range(2)]
    try:
        for _round in range(5):
            start = threading.Barrier(2)
            outcomes: list = [None, None]

            def race(i: int) -> None:
                start.wait()
                try:
                    outcomes[i] = clients[i].subscribe("a-vm1", "analytics")["ipv6"]
                except NbError as exc:
                    outcomes[i] = exc

            threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            wins = [o for o in outcomes if isinstance(o, str)]
            losses = [o for o in outcomes if isinstance(o, Exception)]
            assert wins == ["fd41::3930:1f:6600:a00:4"], outcomes
            assert len(losses) == 1 and isinstance(losses[0], Conflict), outcomes
            assert "already subscribed" in str(losses[0])
            assert nbapi.wait_for(lambda: sum(
                1 for s in loaded_nb.tables["Subscription"].rows.values() if s.vm.name == "a-vm1") == 1)
            loaded_nb.unsubscribe("a-vm1", "analytics")
    finally:
        for c in clients:
            c.close()


def test_data_survives_an_ovsdb_server_restart(nb_server, loaded_nb):
    before = sorted((s["vm"], s["ipv6"]) for s in loaded_nb.list("subscription"))
    loaded_nb.close()
    old_pid = nb_server.pid()
    assert nb_server.stop()
    assert nb_server.pid() is None
    assert nb_server.start() != old_pid
    with nbapi.connect(nb_server.remote) as api:
        assert sorted((s["vm"], s["ipv6"]) for s in api.list("subscription")) == before
        assert api.platform_info()["platform_ip"] == "100.100.0.1"


def test_schema_holds_integrity_against_raw_writes(nb_server, loaded_nb):
    """Even a client that skips our checks cannot break references or uniqueness."""
    vm = next(r for r in loaded_nb.tables["VM"].rows.values() if r.name == "a-vm1")
    with pytest.raises(RuntimeError, match="referential integrity"):
        loaded_nb.db_destroy("VM", vm.uuid).execute(check_error=True, log_errors=False)
    with pytest.raises(RuntimeError, match="constraint violation"):
        loaded_nb.db_create("Region", name="westeurope", region_id=7).execute(
            check_error=True, log_errors=False)
    # python-ovs refuses an out-of-range value before sending it; a raw client
    # shows the server itself enforces the schema's range.
    op = {"op": "update", "table": "VNet", "where": [["name", "==", "customer-a"]],
          "row": {"vnet_id": 70000}}
    out = subprocess.run(["ovsdb-client", "transact", nb_server.remote,
                          json.dumps(["VNet64_Northbound", op])], capture_output=True, text=True)
    assert "constraint violation" in out.stdout + out.stderr
    assert "70000 is not in the valid range 0 to 65535" in out.stdout + out.stderr
    assert loaded_nb.count("VM") == 2 and loaded_nb.count("Region") == 1
    assert loaded_nb.vnet_info("customer-a")["vnet_id"] == "0x001f"


def test_two_apis_talk_to_their_own_servers(tmp_path, loaded_nb):
    """ovsdbapp shares a connection per class by default; ours is per instance."""
    from vnet64.nb.server import NbServer
    other = NbServer(tmp_path / "other")
    other.start()
    try:
        with nbapi.connect(other.remote) as api2:
            assert api2.count("VM") == 0
            assert loaded_nb.count("VM") == 2
    finally:
        other.stop()


def test_unreachable_nb_is_a_clear_error(tmp_path):
    with pytest.raises(nbapi.NbUnavailable, match="cannot reach the NB at unix:"):
        nbapi.connect(f"unix:{tmp_path}/missing.sock", timeout=1)


def test_database_from_an_older_schema_is_converted_on_start(tmp_path):
    """An NB written by an older vnet64 is upgraded in place, its data kept."""
    from vnet64.nb.server import SCHEMA_PATH, NbServer
    old = json.loads(SCHEMA_PATH.read_text())
    old["version"] = "0.9.0"
    del old["tables"]["VNet"]["columns"]["snat_vip"]
    del old["tables"]["Platform"]["columns"]["tunnel_token"]
    old_schema = tmp_path / "old.ovsschema"
    old_schema.write_text(json.dumps(old))
    server = NbServer(tmp_path / "nb")
    server.run_dir.mkdir()
    subprocess.run(["ovsdb-tool", "create", str(server.db_path), str(old_schema)], check=True)
    op = {"op": "insert", "table": "Region", "row": {"name": "legacy", "region_id": 9}}
    subprocess.run(["ovsdb-tool", "transact", str(server.db_path),
                    json.dumps(["VNet64_Northbound", op])], check=True, capture_output=True)
    server.start()
    try:
        version = subprocess.run(["ovsdb-client", "get-schema-version", server.remote, "VNet64_Northbound"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        assert version == json.loads(SCHEMA_PATH.read_text())["version"]
        with nbapi.connect(server.remote) as api:
            assert [r["name"] for r in api.list("region")] == ["legacy"]
            assert "snat_vip" in api.tables["VNet"].columns
            assert "tunnel_token" in api.tables["Platform"].columns
    finally:
        server.stop()


def test_the_platform_gets_a_tunnel_token_once_and_rotating_changes_only_it(loaded_nb, default_topology):
    """The Geneve tunnel token (controller pipeline.TOKEN_OPTION): drawn when the platform
    is first set, kept when the topology is loaded again, replaced by a rotation; the
    controller's model reads it."""
    from vnet64.controller import model as M
    info = loaded_nb.platform_info()
    token = int(info["tunnel_token"], 16)
    assert 0 < token < 2**32 and M.from_nb(loaded_nb).tunnel_token == token
    loaded_nb.load_topology(default_topology)
    assert loaded_nb.platform_info() == info
    new = loaded_nb.rotate_tunnel_token()
    assert new != token and 0 < new < 2**32
    after = loaded_nb.platform_info()
    assert after == {**info, "tunnel_token": f"{new:#010x}", "nb_cfg": info["nb_cfg"] + 1,
                     "nb_cfg_time": after["nb_cfg_time"]}
    assert M.from_nb(loaded_nb).tunnel_token == new


def test_the_direct_path_setting(nb, loaded_nb):
    """On, off, back to the default; each change numbered, a repeat a no-op; the
    controller's model reads it."""
    from vnet64.controller import model as M
    assert M.from_nb(loaded_nb).direct_path is M.DIRECT_PATH_DEFAULT
    cfg = loaded_nb.platform_info()["nb_cfg"]
    assert loaded_nb.set_direct_path(False) is True
    assert loaded_nb.platform_info()["direct_path"] == "off" and not M.from_nb(loaded_nb).direct_path
    assert loaded_nb.set_direct_path(False) is False
    assert loaded_nb.set_direct_path(True) is True and loaded_nb.platform_info()["direct_path"] == "on"
    assert loaded_nb.set_direct_path(None) is True
    assert loaded_nb.platform_info()["direct_path"] == "default (on)"
    assert loaded_nb.platform_info()["nb_cfg"] == cfg + 3


def test_the_direct_path_needs_the_platform_row(nb):
    with pytest.raises(NotFound, match="load a topology first"):
        nb.set_direct_path(True)


def test_rotating_the_token_needs_the_platform_row(nb):
    with pytest.raises(NotFound, match="load a topology first"):
        nb.rotate_tunnel_token()


def _nb_cfg(api) -> tuple[int, int]:
    row = next(iter(api.tables["Platform"].rows.values()))
    return row.nb_cfg, row.nb_cfg_timestamp


def test_every_write_that_changes_something_is_numbered_and_timed(nb, nb_server, default_topology):
    """Platform.nb_cfg (schema 1.5.0, OVN's nb_cfg): each write transaction that changes
    the NB raises it by one and stamps it with the writer's clock; an idempotent rerun,
    a refused command and a read leave it; writers in parallel never conflict on it."""
    import time
    t0 = time.time()
    nb.load_topology(default_topology)
    cfg, stamp = _nb_cfg(nb)
    assert cfg == 1 and t0 * 1000 - 1 <= stamp <= time.time() * 1000 + 1
    nb.load_topology(default_topology)                        # every value already there
    nb.subscribe("a-vm1", "analytics", may_exist=True)
    with pytest.raises(Conflict):
        nb.subscribe("a-vm1", "analytics")
    with pytest.raises(NotFound):
        nb.unsubscribe("a-vm1", "nothing")
    nb.list("vm")
    assert _nb_cfg(nb) == (1, stamp)
    assert nb.unsubscribe("a-vm1", "analytics") is True
    assert _nb_cfg(nb)[0] == 2 and _nb_cfg(nb)[1] >= stamp
    assert nb.unsubscribe("a-vm1", "analytics", if_exists=True) is False
    assert _nb_cfg(nb)[0] == 2
    # two clients, 20 changes each at the same time: 40 numbers, no conflict
    other = nbapi.connect(nb_server.remote)
    try:
        def toggle(api, vm):
            for _ in range(10):
                api.unsubscribe(vm, "analytics", if_exists=True)
                api.subscribe(vm, "analytics")
        threads = [threading.Thread(target=toggle, args=(nb, "a-vm1")),
                   threading.Thread(target=toggle, args=(other, "b-vm1"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # (b-vm1's first unsubscribe removes its subscription: 20 + 20 changes, a-vm1's
        # first one none)
        assert nbapi.wait_for(lambda: _nb_cfg(nb)[0] == 2 + 19 + 20)
        assert _nb_cfg(other)[0] == 2 + 19 + 20
    finally:
        other.close()


# ---------------------------------------------------------------------------
# Client remotes kept in the NB (Platform.connections -> ovsdb-server --remote=db:...)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _silent_client(port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP client of the NB that never says anything (so it never answers an echo)."""
    assert nbapi.wait_for(lambda: _accepts(port), timeout), f"nothing listens on {port}"
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_connections_come_from_the_nb_with_their_inactivity_probe(loaded_nb):
    """`vnet64 connection set` makes the running server listen - no restart - and the
    probe applies: a client that answers nothing gets an echo request after 1 s and is
    dropped 1 s later; with 0 it is never probed."""
    port = _free_port()
    target = f"ptcp:{port}:127.0.0.1"
    assert loaded_nb.set_connections([target], inactivity_probe=1000) is True
    assert loaded_nb.set_connections([target], inactivity_probe=1000) is False     # idempotent
    with _silent_client(port) as sock:
        said = _read_until_closed(sock)            # the server closes it (or the 5 s timeout raises)
    assert json.loads(said.split(b"}", 1)[0] + b"}")["method"] == "echo", said
    assert nbapi.wait_for(lambda: loaded_nb.connections()[0]["status"].get("bound_port") == str(port), 5)

    assert loaded_nb.set_connections([target], inactivity_probe=0) is True
    assert [(c["target"], c["inactivity_probe"]) for c in loaded_nb.connections()] == [(target, 0)]
    with _silent_client(port, timeout=3.0) as sock:
        with pytest.raises(socket.timeout):        # 3 s of silence: no echo, not dropped
            sock.recv(4096)

    assert loaded_nb.del_connections() is True and loaded_nb.connections() == []
    assert nbapi.wait_for(lambda: not _accepts(port), 5), "the server still listens after del"
    assert loaded_nb.del_connections() is False


@pytest.mark.parametrize("targets,probe,error", [
    (["ptcp:70000"], None, "not an OVSDB remote"),
    (["tcp:nb.example:6641"], None, "not an OVSDB remote"),
    (["ptcp:6641:10.0.0.300"], None, "not an IP address"),
    (["ptcp:6641", "udp:1.2.3.4:6641"], None, "not an OVSDB remote"),
    (["ptcp:6641", "ptcp:6641"], None, "given twice"),
    (["ptcp:6641"], -1, "0 or more"),
])
def test_bad_connections_change_nothing(nb_server, loaded_nb, targets, probe, error):
    loaded_nb.set_connections([f"punix:{nb_server.run_dir}/extra.sock"], inactivity_probe=30000)
    before = loaded_nb.connections()
    with pytest.raises(Invalid, match=error):
        loaded_nb.set_connections(targets, probe)
    assert loaded_nb.connections() == before


def test_connections_need_the_platform_row(nb):
    with pytest.raises(Invalid, match="load a topology first"):
        nb.set_connections(["ptcp:6641"])
    assert nb.connections() == [] and nb.del_connections() is False
