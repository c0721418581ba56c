"""``wasmxds rollouts`` and ``wasmxds rollout ACTION NS/NAME``: see and steer staged rollouts.

``rollouts`` reads the admin server's ``/debug/rollouts`` (``-o json`` prints it
unchanged); ``rollout pause|resume|promote|abort`` POSTs to
``/rollouts/NS/NAME/ACTION`` and prints the rollout as it stands after the action.
On a loopback admin address anyone on the host may steer; elsewhere only a client
certificate a ``serve --debug-identity`` names (``--admin-cert``/``--admin-key``).
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from wasmxds.cli.adminclient import add_admin_options, print_json, request, table

__all__ = ["register"]

_ACTIONS = {
    "pause": "hold it at its step (a NACK or bad health still rolls it back)",
    "resume": "let a paused rollout advance again (its step bakes again from now)",
    "promote": "give every proxy the new version now",
    "abort": "give every proxy the previous version again (not retried until the plugin changes)",
}


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="(default %(default)s)"
    )


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollouts = commands.add_parser(
        "rollouts",
        help="staged rollouts: step, versions, proxies on each, health, why",
        description=(
            "One line per plugin whose change rolls out in steps: its phase (Progressing, "
            "Paused, Complete, RolledBack), the step and the percent of proxies it takes, "
            "the old and new versions, how many of this replica's proxies hold each (and how "
            "many of the step have not ACKed yet), the health verdict, and why it last "
            "advanced, paused or rolled back."
        ),
    )
    add_admin_options(rollouts)
    _output(rollouts)
    rollouts.set_defaults(run=run_rollouts)
    rollout = commands.add_parser(
        "rollout",
        help="pause, resume, promote or abort a staged rollout",
        description="; ".join(f"{action}: {what}" for action, what in _ACTIONS.items())
        + ". On a loopback admin address anyone on the host may do this; elsewhere only a"
        " client certificate that serve's --debug-identity names (--admin-cert/--admin-key).",
    )
    rollout.add_argument("action", choices=tuple(_ACTIONS), help="what to do")
    rollout.add_argument("plugin", metavar="NAMESPACE/NAME", help="the WasmPlugin")
    add_admin_options(rollout)
    _output(rollout)
    rollout.set_defaults(run=run_rollout)


def _version(side: dict[str, Any] | None) -> str:
    return str((side or {}).get("version") or "-")[:8]


def _step(view: dict[str, Any]) -> str:
    return f"{view['step'] + 1}/{len(view['steps'])} ({view['percent']:g}%)"


def _proxies(view: dict[str, Any]) -> str:
    counts = view["proxies"]
    waiting = f", {counts['waiting']} waiting" if counts.get("waiting") else ""
    return f"{counts['new']} new/{counts['old']} old{waiting}"


def _health(view: dict[str, Any]) -> str:
    health = view.get("health")
    if not health:
        return "-"
    verdict = "healthy" if health.get("healthy") else "UNHEALTHY"
    reason = health.get("reason")
    return f"{verdict} ({reason})" if reason else verdict


def run_rollouts(args: argparse.Namespace) -> int:
    views = request(args, "/debug/rollouts")
    if args.output == "json":
        return print_json(views)
    if not views:
        print(
            "no staged rollouts (a plugin's change rolls out in steps with the"
            " rollout.wasmxds.io/steps annotation or serve --rollout-steps)"
        )
        return 0
    rows = [["PLUGIN", "PHASE", "STEP", "OLD", "NEW", "PROXIES", "HEALTH", "REASON"]]
    rows.extend(
        [
            view["plugin"],
            view["phase"],
            _step(view),
            _version(view.get("old")),
            _version(view.get("new")),
            _proxies(view),
            _health(view),
            view.get("reason") or "",
        ]
        for view in views
    )
    sys.stdout.write(table(rows))
    return 0


def run_rollout(args: argparse.Namespace) -> int:
    namespace, sep, name = args.plugin.partition("/")
    if not (sep and namespace and name) or "/" in name:
        raise SystemExit(
            f"wasmxds: {args.plugin!r} is not NAMESPACE/NAME: name the WasmPlugin as"
            " `wasmxds rollouts` lists it (e.g. default/my-filter)"
        )
    path = "/".join(urllib.parse.quote(part, safe="") for part in (namespace, name, args.action))
    view = request(args, f"/rollouts/{path}", method="POST")
    if args.output == "json":
        return print_json(view)
    print(
        f"{view['plugin']}: {view['phase']} at step {_step(view)},"
        f" {_proxies(view)} proxies; {view.get('reason') or ''}".rstrip("; ")
    )
    return 0
