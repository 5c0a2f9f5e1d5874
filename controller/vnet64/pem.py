"""TLS files (PEM, e.g. made with ``ovs-pki``) loaded into an ``ssl.SSLContext``, each
checked first so that the error names the one file that cannot be used and why.

One place for the NB's clients (:mod:`vnet64.ovsdb`) and the OpenFlow listener
(:mod:`vnet64.controller.launcher`): they differ only in how they name the files
("TLS private key" or ``--ctl-privkey``) and in the error they raise.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable


def load(ctx: ssl.SSLContext, private_key: str, certificate: str, ca_cert: str,
         names: tuple[str, str, str], error: Callable[[str], Exception]) -> ssl.SSLContext:
    """Load ``certificate`` with its ``private_key`` and trust ``ca_cert``; ``names`` are
    how the three are called in messages. Raises ``error(message)``: a file missing,
    a directory, unreadable, the key and certificate not a pair, the CA not a certificate."""
    for name, path in zip(names, (private_key, certificate, ca_cert)):
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise error(f"{name} {path}: no such file") from None
        except IsADirectoryError:
            raise error(f"{name} {path}: a directory, not a PEM file") from None
        except OSError as exc:
            raise error(f"{name} {path}: cannot read it ({exc.strerror})") from None
    try:
        ctx.load_cert_chain(certificate, private_key)
    except (ssl.SSLError, OSError) as exc:
        raise error(f"{names[1]} {certificate} and {names[0]} {private_key}: not a PEM "
                    f"certificate and its key ({getattr(exc, 'reason', None) or exc})") from None
    try:
        ctx.load_verify_locations(ca_cert)
    except (ssl.SSLError, OSError) as exc:
        raise error(f"{names[2]} {ca_cert}: not a PEM certificate "
                    f"({getattr(exc, 'reason', None) or exc})") from None
    return ctx
