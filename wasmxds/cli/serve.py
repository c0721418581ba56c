"""``wasmxds serve``: run the control plane."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import structlog

from wasmxds.cli.kubernetes import kubernetes_settings
from wasmxds.cli.registry import registry_settings
from wasmxds.errors import SettingsError
from wasmxds.flags import add_groups, values
from wasmxds.log import configure_logging
from wasmxds.settings import GROUPS, ModuleDelivery, ServeSettings
from wasmxds.xds.identity import parse_identity_pattern

__all__ = ["register"]

log = structlog.get_logger(__name__)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the control plane",
        description=(
            "Watch WasmPlugin YAML, fetch and verify each module into the cache, and stream "
            "the filters to Envoy over gRPC ADS (ECDS). Runs until SIGTERM or Ctrl-C."
        ),
    )
    add_groups(parser, GROUPS)
    parser.set_defaults(run=run)


def check_node_identity(given: dict[str, Any]) -> None:
    """Refuse identity flags that cannot take effect (DESIGN "Node identity")."""
    if given["node_identity"] == "certificate" and given["client_ca"] is None:
        raise SettingsError(
            "--node-identity certificate needs --client-ca (with --tls-cert and --tls-key): a"
            " namespace can come from a client certificate only when proxies present one"
        )
    certificate = given["node_identity"] == "certificate" or (
        given["node_identity"] is None and given["client_ca"] is not None
    )
    if given["trust_domains"] and not certificate and given["admin_client_ca"] is None:
        raise SettingsError(
            "--trust-domain restricts the client certificates that prove a namespace; it needs"
            " --client-ca and --node-identity certificate (the default with --client-ca), or"
            " --admin-client-ca"
        )
    if given["debug_identities"] and given["admin_client_ca"] is None:
        raise SettingsError(
            "--debug-identity names client certificates that may read the debug pages; it needs"
            " --admin-client-ca (with --admin-tls-cert and --admin-tls-key) so that the admin"
            " port can verify them"
        )
    for text in sorted(given["debug_identities"]):
        domain = parse_identity_pattern(text).trust_domain
        if given["trust_domains"] and domain not in given["trust_domains"]:
            raise SettingsError(
                f"--debug-identity {text}: its trust domain {domain!r} is not one --trust-domain"
                f" accepts ({', '.join(sorted(given['trust_domains']))}), so no certificate could"
                " match it"
            )


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Each flag parsed and checked by its declaration, then the flags that go together."""
    given = values(args, (setting for group in GROUPS for setting in group.settings))
    if given["module_delivery"] is ModuleDelivery.REMOTE and not given["module_base_url"]:
        raise SettingsError(
            "--module-delivery remote needs --module-base-url (how proxies reach wasmxds's "
            "admin server, e.g. http://wasmxds:18001)"
        )
    if (given["tls_cert"] is None) != (given["tls_key"] is None):
        raise SettingsError("--tls-cert and --tls-key go together")
    if given["client_ca"] is not None and given["tls_cert"] is None:
        raise SettingsError("--client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    if (given["admin_tls_cert"] is None) != (given["admin_tls_key"] is None):
        raise SettingsError("--admin-tls-cert and --admin-tls-key go together")
    if given["admin_client_ca"] is not None and given["admin_tls_cert"] is None:
        raise SettingsError(
            "--admin-client-ca needs --admin-tls-cert and --admin-tls-key (mutual TLS is TLS first)"
        )
    check_node_identity(given)
    given.update(registry_settings(given))
    # A per-host share above the total would only mean the total.
    given["max_pulls_per_host"] = min(given["max_pulls_per_host"], given["max_parallel_pulls"])
    given.update(kubernetes_settings(given))
    given["cache_dir"] = given["cache_dir"].absolute()
    return ServeSettings(**given)


async def _serve(settings: ServeSettings) -> None:
    from wasmxds.service import Service  # heavy imports only for this command

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = await Service.open(settings)
    await service.run(stop)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"wasmxds serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(settings))
    except SettingsError as exc:  # a file a flag names turned out unusable (admin TLS)
        print(f"wasmxds serve: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        for failure in failures:
            log.error("service.failed", error=str(failure), exc_info=failure)
        return 1
    return 0
