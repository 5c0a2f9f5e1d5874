"""The NB as a Raft cluster: create, join, read and leave one member (``vnet64 nb ...``).

A member is an ``NbServer`` whose database file is a Raft member's: ``create_cluster``
makes the first one (``ovsdb-tool create-cluster``), ``join_cluster`` one more
(``ovsdb-tool join-cluster``, then waits until the cluster has taken it in);
``cluster_status`` reads ``ovs-appctl cluster/status`` into a dict, and
``leave_cluster`` takes the member out for good (``cluster/leave``).

Nothing is half-made: a member that does not come up, or does not get into the
cluster in time, is stopped again and the database file it was given is removed.
Asking again for a member that already exists (same database, same address)
starts it if it is down and otherwise does nothing, and says which.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from .server import SCHEMA_NAME, NbServer, NbServerError, _tool, parse_cluster_address

UNKNOWN_CLUSTER = "unknown cluster"    # cluster/status of a database the server no longer has


@dataclass(frozen=True)
class Outcome:
    pid: int
    changed: bool       # False: the member existed and was running already
    message: str


def _appctl(server: NbServer, *command: str, timeout: float = 5.0) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("ovs-appctl"), f"--timeout={max(1, round(timeout))}",
                           "-t", str(server.ctl_path), *command],
                          capture_output=True, text=True)


def _describe_db(server: NbServer) -> str:
    local = server.db_local_address()
    return f"the Raft member at {local}" if local else "a standalone NB database"


def _existing_member(server: NbServer, local: str) -> Outcome | None:
    """The member asked for when it exists already (started if down); None if there is no
    database yet; an error when the directory holds another database."""
    if not server.db_path.exists():
        pid = server.pid()
        if pid:
            raise NbServerError(f"an NB is already running from {server.run_dir} (pid {pid}) with "
                                f"another database: stop it first (vnet64 nb stop)")
        return None
    if server.db_local_address() != local:
        raise NbServerError(f"{server.db_path} already holds {_describe_db(server)}: left as it "
                            f"is (remove it, or give another --data-dir)")
    pid = server.pid()
    if pid:
        return Outcome(pid, False, f"the member at {local} is already running (pid {pid}): "
                                   f"nothing done")
    pid = server.start()
    return Outcome(pid, True, f"the member at {local} existed and was down: started (pid {pid})")


def _undo(server: NbServer) -> None:
    server.stop()
    for path in (server.db_path, server.db_path.with_name(f".{server.db_path.name}.~lock~")):
        path.unlink(missing_ok=True)


def _make_member(server: NbServer, timeout: float, joining: bool) -> int:
    """Create the database (create-cluster or join-cluster), start the server and wait
    until it is a cluster member; undone on any failure."""
    try:
        pid = server.start(timeout=timeout)
        deadline = time.monotonic() + timeout
        status: dict | str = "no status"
        while time.monotonic() < deadline:
            status = cluster_status(server)
            if status["status"] == "cluster member":
                return pid
            time.sleep(0.1)
    except BaseException:
        _undo(server)
        raise
    _undo(server)
    state = status["status"] if isinstance(status, dict) else status
    if joining:
        raise NbServerError(
            f"could not join the cluster through {', '.join(server.cluster_remotes)} within "
            f"{timeout:g}s (status: {state}): is a member listening there, and is it the "
            f"{SCHEMA_NAME} cluster? Nothing was kept (see {server.log_path})")
    raise NbServerError(f"the new cluster did not come up within {timeout:g}s (status: {state}); "
                        f"nothing was kept (see {server.log_path})")


def create_cluster(server: NbServer, timeout: float = 10.0) -> Outcome:
    """Make ``server`` the first member of a new cluster at ``server.cluster_local``."""
    local = server.cluster_local
    if not local or server.cluster_remotes:
        raise NbServerError("create-cluster takes this member's address and no other members")
    parse_cluster_address(local, "the local address")
    existing = _existing_member(server, local)
    if existing:
        return existing
    pid = _make_member(server, timeout, joining=False)
    return Outcome(pid, True, f"created the cluster: first member at {local} (pid {pid}), "
                              f"database {server.db_path}")


def join_cluster(server: NbServer, timeout: float = 10.0) -> Outcome:
    """Make ``server`` join the cluster whose members (some of them) are
    ``server.cluster_remotes``, as the member at ``server.cluster_local``."""
    local = server.cluster_local
    if not local or not server.cluster_remotes:
        raise NbServerError("join-cluster takes this member's address and at least one member's")
    parse_cluster_address(local, "the local address")
    for remote in server.cluster_remotes:
        parse_cluster_address(remote, "the member address")
        if remote == local:
            raise NbServerError(f"{remote} is this member's own address: name members of the "
                                f"cluster to join")
    existing = _existing_member(server, local)
    if existing:
        return existing
    pid = _make_member(server, timeout, joining=True)
    return Outcome(pid, True, f"joined the cluster as the member at {local} (pid {pid}), "
                              f"database {server.db_path}")


def _running_member(server: NbServer) -> int:
    pid = server.pid()
    if not pid:
        raise NbServerError(f"no NB running from {server.run_dir}"
                            + (f" (its database {server.db_path} is {_describe_db(server)}; "
                               f"'vnet64 nb start' starts it)" if server.db_path.exists() else ""))
    return pid


def cluster_status(server: NbServer) -> dict:
    """This member's view of the cluster (``parse_cluster_status``)."""
    _running_member(server)
    proc = _appctl(server, "cluster/status", SCHEMA_NAME)
    text = (proc.stdout + proc.stderr).strip()
    if proc.returncode:
        if "is not a valid command" in text:    # a standalone server has no cluster/*
            raise NbServerError(f"the NB running from {server.run_dir} is not a Raft member "
                                f"(a standalone database: {server.db_path})")
        if UNKNOWN_CLUSTER in text:
            raise NbServerError(f"the NB running from {server.run_dir} serves no cluster "
                                f"(it has left its cluster)")
        raise NbServerError(f"ovs-appctl cluster/status failed: {text}")
    return parse_cluster_status(proc.stdout)


def leave_cluster(server: NbServer, timeout: float = 10.0) -> str:
    """Take this member out of its cluster (``cluster/leave``), stop its server and move
    its database aside (``nb.db.left``), so the directory can make or join a member
    again. Needs the cluster's leader and a majority to remove it; until then the
    server stays up and keeps trying, and the error says so."""
    status = cluster_status(server)
    proc = _appctl(server, "cluster/leave", SCHEMA_NAME)
    if proc.returncode:
        raise NbServerError(f"cluster/leave refused: {(proc.stdout + proc.stderr).strip()}")
    deadline = time.monotonic() + timeout
    state = "leaving cluster"
    while time.monotonic() < deadline:
        check = _appctl(server, "cluster/status", SCHEMA_NAME)
        text = check.stdout + check.stderr
        if check.returncode and UNKNOWN_CLUSTER in text:
            break
        state = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.startswith("Status:")), state)
        if state == "left cluster":
            break
        time.sleep(0.1)
    else:
        raise NbServerError(f"the member at {status['address']} has not left within {timeout:g}s "
                            f"(status: {state}): a majority of the cluster must be up to remove "
                            f"it. Its server is still running and keeps trying")
    server.stop()
    moved = server.db_path.with_name(server.db_path.name + ".left")
    server.db_path.replace(moved)
    server.db_path.with_name(f".{server.db_path.name}.~lock~").unlink(missing_ok=True)
    return (f"the member at {status['address']} ({status['server_id']}) left the cluster "
            f"{status['cluster_id']}; its server is stopped and its database moved to {moved}")


# ---------------------------------------------------------------------------
# cluster/status text -> dict

_SERVER_LINE = re.compile(r"^\s+(?P<sid>[0-9a-f]+) \((?P=sid) at (?P<address>\S+)\)(?P<rest>.*)$")
_CONNECTION = re.compile(r"^(\()?(<-|->)([0-9a-f]+)\)?$")


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def parse_cluster_status(text: str) -> dict:
    """``ovs-appctl cluster/status`` (OVS 3.x) as a dict: this server, its role, the
    leader, term, log indexes, and every member with its address and whether this
    server holds a live connection with it. ``connected`` is this member's view:
    a connection in parentheses is one being (re)tried; one to a member whose id is
    not known yet (``->0000``, to the address a member joined through) is not counted."""
    fields: dict[str, str] = {}
    servers: list[dict] = []
    in_servers = False
    for line in text.splitlines():
        if in_servers:
            m = _SERVER_LINE.match(line)
            if m:
                rest = m.group("rest")
                last = re.search(r"last msg (\d+) ms ago", rest)
                servers.append({"id": m.group("sid"), "address": m.group("address"),
                                "self": "(self)" in rest,
                                "last_msg_ms": int(last.group(1)) if last else None,
                                "next_index": _int(_match(r"next_index=(\d+)", rest)),
                                "match_index": _int(_match(r"match_index=(\d+)", rest))})
                continue
            in_servers = False
        if line.startswith("Servers:"):
            in_servers = True
        elif ":" in line and not line.startswith(" "):
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()

    live = set()
    for conn in fields.get("Connections", "").split():
        m = _CONNECTION.match(conn)
        if m and not m.group(1) and set(m.group(3)) != {"0"}:
            live.add(m.group(3))
    own = _short(fields.get("Server ID"))
    leader = fields.get("Leader", "unknown")
    leader = own if leader == "self" else (None if leader == "unknown" else leader)
    log = re.match(r"\[(\d+), (\d+)\]", fields.get("Log", ""))
    log_start, log_end = (int(log.group(1)), int(log.group(2))) if log else (None, None)
    uncommitted = _int(fields.get("Entries not yet committed"))
    unapplied = _int(fields.get("Entries not yet applied"))
    for s in servers:
        s["connected"] = True if s["self"] else s["id"] in live
        s["role"] = (fields.get("Role") if s["self"] else
                     "leader" if s["id"] == leader else None)
    return {
        "name": fields.get("Name"),
        "cluster_id": _full(fields.get("Cluster ID")),
        "server_id": own,
        "address": fields.get("Address"),
        "status": fields.get("Status"),
        "role": fields.get("Role"),
        "term": _int(fields.get("Term")),
        "leader": leader,
        "leader_address": next((s["address"] for s in servers if s["id"] == leader), None),
        "vote": fields.get("Vote"),
        "election_timer_ms": _int(fields.get("Election timer")),
        # the log holds entries log_start .. log_end-1 (raft.c prints [log_start, log_end])
        "log_start": log_start,
        "log_end": log_end,
        "commit_index": log_end - 1 - uncommitted if log_end is not None and uncommitted is not None
        else None,
        "applied_index": log_end - 1 - unapplied if log_end is not None and unapplied is not None
        else None,
        "disconnections": _int(fields.get("Disconnections")),
        "servers": servers,
    }


def _match(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None


def _short(value: str | None) -> str | None:
    return value.split()[0] if value else None


def _full(value: str | None) -> str | None:
    """``9ddb (9ddba797-...)`` -> the full id."""
    m = re.search(r"\(([0-9a-f-]+)\)", value or "")
    return m.group(1) if m else _short(value)


def status_text(status: dict) -> str:
    """The status for a person: a few lines, then one row per member."""
    me = status["server_id"]
    lines = [
        f"cluster   {status['name']} {status['cluster_id']}",
        f"this      {me} at {status['address']}: {status['role'] or '-'}, term {status['term']}"
        + ("" if status["status"] == "cluster member" else f" ({status['status']})"),
        "leader    " + (f"{status['leader']} at {status['leader_address']}"
                        + (" (this member)" if status["leader"] == me else "")
                        if status["leader"] else "none known (an election is under way)"),
        f"log       entries {status['log_start']}..{(status['log_end'] or 1) - 1}, "
        f"commit index {status['commit_index']}, applied {status['applied_index']}",
        "",
    ]
    rows = [["SERVER", "ADDRESS", "ROLE", "CONNECTED", "LAST MSG"]]
    for s in status["servers"]:
        rows.append([s["id"], s["address"], s["role"] or "-",
                     "this member" if s["self"] else "yes" if s["connected"] else "no",
                     f"{s['last_msg_ms']} ms ago" if s["last_msg_ms"] is not None else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
