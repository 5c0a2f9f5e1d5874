"""Role logics for tests, loaded as ``--vnet64-logic tests.support.logic:NullLogic``.

Importable when the repository root is on ``sys.path`` (``python -m pytest`` from the
root puts it there; a subprocess needs ``PYTHONPATH=<root>`` or the root as its cwd).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from vnet64.controller.flows import Message, TableMap


class NullLogic:
    """A logic that programs nothing and answers nothing. Never the default."""

    TABLES: ClassVar[TableMap] = TableMap("null", (("main", 0),))

    def __init__(self, load_model: Callable[[], Any] | None = None):
        self.load_model = load_model

    def switch_connected(self, dpid: int, ports: dict[str, int]):
        return self.TABLES, []

    def resynced(self, dpid: int, flows: list) -> list[Message]:
        return []

    def switch_disconnected(self, dpid: int) -> None:
        pass

    def ports_changed(self, dpid: int, ports: dict[str, int]) -> list[Message]:
        return []

    def packet_in(self, dpid: int, table_id: int, in_port: int, data: bytes) -> list[Message]:
        return []

    def flow_removed(self, dpid: int, cookie: int, reason: int) -> list[Message]:
        return []

    def nb_changed(self, delta: Any = None) -> dict[int, list[Message]]:
        return {}
