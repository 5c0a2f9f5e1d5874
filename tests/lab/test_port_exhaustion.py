"""Port exhaustion (issue 4): when no Platform_IP port is left towards a VM's address and
port, a new connection is refused cleanly and the existing ones are untouched.

The controller serving host1 (its own, or the central one) runs with
``--vnet64-snat-ports`` narrowed to a few ports (through oslo.config's environment,
``OS_VNET64__SNAT_PORTS``, on the lab's own restart), so the
real exhaustion path is reached with a handful of real connections: svc1 holds one
long-lived TCP connection to a-vm1's line port per Platform_IP port, then opens one
more. Checked with packets: the extra connect() fails at once with ECONNREFUSED (not
a timeout), because a reset reaches svc1 from a-vm1's platform address acknowledging
svc1's SYN, as a closed port would answer; a-vm1 never saw that SYN; every held
connection still answers, from its own Platform_IP port. The same for UDP: once every
port towards a-vm1's UDP port is taken, a datagram from a new socket gets ICMPv6
"administratively prohibited" (EACCES on svc1's connected socket).
"""

from __future__ import annotations

import os
import re

from vnet64_lab.traffic import (A6, LINE_PORT, PLATFORM_IP, SVC1, TCP_PORT, UDP_PORT, Capture,
                                LineSession, answer, client, controller_log, controller_log_marks,
                                controller_log_text, ns_of, programmed, running_platform, wait_for)

from tests.lab.conftest import ROOT, need_lab, new_lab

PORTS = (20000, 20005)          # six Platform_IP ports towards each VM address and port


def restart_controller_with_ports(lab, plan, ports: tuple[int, int]) -> None:
    """Restart the controller serving host1 (where the pairs to a-vm1 are set up) with
    these ports; wait until it has programmed every switch it serves again."""
    served = ["host1"] if lab.control == "node" else [n.name for n in plan.nodes]
    marks = controller_log_marks(lab)
    os.environ["OS_VNET64__SNAT_PORTS"] = f"{ports[0]}-{ports[1]}"
    try:
        state = lab.restart_controller("host1")
    finally:
        del os.environ["OS_VNET64__SNAT_PORTS"]
    assert state.startswith("started"), state
    assert wait_for(lambda: all(f" is {n} (" in controller_log_text(lab, marks) for n in served)
                    and programmed(plan)), controller_log_text(lab, marks)[-3000:]


def test_no_port_left_refuses_new_connections_and_keeps_the_others():
    need_lab()
    lab = new_lab("n")
    with running_platform(lab, ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        restart_controller_with_ports(lab, plan, PORTS)
        n = PORTS[1] - PORTS[0] + 1
        sessions: list[LineSession] = []
        try:
            seen_ports = set()
            for i in range(n):
                s = LineSession(plan, A6, LINE_PORT)
                sessions.append(s)
                vm, addr, port, payload = answer(s.send(f"held-{i}"))
                assert (vm, addr, payload) == ("a-vm1", PLATFORM_IP, f"held-{i}")
                seen_ports.add(int(port))
            assert seen_ports == set(range(PORTS[0], PORTS[1] + 1)), seen_ports

            vm_cap = Capture(ns_of(plan, "a-vm1"), "eth0", f"tcp dst port {LINE_PORT} and "
                             "tcp[tcpflags] & tcp-syn != 0", count=None)
            with Capture(ns_of(plan, "svc1"), "eth0", f"tcp port {LINE_PORT}", count=2) as svc_cap:
                refused = client(plan, "tcp", A6, LINE_PORT, "one too many", timeout=10)
                svc_cap.done(5)         # the SYN and the answer to it
                seen = svc_cap.stop()
            at_vm = vm_cap.stop()
            assert refused == {"error": "ConnectionRefusedError"}, refused
            syn = re.search(rf"{SVC1}\.(\d+) > {A6}\.{LINE_PORT}: Flags \[S\], seq (\d+)", seen)
            assert syn, seen
            assert re.search(rf"{A6}\.{LINE_PORT} > {SVC1}\.{syn.group(1)}: Flags \[R\.\], seq 0, "
                             rf"ack {int(syn.group(2)) + 1},", seen), \
                f"no reset acknowledging svc1's SYN reached svc1:\n{seen}"
            assert "Flags [S]" not in at_vm, f"a-vm1 saw the refused SYN:\n{at_vm}"

            # the held connections are untouched, each on its own port
            for i, s in enumerate(sessions):
                vm, addr, port, payload = answer(s.send(f"still-{i}"))
                assert (vm, addr, payload) == ("a-vm1", PLATFORM_IP, f"still-{i}")
            # another VM port of the same VM still has all its ports: not refused
            assert answer(client(plan, "tcp", A6, TCP_PORT, "other port"))[3] == "other port"

            # UDP: one datagram from each of n new sockets takes the n ports; one more is refused
            udp_ports = {int(answer(client(plan, "udp", A6, UDP_PORT, f"u{i}"))[2]) for i in range(n)}
            assert udp_ports == set(range(PORTS[0], PORTS[1] + 1)), udp_ports
            with Capture(ns_of(plan, "svc1"), "eth0", "icmp6 and ip6[40] == 1", count=1,
                         extra=("-vv",)) as svc_cap:
                refused = client(plan, "udp", A6, UDP_PORT, "one too many", timeout=5)
                assert svc_cap.done(5), "no ICMPv6 destination unreachable reached svc1"
                icmp = svc_cap.stop()
            assert refused == {"error": "PermissionError"}, refused
            assert re.search(rf"{A6} > {SVC1}: .*unreachable prohibited", icmp), icmp
            log = controller_log(lab, "host1").read_text()
            assert "no Platform_IP port left towards 10.0.0.4" in log, log[-3000:]
            assert "Traceback" not in log
        finally:
            for s in sessions:
                s.close()
