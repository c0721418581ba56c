"""``wasmxds serve``: run the control plane."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog

from wasmxds.cli.kubernetes import add_kubernetes_arguments, kubernetes_settings
from wasmxds.cli.registry import add_registry_arguments, registry_settings
from wasmxds.errors import SettingsError
from wasmxds.log import LOG_FORMATS, LOG_LEVELS, configure_logging
from wasmxds.settings import (
    ModuleDelivery,
    ServeSettings,
    default_cache_dir,
    parse_duration,
    parse_host_port,
    parse_size,
)

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
    parser.add_argument(
        "--config-dir",
        action="append",
        default=[],
        metavar="DIR",
        type=Path,
        help="directory of WasmPlugin YAML, watched recursively (repeatable; this, "
        "--kubernetes, or both)",
    )
    parser.add_argument(
        "--xds-address",
        default="127.0.0.1:18000",
        metavar="HOST:PORT",
        help="gRPC ADS listen address (default %(default)s)",
    )
    parser.add_argument(
        "--admin-address",
        default="127.0.0.1:18001",
        metavar="HOST:PORT",
        help="admin HTTP listen address: /healthz, /readyz (default %(default)s)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        metavar="DIR",
        help="where modules are cached by content (default %(default)s)",
    )
    parser.add_argument(
        "--proxy-cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the cache directory as Envoy sees it, when mounted elsewhere (default: --cache-dir)",
    )
    parser.add_argument(
        "--root-namespace",
        default="istio-system",
        metavar="NAME",
        help="plugins in this namespace apply to proxies in every namespace (default %(default)s)",
    )
    parser.add_argument(
        "--debounce-after",
        default="100ms",
        metavar="DUR",
        help="push after this much quiet following a change (default %(default)s)",
    )
    parser.add_argument(
        "--debounce-max",
        default="10s",
        metavar="DUR",
        help="...but no later than this after the first change (default %(default)s)",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this module host over plain HTTP or unverified TLS; '*' for all (repeatable)",
    )
    parser.add_argument(
        "--module-delivery",
        default="local",
        choices=[d.value for d in ModuleDelivery],
        help="how Envoy gets module bytes: a cached file path (local), a download from "
        "wasmxds (remote) or inside the resource (inline) (default %(default)s)",
    )
    parser.add_argument(
        "--module-base-url",
        metavar="URL",
        help="with --module-delivery remote: wasmxds's admin address as proxies reach it, e.g. "
        "http://wasmxds:18001 (proxies need a cluster named wasmxds_modules for it: "
        "`wasmxds bootstrap --modules-address`)",
    )
    parser.add_argument(
        "--inline-max-size",
        default="1MiB",
        metavar="SIZE",
        help="with --module-delivery inline: largest module sent inside a resource "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--max-module-size",
        default="256MiB",
        metavar="SIZE",
        help="refuse modules larger than this after unpacking (default %(default)s)",
    )
    parser.add_argument(
        "--initial-fetch-wait",
        default="30s",
        metavar="DUR",
        help="at start-up, hold the first push this long for module downloads still under "
        "way (default %(default)s)",
    )
    parser.add_argument(
        "--fetch-retry-max",
        default="60s",
        metavar="DUR",
        help="longest wait between retries of a failed module fetch (default %(default)s)",
    )
    add_registry_arguments(parser)
    parser.add_argument(
        "--wasm-runtime",
        default="envoy.wasm.runtime.v8",
        metavar="NAME",
        help="Wasm runtime named in the filters (default %(default)s)",
    )
    listener_mode = parser.add_argument_group(
        "listener mode and TLS",
        "Serve whole listeners over LDS/CDS with every applicable WasmPlugin placed by "
        "phase and priority, and protect the xDS port with (mutual) TLS.",
    )
    listener_mode.add_argument(
        "--listeners",
        action="append",
        default=[],
        metavar="DIR",
        type=Path,
        help="directory of ListenerTemplate/ClusterTemplate YAML, watched recursively (repeatable)",
    )
    listener_mode.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve xDS over TLS with this certificate chain",
    )
    listener_mode.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="private key for --tls-cert"
    )
    listener_mode.add_argument(
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="require client certificates signed by this CA (mutual TLS; needs --tls-cert)",
    )
    add_kubernetes_arguments(parser)
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS)
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    delivery = ModuleDelivery(args.module_delivery)
    if delivery is ModuleDelivery.REMOTE and not args.module_base_url:
        raise SettingsError(
            "--module-delivery remote needs --module-base-url (how proxies reach wasmxds's "
            "admin server, e.g. http://wasmxds:18001)"
        )
    if args.module_base_url and not args.module_base_url.startswith(("http://", "https://")):
        raise SettingsError(
            f"--module-base-url {args.module_base_url!r}: expected http(s)://HOST:PORT"
        )
    for flag, directories in (("--config-dir", args.config_dir), ("--listeners", args.listeners)):
        for directory in directories:
            if not directory.is_dir():
                raise SettingsError(f"{flag} {directory}: not a directory")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SettingsError("--tls-cert and --tls-key go together")
    if args.client_ca is not None and args.tls_cert is None:
        raise SettingsError("--client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    for flag, file in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--client-ca", args.client_ca),
    ):
        if file is not None and not file.is_file():
            raise SettingsError(f"{flag} {file}: no such file")
    return ServeSettings(
        config_dirs=tuple(args.config_dir),
        xds_address=parse_host_port(args.xds_address),
        admin_address=parse_host_port(args.admin_address),
        cache_dir=args.cache_dir.absolute(),
        proxy_cache_dir=args.proxy_cache_dir,
        root_namespace=args.root_namespace,
        debounce_after=parse_duration(args.debounce_after),
        debounce_max=parse_duration(args.debounce_max),
        insecure_registries=frozenset(args.insecure_registry),
        module_delivery=delivery,
        module_base_url=args.module_base_url,
        inline_max_size=parse_size(args.inline_max_size),
        max_module_size=parse_size(args.max_module_size),
        fetch_retry_max=parse_duration(args.fetch_retry_max),
        **registry_settings(args),
        **kubernetes_settings(args),
        initial_fetch_wait=parse_duration(args.initial_fetch_wait),
        wasm_runtime=args.wasm_runtime,
        listener_dirs=tuple(args.listeners),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        log_level=args.log_level,
        log_format=args.log_format,
    )


async def _serve(settings: ServeSettings) -> None:
    from wasmxds.service import Service  # heavy imports only for this command

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Service(settings).run(stop)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"wasmxds serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(settings))
    except Exception as exc:
        failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        for failure in failures:
            log.error("service.failed", error=str(failure), exc_info=failure)
        return 1
    return 0
