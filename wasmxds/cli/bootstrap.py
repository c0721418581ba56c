"""``wasmxds bootstrap``: print an Envoy bootstrap that connects one proxy to wasmxds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from wasmxds.bootstrap import (
    Api,
    BootstrapOptions,
    Mode,
    TlsOptions,
    build_bootstrap,
    parse_labels_file,
)
from wasmxds.errors import SettingsError
from wasmxds.settings import parse_host_port

__all__ = ["register", "render"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bootstrap",
        help="print an Envoy bootstrap that connects a proxy to wasmxds",
        description=(
            "Print an Envoy bootstrap (YAML) for one proxy. In 'ecds' mode Envoy gets a "
            "static listener whose HTTP filters are the WasmPlugins you name; in 'listeners' "
            "mode wasmxds serves the listeners and clusters themselves (needs `wasmxds serve "
            "--listeners`). The node's namespace and labels decide which WasmPlugins apply."
        ),
        epilog=(
            "examples:\n"
            "  wasmxds bootstrap --node-id edge-1 --filter default.header-filter > envoy.yaml\n"
            "  wasmxds bootstrap --node-id gw-1 --mode listeners --api delta \\\n"
            "      --namespace edge --label app=gateway --xds-address wasmxds:18000\n"
            "  envoy -c envoy.yaml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    node = parser.add_argument_group("the proxy")
    node.add_argument(
        "--node-id", required=True, metavar="ID", help="Envoy node id (unique per proxy)"
    )
    node.add_argument(
        "--cluster", default="", metavar="NAME", help="Envoy node cluster (default: the node id)"
    )
    node.add_argument(
        "--namespace",
        metavar="NS",
        help="the proxy's namespace: it sees WasmPlugins of this and the root namespace (default:"
        " none written; wasmxds then takes it from the proxy's client certificate under"
        " `--node-identity certificate`, and uses `default` otherwise)",
    )
    node.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label matched against WasmPlugin selectors (repeatable)",
    )
    node.add_argument(
        "--labels-file",
        type=Path,
        metavar="FILE",
        help='labels from a Kubernetes downward API file (key="value" lines)',
    )
    conn = parser.add_argument_group("connection to wasmxds")
    conn.add_argument(
        "--xds-address",
        default="127.0.0.1:18000",
        metavar="HOST:PORT",
        help="(default %(default)s)",
    )
    conn.add_argument(
        "--mode", choices=[m.value for m in Mode], default="ecds", help="(default %(default)s)"
    )
    conn.add_argument(
        "--api",
        choices=[a.value for a in Api],
        default="sotw",
        help="ADS flavour: state of the world or incremental (default %(default)s)",
    )
    conn.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="connect over TLS, trusting this CA"
    )
    conn.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="client certificate for mutual TLS"
    )
    conn.add_argument("--tls-key", type=Path, metavar="FILE", help="client key for mutual TLS")
    conn.add_argument("--tls-sni", default="", metavar="NAME", help="server name to ask for")
    conn.add_argument(
        "--tls-server-san",
        default="",
        metavar="SAN",
        help="the SAN wasmxds's certificate must carry: a SPIFFE ID (URI SAN), an IP address or"
        " a DNS name (default: --tls-sni if given, else the host of --xds-address); a"
        " certificate from the CA without it is refused",
    )
    conn.add_argument(
        "--modules-address",
        metavar="HOST:PORT",
        help="wasmxds's admin address: adds the wasmxds_modules cluster that "
        "`serve --module-delivery remote` downloads go through",
    )
    conn.add_argument(
        "--modules-tls-ca",
        type=Path,
        metavar="FILE",
        help="download modules over HTTPS, trusting this CA (`serve --admin-tls-cert`)",
    )
    conn.add_argument(
        "--modules-tls-cert",
        type=Path,
        metavar="FILE",
        help="client certificate for module downloads (`serve --admin-client-ca`)",
    )
    conn.add_argument(
        "--modules-tls-key", type=Path, metavar="FILE", help="client key for module downloads"
    )
    conn.add_argument(
        "--modules-tls-sni", default="", metavar="NAME", help="server name module downloads ask for"
    )
    conn.add_argument(
        "--modules-tls-server-san",
        default="",
        metavar="SAN",
        help="the SAN wasmxds's admin certificate must carry (default: --modules-tls-sni if given,"
        " else the host of --modules-address)",
    )
    ecds = parser.add_argument_group("ecds mode")
    ecds.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="NS.NAME",
        help="a WasmPlugin's resource name, in filter-chain order (repeatable)",
    )
    ecds.add_argument(
        "--listen", default="127.0.0.1:10000", metavar="HOST:PORT", help="(default %(default)s)"
    )
    ecds.add_argument(
        "--upstream",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where the listener routes (default %(default)s)",
    )
    ecds.add_argument(
        "--no-default-config",
        action="store_true",
        help="no allow-all fallback: requests fail (500) while a named plugin does not exist",
    )
    ecds.add_argument(
        "--initial-fetch-timeout",
        default="10s",
        metavar="DUR",
        help="how long Envoy waits for a filter at start-up (default %(default)s; 0s = forever)",
    )
    parser.add_argument(
        "--stats-sink",
        action="store_true",
        help="stream Envoy's stats to wasmxds's metrics service on the xDS port (every 5s):"
        " the proxy health staged rollouts check",
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout"
    )
    parser.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> BootstrapOptions:
    labels = parse_labels_file(args.labels_file.read_text()) if args.labels_file else {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SettingsError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    tls = None
    client_cert = (args.tls_cert, args.tls_key)
    if any(f is not None for f in client_cert) and (None in client_cert or args.tls_ca is None):
        raise SettingsError("mutual TLS needs --tls-ca, --tls-cert and --tls-key together")
    if args.tls_ca is not None:
        tls = TlsOptions(
            ca=args.tls_ca,
            cert=args.tls_cert,
            key=args.tls_key,
            sni=args.tls_sni,
            server_san=args.tls_server_san,
        )
    elif args.tls_server_san:
        raise SettingsError("--tls-server-san needs --tls-ca (it is checked over TLS only)")
    modules_tls = _modules_tls(args)
    mode = Mode(args.mode)
    if mode is Mode.ECDS and not args.filter:
        raise SettingsError(
            "ecds mode needs at least one --filter NS.NAME (the WasmPlugin's resource name)"
        )
    return BootstrapOptions(
        node_id=args.node_id,
        cluster=args.cluster,
        namespace=args.namespace,
        labels=labels,
        xds=parse_host_port(args.xds_address),
        mode=mode,
        api=Api(args.api),
        filters=tuple(args.filter),
        listen=parse_host_port(args.listen),
        upstream=parse_host_port(args.upstream),
        default_config=not args.no_default_config,
        initial_fetch_timeout=args.initial_fetch_timeout,
        tls=tls,
        modules=parse_host_port(args.modules_address) if args.modules_address else None,
        modules_tls=modules_tls,
        stats_sink=args.stats_sink,
    )


def _modules_tls(args: argparse.Namespace) -> TlsOptions | None:
    """TLS for the wasmxds_modules cluster, checked like the xDS cluster's."""
    client_cert = (args.modules_tls_cert, args.modules_tls_key)
    given = (
        args.modules_tls_ca is not None
        or any(f is not None for f in client_cert)
        or bool(args.modules_tls_server_san)
    )
    if given and not args.modules_address:
        raise SettingsError("--modules-tls-* options need --modules-address")
    if any(f is not None for f in client_cert) and (
        None in client_cert or args.modules_tls_ca is None
    ):
        raise SettingsError(
            "module downloads over mutual TLS need --modules-tls-ca, --modules-tls-cert and"
            " --modules-tls-key together"
        )
    if args.modules_tls_ca is None:
        if args.modules_tls_server_san:
            raise SettingsError(
                "--modules-tls-server-san needs --modules-tls-ca (it is checked over TLS only)"
            )
        return None
    return TlsOptions(
        ca=args.modules_tls_ca,
        cert=args.modules_tls_cert,
        key=args.modules_tls_key,
        sni=args.modules_tls_sni,
        server_san=args.modules_tls_server_san,
    )


def render(options: BootstrapOptions, header: str = "") -> str:
    text = yaml.safe_dump(build_bootstrap(options), sort_keys=False, default_flow_style=False)
    return header + text


def run(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except (SettingsError, OSError) as exc:
        print(f"wasmxds bootstrap: {exc}", file=sys.stderr)
        return 2
    text = render(options)
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
