"""Role logic: pure functions from the NB model (and a node's ports) to flows.

    service.py    the encapsulator side of a host (its service endpoints)
    customer.py   the decapsulator + stateful translator side of a host (its VMs)
    appliance.py  the SDN appliance

Each module owns its stages of the pipeline (``pipeline.py``) and returns
``flows.Flow`` values; none of them does I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..model import Binding, Model


@dataclass(frozen=True)
class Ports:
    """A node's br-int ports that the controller cares about, by OpenFlow number.

    ``geneve`` and ``xlat`` are the node agent's own ports, known by their names
    (``vnet64.ports.GENEVE_PORT``, ``XLAT_PORT``). A VM's or an endpoint's port is
    known only through its binding (``model.Binding``): it is wired on a node when it is
    bound to that node and the bound interface is on the switch, under the switch's
    number for it (the NB's ofport is the agent's view, not used). An interface that
    several bindings claim is wired for none of them (``contested``).
    """

    geneve: int | None = None
    xlat: int | None = None
    vifs: dict = field(default_factory=dict)   # (kind, VM or endpoint name) -> ofport
    contested: tuple = ()                      # interface names bound to more than one

    @classmethod
    def build(cls, switch_ports: Mapping[str, int], bindings: Iterable[Binding]) -> "Ports":
        """From the switch's port descriptions (interface name -> OpenFlow port number)
        and the bindings to the switch's node."""
        from ...ports import GENEVE_PORT, XLAT_PORT
        present = [b for b in bindings if b.port in switch_ports]
        claims = Counter(b.port for b in present)
        return cls(geneve=switch_ports.get(GENEVE_PORT), xlat=switch_ports.get(XLAT_PORT),
                   vifs={(b.kind, b.logical_port): switch_ports[b.port] for b in present
                         if claims[b.port] == 1},
                   contested=tuple(sorted(p for p, n in claims.items() if n > 1)))

    @classmethod
    def of(cls, model: Model, node: str, switch_ports: Mapping[str, int]) -> "Ports":
        """``build`` with the model's bindings to ``node``."""
        return cls.build(switch_ports, model.bindings_on(node))

    def vif(self, kind: str, name: str) -> int | None:
        """The OpenFlow port of the VM (``kind="vm"``) or endpoint (``"endpoint"``) called
        ``name``, if it is bound to this node and its interface is on the switch."""
        return self.vifs.get((kind, name))
