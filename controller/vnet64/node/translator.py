"""A host's stateless translator: TAYGA in a namespace of its own, joined to br-int.

The namespace (default ``vnet64-xlat``) holds ``ovs0`` (the veth whose other end is
br-int's ``xlat0``), TAYGA's tun ``nat64``, policy routing by incoming interface (from
br-int into the tun, from the tun back to br-int, so a translated packet never loops),
permanent neighbours for br-int's side, and nftables for what TAYGA 0.9.2 gets wrong.
TAYGA itself is vnet64's patched build when installed (:func:`tayga_binary`).
Everything is written so that doing it again changes nothing: a restarted agent
re-applies it while packets flow.

Engines (``--translator-engine``, per host): ``tayga`` translates every packet in TAYGA;
``bpf`` adds vnet64's tc-BPF translator (``xlat_bpf.c``) at the ingress of ``ovs0``: it
translates a connection's bulk (unfragmented TCP, UDP with a checksum, echo) in the
kernel and sends it straight back to br-int, and hands everything else (ICMP errors,
fragments, options, ...) on to TAYGA, which runs as before. The agent builds it for the
host's settings (``clang -target bpf``, :func:`bpf_defines`) and attaches it with ``tc``.

The text generators (:func:`tayga_conf`, :func:`nft_ruleset`, :func:`routes`,
:func:`bpf_defines`) are pure; :class:`Translator` runs them (``ip``, ``nft``, ``tayga``,
``clang``, ``tc``) and supervises TAYGA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import struct
import sysconfig
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Network
from pathlib import Path

from .. import gateway
from ..ports import XLAT_PORT
from . import sh

LOG = logging.getLogger("vnet64.node.translator")

DEFAULT_NETNS = "vnet64-xlat"
NS_IF = "ovs0"               # translator-namespace side of the veth to br-int
TUN = "nat64"                # TAYGA's tun
DEFAULT_IPV4 = IPv4Address("192.0.0.1")   # TAYGA's own IPv4 (source of its ICMPv4 errors)
TABLE_TO_TUN = 100
TABLE_TO_OVS = 200
NEXTHOP_V4 = IPv4Address("169.254.0.1")   # stands for br-int; neighbour = the gateway MAC
# A VM's fragmented IPv4 datagram is reassembled here and goes into the tun in pieces no
# larger than FRAGMENT_MTU, by a route of its own that packets marked as fragments take.
TABLE_FRAGMENTS = 101
FRAGMENT_MARK = 0x64
FRAGMENT_MTU = 1280 - 40 - 8 + 20   # TAYGA's IPv6 fragment of it: exactly 1280 bytes
NFT_TABLE = "vnet64_xlat"           # in families ip (fragments) and netdev (routing headers)
NFT_RH_COUNTER = "routing_header_segments_left"
# TAYGA adds 1 to the TTL / hop limit (vnet64's patched build, "hop-limit-adjust"); this
# namespace's routing into the tun and out of it takes 2: one hop across (tayga_conf)
HOP_LIMIT_ADJUST = 1
SYSCTLS = {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1,
           "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
           "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0}


# vnet64's build of TAYGA (scripts/build-tayga.sh: Debian's 0.9.2 with the patches in
# ovs-setup/tayga-patches/), beside the patched ovs-vswitchd; VNET64_TAYGA names another.
PATCHED_TAYGA = "/usr/local/libexec/vnet64/tayga"
WITHOUT_PATCHES = ("sets DF on every IPv6->IPv4 packet, drops IPv4 UDP without a checksum and "
                   "takes 3 off every TTL / hop limit (docs/lab.md \"The translator engine\")")


ENGINES = ("tayga", "bpf")
DEFAULT_ENGINE = "tayga"
ENGINE_ENV = "VNET64_TRANSLATOR_ENGINE"       # the agent's --translator-engine default
BPF_SOURCE = Path(__file__).with_name("xlat_bpf.c")
BPF_PROGRAM = "vnet64_xlat"                    # its function's name, as tc and bpftool show it
BPF_PREF = 64                                  # the tc filter's priority and handle on ovs0
BPF_STATS = ("6to4", "4to6", "to_tayga")       # xlat_bpf.c's xlat_stats, in its order


def default_engine() -> str:
    """``$VNET64_TRANSLATOR_ENGINE`` if set (checked), else ``tayga``."""
    engine = os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE
    if engine not in ENGINES:
        raise ValueError(f"{ENGINE_ENV}={engine}: not a translator engine "
                         f"({', '.join(ENGINES)})")
    return engine


def bpf_defines(prefix: str | IPv6Network, ipv4: IPv4Address | str, mtu: int) -> list[str]:
    """The compiler's ``-D`` options that build ``xlat_bpf.c`` for one host: the /96
    translator prefix's three words, TAYGA's own IPv4 (left to TAYGA) and the MTU."""
    net = IPv6Network(prefix)
    if net.prefixlen != 96:
        raise ValueError(f"the BPF translator takes a /96 prefix (RFC 6052), not {net}")
    words = struct.unpack("!4I", net.network_address.packed)[:3]
    return ([f"-DXLAT_PREFIX{i}={w:#010x}" for i, w in enumerate(words)]
            + [f"-DXLAT_IPV4={int(IPv4Address(ipv4)):#010x}", f"-DXLAT_MTU={int(mtu)}"])


def bpf_object_name(source: bytes, defines: list[str]) -> str:
    """The object's file name: it names what it was built from, so a changed source or
    setting is a new file (and ``tc filter show``, which prints it, tells which runs)."""
    digest = hashlib.sha256(source + "\0".join(defines).encode()).hexdigest()[:12]
    return f"xlat-{digest}.o"


def bpf_compile_command(clang: str, source: Path, obj: Path, defines: list[str]) -> list[str]:
    """clang for the BPF target, with the multiarch include directory the kernel's
    uapi headers need (``asm/types.h``)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    include = [f"-I/usr/include/{multiarch}"]
    return [clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3", *include,
            *defines, "-c", str(source), "-o", str(obj)]


def parse_bpf_stats(dump: list[dict]) -> dict[str, int]:
    """``bpftool -j map dump`` of ``xlat_stats`` (per CPU) -> packets per :data:`BPF_STATS`
    name, summed over CPUs (the formatted values when bpftool has the BTF, else the raw
    little-endian bytes)."""
    out = dict.fromkeys(BPF_STATS, 0)
    for entry in dump:
        if "formatted" in entry:
            key = entry["formatted"]["key"]
            values = [v["value"] for v in entry["formatted"]["values"]]
        else:
            key = int.from_bytes(bytes(int(b, 16) for b in entry["key"]), "little")
            values = [int.from_bytes(bytes(int(b, 16) for b in v["value"]), "little")
                      for v in entry["values"]]
        if 0 <= key < len(BPF_STATS):
            out[BPF_STATS[key]] = sum(values)
    return out


def bpf_filter(netns: str) -> str:
    """``tc filter show`` of the BPF translator's filter on ``netns``'s ``ovs0`` (empty:
    none, or no such namespace)."""
    return sh.run([sh.tool("tc"), "-n", netns, "filter", "show", "dev", NS_IF, "ingress",
                   "pref", str(BPF_PREF)], check=False).stdout


def bpf_attached(netns: str) -> str | None:
    """The object file (its name) of the BPF translator on ``netns``'s ``ovs0``, None if
    none is attached (or there is no such namespace)."""
    found = re.search(r"\b(xlat-[0-9a-f]{12}\.o):\[tc\]", bpf_filter(netns))
    return found.group(1) if found else None


def tayga_binary() -> tuple[str, bool]:
    """The TAYGA a translator runs, and whether it is vnet64's patched build: the binary
    ``$VNET64_TAYGA`` names (an error if it is not executable), else the patched build,
    else the system's ``tayga``."""
    named = os.environ.get("VNET64_TAYGA")
    path = named or PATCHED_TAYGA
    if os.access(path, os.X_OK):
        return path, path == PATCHED_TAYGA
    if named:
        raise sh.CommandError(f"VNET64_TAYGA={named}: not an executable file")
    return sh.tool("tayga"), False


def running_binary(pid: int) -> str | None:
    """The executable a process runs (`` (deleted)`` when the file was replaced since)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def tayga_conf(host: str, ipv4: IPv4Address | str, prefix: str, data_dir: str | Path,
               hop_limit_adjust: int | None = HOP_LIMIT_ADJUST) -> str:
    """TAYGA's configuration file.

    Hop limits: the platform is one router hop between a service and a VM (its gateways
    expire TTL / hop limit 0 and 1 and answer Time Exceeded: controller customer and
    service modules), but this namespace routes each packet into the tun and out of it
    again, two decrements. So TAYGA adds ``hop_limit_adjust`` (1) instead of taking 1:
    what leaves is the sender's value less one, 255 included. None leaves the directive
    out, for a TAYGA that does not know it (Debian's: 3 decrements, see
    :func:`knows_hop_limit_adjust`)."""
    adjust = f"hop-limit-adjust {hop_limit_adjust}\n" if hop_limit_adjust is not None else ""
    return (f"# generated by vnet64-node for host {host} from the NB platform settings\n"
            f"tun-device {TUN}\n"
            f"ipv4-addr {ipv4}\n"
            f"prefix {prefix}\n"
            f"data-dir {data_dir}\n"
            f"{adjust}")


def knows_hop_limit_adjust(binary: str) -> bool:
    """Whether the TAYGA ``binary`` accepts the ``hop-limit-adjust`` directive (vnet64's
    patch tayga-0.9.2-rfc7915-hop-limit-adjust.patch; Debian's would refuse to start)."""
    try:
        return b"hop-limit-adjust" in Path(binary).read_bytes()
    except OSError:
        return False


def nft_ruleset(from_ovs: str = NS_IF) -> str:
    """The translator namespace's nftables tables (replaced whole: idempotent), for what
    TAYGA 0.9.2 gets wrong.

    IPv6 with a routing header whose Segments Left is not 0: TAYGA skips routing headers
    and would translate it to the IPv6 destination; RFC 7915 5.1 says it MUST NOT be
    translated, and an ICMPv6 Parameter Problem SHOULD go back. At the ingress of the
    veth from br-int it is counted (named counter ``NFT_RH_COUNTER``) and sent straight
    back out of it, unchanged: br-int punts it (its source is a pair's alias, never
    TAYGA's) and the controller answers the service (controller customer module,
    "Routing headers").

    A VM's fragmented IPv4 datagrams: a VM fragments a datagram larger than its MTU into
    pieces of up to that MTU; TAYGA (0.9.2) translates each into an IPv6 fragment 28
    bytes larger and, that being over 1280 bytes (the only IPv6 MTU it assumes
    off-link), cuts it again into a 1232-byte piece and a small one - which the IPv6
    zones' reassembly on br-int refuses as too small ("v6 frags too small"), so the
    datagram never reached the service. So here: fragments from br-int are marked before
    the kernel's defragmentation (priority -450, before -400), reassembled, and the mark
    routes the datagram into the tun by a route whose MTU is FRAGMENT_MTU, so it is
    fragmented again into pieces TAYGA translates into IPv6 fragments of at most 1280
    bytes without cutting them. Whole packets are not marked: their path and MTU stay.

    Defragmentation without connection tracking (br-int's conntrack is the stateful one):
    a ``tproxy`` rule turns the kernel's IPv4 defragmentation on for the namespace when
    it is added, and sits in a chain nothing jumps to, so it never runs. (A ``ct`` rule
    would bring conntrack's hooks too: measured 0.96x VM -> service TCP throughput,
    against 0.98x, within noise, this way.)"""
    return (f"table ip {NFT_TABLE}\n"
            f"delete table ip {NFT_TABLE}\n"
            f"table ip {NFT_TABLE} {{\n"
            f"  chain mark_fragments {{\n"
            f"    type filter hook prerouting priority -450; policy accept;\n"
            f"    iifname \"{from_ovs}\" ip frag-off & 0x3fff != 0 meta mark set {FRAGMENT_MARK}\n"
            f"  }}\n"
            f"  chain defragment_on {{\n"
            f"    meta l4proto tcp tproxy to :1\n"
            f"  }}\n"
            f"}}\n"
            f"table netdev {NFT_TABLE}\n"
            f"delete table netdev {NFT_TABLE}\n"
            f"table netdev {NFT_TABLE} {{\n"
            f"  counter {NFT_RH_COUNTER} {{ }}\n"
            f"  chain routing_header {{\n"
            f"    type filter hook ingress device \"{from_ovs}\" priority 0; policy accept;\n"
            f"    meta protocol ip6 rt seg-left != 0 counter name {NFT_RH_COUNTER} "
            f"fwd to \"{from_ovs}\"\n"
            f"  }}\n"
            f"}}\n")


@dataclass(frozen=True)
class Rule:
    """A policy-routing rule, identified by its priority."""
    family: str            # "-4" | "-6"
    pref: int
    iif: str
    table: int
    fwmark: int | None = None

    def add(self) -> str:
        mark = f" fwmark {self.fwmark:#x}" if self.fwmark is not None else ""
        return f"rule add iif {self.iif}{mark} lookup {self.table} pref {self.pref}"

    def matches(self, shown: dict) -> bool:
        """Whether a rule of ``ip -j rule show`` is this one."""
        mark = shown.get("fwmark")
        want_mark = f"{self.fwmark:#x}" if self.fwmark is not None else None
        return (shown.get("priority") == self.pref and shown.get("iif") == self.iif
                and str(shown.get("table")) == str(self.table) and mark == want_mark)


def rules() -> list[Rule]:
    """From br-int into TAYGA, from TAYGA back to br-int, by incoming interface (both
    families); IPv4 fragments from br-int by their mark."""
    out = []
    for fam in ("-4", "-6"):
        out += [Rule(fam, 1000, NS_IF, TABLE_TO_TUN), Rule(fam, 1001, TUN, TABLE_TO_OVS)]
    out.append(Rule("-4", 999, NS_IF, TABLE_FRAGMENTS, FRAGMENT_MARK))
    return out


def routes() -> dict[str, list[str]]:
    """``ip route/neigh replace ...`` lines per family (idempotent by themselves)."""
    gw = gateway.GATEWAY_MAC
    return {
        "-4": [f"route replace default dev {TUN} table {TABLE_TO_TUN}",
               f"route replace default dev {TUN} mtu lock {FRAGMENT_MTU} table {TABLE_FRAGMENTS}",
               f"route replace default via {NEXTHOP_V4} dev {NS_IF} onlink table {TABLE_TO_OVS}",
               f"neigh replace {NEXTHOP_V4} lladdr {gw} dev {NS_IF} nud permanent"],
        "-6": [f"route replace default dev {TUN} table {TABLE_TO_TUN}",
               f"route replace default via {gateway.SERVICE_GATEWAY_IPV6} dev {NS_IF} "
               f"table {TABLE_TO_OVS}",
               f"neigh replace {gateway.SERVICE_GATEWAY_IPV6} lladdr {gw} dev {NS_IF} "
               f"nud permanent"],
    }


class Translator:
    """The translator of one host: ``ensure()`` brings it up (or checks it), ``check()``
    restarts TAYGA if it died, ``remove()`` takes it all away. ``engine``: ``tayga``, or
    ``bpf`` for the tc-BPF fast path in front of TAYGA (module doc)."""

    def __init__(self, host: str, netns: str, run_dir: Path, mac: str, mtu: int,
                 tx_offload_off: bool, engine: str = DEFAULT_ENGINE):
        if engine not in ENGINES:
            raise ValueError(f"translator engine {engine!r}: not one of {', '.join(ENGINES)}")
        self.host, self.netns, self.run_dir = host, netns, Path(run_dir)
        self.mac, self.mtu, self.tx_offload_off = mac, mtu, tx_offload_off
        self.engine = engine
        self._warned = False

    @property
    def conf_path(self) -> Path:
        return self.run_dir / "tayga.conf"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "tayga.pid"

    def tayga_pid(self) -> int | None:
        pid = sh.read_pid(self.pidfile)
        return pid if pid and sh.proc_alive(pid, "tayga") else None

    def ensure(self, prefix: str, ipv4: IPv4Address | str) -> list[str]:
        """Bring the translator up from NB settings; what it changed (empty: nothing)."""
        changed: list[str] = []
        if self.netns not in sh.netns_list():
            sh.run([sh.tool("ip"), "netns", "add", self.netns])
            changed.append(f"namespace {self.netns}")
        ns = self.netns
        sh.ip_ns(ns, "link", "set", "lo", "up")
        if not sh.link_exists(XLAT_PORT) or not sh.link_exists(NS_IF, ns):
            sh.run([sh.tool("ip"), "link", "del", XLAT_PORT], check=False)
            sh.run([sh.tool("ip"), "link", "add", XLAT_PORT, "mtu", str(self.mtu), "type", "veth",
                    "peer", "name", NS_IF, "mtu", str(self.mtu), "address", self.mac,
                    "netns", ns])
            changed.append(f"veth {XLAT_PORT} <-> {ns}:{NS_IF}")
        sh.run([sh.tool("ip"), "link", "set", XLAT_PORT, "mtu", str(self.mtu), "up"])
        if self.tx_offload_off:
            sh.run([sh.tool("ethtool"), "-K", XLAT_PORT, "tx", "off"])
            sh.in_ns(ns, [sh.tool("ethtool"), "-K", NS_IF, "tx", "off"])
        sh.sysctl(SYSCTLS, ns)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = tayga_conf(self.host, ipv4, prefix, self.run_dir,
                          HOP_LIMIT_ADJUST if knows_hop_limit_adjust(self.binary()) else None)
        conf_changed = not self.conf_path.exists() or self.conf_path.read_text() != conf
        if conf_changed:
            self.conf_path.write_text(conf)
            changed.append("tayga.conf")
        if not sh.link_exists(TUN, ns):
            sh.in_ns(ns, [self.binary(), "--mktun", "-c", str(self.conf_path)])
            changed.append(f"tun {TUN}")
        have = {f: sh.in_ns(ns, [sh.tool("nft"), "list", "table", f, NFT_TABLE],
                            check=False).returncode == 0 for f in ("ip", "netdev")}
        if not all(have.values()):    # replaced whole; left alone when there (its counters)
            sh.in_ns(ns, [sh.tool("nft"), "-f", "-"], input=nft_ruleset())
            changed.append("nftables")
        sh.ip_batch(ns, [f"link set {NS_IF} up", f"link set {TUN} mtu {self.mtu} up"])
        for fam in ("-4", "-6"):
            shown = json.loads(sh.ip_ns(ns, "-j", fam, "rule", "show").stdout or "[]")
            missing = [r for r in rules() if r.family == fam
                       and not any(r.matches(s) for s in shown)]
            for r in missing:   # a rule with this priority but other contents goes first
                if any(s.get("priority") == r.pref for s in shown):
                    sh.ip_ns(ns, fam, "rule", "del", "pref", str(r.pref))
            if missing:
                sh.ip_batch(ns, [r.add() for r in missing], family=fam)
                changed.append(f"{len(missing)} {fam} rule(s)")
            sh.ip_batch(ns, routes()[fam], family=fam)
        pid = self.tayga_pid()
        if pid and conf_changed:
            LOG.info("%s: TAYGA's configuration changed: restarting it (pid %d)", self.host, pid)
            sh.terminate(pid, "tayga")
            pid = None
        binary = self.binary()
        if pid and (running := running_binary(pid)) not in (None, os.path.realpath(binary)):
            LOG.info("%s: TAYGA (pid %d) runs %s, not %s: restarting it", self.host, pid,
                     running, binary)
            sh.terminate(pid, "tayga")
            pid = None
            changed.append("TAYGA binary")
        if not pid:
            self.start_tayga()
            changed.append("TAYGA started")
        changed += self.ensure_engine(prefix, ipv4)
        return changed

    def _tc(self, *args: str, check: bool = True):
        return sh.run([sh.tool("tc"), "-n", self.netns, *args], check=check)

    def bpf_attached(self) -> str | None:
        """The object file (its name) of the BPF translator on ``ovs0``, None if none."""
        return bpf_attached(self.netns)

    def bpf_stats(self) -> dict[str, int] | None:
        """What the attached BPF translator did (:func:`parse_bpf_stats`), read with
        bpftool through the program tc shows on ``ovs0``; None when none is attached."""
        found = re.search(rf"\bid (\d+) name {BPF_PROGRAM}\b", bpf_filter(self.netns))
        if not found:
            return None
        bpftool = sh.tool("bpftool")
        prog = json.loads(sh.run([bpftool, "-j", "prog", "show", "id", found.group(1)]).stdout)
        for map_id in prog.get("map_ids", []):
            shown = json.loads(sh.run([bpftool, "-j", "map", "show", "id", str(map_id)]).stdout)
            if shown.get("name") == "xlat_stats":
                return parse_bpf_stats(json.loads(
                    sh.run([bpftool, "-j", "map", "dump", "id", str(map_id)]).stdout))
        return None

    def bpf_object(self, prefix: str, ipv4: IPv4Address | str) -> tuple[Path, bool]:
        """The BPF translator built for these settings, in the run directory (built now
        if missing: True); older builds are removed."""
        defines = bpf_defines(prefix, ipv4, self.mtu)
        obj = self.run_dir / bpf_object_name(BPF_SOURCE.read_bytes(), defines)
        if obj.exists():
            return obj, False
        try:
            clang = sh.tool("clang")
        except sh.CommandError:
            raise sh.CommandError("the BPF translator engine needs clang and libbpf's headers "
                                  "(Debian: apt-get install clang libbpf-dev)") from None
        tmp = obj.with_suffix(".tmp")
        sh.run(bpf_compile_command(clang, BPF_SOURCE, tmp, defines))
        tmp.rename(obj)
        for old in self.run_dir.glob("xlat-*.o"):
            if old != obj:
                old.unlink(missing_ok=True)
        return obj, True

    def ensure_engine(self, prefix: str, ipv4: IPv4Address | str) -> list[str]:
        """Attach the BPF translator to ``ovs0`` (engine ``bpf``: built for these
        settings, replaced when they change) or take it off (``tayga``); what changed."""
        attached = self.bpf_attached()
        if self.engine != "bpf":
            if attached is None:
                return []
            self._tc("filter", "del", "dev", NS_IF, "ingress", "pref", str(BPF_PREF))
            LOG.info("%s: BPF translator taken off %s: TAYGA translates everything", self.host,
                     NS_IF)
            return ["BPF translator removed"]
        obj, built = self.bpf_object(prefix, ipv4)
        changed = [f"BPF translator built ({obj.name})"] if built else []
        if attached != obj.name:
            self._tc("qdisc", "replace", "dev", NS_IF, "clsact")
            self._tc("filter", "replace", "dev", NS_IF, "ingress", "pref", str(BPF_PREF),
                     "handle", "1", "bpf", "direct-action", "obj", str(obj), "sec", "tc")
            LOG.info("%s: BPF translator %s attached to %s (TAYGA takes what it hands on)",
                     self.host, obj.name, NS_IF)
            changed.append(f"BPF translator attached to {NS_IF}")
        return changed

    def binary(self) -> str:
        """:func:`tayga_binary`'s path; without the patched build, a warning (once)."""
        path, patched = tayga_binary()
        if not patched and not os.environ.get("VNET64_TAYGA") and not self._warned:
            LOG.warning("%s: vnet64's TAYGA build %s is not installed: running %s, which %s; "
                        "scripts/build-tayga.sh (make setup) builds it", self.host,
                        PATCHED_TAYGA, path, WITHOUT_PATCHES)
            self._warned = True
        return path

    def start_tayga(self) -> int:
        binary = self.binary()
        sh.in_ns(self.netns, [binary, "-c", str(self.conf_path), "-p", str(self.pidfile)])
        sh.wait_for(self.tayga_pid, 10, f"TAYGA of {self.host}")
        pid = self.tayga_pid()
        LOG.info("%s: TAYGA running (pid %s, %s)", self.host, pid, binary)
        return pid

    def check(self) -> bool:
        """Restart TAYGA if it died (with a log line); True if it had to."""
        if self.tayga_pid() or not self.conf_path.exists():
            return False
        LOG.error("%s: TAYGA is not running (pidfile %s): restarting it", self.host, self.pidfile)
        self.start_tayga()
        return True

    def remove(self) -> list[str]:
        removed = []
        pid = self.tayga_pid()
        if pid:
            sh.terminate(pid, "tayga")
            removed.append(f"TAYGA[{pid}]")
        if sh.link_exists(XLAT_PORT):
            sh.run([sh.tool("ip"), "link", "del", XLAT_PORT], check=False)
            removed.append(f"veth {XLAT_PORT}")
        if self.netns in sh.netns_list():
            for pid in sh.netns_pids(self.netns):   # only processes inside our own namespace
                with_comm = sh.comm(pid)
                if with_comm:
                    sh.terminate(pid, with_comm)
            sh.run([sh.tool("ip"), "netns", "del", self.netns], check=False)
            removed.append(f"namespace {self.netns}")
        for f in (self.conf_path, self.pidfile):
            f.unlink(missing_ok=True)
        return removed

