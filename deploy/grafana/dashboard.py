"""Build deploy/grafana/vnet64-dashboard.json with the Grafana Foundation SDK (Grafana
Labs' typed builders, generated from Grafana's own dashboard schema).

    .venv/bin/python deploy/grafana/dashboard.py            # writes the JSON beside this file
    .venv/bin/python deploy/grafana/dashboard.py --check    # exit 1 if the JSON is stale

The dashboard reads the metrics of the node agents (``vnet64-node --metrics``) and the
controllers (``vnet64-controller --vnet64-metrics``) from a Prometheus data source chosen
on the dashboard (``$datasource``): NAT port use per VM address and port (the signal
``deploy/prometheus/vnet64-alerts.yml`` alerts on), sessions, packets not forwarded per
reason, the controllers' events, switches and pairs, conntrack entries and flows per stage.
Import it in Grafana (Dashboards > New > Import) or provision it from a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (BigValueColorMode, BigValueGraphMode, LegendDisplayMode,
                                                  LegendPlacement)
from grafana_foundation_sdk.models.dashboard import DataSourceRef, ThresholdsMode

OUT = Path(__file__).with_name("vnet64-dashboard.json")
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


_ids = iter(range(1, 1000))


def series(title: str, description: str, unit: str, *queries: prometheus.Dataquery,
           width: int = 12) -> timeseries.Panel:
    legend = common.VizLegendOptions().display_mode(LegendDisplayMode.LIST) \
        .placement(LegendPlacement.BOTTOM).show_legend(True)
    p = timeseries.Panel().id(next(_ids)).title(title).description(description).unit(unit) \
        .datasource(DS).height(8).span(width).legend(legend)
    for q in queries:
        p = p.with_target(q)
    return p


def row(title: str) -> dashboard.Row:
    return dashboard.Row(title).id(next(_ids))


def build() -> dict:
    port_use = series(
        "NAT port use per VM address and port",
        "Platform_IP ports in use over the pair's range (vnet64_nat_port_use_ratio): at 100 % new "
        "connections to that VM address and port are refused; the alert fires above 80 %.",
        "percentunit",
        query("max by (node, vm, proto, vm_ip, vm_port) (vnet64_nat_port_use_ratio)",
              "{{vm}} {{proto}} {{vm_ip}}:{{vm_port}} ({{node}})")) \
        .min(0).max(1).thresholds(
            dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
                _step(None, "green"), _step(0.8, "orange"), _step(1.0, "red")]))
    return json.loads(json.dumps(
        dashboard.Dashboard("vnet64")
        .uid("vnet64")
        .description("vnet64: NAT capacity, drops with their reasons, the controllers and the nodes")
        .tags(["vnet64", "openvswitch"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_row(row("NAT capacity (customer hosts)"))
        .with_panel(port_use)
        .with_panel(series("Highest recent connection rate per VM address and port",
                           "The highest 5-minute rate of new connections over the last hour "
                           "(vnet64_nat_new_connections_total: connections first seen at a scrape; "
                           "exact while scrapes are under 30 s apart).", "cps",
                           query("max by (vm, proto, vm_ip, vm_port) (max_over_time("
                                 "rate(vnet64_nat_new_connections_total[5m])[1h:1m]))",
                                 "{{vm}} {{proto}} {{vm_ip}}:{{vm_port}}")))
        .with_panel(series("NAT sessions per VM", "Connections services hold to each VM "
                           "(vnet64_nat_sessions; vnet64-node sessions lists them).", "short",
                           query("sum by (vm) (vnet64_nat_sessions)", "{{vm}}")))
        .with_row(row("Packets not forwarded"))
        .with_panel(series("Not forwarded, per reason", "vnet64_dropped_packets_total: every flow "
                           "that does not forward names its reason (vnet64-node stats --explain); "
                           "meter rows are punts a flood lost.", "pps",
                           query(f"sum by (reason) (rate(vnet64_dropped_packets_total[{RATE}]))",
                                 "{{reason}}")))
        .with_panel(series("Not forwarded, per node and stage", "The same, where: a node's "
                           "stage (table) or packet-in meter.", "pps",
                           query(f"sum by (node, table) (rate(vnet64_dropped_packets_total[{RATE}]))",
                                 "{{node}} {{table}}")))
        .with_row(row("Controllers"))
        .with_panel(series("Controller events", "vnet64_controller_events_total: packet-ins, pairs "
                           "installed / denied / expired / revoked, refusals at port exhaustion, "
                           "ICMP errors sent, resync sweeps.", "ops",
                           query(f"sum by (event) (rate(vnet64_controller_events_total[{RATE}]))",
                                 "{{event}}")))
        .with_panel(series("Controller errors", "vnet64_controller_errors_total: errors switches "
                           "sent back (a refused flow-mod ...) and role-logic failures; each is "
                           "also in the controller's log.", "ops",
                           query(f"sum by (scope, error) (rate(vnet64_controller_errors_total[{RATE}]))",
                                 "{{scope}} {{error}}")))
        .with_panel(series("Pairs per host", "vnet64_controller_pairs: (service endpoint, VM) pairs "
                           "set up on each customer host.", "short",
                           query("sum by (node) (vnet64_controller_pairs)", "{{node}}"), width=6))
        .with_panel(stat.Panel().id(next(_ids)).title("Switches by state").description(
            "vnet64_controller_switches: each controller's switches, ready or resyncing.")
            .datasource(DS).height(8).span(6).graph_mode(BigValueGraphMode.NONE)
            .color_mode(BigValueColorMode.VALUE)
            .with_target(query("sum by (state) (vnet64_controller_switches)", "{{state}}")))
        .with_panel(series("Last resync per switch", "vnet64_controller_resync_seconds: from a "
                           "switch's connect to ready (its flows read back, pairs adopted).", "s",
                           query("max by (node) (vnet64_controller_resync_seconds)", "{{node}}")))
        .with_panel(series("NB session", "vnet64_controller_nb_connected (1: up) per controller, "
                           "and the NB changes it applies.", "short",
                           query("min by (scope) (vnet64_controller_nb_connected)", "{{scope}} connected"),
                           query(f"sum by (scope) (rate(vnet64_controller_nb_updates_total[{RATE}]))",
                                 "{{scope}} updates/s", ref="B")))
        .with_panel(series("NB propagation lag", "From an NB write's commit (Platform nb_cfg_timestamp, "
                           "the writer's clock) to a controller's flows sent "
                           "(vnet64_controller_nb_lag_seconds) and to a node agent's convergence "
                           "(vnet64_node_nb_lag_seconds), for the newest change each applied. A "
                           "reader whose nb_cfg stays below the NB's (vnet64 platform show) is "
                           "behind.", "s",
                           query("max by (scope) (vnet64_controller_nb_lag_seconds)", "controller {{scope}}"),
                           query("max by (node) (vnet64_node_nb_lag_seconds)", "agent {{node}}", ref="B"),
                           query("max(vnet64_controller_nb_cfg) - min(vnet64_controller_nb_cfg)",
                                 "controllers' nb_cfg spread", ref="C")))
        .with_row(row("Nodes"))
        .with_panel(series("Conntrack entries per zone", "vnet64_conntrack_entries: a VNet's zone, "
                           "the IPv6 SNAT (65534) and DNAT (65533) zones, the endpoints' (65532).",
                           "short", query("sum by (node, zone) (vnet64_conntrack_entries)",
                                          "{{node}} zone {{zone}}")))
        .with_panel(series("Flows per stage", "vnet64_flows: flows in each stage of a node's "
                           "pipeline.", "short",
                           query("sum by (node, table) (vnet64_flows)", "{{node}} {{table}}")))
        .build(), cls=JSONEncoder))


def _step(value: float | None, color: str) -> object:
    from grafana_foundation_sdk.models.dashboard import Threshold
    return Threshold(value=value, color=color)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=f"Write the vnet64 Grafana dashboard to {OUT}.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the committed JSON is not what this builds")
    args = parser.parse_args(argv)
    text = json.dumps(build(), indent=2, sort_keys=True) + "\n"
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
