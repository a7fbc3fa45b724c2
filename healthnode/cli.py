"""The `healthnode` command line (DESIGN.md, "Operator and user surface").

Every subcommand prints JSON on stdout when it has a result, and on a refusal prints one line
`healthnode: error: <reason>` on stderr and exits 1 (2 for a usage error, as argparse does).
Heavy imports (libp2p, plyvel) happen inside the commands that need them, so `keys` and `testnet`
start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from healthnode import __version__, config, crypto, home, keys
from healthnode.admin import client, rpc
from healthnode.errors import HealthnodeError

Handler = Callable[[argparse.Namespace], int]


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if not 1024 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port in 1024..65535")
    return value


# --- keys -----------------------------------------------------------------------------------

def _keys_new(args: argparse.Namespace) -> int:
    passphrase = None
    if args.kind in keys.ENCRYPTED_KINDS:
        passphrase = keys.obtain_passphrase(args.passphrase_file, confirm=True)
    identity = keys.create_key_file(args.out, args.kind, passphrase)
    print_json(_describe_key(args.kind, identity.public_key, args.out))
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    document = keys.read_key_document(args.file)
    print_json(_describe_key(document["kind"], document["public_key"], args.file))
    return 0


def _describe_key(kind: str, public_key: bytes, path: Path) -> dict[str, str]:
    described = {"kind": kind, "public_key": public_key.hex(), "file": str(path)}
    if kind == "node":
        described["peer_id"] = crypto.peer_id(public_key)
    return described


def _add_keys(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="make and inspect identity key files")
    actions = parser.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="create a key file (mode 0600)")
    new.add_argument("--kind", required=True, choices=keys.KINDS)
    new.add_argument("--out", required=True, type=Path, help="key file to create")
    new.add_argument("--passphrase-file", type=Path,
                     help=f"read the passphrase from this file (else ${keys.PASSPHRASE_ENV}, "
                          "else the terminal); patient and provider keys only")
    new.set_defaults(handler=_keys_new)
    show = actions.add_parser("show", help="print a key file's public key (no passphrase needed)")
    show.add_argument("file", type=Path)
    show.set_defaults(handler=_keys_show)


# --- testnet and init -----------------------------------------------------------------------

def _testnet(args: argparse.Namespace) -> int:
    genesis, homes = home.make_testnet(args.nodes, args.out, args.base_port, args.hosts,
                                       args.chain_id)
    print(home.testnet_summary(genesis, homes, args.out))
    return 0


def _init(args: argparse.Namespace) -> int:
    node_home = home.init_home(args.home, args.genesis)
    print_json(node_home.describe())
    return 0


def _add_network_setup(subparsers: Any) -> None:
    testnet = subparsers.add_parser("testnet", help="write a genesis and one home per node")
    testnet.add_argument("--nodes", type=_positive_int, required=True)
    testnet.add_argument("--out", type=Path, required=True)
    testnet.add_argument("--base-port", type=_port, default=home.DEFAULT_BASE_PORT)
    testnet.add_argument("--hosts", metavar="TEMPLATE",
                         help="host name template such as 'node{i}' (compose networks)")
    testnet.add_argument("--chain-id", default=home.DEFAULT_CHAIN_ID)
    testnet.set_defaults(handler=_testnet)
    init = subparsers.add_parser("init", help="prepare one node's home from a genesis")
    init.add_argument("--home", type=Path, required=True)
    init.add_argument("--genesis", type=Path, required=True)
    init.set_defaults(handler=_init)


# --- admin ---------------------------------------------------------------------------------

def _admin(args: argparse.Namespace) -> int:
    node_config = config.load_config(args.home)
    try:
        params = rpc.parse_cli_params(args.param)
    except ValueError as error:
        raise HealthnodeError(str(error)) from None
    print_json(client.call(args.home / node_config.admin.socket, args.method, params))
    return 0


def _add_admin(subparsers: Any) -> None:
    admin = subparsers.add_parser("admin", help="call a method on a running node's admin socket")
    admin.add_argument("--home", type=Path, required=True)
    admin.add_argument("method", help="e.g. status, peers")
    admin.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="a parameter; VALUE is parsed as JSON when it parses")
    admin.set_defaults(handler=_admin)


# --- entry point ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healthnode",
        description="healthnode: patients' encrypted health records on a network of hospitals.",
    )
    parser.add_argument("--version", action="version", version=f"healthnode {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_keys(subparsers)
    _add_network_setup(subparsers)
    _add_admin(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except HealthnodeError as error:
        print(f"healthnode: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("healthnode: interrupted", file=sys.stderr)
        return 130
