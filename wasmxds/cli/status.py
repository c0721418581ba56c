"""``wasmxds status`` and ``wasmxds plugins``: what a running wasmxds is doing, as tables.

Both read the admin server's debug endpoints, like ``istioctl proxy-status``
reads istiod's; ``-o json`` prints the endpoint's JSON unchanged. An admin port
served over TLS (``serve --admin-tls-cert``) is read over HTTPS, with a client
certificate when it asks for one (``--admin-client-ca``): off loopback that is
what opens its debug pages.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from wasmxds.cli.adminclient import add_admin_options, print_json, request, table

__all__ = ["register"]


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_admin_options(parser)
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="(default %(default)s)"
    )


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status",
        help="connected proxies and whether each is in sync",
        description=(
            "One line per connected proxy: its namespace, the certificate identity (SPIFFE ID) "
            "that proved it or 'metadata' when it is the proxy's claim, how it talks xDS, and "
            "per resource type whether it acknowledged what it was sent (SYNCED), has not "
            "answered or acknowledged the latest (STALE), rejected it (NACKED) or got nothing "
            "yet (NOT SENT)."
        ),
    )
    _add_common(status)
    status.set_defaults(run=run_status)
    plugins = commands.add_parser(
        "plugins",
        help="WasmPlugins, their modules, what is served and where",
        description=(
            "One line per WasmPlugin: where it came from, its module's state (ready, stale, "
            "failed, pending), whether the filter, its last good version (kept while an "
            "edit's module is pending or failed) or a fail-strategy stand-in is served, and "
            "how many connected proxies run it. -o json adds errors, digests and proxy names."
        ),
    )
    _add_common(plugins)
    plugins.set_defaults(run=run_plugins)


def _age(iso: str) -> str:
    since = datetime.datetime.fromisoformat(iso)
    seconds = int((datetime.datetime.now(datetime.UTC) - since).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _type_cell(types: dict[str, Any], name: str) -> str:
    state = types.get(name)
    if state is None:
        return "-"
    return f"{state['state']} ({len(state['resources'])})"


def run_status(args: argparse.Namespace) -> int:
    proxies = request(args, "/debug/syncz")
    if args.output == "json":
        return print_json(proxies)
    if not proxies:
        print("no proxies connected")
        return 0
    rows = [["NODE", "NAMESPACE", "IDENTITY", "XDS", "CDS", "LDS", "ECDS", "AGE", "PEER"]]
    for proxy in proxies:
        types = proxy["types"]
        rows.append(
            [
                proxy["node"],
                proxy["namespace"],
                # Older servers do not report it: their namespaces are metadata claims.
                proxy.get("verified_identity", "metadata"),
                f"{proxy['flavour']}/{proxy['service']}",
                _type_cell(types, "CDS"),
                _type_cell(types, "LDS"),
                _type_cell(types, "ECDS"),
                _age(proxy["connected_since"]),
                proxy["peer"],
            ]
        )
    sys.stdout.write(table(rows))
    nacked = [p for p in proxies for t in p["types"].values() if t["state"] == "NACKED"]
    for proxy in nacked:
        for name, state in proxy["types"].items():
            if state["state"] == "NACKED":
                print(f"{proxy['node']} rejected {name}: {state['last_nack']}")
    return 0


def _size(size: int | None) -> str:
    if size is None:
        return ""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}{unit}"
    return f"{size}B"


def run_plugins(args: argparse.Namespace) -> int:
    plugins = request(args, "/debug/plugins")
    if args.output == "json":
        return print_json(plugins)
    if not plugins:
        print("no WasmPlugins")
        return 0
    rows = [["PLUGIN", "MODULE", "STATE", "SERVED", "PROXIES", "SOURCE"]]
    for plugin in plugins:
        module = plugin["module"]
        digest = module.get("digest")
        module_text = (
            f"sha256:{digest[:12]} {_size(module.get('size'))}" if digest else module["url"]
        )
        served = plugin["served"]
        if plugin["standin"]:
            served = plugin["standin"]["kind"]
        rows.append(
            [
                plugin["name"],
                module_text,
                module["state"],
                served,
                str(len(plugin["proxies"])),
                plugin["source"],
            ]
        )
    sys.stdout.write(table(rows))
    for plugin in plugins:
        print_why(plugin)
    return 0


def print_why(plugin: dict[str, Any]) -> None:
    """One line on why a plugin's module is not what proxies run, and what happens next."""
    kept = plugin.get("last_good")  # absent from older servers' answers
    standin = plugin.get("standin")
    action = plugin.get("action")  # set when nothing retries (too large for inline delivery)
    error = plugin["module"].get("error")
    if action:
        # The module is fetched (no module error): the reason is the delivery's.
        error = (kept or {}).get("reason") or (standin or {}).get("reason") or error
    if not error:
        return
    if kept:
        digest = f" sha256:{kept['digest'][:12]}" if kept.get("digest") else ""
        until = f"; {action}" if action else ", until this module is fetched"
        print(
            f"{plugin['name']}: {error} (proxies keep the last good version,"
            f" {kept['url']}{digest}{until})"
        )
    elif action:
        print(f"{plugin['name']}: {error} (proxies get the stand-in; {action})")
    else:
        print(f"{plugin['name']}: {error}")
