"""A switch as os-ken's ``Datapath`` looks to the app, without a socket: it numbers the
messages it is given (``set_xid``) and keeps the bytes it is asked to send (``writes``)."""

from __future__ import annotations

from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp


class RecordingDatapath(ofproto_protocol.ProtocolDesc):
    def __init__(self, dpid: int, address: tuple[str, int]):
        super().__init__(ofp.OFP_VERSION)
        self.id = dpid
        self.address = address
        self.xid = 100
        self.ports: dict = {}
        self.writes: list[bytes] = []

    def set_xid(self, msg):
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send(self, buf, close_socket=False):
        self.writes.append(bytes(buf))
        return True


def record_datapaths(monkeypatch) -> list:
    """Every ``launcher.ClosingDatapath`` made from now on (the switches a listener or
    connector took), in order: the launcher's class replaced by a recording subclass."""
    from vnet64.controller import launcher
    made: list = []

    class Recording(launcher.ClosingDatapath):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(launcher, "ClosingDatapath", Recording)
    return made
