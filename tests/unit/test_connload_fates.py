"""connload.syn_fates on hand-made captures: what became of each SYN sent again."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from vnet64_lab import connload

SVC, VM6, VM4, PIP = "fd00:5e:1::10", "fd41::3930:1f:6600:a00:4", "10.0.0.4", "100.100.0.1"


def client_syn(t: float, sport: int, isn: int):
    p = Ether() / IPv6(src=SVC, dst=VM6) / TCP(sport=sport, dport=7000, flags="S", seq=isn)
    p.time = t
    return p


def at_vm(t: float, isn: int, flags: str, nat_port: int = 2000):
    if flags == "S":
        p = Ether() / IP(src=PIP, dst=VM4) / TCP(sport=nat_port, dport=7000, flags="S", seq=isn)
    else:   # the VM's answer to that SYN
        p = Ether() / IP(src=VM4, dst=PIP) / TCP(sport=7000, dport=nat_port, flags=flags,
                                                 seq=99, ack=isn + 1)
    p.time = t
    return p


def test_each_retransmitted_syn_gets_its_fate(tmp_path):
    client = [client_syn(100.0, 40001, 11), client_syn(101.0, 40001, 11),      # answered late
              client_syn(100.1, 40002, 22), client_syn(101.1, 40002, 22),      # first copy lost
              client_syn(100.2, 40003, 33), client_syn(101.2, 40003, 33),      # refused (PAWS)
              client_syn(100.3, 40004, 44), client_syn(101.3, 40004, 44),      # never arrived
              client_syn(100.4, 40005, 55),                                    # fine, once
              client_syn(100.5, 40006, 66), client_syn(101.5, 40006, 66)]      # first copy late
    vm = [at_vm(100.01, 11, "S"), at_vm(101.5, 11, "SA"),
          at_vm(101.11, 22, "S"), at_vm(101.12, 22, "SA"),
          at_vm(100.21, 33, "S"), at_vm(101.21, 33, "S"),
          at_vm(100.41, 55, "S"), at_vm(100.42, 55, "SA"),
          at_vm(101.6, 66, "S"), at_vm(101.61, 66, "SA"), at_vm(101.62, 66, "S")]
    wrpcap(str(tmp_path / "c.pcap"), sorted(client, key=lambda p: p.time))
    wrpcap(str(tmp_path / "v.pcap"), sorted(vm, key=lambda p: p.time))

    fates = connload.syn_fates(str(tmp_path / "c.pcap"), str(tmp_path / "v.pcap"))

    assert (fates["connections"], fates["syns_sent"], fates["sent_again"]) == (6, 11, 5)
    assert [e["sport"] for e in fates["answered_late"]] == [40001]
    assert [e["sport"] for e in fates["first_copy_lost"]] == [40002]
    assert [e["sport"] for e in fates["first_copy_late"]] == [40006]
    assert [e["sport"] for e in fates["refused"]] == [40003]
    assert [e["sport"] for e in fates["never_arrived"]] == [40004]
    assert fates["server_got"] == 7 and fates["server_refused"] == 1   # isn 33
    late = fates["answered_late"][0]
    assert late["sent"] == [0.0, 1.0] and late["arrived"] == [0.01] and late["synack"] == [1.5]


def test_a_reset_is_no_answer(tmp_path):
    wrpcap(str(tmp_path / "c.pcap"), [client_syn(1.0, 40001, 7), client_syn(2.0, 40001, 7)])
    wrpcap(str(tmp_path / "v.pcap"), [at_vm(1.01, 7, "S"), at_vm(1.02, 7, "RA")])
    fates = connload.syn_fates(str(tmp_path / "c.pcap"), str(tmp_path / "v.pcap"))
    assert [e["sport"] for e in fates["refused"]] == [40001] and fates["server_refused"] == 1


def test_empty_captures(tmp_path):
    wrpcap(str(tmp_path / "c.pcap"), [])
    wrpcap(str(tmp_path / "v.pcap"), [])
    fates = connload.syn_fates(str(tmp_path / "c.pcap"), str(tmp_path / "v.pcap"))
    assert fates["connections"] == 0 and fates["refused"] == []
