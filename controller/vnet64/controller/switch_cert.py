"""Which node a switch's TLS certificate names: a switch is served only as that node.

Over TLS every switch shows a certificate of the switch CA, but the CA signs one for
every node: without more, any of them could claim another node's datapath id and be
handed that node's flows. So the controller reads the certificate's subject common name
(CN) and serves a switch only if it names the node whose datapath id the switch claims,
as OVN binds a chassis to its certificate (CN = chassis name, ``ovs-pki req -u``).

The rule: the CN, without the `` id:<uuid>`` that ``ovs-pki req NAME`` appends (``-u``
appends none), must be ``TEMPLATE`` with ``{node}`` replaced by the node's name.
``TEMPLATE`` is ``--vnet64-switch-cert-name``, default ``switch-{node}`` - the name the lab
and docs/deploy.md give each node's Open vSwitch (``ovs-pki req switch-host1``, signed
``switch``: CN ``switch-host1 id:0e0b...``); ``{node}`` alone is OVN's convention.

Pure functions: the app (``Vnet64App._bind``) decides with them, the launcher checks
the option with :func:`check_template`.
"""

from __future__ import annotations

from typing import Any

from vnet64.topology import NAME_RE

DEFAULT_TEMPLATE = "switch-{node}"
PLACEHOLDER = "{node}"
OVS_PKI_SUFFIX = " id:"     # ovs-pki req NAME (without -u): CN "NAME id:<uuid or date>"


def check_template(template: str) -> str:
    """``template`` if it is usable: ``{node}`` exactly once, no other braces, no
    whitespace, and a node name put in gives a certificate name; ValueError saying why."""
    if template.count(PLACEHOLDER) != 1:
        raise ValueError(f"wants {PLACEHOLDER} exactly once, got {template!r}")
    rest = template.replace(PLACEHOLDER, "")
    if "{" in rest or "}" in rest or any(c.isspace() for c in template):
        raise ValueError(f"wants no braces but {PLACEHOLDER} and no spaces, got {template!r}")
    return template


def common_name(cert: dict[str, Any] | None) -> str | None:
    """The subject CN of a certificate as ``ssl.SSLSocket.getpeercert()`` gives it; None
    when it has none, or more than one (which would be ambiguous)."""
    names = [v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"]
    return names[0] if len(names) == 1 else None


def certificate_node(cn: str | None, template: str = DEFAULT_TEMPLATE) -> str | None:
    """The node a certificate's CN names under ``template``, or None if it names none."""
    if not cn:
        return None
    name, sep, unique = cn.partition(OVS_PKI_SUFFIX)
    if sep and not unique:
        return None
    prefix, _, suffix = template.partition(PLACEHOLDER)
    if len(name) <= len(prefix) + len(suffix) or not name.startswith(prefix) \
            or not name.endswith(suffix):
        return None
    node = name[len(prefix):len(name) - len(suffix)]
    return node if NAME_RE.fullmatch(node) else None


def binding_problem(cn: str | None, node: str, template: str = DEFAULT_TEMPLATE) -> str | None:
    """None when a certificate with subject CN ``cn`` may serve as ``node`` (the node of
    the datapath id the switch claims); else why not, in words."""
    want = template.replace(PLACEHOLDER, node)
    if cn is None:
        return f"its certificate has no (single) common name; {node}'s must be {want}"
    named = certificate_node(cn, template)
    if named is None:
        return f"its certificate (CN {cn!r}) names no node; {node}'s must be {want}"
    if named != node:
        return f"its certificate (CN {cn!r}) is {named}'s, not {node}'s ({want})"
    return None
