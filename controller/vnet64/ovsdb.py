"""What every vnet64 client of an OVSDB server shares, on top of ovsdbapp."""

from __future__ import annotations

from typing import Any


class OwnConnection:
    """Mixin for ovsdbapp backends: the connection belongs to the instance.

    ovsdbapp's ``Backend`` keeps the connection on the *class*, so a second API
    object (another node's database, or a second NB) would silently talk to the
    first one's server. Put this mixin first in the bases.
    """

    def __init__(self, conn: Any, *args: Any, **kwargs: Any):
        self._conn = conn
        super().__init__(conn, *args, **kwargs)

    @property
    def ovsdb_connection(self) -> Any:
        return self._conn

    @ovsdb_connection.setter
    def ovsdb_connection(self, value: Any) -> None:
        self._conn = value

    def close(self) -> None:
        """Stop the connection's thread and close the IDL."""
        try:
            self._conn.stop(timeout=5)
        except TypeError:  # older ovsdbapp: stop() without timeout
            self._conn.stop()
