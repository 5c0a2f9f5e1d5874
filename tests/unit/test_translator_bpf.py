"""The BPF translator engine's pure parts and the agent's bookkeeping around it
(node/translator.py): the build's settings and name, its counters, what ``ensure_engine``
runs given what ``tc`` shows (commands recorded, none run), the agent's option and its
metric. No root, no clang: ``tests/lab/test_translator_bpf.py`` builds, attaches and
measures it for real."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vnet64.node import cli, sh, translator
from vnet64.node.metrics import NodeCollector
from vnet64.topology import DEFAULT_TRANSLATOR_PREFIX


def test_the_build_takes_the_prefix_words_tayga_s_address_and_the_mtu():
    assert translator.bpf_defines("fd64:64::/96", "192.0.0.1", 1442) == [
        "-DXLAT_PREFIX0=0xfd640064", "-DXLAT_PREFIX1=0x00000000", "-DXLAT_PREFIX2=0x00000000",
        "-DXLAT_IPV4=0xc0000001", "-DXLAT_MTU=1442"]
    assert translator.bpf_defines("2001:db8:1:2:0:ff00::/96", "100.64.0.9", 1280)[:4] == [
        "-DXLAT_PREFIX0=0x20010db8", "-DXLAT_PREFIX1=0x00010002", "-DXLAT_PREFIX2=0x0000ff00",
        "-DXLAT_IPV4=0x64400009"]
    with pytest.raises(ValueError, match="/96"):
        translator.bpf_defines("fd64:64::/64", "192.0.0.1", 1442)


def test_the_object_is_named_after_its_source_and_settings():
    d = translator.bpf_defines(DEFAULT_TRANSLATOR_PREFIX, "192.0.0.1", 1442)
    name = translator.bpf_object_name(b"source", d)
    assert name == translator.bpf_object_name(b"source", list(d))
    assert name.startswith("xlat-") and name.endswith(".o") and len(name) == len("xlat-") + 12 + 2
    assert name != translator.bpf_object_name(b"source 2", d)
    assert name != translator.bpf_object_name(b"source", d[:-1] + ["-DXLAT_MTU=1400"])


def test_the_compiler_is_asked_for_bpf_with_the_multiarch_headers():
    cmd = translator.bpf_compile_command("/usr/bin/clang", Path("x.c"), Path("x.o"), ["-DA=1"])
    assert cmd[0] == "/usr/bin/clang" and "-target" in cmd and cmd[cmd.index("-target") + 1] == "bpf"
    assert any(c.startswith("/usr/include/", 2) and c.endswith("-linux-gnu") for c in cmd), cmd
    assert cmd[-4:] == ["-c", "x.c", "-o", "x.o"] and "-DA=1" in cmd and "-Werror" in cmd


def test_the_counters_are_summed_over_cpus_formatted_or_raw():
    formatted = [{"key": ["0x00"] * 4, "formatted": {"key": k, "values": [
        {"cpu": 0, "value": v}, {"cpu": 1, "value": 2 * v}]}} for k, v in ((0, 5), (1, 7), (2, 1))]
    assert translator.parse_bpf_stats(formatted) == {"6to4": 15, "4to6": 21, "to_tayga": 3}

    def raw(n: int) -> list[str]:
        return [f"{b:#04x}" for b in n.to_bytes(8, "little")]
    dump = [{"key": [f"{b:#04x}" for b in k.to_bytes(4, "little")],
             "values": [{"cpu": 0, "value": raw(v)}, {"cpu": 1, "value": raw(300)}]}
            for k, v in ((0, 1), (1, 70000), (2, 0))]
    assert translator.parse_bpf_stats(dump) == {"6to4": 301, "4to6": 70300, "to_tayga": 300}
    assert translator.parse_bpf_stats([]) == {"6to4": 0, "4to6": 0, "to_tayga": 0}


def test_the_engine_comes_from_the_environment_and_is_checked(monkeypatch, tmp_path):
    monkeypatch.delenv(translator.ENGINE_ENV, raising=False)
    assert translator.default_engine() == "tayga"
    monkeypatch.setenv(translator.ENGINE_ENV, "bpf")
    assert translator.default_engine() == "bpf"
    monkeypatch.setenv(translator.ENGINE_ENV, "ebpf")
    with pytest.raises(ValueError, match="not a translator engine"):
        translator.default_engine()
    with pytest.raises(ValueError, match="not one of tayga, bpf"):
        translator.Translator("host1", "ns", tmp_path, "02:00:00:00:00:01", 1442, True, "xdp")


def test_the_agent_option_and_a_bad_environment(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "--translator-engine {tayga,bpf}" in capsys.readouterr().out
    monkeypatch.setenv(translator.ENGINE_ENV, "ebpf")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--nb", "tcp:127.0.0.1:6641", "--once"])
    assert exc.value.code == 2
    assert "VNET64_TRANSLATOR_ENGINE=ebpf: not a translator engine" in capsys.readouterr().err


SHOWN = ("filter protocol all pref 64 bpf chain 0 \nfilter protocol all pref 64 bpf chain 0 "
         "handle 0x1 {obj}:[tc] direct-action not_in_hw id 108 name vnet64_xlat tag 54f8 jited \n")


class FakeSh:
    """``sh.run`` recorded: ``tc ... filter show`` answers what is attached; clang writes
    its output file."""

    def __init__(self, attached: str | None):
        self.attached, self.calls = attached, []

    def run(self, args, check=True, **kw):
        self.calls.append(args)
        out = ""
        if "show" in args and "filter" in args:
            out = SHOWN.format(obj=self.attached) if self.attached else ""
        if args[0].endswith("clang"):
            Path(args[args.index("-o") + 1]).write_bytes(b"\x7fELF")
        return subprocess.CompletedProcess(args, 0, out, "")


@pytest.fixture
def fake(monkeypatch):
    def make(attached: str | None) -> FakeSh:
        f = FakeSh(attached)
        monkeypatch.setattr(sh, "run", f.run)
        monkeypatch.setattr(sh, "tool", lambda name: f"/usr/bin/{name}")
        return f
    return make


def changes(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if "show" not in c]


def test_bpf_is_built_once_and_attached_once(tmp_path, fake):
    t = translator.Translator("host1", "v64-xl-host1", tmp_path, "02:00:00:00:00:01", 1442, True,
                              "bpf")
    f = fake(None)
    assert t.ensure_engine("fd64:64::/96", "192.0.0.1") == [
        f"BPF translator built ({_obj(t)})", "BPF translator attached to ovs0"]
    clang, qdisc, attach = changes(f.calls)
    assert clang[0] == "/usr/bin/clang"
    assert qdisc == ["/usr/bin/tc", "-n", "v64-xl-host1", "qdisc", "replace", "dev", "ovs0", "clsact"]
    assert attach[:3] == ["/usr/bin/tc", "-n", "v64-xl-host1"] and "direct-action" in attach
    assert str(tmp_path / _obj(t)) in attach and attach[-2:] == ["sec", "tc"]
    # again, with it attached: nothing built, nothing attached
    f = fake(_obj(t))
    assert t.ensure_engine("fd64:64::/96", "192.0.0.1") == []
    assert changes(f.calls) == []
    # other settings: a new build replaces the old one, file and filter
    f = fake(_obj(t))
    old = tmp_path / _obj(t)
    got = t.ensure_engine("fd64:65::/96", "192.0.0.1")
    assert len(got) == 2 and not old.exists() and len(list(tmp_path.glob("xlat-*.o"))) == 1
    assert [c[3:5] for c in changes(f.calls)[1:]] == [["qdisc", "replace"], ["filter", "replace"]]


def test_tayga_takes_the_program_off_and_leaves_none_alone(tmp_path, fake):
    t = translator.Translator("host1", "ns", tmp_path, "02:00:00:00:00:01", 1442, True)
    f = fake("xlat-0123456789ab.o")
    assert t.ensure_engine("fd64:64::/96", "192.0.0.1") == ["BPF translator removed"]
    assert changes(f.calls) == [["/usr/bin/tc", "-n", "ns", "filter", "del", "dev", "ovs0",
                                 "ingress", "pref", "64"]]
    f = fake(None)
    assert t.ensure_engine("fd64:64::/96", "192.0.0.1") == [] and changes(f.calls) == []


def test_without_clang_the_error_names_the_packages(tmp_path, monkeypatch):
    def no_tool(name):
        raise sh.CommandError(f"{name} not found")
    monkeypatch.setattr(sh, "tool", no_tool)
    t = translator.Translator("host1", "ns", tmp_path, "02:00:00:00:00:01", 1442, True, "bpf")
    with pytest.raises(sh.CommandError, match="apt-get install clang libbpf-dev"):
        t.bpf_object("fd64:64::/96", "192.0.0.1")


def _obj(t: translator.Translator) -> str:
    return translator.bpf_object_name(translator.BPF_SOURCE.read_bytes(),
                                      translator.bpf_defines("fd64:64::/96", "192.0.0.1", t.mtu))


def test_the_source_ships_with_the_package():
    text = translator.BPF_SOURCE.read_text()
    assert f"int {translator.BPF_PROGRAM}(" in text
    assert "STAT_6TO4, STAT_4TO6, STAT_TO_TAYGA" in text and len(translator.BPF_STATS) == 3


def exposed(stats) -> dict:
    registry = CollectorRegistry()
    registry.register(NodeCollector("host1", "host", "netdev", lambda: "", lambda: [],
                                    translator=stats))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples}


def test_the_metric_per_path_only_with_the_bpf_engine():
    m = exposed(lambda: {"6to4": 10, "4to6": 9, "to_tayga": 2})
    name = "vnet64_node_translator_bpf_packets_total"
    assert {labels: v for (n, labels), v in m.items() if n == name} == {
        (("node", "host1"), ("path", "6to4")): 10, (("node", "host1"), ("path", "4to6")): 9,
        (("node", "host1"), ("path", "to_tayga")): 2}
    assert not any(n.startswith("vnet64_node_translator") for n, _ in exposed(lambda: None))

    def broken():
        raise sh.CommandError("bpftool not found")
    m = exposed(broken)       # the rest of the scrape still answers
    assert ("vnet64_node_info", (("datapath", "netdev"), ("node", "host1"), ("role", "host"))) in m
    assert not any(n.startswith("vnet64_node_translator") for n, _ in m)
