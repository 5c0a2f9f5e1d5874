"""Sustained TCP connection load: a paced client and a small server.

Run inside lab namespaces (``ip netns exec NS python -m vnet64_lab.connload ...``).

``server PORT``: accepts, reads one request, answers and closes *first* (like an
HTTP/1.0 server), so every connection leaves a TIME_WAIT socket in the server -
the VM - for 60 s (Linux). Prints ``ready``, then on SIGTERM/SIGINT one JSON
line: connections answered, distinct peer addresses and peer ports seen, and how
many connections came from a peer address and port this server had closed a
connection with less than 60 s before (``on_time_wait``: their SYN met this
server's TIME_WAIT socket of that address and port, and was accepted).

``client ADDR PORT --rate R --seconds S``: opens R new connections per second
for S seconds (open loop: the schedule does not wait for answers), each one
request / one answer / close after the server's FIN. Nothing is retried. Prints
one JSON line: connections started, answered, failed (by error), still open
at the end, connect time percentiles and the slowest connections, and the
kernel's SYN retransmissions in the client's namespace over the run
(``TcpExtTCPSynRetrans``: a SYN that had to be sent again is a stall - the peer
or the path lost or refused it).

Both are single-threaded epoll loops (no threads, no asyncio): at 1,000
connections per second the Python overhead stays a small part of a core.
"""

from __future__ import annotations

import argparse
import errno
import json
import select
import signal
import socket
import struct
import sys
import time

from vnet64 import helptext

REQUEST = b"GET\n"
ANSWER = b"OK\n"
CONNECT_TIMEOUT = 10.0     # s; a connection not done by then counts as stalled and failed
TIME_WAIT = 60.0           # s; Linux's TCP_TIMEWAIT_LEN


def netstat(name: str) -> int:
    """A counter of /proc/net/netstat (this process's namespace), e.g. TCPSynRetrans."""
    with open("/proc/net/netstat") as f:
        rows = f.read().splitlines()
    for head, vals in zip(rows[::2], rows[1::2]):
        keys, values = head.split()[1:], vals.split()[1:]
        if name in keys:
            return int(values[keys.index(name)])
    raise KeyError(name)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


# ---------------------------------------------------------------------------
# Server


def serve(port: int) -> dict:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(4096)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns: dict[int, tuple[socket.socket, tuple]] = {}
    closed_at: dict[tuple, float] = {}     # peer (address, port) -> when we closed on it
    answered, on_time_wait, peers, ports = 0, 0, set(), set()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    print("ready", flush=True)
    while not stop:
        try:
            events = ep.poll(0.2)
        except InterruptedError:
            continue
        for fd, _ in events:
            if fd == lsock.fileno():
                while True:
                    try:
                        c, peer = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    c.setblocking(False)
                    conns[c.fileno()] = (c, peer)
                    ep.register(c.fileno(), select.EPOLLIN)
                    peers.add(peer[0])
                    ports.add(peer[1])
                    if time.monotonic() - closed_at.get(peer, -TIME_WAIT) < TIME_WAIT:
                        on_time_wait += 1
                continue
            c, peer = conns.pop(fd)
            ep.unregister(fd)
            try:
                if c.recv(64):
                    c.send(ANSWER)
                    answered += 1
            except OSError:
                pass
            c.close()      # the server closes first: TIME_WAIT stays here
            closed_at[peer] = time.monotonic()
    return {"answered": answered, "peers": sorted(peers), "peer_ports": len(ports),
            "on_time_wait": on_time_wait}


# ---------------------------------------------------------------------------
# Client


class Conn:
    __slots__ = ("sock", "nth", "start", "connected", "buf")

    def __init__(self, sock: socket.socket, nth: int, start: float):
        self.sock, self.nth, self.start, self.connected, self.buf = sock, nth, start, 0.0, b""


def run_client(addr: str, port: int, rate: float, seconds: float) -> dict:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ep = select.epoll()
    live: dict[int, Conn] = {}
    started = answered = 0
    errors: dict[str, int] = {}
    connect_ms: list[float] = []
    slowest: list[tuple[float, int]] = []
    retrans0 = netstat("TCPSynRetrans")
    t0 = time.monotonic()
    end = t0 + seconds
    deadline_all = end + CONNECT_TIMEOUT

    bucket = max(1.0, seconds / 24)          # the timeline's resolution (s)
    failed_at = [0] * (int(seconds / bucket) + 1)   # failures by the second they started in

    def fail(fd: int, why: str) -> None:
        c = live.pop(fd)
        ep.unregister(fd)
        c.sock.close()
        errors[why] = errors.get(why, 0) + 1
        failed_at[min(len(failed_at) - 1, int(c.nth / rate / bucket))] += 1

    while True:
        now = time.monotonic()
        due = min(int((now - t0) * rate), int(seconds * rate))
        while started < due:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((addr, port))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                errors[errno.errorcode.get(rc, str(rc))] = errors.get(errno.errorcode.get(rc, str(rc)), 0) + 1
            else:
                live[s.fileno()] = Conn(s, started, time.monotonic())
                ep.register(s.fileno(), select.EPOLLOUT)
            started += 1
        if now >= end and not live:
            break
        if now >= deadline_all:
            break
        next_due = t0 + (started + 1) / rate if started < seconds * rate else now + 0.05
        try:
            events = ep.poll(max(0.0, min(next_due - time.monotonic(), 0.05)))
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd, ev in events:
            c = live.get(fd)
            if c is None:
                continue
            if not c.connected:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(fd, errno.errorcode.get(err, str(err)))
                    continue
                c.connected = now
                ms = (now - c.start) * 1000
                connect_ms.append(ms)
                if len(slowest) < 5 or ms > slowest[0][0]:
                    slowest.append((ms, c.nth))
                    slowest.sort()
                    del slowest[:-5]
                try:
                    c.sock.send(REQUEST)
                except OSError as exc:
                    fail(fd, errno.errorcode.get(exc.errno, type(exc).__name__))
                    continue
                ep.modify(fd, select.EPOLLIN)
                continue
            try:
                data = c.sock.recv(64)
            except OSError as exc:
                fail(fd, errno.errorcode.get(exc.errno, type(exc).__name__))
                continue
            if data:
                c.buf += data
                continue
            live.pop(fd)
            ep.unregister(fd)
            c.sock.close()     # after the server's FIN: no TIME_WAIT on the client
            if c.buf == ANSWER:
                answered += 1
            else:
                errors["bad answer"] = errors.get("bad answer", 0) + 1
        # connections older than CONNECT_TIMEOUT are stalled
        if live and now - min(c.start for c in live.values()) > CONNECT_TIMEOUT:
            for fd in [fd for fd, c in live.items() if now - c.start > CONNECT_TIMEOUT]:
                fail(fd, "stalled")
    elapsed = time.monotonic() - t0
    for fd in list(live):
        fail(fd, "still open")
    return {
        "rate": rate, "seconds": seconds, "elapsed": round(elapsed, 2),
        "started": started, "answered": answered, "failed": sum(errors.values()), "errors": errors,
        "syn_retransmits": netstat("TCPSynRetrans") - retrans0,
        "connect_ms": {"p50": round(pct(connect_ms, 50), 2), "p99": round(pct(connect_ms, 99), 2),
                       "p999": round(pct(connect_ms, 99.9), 2),
                       "max": round(max(connect_ms, default=0.0), 2)},
        "failed_by_start": {"bucket_s": bucket, "counts": failed_at},
        "slowest": [{"ms": round(ms, 1), "nth": n} for ms, n in reversed(slowest)],
    }


# ---------------------------------------------------------------------------
# SYN fates: captures at both ends joined by the SYN's sequence number (its ISN, which
# neither conntrack NAT nor the translator changes)

# tcpdump filters: the client's outgoing SYNs (IPv6, no extension headers: the client
# sends none) and, at the server, SYNs in and whatever the server answers them with
CLIENT_SYN_BPF = "ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 0x02 and ip6[42:2] == {port}"
SERVER_SYN_BPF = "tcp port {port} and tcp[tcpflags] & (tcp-syn|tcp-rst) != 0"
SYN, RST, ACK = 0x02, 0x04, 0x10


def tcp_segments(pcap: str):
    """(time, src port, dst port, seq, ack, flags) of every TCP segment in a pcap file of
    Ethernet frames (tcpdump -w), IPv4 or IPv6 without extension headers."""
    with open(pcap, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return
    magic = struct.unpack_from("<I", data)[0]
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    scale = 1e-9 if magic in (0xA1B23C4D, 0x4D3CB2A1) else 1e-6
    off = 24
    while off + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(order + "IIII", data, off)
        frame = data[off + 16:off + 16 + caplen]
        off += 16 + caplen
        ethertype = struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
        if ethertype == 0x86DD and len(frame) >= 54 and frame[20] == 6:
            tcp = 54
        elif ethertype == 0x0800 and len(frame) >= 34 and frame[23] == 6:
            tcp = 14 + (frame[14] & 0x0F) * 4
        else:
            continue
        if len(frame) < tcp + 14:
            continue
        sport, dport, seq, ack = struct.unpack_from("!HHII", frame, tcp)
        yield sec + frac * scale, sport, dport, seq, ack, frame[tcp + 13]


def syn_fates(client_pcap: str, server_pcap: str) -> dict:
    """What became of every SYN the client had to send again, from the client's outgoing
    SYNs and the server's SYN/SYN-ACK/RST capture:

    - ``answered_late``: the server got the first copy and answered it with a SYN-ACK,
      but the answer came back after the client's retransmission timer (a slow path);
    - ``first_copy_late``: every copy reached the server, the first only after the
      client had sent it again (delayed on the way), and the server accepted one;
    - ``first_copy_lost``: fewer copies reached the server than the client sent (one
      was dropped on the way: a full queue, or the platform - its drop flows tell),
      and the server accepted a later one;
    - ``refused``: the server got a copy and answered none with a SYN-ACK (a TIME_WAIT
      socket that rejected it, a reset): the platform gave the connection a port the
      server could not take;
    - ``never_arrived``: no copy reached the server.

    Also ``server_refused``: SYNs (of any connection) the server received and answered
    with no SYN-ACK at all - the same symptom without a retransmission."""
    sent: dict[tuple[int, int], list[float]] = {}
    for t, sport, _, seq, _, flags in tcp_segments(client_pcap):
        if flags & (SYN | ACK) == SYN:
            sent.setdefault((sport, seq), []).append(t)
    got: dict[int, list[float]] = {}
    answers: dict[int, list[tuple[float, int]]] = {}
    for t, _, _, seq, ack, flags in tcp_segments(server_pcap):
        if flags & (SYN | ACK) == SYN:
            got.setdefault(seq, []).append(t)
        elif flags & (SYN | ACK) == SYN | ACK or flags & RST:
            answers.setdefault((ack - 1) & 0xFFFFFFFF, []).append((t, flags))
    fates = {"answered_late": [], "first_copy_late": [], "first_copy_lost": [], "refused": [],
             "never_arrived": []}
    for (sport, isn), times in sent.items():
        if len(times) < 2:
            continue
        first, again = times[0], times[1]
        arrived = [t for t in got.get(isn, []) if first - 1 <= t <= times[-1] + 5]
        synacks = [t for t, flags in answers.get(isn, []) if flags & SYN and first - 1 <= t]
        entry = {"sport": sport, "isn": isn, "sent": [round(t - first, 3) for t in times],
                 "arrived": [round(t - first, 3) for t in arrived],
                 "synack": [round(t - first, 3) for t in synacks[:3]], "at": first}
        if not arrived:
            fates["never_arrived"].append(entry)
        elif not synacks:
            fates["refused"].append(entry)
        elif arrived[0] < again:
            fates["answered_late"].append(entry)
        elif len(arrived) >= len(times):
            fates["first_copy_late"].append(entry)
        else:
            fates["first_copy_lost"].append(entry)
    refused = [isn for isn in got
               if not any(flags & SYN for _, flags in answers.get(isn, []))]
    return {"syns_sent": sum(len(v) for v in sent.values()), "connections": len(sent),
            "sent_again": sum(1 for v in sent.values() if len(v) > 1),
            "server_got": sum(len(v) for v in got.values()), "server_refused": len(refused),
            **fates}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vnet64_lab.connload", description=helptext.paragraphs(__doc__, 0),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server", help="answer and close first (TIME_WAIT on this side)")
    s.add_argument("port", type=int)
    c = sub.add_parser("client", help="paced new connections, one JSON line of results")
    c.add_argument("addr")
    c.add_argument("port", type=int)
    c.add_argument("--rate", type=float, default=1000.0, help="new connections per second")
    c.add_argument("--seconds", type=float, default=120.0, help="how long to open connections")
    a = p.parse_args(argv)
    if a.cmd == "server":
        out = serve(a.port)
    else:
        if a.rate <= 0 or a.seconds <= 0:
            p.error("--rate and --seconds must be positive")
        out = run_client(a.addr, a.port, a.rate, a.seconds)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
