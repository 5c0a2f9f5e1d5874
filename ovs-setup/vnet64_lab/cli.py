"""``vnet64-lab``: build, inspect and remove an OVS lab of a topology.

    vnet64-lab up [TOPOLOGY] [--control node|central] [--tls] [--translator-engine tayga|bpf]
                                        build it (default topologies/two-tenants.yaml)
    vnet64-lab down                     remove everything the lab made
    vnet64-lab status [--json]          processes, bridges, controllers, VM addresses
    vnet64-lab logs [NODE] [-n LINES]   the end of the controllers' and agents' logs
    vnet64-lab exec TARGET -- CMD...    run CMD inside a node / VM / endpoint namespace
    vnet64-lab flows NODE [--bridge B]  ovs-ofctl dump-flows of that node, with table names
    vnet64-lab stats [NODE] [--explain] what each node did not forward, and why, and the sum
    vnet64-lab trace SRC DST [PROTO [PORT]] [--reply] [--ct new|est|rel] [--json]
                                        a packet's walk through the nodes' installed flows
    vnet64-lab capture TARGET IFACE     tcpdump inside that namespace

``--control node`` (the default, also ``$VNET64_LAB_CONTROL``): a controller per node,
``vnet64-controller --vnet64-node NODE`` in the node's namespace next to its agent,
connected to br-int's management socket (``br-int.mgmt``), as a deployment runs it;
``central``: one controller for every node, on the management network.
``--tls`` (also ``$VNET64_LAB_TLS=1``): the platform over TLS, with certificates made by
``ovs-pki`` in ``<run dir>/pki``: the NB listens with pssl: only, agents and controllers
reach it over ssl:, and a central controller takes switches over ssl: only.
``--translator-engine bpf`` (also ``$VNET64_TRANSLATOR_ENGINE=bpf``): every host's agent runs
vnet64's tc-BPF translator in front of TAYGA (``vnet64-node --translator-engine``).
TARGET is a node, VM or service-endpoint name, or ``kind:name`` with kind one of
node, vm, endpoint, xlat (a host's translator), or ``ctl`` / ``fabric``.
Options before the subcommand: ``--prefix`` (namespace prefix, env
``VNET64_LAB_PREFIX``, default ``v64-``) and ``--run-dir`` (env
``VNET64_LAB_RUN_DIR``, default ``/run/vnet64-lab``). Exit status 2 = bad input
(nothing was created), 1 = the lab failed.

Each node runs ``/usr/local/libexec/vnet64/ovs-vswitchd`` (the system's Open vSwitch
with vnet64's patches in ``ovs-setup/patches/``, built by ``scripts/build-ovs.sh``)
when it is there, else the system's ovs-vswitchd; env ``VNET64_OVS_VSWITCHD`` names
another binary.
"""

from __future__ import annotations

import argparse
import json
import signal
import os
import sys
from typing import Any

from vnet64.topology import TopologyError
from vnet64 import helptext
from vnet64.node.translator import ENGINES
from vnet64.controller.trace import add_arguments as trace_arguments
from vnet64.node import drops

from . import plan as P
from . import sh
from .lab import AGENT, CONTROL_MODES, DEFAULT_TOPOLOGY, Lab
from .ovs import OvsNode
from .sh import LabError


def resolve(plan: P.Plan, target: str) -> tuple[str, str, P.NodePlan | None]:
    """TARGET -> (kind:name, namespace, node plan if it is a node)."""
    targets = plan.targets()
    if target in targets:
        key = target
    else:
        # Bare names are nodes, VMs and endpoints; a translator is always xlat:HOST.
        matches = [k for k in targets
                   if k.split(":", 1)[-1] == target and not k.startswith("xlat:")]
        if not matches:
            raise LabError(f"unknown target {target!r}; one of: {', '.join(sorted(targets))}")
        if len(matches) > 1:
            raise LabError(f"{target!r} is ambiguous ({', '.join(matches)}): use kind:name")
        key = matches[0]
    node = next((n for n in plan.nodes if key == f"node:{n.name}"), None)
    return key, targets[key], node


def _print_status(st: dict) -> None:
    if not st.get("phase"):
        left = st.get("namespaces") or []
        print("lab: down" + (f" (but namespaces left: {', '.join(left)})" if left else ""))
        return
    print(f"lab: {st['phase']}  topology: {st['topology']}  prefix: {st['prefix']}  "
          f"run dir: {st['run_dir']}" + (f"  (up in {st['up_seconds']}s)" if st.get("up_seconds")
                                         else ""))
    print(f"nb: {'pid ' + str(st['nb']['pid']) if st['nb']['pid'] else 'NOT RUNNING'}  "
          f"remotes: {', '.join(st['nb']['remotes'])}")
    print(f"control: {st.get('control', 'central')}  controller: {st['controller']['state']}  "
          f"target: {st['controller']['target']}")
    tls = st.get("tls")
    print(f"tls: on  (PKI {tls['pki']}: CAs in ca/controllerca and ca/switchca, "
          f"NAME-privkey.pem/NAME-cert.pem per daemon)" if tls else "tls: off")
    if st.get("vswitchd"):
        print(f"ovs-vswitchd: {st['vswitchd']}")
    print()
    for n in st["nodes"]:
        daemons = [("ovsdb-server", "ovsdb_server"), ("ovs-vswitchd", "ovs_vswitchd"),
                   ("vnet64-node", "agent")]
        if "controller" in n:   # a controller per node
            daemons.append(("vnet64-controller", "controller"))
        procs = " ".join(f"{d}={'pid ' + str(n[k]) if n[k] else 'DOWN'}" for d, k in daemons)
        print(f"{n['name']} ({n['role']}) ns {n['namespace']}  underlay {n['underlay_ip']}  "
              f"mgmt {n['management_ip']}  {procs}")
        for name, br in sorted(n.get("bridges", {}).items()):
            ctl = ", ".join(f"{c['target']} {'connected' if c['connected'] else 'not connected'}"
                            for c in br["controllers"]) or "none"
            dpid = f" dpid {br['datapath_id']}" if br["datapath_id"] else ""
            print(f"    {name}: {br['datapath_type']}{dpid} fail-mode {br['fail_mode'] or '-'} "
                  f"controller {ctl}; ports {' '.join(br['ports'])}")
        if n.get("ovsdb_error"):
            print(f"    ovsdb: {n['ovsdb_error']}")
    print()
    for t in st["translators"]:
        bpf = f"  BPF {t['bpf']}" if t.get("bpf") else ""
        print(f"translator of {t['host']}: ns {t['namespace']}  "
              f"TAYGA {'pid ' + str(t['tayga']) if t['tayga'] else 'DOWN'}{bpf}")
    for v in st["vifs"]:
        got = v["addresses"]
        mark = "" if got is not None and sorted(got) == sorted(v["expected"]) else \
            f"  (expected {', '.join(v['expected'])})"
        platform = f"  platform IPv6 {v['platform_ipv6']}" if v.get("platform_ipv6") else ""
        print(f"{v['kind']} {v['name']} on {v['host']} port {v['port']}: "
              f"{', '.join(got) if got else 'no address'}{mark}{platform}")
    if st.get("problems"):
        print("\nproblems:\n  " + "\n  ".join(st["problems"]))


def _print_logs(lab: Lab, plan: P.Plan, node: str | None, lines: int) -> None:
    if node is not None:   # its controller (its own, or the central one) and its agent
        ctls, nodes = [lab.controller(node)], [node]
    else:
        ctls, nodes = lab.controllers(plan), [n.name for n in plan.nodes]
    logs = [(f"controller ({c.name})", c.log) for c in ctls]
    logs += [(f"{AGENT} ({n})", lab.agent_dir(n) / "agent.log") for n in nodes]
    for title, path in logs:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError as exc:
            text = [f"(cannot read it: {exc.strerror})"]
        print(f"== {title}: {path}")
        print("\n".join(text[-lines:]) if lines > 0 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vnet64-lab", description=helptext.paragraphs(__doc__, 0, 1),
                                     epilog=helptext.paragraphs(__doc__, -1),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", help="namespace prefix (default $VNET64_LAB_PREFIX or v64-)")
    parser.add_argument("--run-dir", help="run directory (default $VNET64_LAB_RUN_DIR or "
                                          "/run/vnet64-lab)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="build the lab of a topology file")
    p.add_argument("topology", nargs="?", default=DEFAULT_TOPOLOGY)
    p.add_argument("--control", choices=CONTROL_MODES,
                   help="node: a controller per node, next to its agent (default, also "
                        "$VNET64_LAB_CONTROL); central: one controller for every node")
    p.add_argument("--tls", action="store_true", default=None,
                   help="run the platform over TLS (also $VNET64_LAB_TLS=1): certificates made "
                        "with ovs-pki in RUN_DIR/pki, the NB on pssl: only, agents and "
                        "controllers over ssl:, a central controller's switches over ssl:")
    p.add_argument("--translator-engine", choices=ENGINES,
                   help="the hosts' translators: tayga (default, also "
                        "$VNET64_TRANSLATOR_ENGINE) or bpf, vnet64's tc-BPF fast path in "
                        "front of TAYGA (vnet64-node --translator-engine)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("down", help="remove everything the lab made")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("status", help="processes, bridges, controller, addresses")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("logs", help="the end of the controllers' and node agents' logs")
    p.add_argument("node", nargs="?", help="only this node's (its controller: its own, or "
                                            "the central one)")
    p.add_argument("-n", "--lines", type=int, default=20, help="lines of each log (default 20)")
    p = sub.add_parser("exec", help="run a command inside a lab namespace")
    p.add_argument("target")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("flows", help="dump a node's flows (table names shown)")
    p.add_argument("node")
    p.add_argument("--bridge", default="br-int")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="more ovs-ofctl dump-flows args")
    p = sub.add_parser("stats", help="packets each node did not forward, per reason, and the "
                                     "platform's sum (vnet64-node stats on every node)")
    p.add_argument("node", nargs="?", help="only this node")
    p.add_argument("--explain", action="store_true", help="say what each reason means")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser(
        "trace", help="walk a packet through the flows the nodes hold, node by node",
        description="Reads every node's flows and ports (ovs-ofctl) and the NB, and walks the "
                    "packet SRC sends to DST through them in a simulated flow table: each hop's "
                    "stages with the flow, the owner its cookie names, conntrack's answer, and "
                    "where the packet went (the patent's packet numbers 210 ... 262); a packet "
                    "that is not forwarded ends on the flow that names why.")
    trace_arguments(p)
    p.add_argument("--ovs", action="store_true",
                   help="also run each node's ovs-appctl ofproto/trace on the same packet (with "
                        "the simulation's conntrack states as --ct-next) and say where the two "
                        "part ways")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="the simulation's own account too")
    p = sub.add_parser("capture", help="tcpdump on an interface inside a lab namespace")
    p.add_argument("target")
    p.add_argument("iface")
    p.add_argument("filter", nargs=argparse.REMAINDER, help="tcpdump options / filter")
    args = parser.parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()   # a closed pipe is then seen here, not at the interpreter's exit
        return code
    except BrokenPipeError:
        # `vnet64-lab status | head`: the reader went away; end quietly, as cat does (not
        # by SIGPIPE's default action: main() also runs inside other programs and tests)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _exec(path: str, argv: list[str], env: dict | None = None) -> Any:
    """Become ``argv`` with SIGPIPE's default action back (Python ignores it, and an
    ignored signal stays ignored across exec: `vnet64-lab capture ... | head` would
    leave tcpdump writing into a closed pipe)."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if env is None:
        os.execv(path, argv)
    os.execvpe(path, argv, env)


def _run(args: argparse.Namespace) -> int:
    try:
        lab = Lab(args.prefix, args.run_dir, control=getattr(args, "control", None),
                  tls=getattr(args, "tls", None),
                  translator_engine=getattr(args, "translator_engine", None))
        if args.cmd == "up":
            result = lab.up(args.topology)
            if args.json:
                print(json.dumps(result, indent=2))
            elif result["already_up"]:
                print(f"lab of {result['topology']} is already up")
            else:
                steps = ", ".join(f"{k} {v}s" for k, v in result["steps"].items())
                print(f"lab of {result['topology']} up in {result['seconds']}s ({steps}); "
                      f"{result['control']} control{' over TLS' if result.get('tls') else ''}, "
                      f"controller: {result['controller']}")
            return 0
        if args.cmd == "down":
            result = lab.down()
            print(json.dumps(result, indent=2) if args.json else
                  f"lab down in {result['seconds']}s: {result['namespaces']} namespaces removed, "
                  f"{len(result['stopped'])} processes stopped")
            return 0
        if args.cmd == "status":
            st = lab.status()
            if args.json:
                print(json.dumps(st, indent=2, default=str))
            else:
                _print_status(st)
            return 0 if st.get("up") and not st.get("problems") else 1
        plan = lab.plan()
        if args.cmd == "logs":
            _print_logs(lab, plan, args.node, args.lines)
            return 0
        if args.cmd == "exec":
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not cmd:
                raise LabError("exec needs a command: vnet64-lab exec TARGET -- CMD...")
            _, ns, node = resolve(plan, args.target)
            env = dict(os.environ)
            if node:  # ovs-vsctl / ovs-appctl / ovs-ofctl find this node's daemons
                env.update(OvsNode(node.name, node.ns, node.run_dir).env())
            _exec(sh.tool("ip"), ["ip", "netns", "exec", ns, *cmd], env)
        if args.cmd == "flows":
            key, _, node = resolve(plan, args.node if ":" in args.node else f"node:{args.node}")
            assert node is not None
            extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
            ovs = OvsNode(node.name, node.ns, node.run_dir)
            out = ovs.ofctl("-O", "OpenFlow15", "dump-flows", "--names", args.bridge, *extra)
            sys.stdout.write(out)
            if not out.strip():
                print(f"(no flows on {args.bridge} of {node.name})", file=sys.stderr)
            return 0
        if args.cmd == "trace":
            return _trace(plan, args)
        if args.cmd == "stats":
            return _print_stats(plan, args.node, args.explain, args.json)
        if args.cmd == "capture":
            _, ns, _ = resolve(plan, args.target)
            extra = args.filter[1:] if args.filter[:1] == ["--"] else args.filter
            _exec(sh.tool("ip"), ["ip", "netns", "exec", ns, "tcpdump", "-i", args.iface,
                                  "-nn", "-e", "-l", *extra])
    except TopologyError as exc:
        print(f"vnet64-lab: invalid topology: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"vnet64-lab: {exc}", file=sys.stderr)
        return 1
    return 0


def _trace(plan: P.Plan, args: argparse.Namespace) -> int:
    """``vnet64-lab trace``: every node's flows and ports read from its switch, the names
    from the NB (``vnet64.controller.trace``)."""
    from vnet64.controller import trace as T
    from vnet64.controller.model import from_nb
    from vnet64.nb import api as nbapi
    with nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock") as api:
        model = from_nb(api)
    nodes, daemons = {}, {}
    for n in plan.nodes:
        ovs = daemons[n.name] = OvsNode(n.name, n.ns, n.run_dir)
        nodes[n.name] = T.node_flows(model, n.name,
                                     ovs.ofctl("-O", "OpenFlow15", "--names", "dump-flows", "br-int"),
                                     ovs.ofctl("-O", "OpenFlow15", "show", "br-int"))
    try:
        def ofproto_trace(node: str, flow: str, states: list[str]) -> str:
            extra = [x for s in states for x in ("--ct-next", s)]
            return daemons[node].appctl("ofproto/trace", "br-int", flow, *extra)
        tracer = T.Tracer(model, nodes, ct=args.ct, ofproto_trace=ofproto_trace if args.ovs else None)
        hops = T.trace(tracer, model, args.src, args.dst, args.proto, args.port, args.sport,
                       args.src_addr, args.reply)
    except ValueError as exc:
        print(f"vnet64-lab trace: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(T.report(hops, nodes, as_json=args.json, verbose=args.verbose))
    return 0


def _print_stats(plan: P.Plan, only: str | None, explain: bool, as_json: bool) -> int:
    """Per node, the reasons that counted packets (``vnet64.node.drops``, read as the
    node's own ``vnet64-node stats`` reads them); then every reason summed over the nodes."""
    nodes = plan.nodes
    if only is not None:
        _, _, node = resolve(plan, only if ":" in only else f"node:{only}")
        nodes = (node,)
    counts = {n.name: drops.read(OvsNode(n.name, n.ns, n.run_dir).ofctl, "br-int") for n in nodes}
    per_node = {name: drops.totals(c) for name, c in counts.items()}
    platform = drops.totals(c for cs in counts.values() for c in cs)
    if as_json:
        print(json.dumps({"nodes": per_node, "platform": platform}, indent=2))
        return 0
    for name, rows in per_node.items():
        hit = [r for r in rows if r["packets"]]
        print(f"== {name}: " + ("nothing dropped" if not hit else f"{sum(r['packets'] for r in hit)} "
                                                                      f"packet(s) not forwarded"))
        if hit:
            sys.stdout.write(drops.render(hit, explain=False))
    print(f"== {'the platform' if only is None else only} (every reason its flows count):")
    sys.stdout.write(drops.render(platform, explain=explain))
    return 0


def _main_guard() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _main_guard()
