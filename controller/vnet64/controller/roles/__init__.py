"""Role logic: pure functions from the NB model (and a node's ports) to flows.

    service.py    the encapsulator side of a host (its service endpoints)
    customer.py   the decapsulator + stateful translator side of a host (its VMs)
    appliance.py  the SDN appliance

Each module owns its stages of the pipeline (``pipeline.py``) and returns
``flows.Flow`` values; none of them does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ports:
    """A node's br-int ports that the controller cares about, by OpenFlow number."""

    geneve: int | None = None
    xlat: int | None = None
    vifs: dict = field(default_factory=dict)   # port name -> ofport

    @classmethod
    def from_names(cls, ports: dict[str, int]) -> "Ports":
        from ...ports import GENEVE_PORT, XLAT_PORT
        return cls(geneve=ports.get(GENEVE_PORT), xlat=ports.get(XLAT_PORT),
                   vifs={n: p for n, p in ports.items() if n.startswith(("v-", "s-"))})

    def vif(self, kind: str, name: str) -> int | None:
        from ...ports import vif_port
        return self.vifs.get(vif_port(kind, name))
