"""vnet64-node sessions' pure part (node/sessions.py): conntrack lines as
``ovs-appctl dpctl/dump-conntrack -s`` prints them, joined into sessions across the
IPv6 SNAT zone and a VNet's zone, port use, and the renderings."""

from __future__ import annotations

import csv
import io

from vnet64.node import sessions as S

SVC1, A6 = "fd00:5e:1::10", "fd41::3930:1f:6600:a00:4"
DUMP = """\
tcp,orig=(src=fd00:5e:1::10,dst=fd41::3930:1f:6600:a00:4,sport=40000,dport=8082,packets=4,bytes=300),reply=(src=fd41::3930:1f:6600:a00:4,dst=fd64:64::c612:1,sport=8082,dport=40000,packets=3,bytes=250),zone=65534,timeout=86390,protoinfo=(state=ESTABLISHED)
tcp,orig=(src=fd64:64::c612:1,dst=fd41::3930:1f:6600:a00:4,sport=40000,dport=8082,packets=4,bytes=300),reply=(src=fd64:64::a00:4,dst=fd64:64::c612:1,sport=8082,dport=40000,packets=3,bytes=250),zone=65533,timeout=86390,protoinfo=(state=ESTABLISHED)
tcp,orig=(src=198.18.0.1,dst=10.0.0.4,sport=40000,dport=8082,packets=4,bytes=220),reply=(src=10.0.0.4,dst=100.100.0.1,sport=8082,dport=1024,packets=3,bytes=190),zone=1,timeout=86390,protoinfo=(state=ESTABLISHED)
tcp,orig=(src=198.18.0.2,dst=10.0.0.4,sport=40001,dport=8082),reply=(src=10.0.0.4,dst=100.100.0.1,sport=8082,dport=40001),zone=2,timeout=110,protoinfo=(state=TIME_WAIT)
udp,orig=(src=198.18.0.1,dst=10.0.0.4,sport=41000,dport=8081),reply=(src=10.0.0.4,dst=100.100.0.1,sport=8081,dport=1025),zone=1,timeout=25
icmp,orig=(src=198.18.0.1,dst=10.0.0.4,id=7,type=8,code=0),reply=(src=10.0.0.4,dst=100.100.0.1,id=1026,type=0,code=0),zone=1,timeout=20
tcp,orig=(src=10.9.9.9,dst=10.0.0.4,sport=1,dport=2),reply=(src=10.0.0.4,dst=10.9.9.9,sport=2,dport=1),zone=1,timeout=5,protoinfo=(state=SYN_SENT)
not a conntrack line
"""
VMS = {(1, "10.0.0.4"): "a-vm1", (2, "10.0.0.4"): "b-vm1"}
ENDPOINTS = {SVC1: "svc1"}


def found():
    return S.join(S.parse(DUMP), lambda zone, ip: VMS.get((zone, ip)), ENDPOINTS.get)


def test_parse_reads_every_field_it_needs():
    entries = S.parse(DUMP)
    assert len(entries) == 7                                     # the last line is no entry
    e = entries[2]
    assert (e.proto, e.zone, e.timeout, e.state) == ("tcp", 1, 86390, "ESTABLISHED")
    assert e.orig == S.Tuple("198.18.0.1", "10.0.0.4", 40000, 8082)
    assert e.reply == S.Tuple("10.0.0.4", "100.100.0.1", 8082, 1024)
    assert entries[5].orig.sport == 7 and entries[5].reply.dport == 1026   # an echo: its identifier
    assert entries[4].state is None


def test_a_session_joins_the_service_side_to_the_vms():
    by = {(s.vm, s.proto, s.vm_port): s for s in found()}
    a = by[("a-vm1", "tcp", 8082)]
    assert (a.service, a.service_ip, a.service_port) == ("svc1", SVC1, 40000)
    assert (a.platform_ip, a.platform_port, a.vm_ip, a.alias) == ("100.100.0.1", 1024, "10.0.0.4", "198.18.0.1")
    assert (a.state, a.timeout) == ("ESTABLISHED", 86390)
    # no service side (gone, or another pair's): still the VM's session, service unknown
    b = by[("b-vm1", "tcp", 8082)]
    assert (b.service, b.service_ip, b.platform_port, b.state) == ("", "", 40001, "TIME_WAIT")
    assert ("a-vm1", "udp", 8081) in by and ("a-vm1", "icmp", 7) in by
    # not from an alias, and the IPv6 zones' own entries: no sessions
    assert len(found()) == 4


def test_port_use_counts_per_vm_address_protocol_and_port():
    use = S.port_use(found() * 3, (1024, 2047))
    a = next(u for u in use if (u["vm"], u["proto"], u["vm_port"]) == ("a-vm1", "tcp", 8082))
    assert (a["in_use"], a["of"], a["percent"]) == (3, 1024, 0.29)
    assert not any(u["proto"] == "icmp" for u in use)            # echoes take no port


def test_table_and_csv():
    table = S.render(found())
    assert table.splitlines()[0].split() == ["PROTO", "SERVICE", "PLATFORM", "VM", "STATE", "LEFT"]
    assert f"[{SVC1}]:40000" in table and "100.100.0.1:1024" in table and "86390s" in table
    rows = list(csv.DictReader(io.StringIO(S.render(found(), "csv"))))
    assert tuple(rows[0]) == S.COLUMNS and len(rows) == 4
    assert {r["service"] for r in rows} == {"svc1", ""}
