"""vnet64.node.drops on ovs-ofctl's own text (lines as OVS 3.1 prints them, from the lab):
the counts per reason that ``vnet64-node stats`` prints and the agent exports."""

from __future__ import annotations

import json

from vnet64.node import cli, drops

FLOWS = """\
OFPST_FLOW reply (OF1.5) (xid=0x2):
 cookie=0x108000200000000, duration=3.756s, table=0, n_packets=0, n_bytes=0, idle_age=3, priority=0 actions=drop
 cookie=0x108000400000000, duration=3.756s, table=1, n_packets=7, n_bytes=700, idle_age=3, priority=10,tun_id=0x6464,tun_src=192.168.64.10,tun_metadata0=0xdae62e45 actions=drop
 cookie=0x108000300000000, duration=3.756s, table=1, n_packets=2, n_bytes=180, idle_age=3, priority=0 actions=drop
 cookie=0x108000617bcfcd2, duration=9.1s, table=10, n_packets=300, n_bytes=24000, idle_age=1, priority=10,ipv6,in_port=5,ipv6_dst=fd41::/16 actions=drop
 cookie=0x108000f17bcfcd2, duration=9.1s, table=14, n_packets=5000, n_bytes=600000, idle_age=1, priority=120,reg0=0x1/0x1,ipv6,in_port=5 actions=meter:2,CONTROLLER:65535
 cookie=0x108001400000000, duration=3.762s, table=30, n_packets=6, n_bytes=696, idle_age=1, priority=100,ipv6,ipv6_dst=ff00::/8 actions=drop
 cookie=0x105000000000007, duration=3.0s, table=20, n_packets=40, n_bytes=4000, idle_timeout=300, priority=100,ipv6,ipv6_src=fd00:5e:1::10,ipv6_dst=fd41::3930:1f:6600:a00:4 actions=ct(commit,zone=65534,table=21,nat(src=fd64:64::c612:1))
 cookie=0x1060000cdbf321f, duration=1.0s, table=20, n_packets=3, n_bytes=300, hard_timeout=5, priority=200,ipv6,ipv6_src=fd00:5e:1::11,ipv6_dst=fd41::3930:1f:6600:a00:4 actions=drop
 cookie=0x208000400000000, duration=47.095s, table="route", n_packets=9, n_bytes=900, idle_age=47, priority=0 actions=drop
"""

METERS = """\
OFPST_METER reply (OF1.5) (xid=0x2):
meter:1 flow_count:1 packet_in_count:12 byte_in_count:1200 duration:28.439s bands:
0: packet_count:4 byte_count:400

meter:2 flow_count:7 packet_in_count:0 byte_in_count:0 duration:28.439s bands:
0: packet_count:0 byte_count:0

meter:9 flow_count:0 packet_in_count:0 byte_in_count:0 duration:28.439s bands:
0: packet_count:99 byte_count:9900
"""

TABLES = """\
OFPST_TABLE reply (OF1.5) (xid=0x2):
  table 0:
    active=5, lookup=6, matched=6

  table 1:
    active=5, lookup=0, matched=0

  table 2: ditto

  table 3:
    active=0, lookup=0, matched=0

  tables 4...9: ditto

  table 10:
    active=9, lookup=0, matched=0
"""


def test_flows_are_counted_under_their_reasons_and_only_those():
    got = drops.parse_flows(FLOWS)
    assert drops.Count("unknown_destination", "drop", "from_tunnel", 7, 700) in got
    assert drops.Count("untrusted_tunnel", "drop", "from_tunnel", 2, 180) in got
    assert drops.Count("spoofed_source", "drop", "from_endpoint", 300, 24000) in got
    assert drops.Count("translator_multicast", "drop", "from_translator", 6, 696) in got
    assert drops.Count("refused_pair", "drop", "pair", 3, 300) in got          # a deny flow
    assert drops.Count("unknown_destination", "drop", "route", 9, 900) in got  # table by name
    # a pair's flow forwards; the Packet Too Big punt's counter counts every packet checked
    assert {c.reason for c in got} == {"unknown_port", "unknown_destination", "untrusted_tunnel",
                                       "spoofed_source", "translator_multicast", "refused_pair"}


def test_meter_bands_count_what_floods_of_punts_lost():
    assert drops.parse_meters(METERS) == [
        drops.Count("new_pair_rate", "meter", "meter 1", 4, 400),
        drops.Count("error_rate", "meter", "meter 2", 0, 0),
    ]   # meter 9 is not one of ours


def test_flows_per_stage():
    assert drops.parse_tables(TABLES, "host") == {"classify": 5, "from_tunnel": 5, "from_endpoint": 9}
    assert drops.parse_tables(TABLES, "appliance") == {"classify": 5, "from_tunnel": 5, "route": 5}


def test_totals_add_up_a_reason_over_its_stages_and_sort_by_packets():
    rows = drops.totals(drops.parse_flows(FLOWS) + drops.parse_meters(METERS))
    assert [r["reason"] for r in rows][:2] == ["spoofed_source", "unknown_destination"]
    dest = next(r for r in rows if r["reason"] == "unknown_destination")
    assert (dest["packets"], dest["bytes"], dest["where"]) == (16, 1600, ["from_tunnel", "route"])
    zero = next(r for r in rows if r["reason"] == "unknown_port")
    assert zero["packets"] == 0      # a reason this node can count is listed at 0 too


def test_render_explains_every_reason():
    text = drops.render(drops.totals(drops.parse_flows(FLOWS) + drops.parse_meters(METERS)), explain=True)
    for reason in ("spoofed_source", "new_pair_rate", "refused_pair"):
        assert reason in text
    assert drops.explanation("spoofed_source") in text
    assert drops.explanation("new_pair_rate") in text
    assert "packet_too_big: counted by the controller" in text
    assert drops.explanation("no-such") .startswith("a reason this version does not know")
    assert "no flow here names a drop reason" in drops.render([])


def test_read_asks_for_the_two_cookie_filters_and_the_meters():
    calls = []

    def ofctl(*args: str) -> str:
        calls.append(args)
        return METERS if "meter-stats" in args else FLOWS if "cookie=0x8000000000000/0xff000000000000" in args else ""
    got = drops.read(ofctl, "br-int")
    assert calls == [("-O", "OpenFlow15", "--no-names", "dump-flows", "br-int", "cookie=0x8000000000000/0xff000000000000"),
                     ("-O", "OpenFlow15", "--no-names", "dump-flows", "br-int", "cookie=0x6000000000000/0xff000000000000"),
                     ("-O", "OpenFlow15", "meter-stats", "br-int")]
    assert len(got) == len(drops.parse_flows(FLOWS)) + 2


def test_vnet64_node_stats_json(monkeypatch, capsys):
    monkeypatch.setattr(cli, "setup_logging", lambda level, log_file: None)   # no handler on capsys's stream
    monkeypatch.setattr(cli.sh, "run", lambda args, env=None, **kw: type("P", (), {
        "stdout": METERS if "meter-stats" in args else FLOWS})())
    assert cli.main(["stats", "--json", "--ovs", "unix:/nonexistent/db.sock"]) == 0
    rows = {r["reason"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["spoofed_source"]["packets"] == 300 * 2       # both cookie filters answered FLOWS here
    assert rows["spoofed_source"]["meaning"] == drops.explanation("spoofed_source")
