"""The BPF translator engine (issue 21, lever 3: ``vnet64-node --translator-engine bpf``):
which engine carried which packets, and switching a host between them.

What the translated packets look like is the engine-independent suites' job: ``make test``
runs the translator, ICMP error, fragment, acceptance and security suites a second time
with ``--translator-engine bpf``. Here, in a lab whose hosts run the BPF engine:

- a connection's bulk (TCP, UDP, echo, both ways) is translated by the BPF program - its
  counters, exported by host1's agent, grow - and never enters TAYGA's tun;
- what it hands on (here: a UDP datagram too big for one packet, in fragments both ways)
  reaches TAYGA, and the answer still arrives whole;
- host1's agent restarted with ``--translator-engine tayga`` takes the program off ``ovs0``
  (TAYGA then carries everything, the metric is gone), and with ``bpf`` again puts the
  same build back; a restart with nothing to change attaches nothing anew.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from vnet64.node import sh
from vnet64_lab.lab import Lab
from vnet64_lab.traffic import A6, TCP_PORT, UDP_PORT, answer, client, ping, running_platform

from tests.lab.conftest import ROOT, TEST_RUN_DIR, need_lab
from tests.lab.test_metrics import scrape, value

PREFIX = "v64k-"
METRIC = "vnet64_node_translator_bpf_packets_total"


@pytest.fixture(scope="module")
def platform():
    need_lab()
    for tool in ("clang", "bpftool"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (apt-get install clang libbpf-dev bpftool)")
    lab = Lab(PREFIX, f"{TEST_RUN_DIR}k", translator_engine="bpf")
    with running_platform(lab, ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        yield lab, plan


def tun_packets(plan, host: str) -> tuple[int, int]:
    """(into TAYGA, out of TAYGA): the packets of its tun ``nat64`` (the kernel transmits
    what TAYGA reads, and receives what TAYGA writes: its translations)."""
    out = sh.run([sh.tool("ip"), "-n", plan.translator(host).ns, "-s", "-j", "link", "show",
                  "nat64"]).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["tx"]["packets"], stats["rx"]["packets"]


def filter_shown(plan, host: str) -> str:
    """``tc filter show`` of the translator veth's ingress (empty: no program)."""
    return sh.run([sh.tool("tc"), "-n", plan.translator(host).ns, "filter", "show", "dev",
                   "ovs0", "ingress"]).stdout


def bpf_counts(plan, host: str) -> dict[str, float | None]:
    samples = scrape(plan, host)
    return {path: value(samples, METRIC, node=host, path=path)
            for path in ("6to4", "4to6", "to_tayga")}


def exchange(plan, tag: str, n: int = 10) -> None:
    """``n`` TCP requests and ``n`` UDP datagrams svc1 -> a-vm1, each answered."""
    for i in range(n):
        for kind, port in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
            vm, _, _, payload = answer(client(plan, kind, A6, port, f"{tag}-{kind}-{i}"))
            assert (vm, payload) == ("a-vm1", f"{tag}-{kind}-{i}")


def test_the_bulk_is_translated_in_the_kernel_and_the_rest_by_tayga(platform):
    _, plan = platform
    assert "vnet64_xlat" in filter_shown(plan, "host1")
    exchange(plan, "warm", 1)          # the pair's first packet, through the controller
    tun0, bpf0 = tun_packets(plan, "host1"), bpf_counts(plan, "host1")
    assert None not in bpf0.values(), bpf0
    exchange(plan, "bulk")
    assert ping(plan, A6, count=5) == (5, 5)
    tun1, bpf1 = tun_packets(plan, "host1"), bpf_counts(plan, "host1")
    # each TCP request is at least SYN, data, FIN each way; a datagram and an echo one
    least = 10 * 3 + 10 + 5
    assert bpf1["6to4"] - bpf0["6to4"] >= least, (bpf0, bpf1)
    assert bpf1["4to6"] - bpf0["4to6"] >= least, (bpf0, bpf1)
    # nothing handed on, nothing out of TAYGA (what goes into its tun may be the
    # namespace's own router solicitations: TAYGA drops those)
    assert bpf1["to_tayga"] == bpf0["to_tayga"], (bpf0, bpf1)
    assert tun1[1] == tun0[1], f"TAYGA translated packets of the bulk: {tun0} -> {tun1}"

    # a datagram larger than svc1's MTU: IPv6 fragments in, the VM's answer IPv4
    # fragments out - neither is the BPF program's; TAYGA takes both ways
    big = "f" * 3000
    vm, _, _, payload = answer(client(plan, "udp", A6, UDP_PORT, big))
    assert (vm, payload) == ("a-vm1", big)
    tun2, bpf2 = tun_packets(plan, "host1"), bpf_counts(plan, "host1")
    assert tun2[0] > tun1[0] and tun2[1] > tun1[1], (tun1, tun2)
    assert bpf2["to_tayga"] - bpf1["to_tayga"] >= 2, (bpf1, bpf2)


def test_a_host_switched_to_tayga_and_back(platform):
    lab, plan = platform
    shown = filter_shown(plan, "host1")
    build = re.search(r"xlat-[0-9a-f]{12}\.o", shown).group(0)
    lab.restart_agent("host1", translator_engine="tayga")
    try:
        assert "vnet64_xlat" not in filter_shown(plan, "host1")
        assert value(scrape(plan, "host1"), METRIC, node="host1", path="6to4") is None
        tun0 = tun_packets(plan, "host1")
        exchange(plan, "tayga", 3)
        tun1 = tun_packets(plan, "host1")
        assert tun1[0] - tun0[0] >= 3 * 3 + 3 and tun1[1] - tun0[1] >= 3 * 3 + 3, (tun0, tun1)
    finally:
        lab.restart_agent("host1")          # the lab's engine: bpf
    again = filter_shown(plan, "host1")
    assert build in again, again            # the same build (settings unchanged)
    prog_id = re.search(r"\bid (\d+) name vnet64_xlat", again).group(1)
    log = Path(lab.agent_dir("host1")) / "agent.log"
    before = len(log.read_text().splitlines())
    lab.restart_agent("host1")               # nothing to change: nothing attached anew
    assert re.search(r"\bid (\d+) name vnet64_xlat", filter_shown(plan, "host1")).group(1) == prog_id
    said = log.read_text().splitlines()[before:]
    assert said and not [line for line in said if "BPF translator" in line], said
    tun0 = tun_packets(plan, "host1")
    exchange(plan, "back", 3)
    assert tun_packets(plan, "host1")[1] == tun0[1]
