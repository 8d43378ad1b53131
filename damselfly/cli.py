"""The ``damselfly`` command: one entry point for every component.

Each subcommand imports its component lazily so that ``damselfly --help`` stays
fast and a peer does not pay for importing the operator's dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from damselfly import __version__
from damselfly.config import ports
from damselfly.errors import CommandError
from damselfly.logs import LEVELS, setup_logging

# Each subcommand's implementation: a module with ``run(args) -> int``.
COMMAND_MODULES = {
    "peer": "damselfly.peer.app",
    "scheduler": "damselfly.scheduler.main",
    "operator": "damselfly.operator.main",
    "get": "damselfly.get",
    "local": "damselfly.local",
    "crds": "damselfly.api.crdgen",
    "render": "damselfly.operator.render_cli",
}


class NotBuiltError(CommandError):
    """A subcommand whose implementation does not exist yet: it must fail loudly."""


def run_get(args: argparse.Namespace) -> int:
    """``get`` may start a peer in this process: the peer runtime is wired in here, the
    one module above both (damselfly.get imports config, never damselfly.peer)."""
    from damselfly import get
    from damselfly.config.peer import PeerConfig

    def ephemeral(config: PeerConfig) -> AbstractAsyncContextManager[str]:
        from damselfly.peer.app import ephemeral_proxy  # only when no proxy is running

        return ephemeral_proxy(config)

    return get.run(args, ephemeral)


def load_handler(command: str) -> Callable[[argparse.Namespace], int]:
    """Import the module behind ``command``; a missing module means "not built yet"."""
    module_name = COMMAND_MODULES[command]
    if command == "get":
        return run_get
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise NotBuiltError(f"not built yet ({module_name} does not exist)") from exc
        raise
    run: Callable[[argparse.Namespace], int] = module.run
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="damselfly",
        description="Kubernetes-native peer-to-peer cache for large HTTP downloads.",
    )
    parser.add_argument("--version", action="version", version=f"damselfly {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        type=str.upper,
        help="log level (default: $DAMSELFLY_LOG_LEVEL or INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "peer",
        help=f"run a peer: caching proxy ({ports.PROXY}), upload server ({ports.UPLOAD})",
    )
    p.add_argument("--config", "-c", help="peer YAML config (default: built-in defaults)")
    p.add_argument("--seed", action="store_true", help="run as a seed peer that fetches origins")

    p = sub.add_parser("scheduler", help="run the scheduler that picks parents for peers")
    p.add_argument("--config", "-c", help="scheduler YAML config")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument(
        "--port", type=int, default=ports.SCHEDULER, help=f"API port (default {ports.SCHEDULER})"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=ports.SCHEDULER_METRICS,
        help=f"metrics port (default {ports.SCHEDULER_METRICS})",
    )

    p = sub.add_parser("operator", help="run the kopf operator reconciling P2PCluster/ProxyRule")
    p.add_argument("--namespace", "-n", action="append", help="watch only these namespaces")
    p.add_argument("--health-port", type=int, default=8080, help="liveness endpoint port")
    p.add_argument(
        "--not-ready-requeue",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="look again this often at a cluster that is not Ready (its pods, PVCs and "
        "Events are not watched; default 15)",
    )

    p = sub.add_parser("get", help="download a URL through the swarm (like dfget)")
    p.add_argument("url", help="the URL to download")
    p.add_argument("-O", "--output", required=True, help="file to write")
    p.add_argument("--digest", help="expected digest, sha256:<hex>; verified before success")
    p.add_argument(
        "--proxy",
        help=f"a running peer's proxy, e.g. http://127.0.0.1:{ports.PROXY} "
        "(default: $DAMSELFLY_PROXY, the local cluster's first peer, or an ephemeral peer "
        "in this process)",
    )
    p.add_argument(
        "--scheduler",
        action="append",
        help="scheduler host:port for the ephemeral peer (repeatable)",
    )
    p.add_argument(
        "--keep-partial",
        action="store_true",
        help="when the download breaks off, keep FILE.part so the next run resumes it "
        "(an interrupted run always keeps it)",
    )

    p = sub.add_parser("local", help="run scheduler, seed and peers on localhost (no Kubernetes)")
    local = p.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    up = local.add_parser("up", help="start a local cluster from examples/ or -f files")
    up.add_argument("-f", "--filename", action="append", help="P2PCluster/ProxyRule YAML")
    up.add_argument("--peers", type=int, default=3, help="number of peers (default 3)")
    up.add_argument("--state-dir", help="where caches, logs and pids live")
    down = local.add_parser("down", help="stop the local cluster started by 'local up'")
    down.add_argument("--state-dir", help="the state dir given to 'local up'")
    status = local.add_parser("status", help="show the local cluster's processes and ports")
    status.add_argument("--state-dir", help="the state dir given to 'local up'")

    p = sub.add_parser("crds", help="generate the CRD YAML from the API models")
    p.add_argument("--output-dir", "-o", help="write crds/*.yaml here instead of stdout")
    p.add_argument("--check", action="store_true", help="exit 1 if the directory is stale")

    p = sub.add_parser("render", help="print the child manifests of a P2PCluster, no cluster")
    p.add_argument("-f", "--filename", action="append", required=True, help="CR YAML files")

    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.command, args.log_level)
    if args.command == "version":
        print(f"damselfly {__version__}")
        return 0
    try:
        return load_handler(args.command)(args)
    except NotBuiltError as exc:
        print(f"damselfly {args.command}: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
