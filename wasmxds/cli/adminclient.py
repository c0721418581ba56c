"""Talking to a running wasmxds's admin port, for the commands that read or steer it.

Shared by ``wasmxds status``/``plugins`` and ``wasmxds rollouts``/``rollout``: the
same ``--admin-*`` options, HTTPS with a client certificate when given, and the
same sentences when nothing, something else, or a refusing wasmxds answers.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from wasmxds.settings import ADMIN_ADDRESS

__all__ = ["add_admin_options", "print_json", "request", "table"]

_ELSEWHERE = (
    "point this command at the right one with --admin-address HOST:PORT"
    " (the --admin-address that `wasmxds serve` was started with)"
)


def add_admin_options(parser: argparse.ArgumentParser) -> None:
    """``--admin-address`` and the TLS files to reach it with."""
    parser.add_argument(
        "--admin-address",
        # The address `wasmxds serve` listens on unless told otherwise.
        default=ADMIN_ADDRESS.default,
        metavar="HOST:PORT",
        help="the admin address of the wasmxds to ask (default %(default)s)",
    )
    parser.add_argument(
        "--admin-ca",
        type=Path,
        metavar="FILE",
        help="the CA that signed the admin port's certificate (serve --admin-tls-cert); asks"
        " over HTTPS",
    )
    parser.add_argument(
        "--admin-cert",
        type=Path,
        metavar="FILE",
        help="a client certificate from the admin client CA (serve --admin-client-ca), which"
        " opens the debug pages (and, with --debug-identity, rollout steering) on a"
        " non-loopback admin address; asks over HTTPS",
    )
    parser.add_argument(
        "--admin-key", type=Path, metavar="FILE", help="the private key of --admin-cert"
    )


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS settings to ask with, or None for plain HTTP."""
    if args.admin_key is not None and args.admin_cert is None:
        raise SystemExit("wasmxds: --admin-key needs --admin-cert (the certificate it belongs to)")
    if args.admin_ca is None and args.admin_cert is None:
        return None
    try:
        # No CA given: the system's roots, as for any HTTPS server.
        context = ssl.create_default_context(
            cafile=None if args.admin_ca is None else str(args.admin_ca)
        )
        if args.admin_cert is not None:
            key = None if args.admin_key is None else str(args.admin_key)
            context.load_cert_chain(str(args.admin_cert), key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"wasmxds: cannot use the admin TLS files: {exc}") from exc
    return context


def _refused(url: str, response: httpx.Response) -> SystemExit:
    refusal = response.text.strip().rstrip(".")
    return SystemExit(
        f"wasmxds: {url} refused: {refusal}. Run this command on the"
        " wasmxds host against a loopback admin address, or give --admin-ca,"
        " --admin-cert and --admin-key (a client certificate from serve's"
        " --admin-client-ca)."
    )


def _answer(url: str, method: str, response: httpx.Response) -> Any:
    if response.status_code == 403:
        raise _refused(url, response)
    if method == "POST" and response.status_code in (404, 409):
        sentence = response.text.strip()
        # aiohttp's own 404 for a path it has no route for: a wasmxds without controls.
        if response.status_code == 404 and sentence.startswith("404:"):
            raise SystemExit(
                f"wasmxds: {url}: this wasmxds has no rollout controls (an older version?);"
                f" if it is not a wasmxds, {_ELSEWHERE}"
            )
        raise SystemExit(f"wasmxds: {sentence}")
    response.raise_for_status()
    return response.json()


def request(args: argparse.Namespace, path: str, method: str = "GET") -> Any:
    """The JSON a wasmxds admin server answers at ``path``; SystemExit with a sentence
    saying what to do when nothing, something else or a refusal answers."""
    address = args.admin_address
    context = _tls(args)
    url = f"{'http' if context is None else 'https'}://{address}{path}"
    try:
        response = httpx.request(
            method, url, timeout=10, verify=True if context is None else context
        )
        return _answer(url, method, response)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        if isinstance(exc.__context__, ssl.SSLError):
            raise SystemExit(
                f"wasmxds: the TLS handshake with {address} failed ({exc}); give the CA that"
                " signed its certificate with --admin-ca FILE, and a client certificate from its"
                " --admin-client-ca with --admin-cert/--admin-key if it asks for one"
            ) from exc
        raise SystemExit(
            f"wasmxds: no wasmxds answers at admin address {address} ({exc}); is"
            f" `wasmxds serve` running? If it is, {_ELSEWHERE}"
        ) from exc
    except ValueError as exc:  # an answer, but not the JSON a wasmxds admin server sends
        raise SystemExit(
            f"wasmxds: {url} did not answer like a wasmxds admin server ({exc}); {_ELSEWHERE}"
        ) from exc
    except httpx.HTTPStatusError as exc:
        raise SystemExit(
            f"wasmxds: cannot read {url}: {exc}; if no wasmxds admin server is there, {_ELSEWHERE}"
        ) from exc
    except httpx.HTTPError as exc:
        # A TLS port asked in plain HTTP drops the connection without an answer; one that
        # wants a client certificate ends the handshake when it gets none.
        if context is None:
            hint = "; if it serves HTTPS, add --admin-ca FILE"
        elif args.admin_cert is None:
            hint = "; if it asks for a client certificate, add --admin-cert and --admin-key"
        else:
            hint = ""
        raise SystemExit(f"wasmxds: cannot read {url}: {str(exc).rstrip('.')}{hint}") from exc


def print_json(data: Any) -> int:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"
