"""``vnet64``: the operator CLI for the NB database and the address codec.

``--nb`` (or ``$VNET64_NB``) names the NB: ``unix:PATH``, ``tcp:IP:PORT``,
``ssl:IP:PORT`` (with ``--nb-private-key``, ``--nb-certificate`` and ``--nb-ca-cert``, or
``$VNET64_NB_PRIVATE_KEY``, ``$VNET64_NB_CERTIFICATE`` and ``$VNET64_NB_CA_CERT``), or a
comma-separated list of Raft cluster members. Without either, the commands use the NB
of a lab that ``vnet64-lab up`` runs under its default run directory, if one is up and
no ``--run-dir``/``$VNET64_RUN_DIR`` was given; else the embedded NB: a local
ovsdb-server with the vnet64 schema under ``--run-dir`` (default ``$VNET64_RUN_DIR`` or
/var/lib/vnet64), started on first use and left running for the next command.

Errors go to stderr with exit status 1 (2 for usage errors); nothing is
half-applied: every write is one OVSDB transaction.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__, address, helptext, topology
from .address import AddressError
from .topology import TopologyError

EXAMPLES = """\
examples:
  vnet64 load topologies/two-tenants.yaml
  vnet64 subscribe a-vm1 analytics
  vnet64 subscription list
  vnet64 show a-vm1 --json
  vnet64 address decode fd41:0:0:3930:1f:6600:a00:4
  vnet64 address encode --region 0x3930 --vnet 0x1f --subnet 0x6600 --ipv4 10.0.0.4
  vnet64 --nb tcp:10.0.0.1:6641,tcp:10.0.0.2:6641,tcp:10.0.0.3:6641 vm list
  vnet64 --nb ssl:10.0.0.1:6641 --nb-private-key op-privkey.pem --nb-certificate op-cert.pem \
         --nb-ca-cert controllerca/cacert.pem vm list
"""


class CliError(Exception):
    pass


# ---------------------------------------------------------------------------
# Output


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, list):
            return ",".join(cell(x) if not isinstance(x, dict) else x.get("name", str(x)) for x in v) or "-"
        return str(v)

    grid = [list(columns)] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in grid]
    lines[0] = lines[0].upper()
    return "\n".join(lines)


def _emit(args: argparse.Namespace, data: Any, columns: Sequence[str] | None = None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=False))
    elif isinstance(data, list):
        print(_table(data, columns or (list(data[0]) if data else ["name"])))
    elif isinstance(data, dict):
        width = max(len(k) for k in data) if data else 0
        for key, value in data.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                print(f"{key}:")
                for item in value:
                    print("  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
            else:
                shown = ", ".join(map(str, value)) if isinstance(value, list) else value
                print(f"{key.ljust(width)}  {shown if shown not in (None, '') else '-'}")
    else:
        print(data)


# ---------------------------------------------------------------------------
# NB access


def _nb(args: argparse.Namespace):
    from .nb import api as nbapi
    from .nb.server import NbServer

    remote = nb_remote(args)
    if not remote:
        server = NbServer(Path(args.run_dir))
        server.start()
        remote = server.remote
    return nbapi.connect(remote, timeout=args.timeout, tls=nb_tls(args))


def nb_tls(args: argparse.Namespace):
    """The NB client's TLS files (``--nb-private-key`` ..., else ``$VNET64_NB_PRIVATE_KEY``
    ...), checked; None when none is given."""
    from .nb import api as nbapi
    env = nbapi.tls_from_env()
    return nbapi.tls_files(args.nb_private_key or env["private_key"],
                           args.nb_certificate or env["certificate"],
                           args.nb_ca_cert or env["ca_cert"])


def nb_remote(args: argparse.Namespace) -> str | None:
    """The NB the commands use, None meaning the embedded one: --nb, else $VNET64_NB, else
    - when no embedded run dir was asked for (--run-dir, $VNET64_RUN_DIR) - the NB of a lab
    that ``vnet64-lab up`` runs under its default run directory."""
    from .nb.server import running_lab_nb
    remote = args.nb or os.environ.get("VNET64_NB")
    if not remote and not args.run_dir_given:
        remote = running_lab_nb()
        if remote:
            logging.getLogger("vnet64.cli").debug("using the running lab's NB at %s", remote)
    return remote


def _with_nb(fn: Callable[[Any, argparse.Namespace], Any]) -> Callable[[argparse.Namespace], Any]:
    def run(args: argparse.Namespace) -> Any:
        api = _nb(args)
        try:
            return fn(api, args)
        finally:
            api.close()
    return run


# ---------------------------------------------------------------------------
# Commands


def cmd_address_encode(args: argparse.Namespace) -> None:
    addr = address.PlatformAddress(args.region, args.vnet, args.subnet, args.ipv4, args.snat_vip)
    _emit(args, addr.as_dict() if args.json else str(addr.ipv6))


def cmd_address_decode(args: argparse.Namespace) -> None:
    _emit(args, address.decode(args.address).as_dict())


def _nb_server(args: argparse.Namespace):
    """The local NB server the ``nb`` commands manage, from their options."""
    from .nb.server import NbServer
    return NbServer(Path(args.run_dir), extra_remotes=getattr(args, "remote", None) or [],
                    cluster_local=getattr(args, "local_addr", None),
                    cluster_remotes=getattr(args, "remote_addr", None) or [],
                    data_dir=args.data_dir, pidfile=args.pidfile,
                    log_path=getattr(args, "log_file", None),
                    private_key=getattr(args, "private_key", None),
                    certificate=getattr(args, "certificate", None),
                    ca_cert=getattr(args, "ca_cert", None))


def cmd_nb_start(args: argparse.Namespace) -> None:
    server = _nb_server(args)
    running = server.pid()
    pid = running or server.start(timeout=args.timeout)
    what = "already running" if running else "running"
    print(f"NB {what} (pid {pid}) at {server.remote}, data in {server.db_path}"
          + (": nothing done" if running else ""))


def cmd_nb_run(args: argparse.Namespace) -> None:
    server = _nb_server(args)
    server.exec_foreground(log_file=bool(args.log_file))   # does not return


def cmd_nb_stop(args: argparse.Namespace) -> None:
    server = _nb_server(args)
    print("NB stopped" if server.stop() else f"no NB running in {server.run_dir}")


def cmd_nb_status(args: argparse.Namespace) -> int:
    server = _nb_server(args)
    pid = server.pid()
    data = {"running": bool(pid), "pid": pid, "remote": server.remote, "db": str(server.db_path),
            "cluster_address": server.db_local_address(),
            "rss_kib": server.memory_kib(), "commands_use": nb_remote(args) or server.remote}
    _emit(args, data)
    return 0 if pid else 3


def cmd_nb_create_cluster(args: argparse.Namespace) -> None:
    from .nb import cluster
    print(cluster.create_cluster(_nb_server(args), timeout=args.timeout).message)


def cmd_nb_join_cluster(args: argparse.Namespace) -> None:
    from .nb import cluster
    print(cluster.join_cluster(_nb_server(args), timeout=args.timeout).message)


def cmd_nb_cluster_status(args: argparse.Namespace) -> None:
    from .nb import cluster
    status = cluster.cluster_status(_nb_server(args))
    if args.json:
        _emit(args, status)
    else:
        print(cluster.status_text(status))


def cmd_nb_cluster_leave(args: argparse.Namespace) -> None:
    from .nb import cluster
    print(cluster.leave_cluster(_nb_server(args), timeout=args.timeout))


def cmd_load(api: Any, args: argparse.Namespace) -> None:
    topo = topology.load(args.topology)
    counts = api.load_topology(topo)
    print(f"loaded {topo.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


def _parse_subnet_arg(text: str) -> topology.Subnet:
    parts = text.split(":")
    if len(parts) != 3:
        raise CliError(f"--subnet must be NAME:ID:CIDR (e.g. default:0x6600:10.0.0.0/24), got {text!r}")
    name, sid, cidr = parts
    return topology.Subnet(topology.parse_name(name, "subnet name"), address.parse_id(sid, "subnet id"),
                           topology.parse_cidr(cidr, "subnet cidr"))


def cmd_vnet_add(api: Any, args: argparse.Namespace) -> None:
    platform = api.platform_info() or {}
    region = args.region or platform.get("region")
    if not region:
        raise CliError("no --region given and the NB has no platform region (load a topology first)")
    regions = [topology.Region(r["name"], int(r["region_id"], 16)) for r in api.list("region")]
    item = {"name": args.name, "id": args.id, "region": region, "cidrs": args.cidr,
            "subnets": [{"name": s.name, "id": s.subnet_id, "cidr": str(s.cidr)}
                        for s in map(_parse_subnet_arg, args.subnet)]}
    if args.snat_vip:
        item["snat_vip"] = args.snat_vip
    platform_ip = IPv4Address(platform.get("platform_ip") or topology.DEFAULT_PLATFORM_IP)
    vnet = topology.vnet_from_fields(item, regions, platform_ip)
    api.add_vnet(vnet, may_exist=args.may_exist)
    _emit(args, api.vnet_info(vnet.name))


def cmd_node_add(api: Any, args: argparse.Namespace) -> None:
    item = {"name": args.name, "role": args.role, "underlay_ip": args.underlay_ip}
    if args.datapath_id:
        item["datapath_id"] = args.datapath_id
    node = topology.node_from_fields(item)
    api.add_node(node, may_exist=args.may_exist)
    _emit(args, api.show(node.name))


def cmd_node_set(api: Any, args: argparse.Namespace) -> None:
    api.set_node_controllers(args.name, [] if args.no_controllers else args.controller)
    _emit(args, api.show(args.name))


def cmd_region_add(api: Any, args: argparse.Namespace) -> None:
    region = topology.Region(topology.parse_name(args.name, "region name"),
                             address.parse_id(args.id, "region id"))
    api.add_region(region, may_exist=args.may_exist)
    _emit(args, api.show(region.name))


def cmd_vm_add(api: Any, args: argparse.Namespace) -> None:
    name = topology.parse_name(args.name, "VM name")
    ipv4 = address.parse_ipv4(args.ipv4, "VM IPv4")
    mac = topology.parse_mac(args.mac) if args.mac else None
    _emit(args, api.add_vm(name, args.vnet, ipv4, args.host, mac, args.subnet, args.may_exist))


def cmd_vm_move(api: Any, args: argparse.Namespace) -> None:
    _emit(args, api.move_vm(args.name, args.host))


def _parse_endpoint_arg(text: str) -> topology.Endpoint:
    name, sep, rest = text.partition("=")
    ipv6, sep2, host = rest.rpartition("@")
    if not sep or not sep2:
        raise CliError(f"--endpoint must be NAME=IPV6@HOST (e.g. svc1=fd00:5e:1::10@host2), got {text!r}")
    name = topology.parse_name(name, "endpoint name")
    return topology.Endpoint(name, topology.parse_service_ipv6(ipv6), topology.parse_name(host, "host"),
                             topology.default_mac(name))


def cmd_service_add(api: Any, args: argparse.Namespace) -> None:
    if not args.endpoint:
        raise CliError("a service needs at least one --endpoint NAME=IPV6@HOST")
    service = topology.Service(topology.parse_name(args.name, "service name"),
                               tuple(_parse_endpoint_arg(e) for e in args.endpoint))
    api.add_service(service, may_exist=args.may_exist)
    _emit(args, api.service_info(service.name))


def cmd_subscribe(api: Any, args: argparse.Namespace) -> None:
    info = api.subscribe(args.vm, args.service, may_exist=args.may_exist)
    _emit(args, info if args.json else info["ipv6"])


def cmd_unsubscribe(api: Any, args: argparse.Namespace) -> None:
    removed = api.unsubscribe(args.vm, args.service, if_exists=args.if_exists)
    print(f"unsubscribed {args.vm} from {args.service}" if removed
          else f"{args.vm} was not subscribed to {args.service}")


LIST_COLUMNS = {
    "region": ("name", "region_id"),
    "node": ("name", "role", "underlay_ip", "datapath_id", "controllers"),
    "vnet": ("name", "region", "vnet_id", "cidrs", "subnets", "snat_vip"),
    "vm": ("name", "vnet", "subnet", "ipv4", "host", "mac", "platform_ipv6", "subscriptions"),
    "service": ("name", "endpoints", "subscriptions"),
    "subscription": ("vm", "service", "vnet", "ipv4", "ipv6", "host", "state"),
    "host-mapping": ("ipv6", "vnet", "ipv4", "host"),
}


def _lister(kind: str) -> Callable[[Any, argparse.Namespace], None]:
    def run(api: Any, args: argparse.Namespace) -> None:
        rows = api.list(kind)
        if kind == "service" and not args.json:
            rows = [{**r, "endpoints": [f"{e['name']}={e['ipv6']}@{e['host']}" for e in r["endpoints"]]}
                    for r in rows]
        _emit(args, rows, LIST_COLUMNS[kind])
    return run


def binding_text(binding: dict | None) -> str:
    """A VM's or endpoint's binding on one line: ``PORT on NODE (ofport N, mac M)``."""
    if binding is None:
        return "unbound"
    details = [f"ofport {binding['ofport']}" if binding["ofport"] is not None else "",
               f"mac {binding['mac']}" if binding["mac"] else ""]
    details = [d for d in details if d]
    return f"{binding['port']} on {binding['node']}" + (f" ({', '.join(details)})" if details else "")


def cmd_show(api: Any, args: argparse.Namespace) -> None:
    data = api.show(args.name)
    if not args.json and "binding" in data:
        data["binding"] = binding_text(data["binding"])
    _emit(args, data)


BINDING_COLUMNS = ("logical_port", "kind", "node", "port", "ofport", "mac")


def cmd_binding_list(api: Any, args: argparse.Namespace) -> None:
    _emit(args, api.list_bindings(args.node), BINDING_COLUMNS)


def cmd_connection_set(api: Any, args: argparse.Namespace) -> None:
    changed = api.set_connections(args.target, args.inactivity_probe)
    print(("set: " if changed else "unchanged: ") + ", ".join(args.target))


def cmd_connection_del(api: Any, args: argparse.Namespace) -> None:
    print("removed" if api.del_connections() else "there were none")


def cmd_connection_list(api: Any, args: argparse.Namespace) -> None:
    rows = api.connections()
    if getattr(args, "json", False):
        _emit(args, rows)
        return
    for r in rows:
        r["status"] = " ".join(f"{k}={v}" for k, v in sorted(r["status"].items())) or None
    _emit(args, rows, ["target", "inactivity_probe", "is_connected", "status"])


def cmd_platform_show(api: Any, args: argparse.Namespace) -> None:
    info = api.platform_info()
    if info is None:
        raise CliError("the NB has no platform settings yet (load a topology first)")
    _emit(args, info)


def cmd_platform_direct_path(api: Any, args: argparse.Namespace) -> None:
    changed = api.set_direct_path({"on": True, "off": False, "default": None}[args.state])
    print(f"direct path {api.platform_info()['direct_path']}" + ("" if changed else " (unchanged)"))


def cmd_platform_rotate_token(api: Any, args: argparse.Namespace) -> None:
    print(f"tunnel token {api.rotate_tunnel_token():#010x}")


def cmd_trace(api: Any, args: argparse.Namespace) -> int:
    from .controller import trace as T
    from .controller.model import from_nb
    model = from_nb(api)
    try:
        nodes = T.read_dumps(model, args.dumps)
        tracer = T.Tracer(model, nodes, ct=args.ct)
        hops = T.trace(tracer, model, args.src, args.dst, args.proto, args.port, args.sport,
                       args.src_addr, args.reply)
    except ValueError as exc:
        raise CliError(f"trace: {exc}") from None
    sys.stdout.write(T.report(hops, nodes, as_json=args.json))
    return 0


# ---------------------------------------------------------------------------
# Parser


def _wrap(text: str) -> str:
    """A description wrapped as argparse would, for parsers whose epilog keeps its lines."""
    return textwrap.fill(text, width=78)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vnet64", description=helptext.paragraphs(__doc__, 0, 1),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"vnet64 {__version__}")
    p.add_argument("--nb", metavar="REMOTE",
                   help="NB to use: unix:PATH, tcp:IP:PORT, ssl:IP:PORT or a comma-separated "
                        "list of Raft members (default: $VNET64_NB, else the NB of a lab that vnet64-lab "
                        "runs under /run/vnet64-lab, else the embedded NB in --run-dir)")
    p.add_argument("--nb-private-key", metavar="PEM",
                   help="TLS, for an ssl:IP:PORT NB: this client's private key (default "
                        "$VNET64_NB_PRIVATE_KEY)")
    p.add_argument("--nb-certificate", metavar="PEM",
                   help="TLS: this client's certificate (default $VNET64_NB_CERTIFICATE)")
    p.add_argument("--nb-ca-cert", metavar="PEM",
                   help="TLS: the CA certificate the NB's certificate must be signed by "
                        "(default $VNET64_NB_CA_CERT); all three are needed for ssl: remotes")
    p.add_argument("--run-dir", default=None,
                   help="directory of the embedded NB (database, socket, pidfile, log); "
                        "default $VNET64_RUN_DIR or /var/lib/vnet64")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the NB (default 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def reader(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    def may_exist(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--may-exist", action="store_true",
                        help="succeed if an identical object already exists")

    # address
    a = sub.add_parser("address", help="encode or decode a platform IPv6 address (no NB needed)")
    asub = a.add_subparsers(dest="address_cmd", metavar="ACTION", required=True)
    enc = reader(asub.add_parser("encode", help="build the platform IPv6 address from its fields"))
    enc.add_argument("--region", required=True, help="region id, 0..0xffff")
    enc.add_argument("--vnet", required=True, help="VNet id, 0..0xffff")
    enc.add_argument("--subnet", required=True, help="subnet id, 0..0xffff")
    enc.add_argument("--ipv4", required=True, help="the VM's private IPv4")
    enc.add_argument("--snat-vip", default="0.0.0.0", help="SNAT VIP (default 0.0.0.0 = Platform_IP)")
    enc.set_defaults(func=cmd_address_encode)
    dec = reader(asub.add_parser("decode", help="split a platform IPv6 address into its fields"))
    dec.add_argument("address")
    dec.set_defaults(func=cmd_address_decode)

    # nb
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--run-dir", default=argparse.SUPPRESS,
                       help="the server's directory: unix socket nb.sock, unixctl socket nb.ctl, "
                            "pidfile, log (default: vnet64's --run-dir, $VNET64_RUN_DIR or "
                            "/var/lib/vnet64)")
    files.add_argument("--data-dir", metavar="DIR", help="directory of the database nb.db "
                       "(default: the run dir)")
    files.add_argument("--pidfile", metavar="FILE", help="default <run dir>/nb.pid")
    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument("--log-file", metavar="FILE",
                         help="the server's log (default <run dir>/nb.log; 'nb run': stderr only)")
    serving.add_argument("--remote", action="append", metavar="TARGET",
                         help="a client remote besides the unix socket and the NB's own "
                              "connections ('vnet64 connection set'): ptcp:PORT[:IP] or "
                              "pssl:PORT[:IP], e.g. ptcp:6641:10.0.0.1 (repeat for several; not "
                              "stored: give them again to 'nb start')")
    serving.add_argument("--private-key", metavar="PEM", help="TLS: this server's private key")
    serving.add_argument("--certificate", metavar="PEM", help="TLS: its certificate")
    serving.add_argument("--ca-cert", metavar="PEM",
                         help="TLS: the CA certificate peers must be signed by (the three are "
                              "needed for pssl: remotes and ssl: cluster addresses)")

    n = sub.add_parser(
        "nb", help="manage the local NB server: embedded, or a member of a Raft cluster",
        description="The local NB server (ovsdb-server with the vnet64 schema). Without a cluster "
                    "it is the embedded NB the other commands start on first use. A Raft cluster "
                    "(three members, or five) is made with create-cluster on the first host and "
                    "join-cluster on each other one; clients then use --nb with every member's "
                    "client remote, comma-separated, and follow the leader. The global --timeout "
                    "is how long these commands wait for the server.")
    nsub = n.add_subparsers(dest="nb_cmd", metavar="ACTION", required=True)
    nsub.add_parser("start", parents=[files, serving],
                    help="start the NB server, detached: the embedded NB, or a cluster member "
                         "made before (no-op if running)").set_defaults(func=cmd_nb_start)
    nsub.add_parser("stop", parents=[files],
                    help="stop the NB server (data stays on disk; a cluster member stays a member)"
                    ).set_defaults(func=cmd_nb_stop)
    reader(nsub.add_parser("status", parents=[files],
                           help="is the NB server running? (exit 3 if not)")).set_defaults(
        func=cmd_nb_status)
    nr = nsub.add_parser(
        "run", parents=[files, serving],
        help="run the NB server in the foreground (what the systemd unit starts)",
        description="Run ovsdb-server in the foreground, logging to stderr (the journal under "
                    "systemd; to --log-file too if given). A database that does not exist yet is "
                    "made first: a standalone one, or with --cluster-local a new cluster's first "
                    "member, or with --cluster-local and --cluster-remote a member joining those; "
                    "an existing database is used as it is (a member's must be at "
                    "--cluster-local, if given). Unlike join-cluster, it does not wait to be "
                    "taken in: the server keeps trying.")
    nr.add_argument("--cluster-local", dest="local_addr", metavar="ADDR",
                    help="this member's cluster address, tcp:IP:PORT or ssl:IP:PORT")
    nr.add_argument("--cluster-remote", dest="remote_addr", action="append", metavar="ADDR",
                    help="a member to join through (repeat for several)")
    nr.set_defaults(func=cmd_nb_run)
    ncc = nsub.add_parser(
        "create-cluster", parents=[files, serving],
        help="make this host the first member of a new Raft cluster and start it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrap("ovsdb-tool create-cluster with the vnet64 schema, then start the server "
                          "detached (no-op if this member exists and runs; started if it is down). "
                          "Refused, with nothing changed, when the data dir holds another database."),
        epilog="example:\n  vnet64 nb create-cluster tcp:10.0.0.1:6643 --remote ptcp:6641:10.0.0.1")
    ncc.add_argument("local_addr", metavar="LOCAL_ADDR",
                     help="this member's cluster address, tcp:IP:PORT or ssl:IP:PORT "
                          "(6643 is the usual port)")
    ncc.set_defaults(func=cmd_nb_create_cluster)
    njc = nsub.add_parser(
        "join-cluster", parents=[files, serving],
        help="make this host a member of an existing Raft cluster and start it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrap("ovsdb-tool join-cluster, then start the server detached and wait "
                          "(--timeout) "
                          "until the cluster has taken it in. When it is not taken in, the server is "
                          "stopped and its database removed: nothing is left half-made. No-op if this "
                          "member exists and runs; started if it is down."),
        epilog="example:\n  vnet64 nb join-cluster tcp:10.0.0.2:6643 tcp:10.0.0.1:6643 "
               "--remote ptcp:6641:10.0.0.2")
    njc.add_argument("local_addr", metavar="LOCAL_ADDR", help="this member's cluster address")
    njc.add_argument("remote_addr", metavar="REMOTE_ADDR", nargs="+",
                     help="the cluster address of one or more members")
    njc.set_defaults(func=cmd_nb_join_cluster)
    ncl = nsub.add_parser("cluster", help="this member's view of its Raft cluster; leave it")
    nclsub = ncl.add_subparsers(dest="cluster_cmd", metavar="ACTION", required=True)
    reader(nclsub.add_parser(
        "status", parents=[files], help="role, leader, term, log indexes, members and connections",
        description="ovs-appctl cluster/status, read: this member's role and term, the leader, "
                    "the log's entries and commit index, and every member with its address and "
                    "whether this member is connected to it. Run it on several members: each "
                    "says what it sees.")).set_defaults(func=cmd_nb_cluster_status)
    nclsub.add_parser(
        "leave", parents=[files], help="take this member out of the cluster for good",
        description="ovs-appctl cluster/leave; once the cluster has removed it (its leader and a "
                    "majority must be up), the server is stopped and the database moved to "
                    "nb.db.left, so the directory can make or join a member again.",
    ).set_defaults(func=cmd_nb_cluster_leave)

    tr = reader(sub.add_parser(
        "trace", help="walk a packet through the flows the nodes hold (from their dumps)",
        description="Walks the packet SRC sends to DST through the flows each node holds, in a "
                    "simulated flow table, node by node: the stages with the flow, the owner its "
                    "cookie names, conntrack's answer, where the packet went (the patent's packet "
                    "numbers 210 ... 262), or the named reason it was not forwarded. The flows "
                    "come from DIR/<node>.txt, on each node: (ovs-ofctl -O OpenFlow15 show br-int; "
                    "ovs-ofctl -O OpenFlow15 --names dump-flows br-int) > <node>.txt; names and "
                    "addresses from the NB. In a lab, vnet64-lab trace reads the nodes itself."))
    tr.add_argument("--dumps", metavar="DIR", required=True, help="the nodes' <node>.txt files")
    from .controller.trace import add_arguments as trace_arguments
    trace_arguments(tr)
    tr.set_defaults(func=_with_nb(cmd_trace))

    load = sub.add_parser("load", help="load a topology file (one transaction; identical objects kept)")
    load.add_argument("topology", help="a file like topologies/two-tenants.yaml")
    load.set_defaults(func=_with_nb(cmd_load))

    # objects
    r = sub.add_parser("region", help="regions")
    rsub = r.add_subparsers(dest="region_cmd", metavar="ACTION", required=True)
    ra = reader(rsub.add_parser("add", help="add a region"))
    ra.add_argument("name")
    ra.add_argument("id", help="region id, 0..0xffff")
    may_exist(ra)
    ra.set_defaults(func=_with_nb(cmd_region_add))
    reader(rsub.add_parser("list", help="list regions")).set_defaults(func=_with_nb(_lister("region")))

    nd = sub.add_parser("node", help="host nodes and the SDN appliance")
    ndsub = nd.add_subparsers(dest="node_cmd", metavar="ACTION", required=True)
    nda = reader(ndsub.add_parser("add", help="add a node"))
    nda.add_argument("name")
    nda.add_argument("--role", choices=topology.ROLES, required=True)
    nda.add_argument("--underlay-ip", required=True, help="the node's underlay IPv4 (Geneve endpoint)")
    nda.add_argument("--datapath-id", help="br-int datapath id (default derived from the underlay IP)")
    may_exist(nda)
    nda.set_defaults(func=_with_nb(cmd_node_add))
    nds = reader(ndsub.add_parser(
        "set", help="change a node's settings: the controllers of its br-int",
        description="Set the OpenFlow controller targets the node agent gives the node's br-int, "
                    "replacing the ones set before."))
    nds.add_argument("name")
    ndc = nds.add_mutually_exclusive_group(required=True)
    ndc.add_argument("--controller", action="append", metavar="TARGET",
                     help="tcp:IP:PORT or ssl:IP:PORT, IPv6 in brackets, e.g. tcp:172.31.255.1:6653 "
                          "(repeat for several)")
    ndc.add_argument("--no-controllers", action="store_true", help="remove every controller target")
    nds.set_defaults(func=_with_nb(cmd_node_set))
    reader(ndsub.add_parser("list", help="list nodes")).set_defaults(func=_with_nb(_lister("node")))

    v = sub.add_parser("vnet", help="customer VNets")
    vsub = v.add_subparsers(dest="vnet_cmd", metavar="ACTION", required=True)
    va = reader(vsub.add_parser("add", help="add a VNet with its ranges and subnets"))
    va.add_argument("name")
    va.add_argument("--id", required=True, help="VNet id, 0..0xffff, unique in the region")
    va.add_argument("--cidr", action="append", required=True, help="IPv4 range (repeat for several)")
    va.add_argument("--subnet", action="append", required=True, metavar="NAME:ID:CIDR",
                    help="subnet, e.g. default:0x6600:10.0.0.0/24 (repeat for several)")
    va.add_argument("--region", help="region name (default: the platform's region)")
    va.add_argument("--snat-vip", help="SNAT VIP carried in this VNet's addresses (default: Platform_IP)")
    may_exist(va)
    va.set_defaults(func=_with_nb(cmd_vnet_add))
    reader(vsub.add_parser("list", help="list VNets")).set_defaults(func=_with_nb(_lister("vnet")))

    m = sub.add_parser("vm", help="customer VMs")
    msub = m.add_subparsers(dest="vm_cmd", metavar="ACTION", required=True)
    ma = reader(msub.add_parser("add", help="add a VM"))
    ma.add_argument("name")
    ma.add_argument("--vnet", required=True)
    ma.add_argument("--ipv4", required=True, help="private IPv4, inside the VNet's ranges")
    ma.add_argument("--host", required=True, help="the host node it runs on")
    ma.add_argument("--subnet", help="subnet name (default: the subnet holding the IPv4)")
    ma.add_argument("--mac", help="MAC (default: derived from the name)")
    may_exist(ma)
    ma.set_defaults(func=_with_nb(cmd_vm_add))
    mm = reader(msub.add_parser("move", help="move a VM to another host (its host mapping follows)"))
    mm.add_argument("name")
    mm.add_argument("host")
    mm.set_defaults(func=_with_nb(cmd_vm_move))
    reader(msub.add_parser("list", help="list VMs")).set_defaults(func=_with_nb(_lister("vm")))

    s = sub.add_parser("service", help="multi-tenant services")
    ssub = s.add_subparsers(dest="service_cmd", metavar="ACTION", required=True)
    sa = reader(ssub.add_parser("add", help="add a service with its endpoints"))
    sa.add_argument("name")
    sa.add_argument("--endpoint", action="append", metavar="NAME=IPV6@HOST",
                    help="endpoint, e.g. svc1=fd00:5e:1::10@host2 (repeat for several)")
    may_exist(sa)
    sa.set_defaults(func=_with_nb(cmd_service_add))
    reader(ssub.add_parser("list", help="list services")).set_defaults(func=_with_nb(_lister("service")))

    sb = reader(sub.add_parser("subscribe", help="subscribe a VM to a service; prints its platform IPv6"))
    sb.add_argument("vm")
    sb.add_argument("service")
    may_exist(sb)
    sb.set_defaults(func=_with_nb(cmd_subscribe))
    us = sub.add_parser("unsubscribe", help="remove a subscription")
    us.add_argument("vm")
    us.add_argument("service")
    us.add_argument("--if-exists", action="store_true", help="succeed if there is no such subscription")
    us.set_defaults(func=_with_nb(cmd_unsubscribe))

    sl = sub.add_parser("subscription", help="subscriptions")
    slsub = sl.add_subparsers(dest="subscription_cmd", metavar="ACTION", required=True)
    reader(slsub.add_parser("list", help="list subscriptions with their IPv6 and host")).set_defaults(
        func=_with_nb(_lister("subscription")))
    bd = sub.add_parser(
        "binding", help="port bindings: the OVS interface of each VM and endpoint, per node",
        description="Node agents bind an OVS interface to the VM or endpoint its "
                    "external_ids:iface-id names and record it here; the controller wires "
                    "ports from these bindings, and a VM's host follows its binding.")
    bdsub = bd.add_subparsers(dest="binding_cmd", metavar="ACTION", required=True)
    bdl = reader(bdsub.add_parser("list", help="list the port bindings"))
    bdl.add_argument("--node", help="only this node's")
    bdl.set_defaults(func=_with_nb(cmd_binding_list))
    hm = sub.add_parser("host-mapping", help="the host mapping (platform IPv6 -> host)")
    hmsub = hm.add_subparsers(dest="hm_cmd", metavar="ACTION", required=True)
    reader(hmsub.add_parser("list", help="list the host mapping")).set_defaults(
        func=_with_nb(_lister("host-mapping")))

    cn = sub.add_parser("connection", help="the NB server's client remotes (besides its unix socket)")
    cnsub = cn.add_subparsers(dest="connection_cmd", metavar="ACTION", required=True)
    cs = cnsub.add_parser(
        "set", help="listen (or connect) on these remotes, replacing the ones set before",
        description="The NB server reads these remotes from the NB itself, so every member of a "
                    "Raft cluster uses them. ovsdb-server probes an idle client every 5 s and drops "
                    "it when it does not answer within another 5 s; a controller parsing a large "
                    "NB (10k+ subscriptions) for longer is dropped and downloads everything again: "
                    "give such NBs a longer probe (e.g. 180000) or 0 (no probes).")
    cs.add_argument("target", nargs="+",
                    help="ptcp:PORT[:IP], pssl:PORT[:IP], tcp:IP:PORT, ssl:IP:PORT, punix:/PATH or unix:/PATH")
    cs.add_argument("--inactivity-probe", type=int, metavar="MS",
                    help="milliseconds of silence before the server probes a client (0: never; "
                         "default: ovsdb-server's 5000)")
    cs.set_defaults(func=_with_nb(cmd_connection_set))
    cnsub.add_parser("del", help="remove them all (the unix socket stays)").set_defaults(
        func=_with_nb(cmd_connection_del))
    reader(cnsub.add_parser("list", help="list them, with ovsdb-server's status")).set_defaults(
        func=_with_nb(cmd_connection_list))

    pl = reader(sub.add_parser("platform", help="show the platform settings (rotate its tunnel token, "
                                                "set the direct path)",
                               description="Without an ACTION: show the platform settings."))
    pl.set_defaults(func=_with_nb(cmd_platform_show))
    plsub = pl.add_subparsers(dest="platform_cmd", metavar="ACTION")
    reader(plsub.add_parser("show", help="show the platform settings (the default)")).set_defaults(
        func=_with_nb(cmd_platform_show))
    plsub.add_parser(
        "rotate-token", help="give the platform a new tunnel token",
        description="Draw a new tunnel token (the 32-bit Geneve option every node sends and "
                    "expects from the fabric) and print it. The controller reprograms every "
                    "node within a second; until a node has its new flows, it drops what "
                    "nodes already on the new token send it (and they drop its packets).",
    ).set_defaults(func=_with_nb(cmd_platform_rotate_token))

    dp = plsub.add_parser(
        "direct-path", help="turn the direct path on or off",
        description="The direct path: once a reply from a VM's host has reached a service "
                    "host, that service host sends the pair's packets straight to the VM's "
                    "host instead of through the appliance (first packets, and everything "
                    "after a VM moves, still go through the appliance). 'default' clears the "
                    "setting (the platform's default, on, applies). The controllers reprogram "
                    "every node; turned off, what the service hosts learnt is no longer used "
                    "(and idles out).")
    dp.add_argument("state", choices=("on", "off", "default"))
    dp.set_defaults(func=_with_nb(cmd_platform_direct_path))

    sh = reader(sub.add_parser("show", help="show any object by name (VM, VNet, service, endpoint, node, region)"))
    sh.add_argument("name")
    sh.set_defaults(func=_with_nb(cmd_show))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.run_dir_given = bool(args.run_dir or os.environ.get("VNET64_RUN_DIR"))
    args.run_dir = args.run_dir or os.environ.get("VNET64_RUN_DIR") or "/var/lib/vnet64"
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("ovsdbapp").setLevel(logging.CRITICAL)
    from .nb.commands import NbError
    from .nb.server import NbServerError
    try:
        code = args.func(args) or 0
        sys.stdout.flush()   # a closed pipe is then seen here, not at the interpreter's exit
        return code
    except (AddressError, TopologyError, NbError, NbServerError, CliError) as exc:
        print(f"vnet64: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`vnet64 nb show | head`): stop quietly, as cat does; point
        # stdout at /dev/null so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
