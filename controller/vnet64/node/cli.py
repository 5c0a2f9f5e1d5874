"""vnet64-node: bring this host (or the SDN appliance) up from the NB and keep it so.

    vnet64-node --nb REMOTE [--name NODE] [--datapath system|netdev] [--uplink IFACE]
    vnet64-node cleanup [--name NODE] [--nb REMOTE]
    vnet64-node sessions --nb REMOTE [--vm NAME] [--service NAME] [--rate SECONDS] [--json | --csv]
    vnet64-node stats [--explain] [--json]

Without a subcommand the agent runs until SIGTERM/SIGINT: it reads its node's row from
the NB (REMOTE: unix:PATH, tcp:IP:PORT or a comma-separated list of Raft members; env
VNET64_NB), brings the node's Open vSwitch up (br-int, the Geneve port, br-phy on the
userspace datapath, conntrack timeout policies, on hosts the translator namespace with
TAYGA) and keeps it converged, binding ports whose external_ids:iface-id names a VM or
service endpoint of the NB. It waits for an NB that does not answer (retrying with
backoff). Bad input - a node name not in the NB, a datapath id another bridge here
uses, an underlay IP not on this host - is an error (exit status 2) before anything is
changed. Stopping the agent leaves the node as it is: traffic keeps flowing, and a new
agent adopts it without changing anything.

cleanup removes what the agent of NODE made on this host (its bridges, conntrack
policies, translator namespace and TAYGA, the NB bindings of its ports, the sysctls and
the underlay address it moved, from its state file in --run-dir) and nothing else.

sessions prints this host's NAT sessions, one per connection a service opened to a VM
here: service [IPv6]:port, the Platform_IP:port the VM sees, the VM's IPv4:port,
conntrack's state and the seconds left, from the local ovs-vswitchd's conntrack
(ovs-appctl dpctl/dump-conntrack -s) with names from the NB; then, per VM address,
protocol and port, how many of the Platform_IP ports a new connection may get are in use
(when none is left, new connections are refused). --json / --csv for scripts.

stats prints why this node did not forward packets: every flow vnet64's controller installs
that does not forward (each stage's miss, the spoofing and forgery checks, the gateways'
answers, refused pairs) names its reason in its cookie, and Open vSwitch counts its
packets; the packet-in meters' drop bands count what floods of punts lost. Read from the
local ovs-vswitchd (ovs-ofctl dump-flows with a cookie filter, meter-stats); no NB
needed. --explain says what each reason means; the platform-wide view is Prometheus's sum
of the agents' vnet64_dropped_packets_total.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from .. import helptext, journal
from ..nb.api import NbError, NbTlsError, tls_files, use_tls
from ..nb.api import connect as nb_connect
from ..prom import METRICS_TLS_ENV, listen_address
from ..ports import INTEGRATION_BRIDGE
from . import drops, sessions, sh
from .agent import DEFAULT_RUN_DIR, AgentError, Agent, Options, cleanup
from .datapath import choose
from .sessions import PORT_RANGE
from .translator import (DEFAULT_ENGINE, DEFAULT_IPV4, DEFAULT_NETNS, ENGINE_ENV, ENGINES,
                         default_engine)

PROG = "vnet64-node"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _nb_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--nb and its TLS files; the TLS group, for more."""
    p.add_argument("--nb", default=os.environ.get("VNET64_NB"), metavar="REMOTE",
                   help="the NB: unix:PATH, tcp:IP:PORT, ssl:IP:PORT (with --nb-private-key, "
                        "--nb-certificate, --nb-ca-cert) or a comma-separated list of Raft "
                        "members (default $VNET64_NB)")
    tls = p.add_argument_group(
        "TLS", "PEM files, e.g. made with ovs-pki; each option's variable is its default")
    tls.add_argument("--nb-private-key", default=os.environ.get("VNET64_NB_PRIVATE_KEY"),
                     metavar="PEM", help="for an ssl:IP:PORT NB: this agent's private key "
                                         "($VNET64_NB_PRIVATE_KEY)")
    tls.add_argument("--nb-certificate", default=os.environ.get("VNET64_NB_CERTIFICATE"),
                     metavar="PEM", help="its certificate ($VNET64_NB_CERTIFICATE)")
    tls.add_argument("--nb-ca-cert", default=os.environ.get("VNET64_NB_CA_CERT"), metavar="PEM",
                     help="the CA certificate the NB's certificate must be signed by "
                          "($VNET64_NB_CA_CERT)")
    return tls


def _common(p: argparse.ArgumentParser) -> None:
    tls = _nb_options(p)
    tls.add_argument("--ovs-private-key", default=os.environ.get("VNET64_OVS_PRIVATE_KEY"),
                     metavar="PEM",
                     help="Open vSwitch's SSL settings, as 'ovs-vsctl set-ssl' makes them, for "
                          "br-int's ssl:IP:PORT controller targets: the switch's private key "
                          "($VNET64_OVS_PRIVATE_KEY). Default: left as they are")
    tls.add_argument("--ovs-certificate", default=os.environ.get("VNET64_OVS_CERTIFICATE"),
                     metavar="PEM", help="the switch's certificate ($VNET64_OVS_CERTIFICATE)")
    tls.add_argument("--ovs-ca-cert", default=os.environ.get("VNET64_OVS_CA_CERT"), metavar="PEM",
                     help="the CA certificate controllers' certificates must be signed by "
                          "(ovs-pki: controllerca/cacert.pem; $VNET64_OVS_CA_CERT)")
    p.add_argument("--name", default=socket.gethostname(),
                   help="this node's name in the NB (default: the host name, %(default)s)")
    p.add_argument("--datapath", choices=("system", "netdev"),
                   help="Open vSwitch datapath type (default: system when the openvswitch "
                        "kernel module is loaded, else netdev)")
    p.add_argument("--ovs", metavar="REMOTE",
                   help="the local Open vSwitch database (default unix:$OVS_RUNDIR/db.sock, "
                        "OVS_RUNDIR defaulting to /var/run/openvswitch)")
    p.add_argument("--translator-netns", default=DEFAULT_NETNS, metavar="NAME",
                   help="network namespace of a host's translator (default %(default)s)")
    p.add_argument("--run-dir", type=Path, default=Path(DEFAULT_RUN_DIR),
                   help="state, status and TAYGA's files (default %(default)s)")
    p.add_argument("--log-file", help="append the log to this file (default: standard error)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="default %(default)s")


def sessions_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} sessions", description=helptext.paragraphs(__doc__, 4))
    _nb_options(p)
    p.add_argument("--ovs", metavar="REMOTE",
                   help="the local Open vSwitch database; the ovs-vswitchd whose conntrack is "
                        "read is the one whose control socket sits beside it (default "
                        "unix:$OVS_RUNDIR/db.sock, OVS_RUNDIR defaulting to /var/run/openvswitch)")
    p.add_argument("--vm", metavar="NAME", help="only the sessions to this VM")
    p.add_argument("--service", metavar="NAME",
                   help="only the sessions of this service's endpoints (or of this one endpoint)")
    p.add_argument("--snat-ports", metavar="LO-HI", default="%d-%d" % PORT_RANGE,
                   help="the Platform_IP port range the controller gives a pair "
                        "(its --vnet64-snat-ports; default %(default)s)")
    p.add_argument("--rate", metavar="SECONDS", type=float,
                   help="read conntrack again SECONDS later and say, per VM address, protocol "
                        "and port, how many connections were new meanwhile and their rate "
                        "(the sessions shown are the second reading's; the agent's metrics "
                        "keep the rate over time: vnet64_nat_new_connections_total)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="sessions and port use as JSON")
    out.add_argument("--csv", action="store_true", help="the sessions as CSV (a header line first)")
    return p


def stats_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} stats", description=helptext.paragraphs(__doc__, 5))
    p.add_argument("--ovs", metavar="REMOTE",
                   help="the local Open vSwitch database; the ovs-vswitchd whose flows are read "
                        "is the one whose sockets sit beside it (default unix:$OVS_RUNDIR/db.sock, "
                        "OVS_RUNDIR defaulting to /var/run/openvswitch)")
    p.add_argument("--bridge", default=INTEGRATION_BRIDGE, help="default %(default)s")
    p.add_argument("--explain", action="store_true", help="say what each reason means")
    p.add_argument("--json", action="store_true",
                   help="per reason: packets, bytes, kind, stages and what it means")
    return p


def _local_agent(ovs: str | None) -> Agent:
    """An agent object for reading this host's Open vSwitch (never run)."""
    return Agent(Options(name=socket.gethostname(), nb="", datapath=choose(None), ovs=ovs,
                         uplink=None, translator_netns=DEFAULT_NETNS, translator_ipv4=DEFAULT_IPV4,
                         run_dir=Path(DEFAULT_RUN_DIR)))


def run_stats(argv: list[str]) -> int:
    args = stats_parser().parse_args(argv)
    setup_logging("WARNING", None)
    env = dict(os.environ, OVS_RUNDIR=str(_local_agent(args.ovs).ovs_rundir()))
    try:
        counts = drops.read(lambda *a: sh.run([sh.tool("ovs-ofctl"), *a], env=env).stdout, args.bridge)
    except sh.CommandError as exc:
        print(f"{PROG}: error: reading {args.bridge}'s flows: {exc}", file=sys.stderr)
        return 1
    rows = drops.totals(counts)
    if args.json:
        print(json.dumps([{**r, "meaning": drops.explanation(r["reason"])} for r in rows], indent=2))
    else:
        sys.stdout.write(drops.render(rows, explain=args.explain))
    return 0


def run_sessions(argv: list[str]) -> int:
    parser = sessions_parser()
    args = parser.parse_args(argv)
    if not args.nb:
        parser.error("--nb REMOTE is required (or set VNET64_NB)")
    try:
        lo, hi = (int(x) for x in args.snat_ports.split("-"))
        if not 1 <= lo <= hi <= 65535:
            raise ValueError
    except ValueError:
        parser.error(f"--snat-ports {args.snat_ports!r}: expected LO-HI, 1 <= LO <= HI <= 65535")
    if args.rate is not None and not 0 < args.rate <= 300:
        parser.error(f"--rate {args.rate:g}: seconds between the two readings, 0 < SECONDS <= 300")
    setup_logging("WARNING", None)
    try:
        nb_tls = tls_files(args.nb_private_key, args.nb_certificate, args.nb_ca_cert)
        use_tls(args.nb, nb_tls)
        api = nb_connect(args.nb, timeout=10, tls=nb_tls)
    except (NbTlsError, NbError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    try:
        vms = api.list("vm")
        zones = {v["name"]: v["ct_zone"] for v in api.list("vnet")}
        services = api.list("service")
    finally:
        api.close()
    endpoints = {e["name"] for s in services for e in s["endpoints"]}
    if args.vm and args.vm not in {v["name"] for v in vms}:
        print(f"{PROG}: error: no VM called {args.vm!r} in the NB", file=sys.stderr)
        return 2
    if args.service and args.service not in {s["name"] for s in services} | endpoints:
        print(f"{PROG}: error: no service or endpoint called {args.service!r} in the NB",
              file=sys.stderr)
        return 2
    vm_by = {(zones[v["vnet"]], v["ipv4"]): v["name"] for v in vms}
    endpoint_of = {str(IPv6Address(e["ipv6"])): (e["name"], s["name"]) for s in services for e in s["endpoints"]}
    def read() -> list:
        text = _local_agent(args.ovs).appctl("dpctl/dump-conntrack", "-s")
        return sessions.join(sessions.parse(text), lambda zone, ip: vm_by.get((zone, ip)),
                             lambda ip: endpoint_of.get(str(IPv6Address(ip)), ("", ""))[0] or None)
    try:
        found = read()
        rates = []
        if args.rate is not None:
            print(f"{len(found)} session(s) now; reading conntrack again in {args.rate:g} s",
                  file=sys.stderr, flush=True)
            time.sleep(args.rate)
            before, found = found, read()
            rates = [{"vm": vm, "proto": proto, "vm_ip": ip, "vm_port": port, "new": n,
                      "seconds": args.rate, "per_second": round(n / args.rate, 2)}
                     for (vm, proto, ip, port), n in sorted(sessions.new_connections(before, found).items(),
                                                            key=lambda kv: tuple(str(x) for x in kv[0]))]
    except sh.CommandError as exc:
        print(f"{PROG}: error: reading conntrack: {exc}", file=sys.stderr)
        return 1
    if args.vm:
        rates = [r for r in rates if r["vm"] == args.vm]
    if args.vm:
        found = [s for s in found if s.vm == args.vm]
    if args.service:
        found = [s for s in found if s.service_ip
                 and args.service in endpoint_of.get(str(IPv6Address(s.service_ip)), ("", ""))]
    use = sessions.port_use(found, (lo, hi))
    if args.json:
        doc = {"sessions": [dataclasses.asdict(s) for s in found], "port_use": use}
        if args.rate is not None:
            doc["new_connections"] = rates
        print(json.dumps(doc, indent=2))
    elif args.csv:
        sys.stdout.write(sessions.render(found, "csv"))
    else:
        sys.stdout.write(sessions.render(found))
        print(f"{len(found)} session(s)")
        for u in use:
            print(f"{u['vm']} {u['proto']} {u['vm_ip']}:{u['vm_port']}: {u['in_use']} of {u['of']} "
                  f"Platform_IP ports in use ({u['percent']} %)")
        for r in rates:
            print(f"{r['vm']} {r['proto']} {r['vm_ip']}:{r['vm_port']}: {r['new']} new connection(s) "
                  f"in {r['seconds']:g} s ({r['per_second']}/s)")
        if args.rate is not None and not rates:
            print(f"no new connection in {args.rate:g} s")
    return 0


def metrics_address(text: str) -> tuple[str, int]:
    try:
        return listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(cleanup_mode: bool) -> argparse.ArgumentParser:
    if cleanup_mode:
        p = argparse.ArgumentParser(prog=f"{PROG} cleanup",
                                    description=helptext.paragraphs(__doc__, 3, 4))
    else:
        p = argparse.ArgumentParser(
            prog=PROG, description=helptext.paragraphs(__doc__, 0, 1),
            epilog=helptext.paragraphs(__doc__, 1),
            formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    if not cleanup_mode:
        p.add_argument("--uplink", metavar="IFACE",
                       help="netdev datapath: the NIC of the underlay, holding the node's "
                            "underlay IP; it joins br-phy and the address moves to br-phy")
        p.add_argument("--translator-ipv4", type=IPv4Address, default=DEFAULT_IPV4,
                       help="TAYGA's own IPv4, the source of its ICMPv4 errors "
                            "(default %(default)s)")
        p.add_argument("--translator-engine", choices=ENGINES, default=None,
                       help="a host's translator: tayga translates every packet; bpf "
                            "translates unfragmented TCP, UDP and echo in the kernel "
                            "(tc-BPF on the translator's veth, built with clang: Debian's "
                            "clang and libbpf-dev) and hands the rest (ICMP errors, "
                            "fragments, options) to TAYGA (default $%s, else %s)"
                            % (ENGINE_ENV, DEFAULT_ENGINE))
        p.add_argument("--once", action="store_true",
                       help="bring the node up, bind its ports and exit")
        p.add_argument("--metrics", metavar="IP:PORT", type=metrics_address,
                       help="serve Prometheus metrics on http://IP:PORT/metrics: conntrack "
                            "entries per zone and, on a host, Platform_IP ports in use per VM "
                            "address and port ([::]:PORT for every address; default: none)")
        mtls = p.add_argument_group(
            "metrics over TLS", "with all three, --metrics serves https:// and wants a client "
                                "certificate signed by the CA (Prometheus's tls_config)")
        for opt, key, what in (("private-key", "private_key", "this agent's private key"),
                               ("certificate", "certificate", "its certificate"),
                               ("ca-cert", "ca_cert", "the CA scrapers' certificates must be signed by")):
            mtls.add_argument(f"--metrics-{opt}", default=os.environ.get(METRICS_TLS_ENV[key]),
                              metavar="PEM", help=f"{what} (${METRICS_TLS_ENV[key]})")
    return p


def setup_logging(level: str, log_file: str | None) -> None:
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    # under systemd, no time stamp of our own and each line's priority (vnet64.journal)
    handler.setFormatter(journal.formatter(LOG_FORMAT, None if log_file else sys.stderr))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("ovsdbapp", "ovs"):      # their INFO is connection chatter
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sessions"]:
        return run_sessions(argv[1:])
    if argv[:1] == ["stats"]:
        return run_stats(argv[1:])
    cleanup_mode = bool(argv) and argv[0] == "cleanup"
    parser = build_parser(cleanup_mode)
    args = parser.parse_args(argv[1:] if cleanup_mode else argv)
    if not args.nb and not cleanup_mode:
        parser.error("--nb REMOTE is required (or set VNET64_NB)")
    setup_logging(args.log_level, args.log_file)
    try:
        nb_tls = tls_files(args.nb_private_key, args.nb_certificate, args.nb_ca_cert)
        if args.nb:
            use_tls(args.nb, nb_tls)     # an ssl: NB without the files: refused now
        ovs_tls = tls_files(args.ovs_private_key, args.ovs_certificate, args.ovs_ca_cert,
                            option="--ovs-{}")
        metrics_tls = None if cleanup_mode else tls_files(
            args.metrics_private_key, args.metrics_certificate, args.metrics_ca_cert,
            option="--metrics-{}")
        if metrics_tls is not None and args.metrics is None:
            parser.error("--metrics-private-key/-certificate/-ca-cert need --metrics IP:PORT")
    except NbTlsError as exc:
        parser.error(str(exc))
    ovs_ssl = None
    if ovs_tls is not None:   # ovs-vswitchd reads them: absolute paths
        ovs_ssl = tuple(str(Path(f).absolute()) for f in
                        (ovs_tls.private_key, ovs_tls.certificate, ovs_tls.ca_cert))
    try:
        opts = Options(name=args.name, nb=args.nb or "", datapath=choose(args.datapath),
                       ovs=args.ovs, uplink=getattr(args, "uplink", None),
                       translator_netns=args.translator_netns,
                       translator_ipv4=getattr(args, "translator_ipv4", DEFAULT_IPV4),
                       translator_engine=(getattr(args, "translator_engine", None)
                                          or default_engine()),
                       run_dir=args.run_dir, nb_tls=nb_tls, ovs_ssl=ovs_ssl,
                       metrics=getattr(args, "metrics", None), metrics_tls=metrics_tls)
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("vnet64.node").info("%s received", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if cleanup_mode:
        try:
            done = cleanup(opts, stop, use_nb=bool(args.nb))
        except (sh.CommandError, NbError) as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
        for line in done:
            print(f"removed {line}")
        if not done:
            print(f"nothing of node {opts.name} left on this host")
        return 0
    agent = Agent(opts)
    try:
        return agent.run(stop, once=args.once)
    except AgentError as exc:
        if stop.is_set():   # stopped while waiting for the NB or Open vSwitch: not a failure
            logging.getLogger("vnet64.node").info("%s", exc)
            return 0
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (sh.CommandError, NbError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        agent.close()
        logging.getLogger("vnet64.node").info("stopped")


if __name__ == "__main__":
    sys.exit(main())
