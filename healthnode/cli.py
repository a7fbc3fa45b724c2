"""The `healthnode` command line (docs/operations.md and docs/wallet.md: every command and its
output).

Every subcommand prints JSON on stdout when it has a result, and on a refusal prints one line
`healthnode: error: <reason>` on stderr and exits 1 (2 for a usage error, as argparse does).
Every subcommand runs under umask 077: what healthnode writes (homes, stores, backups, keys,
wallet files) is its user's alone from the first byte (home/modes.py).
Heavy imports (libp2p, plyvel) happen inside the commands that need them, so `keys` and `testnet`
start fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healthnode import __version__, crypto, logs
from healthnode.admin import client, rpc
from healthnode.errors import HealthnodeError
from healthnode.home import backup, config, keys, layout
from healthnode.home.modes import PRIVATE_UMASK
from healthnode.home.node_key import KEY_ENV, KeySource
from healthnode.protocol.genesis import GENESIS_FORMAT, ROUNDS_FROM, RULES_NEWEST, RULES_OLDEST
from healthnode.wallet.cli import add_wallet_commands

if TYPE_CHECKING:  # imported by the commands that use them (plyvel is heavy)
    from healthnode.ledger.replay import Progress, Start
    from healthnode.protocol.genesis import Genesis
    from healthnode.store.leveldb import ChainStore

Handler = Callable[[argparse.Namespace], int]


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} {what}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "must be at least 1")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "must not be negative")


def _port(text: str) -> int:
    value = _positive_int(text)
    if not 1024 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port in 1024..65535")
    return value


# --- keys -----------------------------------------------------------------------------------

def _keys_new(args: argparse.Namespace) -> int:
    passphrase = None
    if args.kind in keys.ENCRYPTED_KINDS or args.sealed:
        passphrase = keys.obtain_passphrase(args.passphrase_file, confirm=True)
    identity = keys.create_key_file(args.out, args.kind, passphrase)
    secret = "clear" if passphrase is None else "sealed"
    print_json(_describe_key(args.kind, identity.public_key, args.out, secret))
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    document = keys.read_key_document(args.file)
    print_json(_describe_key(document["kind"], document["public_key"], args.file,
                             keys.secret_form(document)))
    return 0


def _keys_seal(args: argparse.Namespace) -> int:
    """A clear node key sealed under a passphrase, into a new file: the same key, so the node
    keeps its place in the genesis."""
    document = keys.read_key_document(args.file)
    if keys.secret_form(document) != "clear":
        raise HealthnodeError(f"{args.file}: not a clear key (`keys show` tells what it holds)")
    identity = keys.open_identity(document, str(args.file), expected_kind="node")
    passphrase = keys.obtain_passphrase(args.passphrase_file, confirm=True)
    keys.write_private_file(args.out, keys.encode_key_file("node", identity, passphrase))
    print_json(_describe_key("node", identity.public_key, args.out, "sealed"))
    return 0


def _keys_public(args: argparse.Namespace) -> int:
    public_key = keys.read_node_public_key(args.file)
    keys.write_private_file(args.out, keys.encode_public_key_file(public_key))
    print_json(_describe_key("node", public_key, args.out, "none"))
    return 0


def _describe_key(kind: str, public_key: bytes, path: Path, secret: str) -> dict[str, str]:
    described = {"kind": kind, "public_key": public_key.hex(), "file": str(path),
                 "secret": secret}
    if kind == "node":
        described["peer_id"] = crypto.peer_id(public_key)
    return described


def _add_keys(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="make and inspect identity key files")
    actions = parser.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="create a key file (mode 0600)")
    new.add_argument("--kind", required=True, choices=keys.KINDS)
    new.add_argument("--out", required=True, type=Path, help="key file to create")
    new.add_argument("--sealed", action="store_true",
                     help="seal a node key under a passphrase too (patient and provider keys "
                          "always are); the node then needs it at every start")
    new.add_argument("--passphrase-file", type=Path,
                     help=f"read the passphrase from this file (else ${keys.PASSPHRASE_ENV}, "
                          "else the terminal); sealed keys only")
    new.set_defaults(handler=_keys_new)
    show = actions.add_parser("show", help="print a key file's public key and whether it holds "
                                           "its secret clear, sealed or not at all (no "
                                           "passphrase needed)")
    show.add_argument("file", type=Path)
    show.set_defaults(handler=_keys_show)
    seal = actions.add_parser("seal", help="write a clear node key sealed under a passphrase "
                                           "into a new file (the same key)")
    seal.add_argument("file", type=Path, help="the clear node key file")
    seal.add_argument("--out", required=True, type=Path, help="the sealed key file to create")
    seal.add_argument("--passphrase-file", type=Path,
                      help=f"read the passphrase from this file (else ${keys.PASSPHRASE_ENV}, "
                           "else the terminal)")
    seal.set_defaults(handler=_keys_seal)
    public = actions.add_parser("public", help="write a node key's public half into a new file: "
                                               "the home's node_key.json when the key is kept "
                                               "outside the home (docs/operations.md)")
    public.add_argument("file", type=Path, help="the node key file (clear or sealed)")
    public.add_argument("--out", required=True, type=Path, help="the file to create")
    public.set_defaults(handler=_keys_public)


# --- testnet and init -----------------------------------------------------------------------

def _testnet(args: argparse.Namespace) -> int:
    genesis, homes = layout.make_testnet(args.nodes, args.out, args.base_port, args.hosts,
                                       args.chain_id, rules_version=args.rules,
                                       keygen=args.keygen)
    print(layout.testnet_summary(genesis, homes, args.out))
    return 0


def _init(args: argparse.Namespace) -> int:
    from healthnode.home.config import load_genesis

    if args.restore is None:
        node_home = layout.init_home(args.home, args.genesis, args.key, args.replay)
        genesis_hash = load_genesis(args.home / config.GENESIS_FILE).hash.hex()
        secret = keys.secret_form(keys.read_key_document(args.home / config.KEY_FILE))
        print_json({**node_home.describe(), "genesis_hash": genesis_hash, "secret": secret})
        return 0
    node_home, manifest = backup.restore_home(args.home, args.restore, args.key)
    print_json({**node_home.describe(), "restored_from": str(args.restore),
                "chain_id": manifest.chain_id, "height": manifest.height,
                "head_hash": manifest.head_hash.hex(), "backup_created_ms": manifest.created_ms,
                "signing_hold": "signs nothing until synced past the network's finalized "
                                "height (docs/operations.md)"})
    return 0


def _add_network_setup(subparsers: Any) -> None:
    testnet = subparsers.add_parser("testnet", help="write a genesis and one home per node")
    testnet.add_argument("--nodes", type=_positive_int, required=True)
    testnet.add_argument("--out", type=Path, required=True)
    testnet.add_argument("--base-port", type=_port, default=layout.DEFAULT_BASE_PORT)
    testnet.add_argument("--hosts", metavar="TEMPLATE",
                         help="host name template such as 'node{i}' (compose networks)")
    testnet.add_argument("--chain-id", default=layout.DEFAULT_CHAIN_ID)
    testnet.add_argument("--rules", type=int, default=GENESIS_FORMAT, metavar="VERSION",
                         help=f"the ledger rules version the chain starts with ({RULES_OLDEST}.."
                              f"{RULES_NEWEST}; default {GENESIS_FORMAT}, the newest): an older "
                              "one rehearses a rules upgrade (docs/operations.md)")
    testnet.add_argument("--keygen", action="store_true",
                         help="deal no emergency key: the nodes generate it among themselves "
                              "once they run, as a founded network does (rules version "
                              f"{ROUNDS_FROM} on; docs/break-glass.md)")
    testnet.set_defaults(handler=_testnet)
    init = subparsers.add_parser("init",
                                 help="prepare one node's home from a genesis or a backup")
    init.add_argument("--home", type=Path, required=True)
    source = init.add_mutually_exclusive_group(required=True)
    source.add_argument("--genesis", type=Path, help="a new home for this genesis")
    source.add_argument("--restore", type=Path, metavar="BACKUP",
                        help="a home from a backup directory (admin method `backup`)")
    init.add_argument("--key", type=Path, metavar="NODE_KEY_FILE",
                      help="the node key file the hospital made (keys new --kind node: clear or "
                           "sealed, or its public half when the key stays outside the home), "
                           "copied into the home; with --restore, the backed-up node's key "
                           "(backups never hold it)")
    init.add_argument("--replay", action="store_true",
                      help="replay every block from the genesis at the first start, instead of "
                           "taking a peer's snapshot of the state (state sync, the default; "
                           "docs/operations.md)")
    init.set_defaults(handler=_init)


# --- genesis: founding a network ---------------------------------------------------------------

def _genesis_new(args: argparse.Namespace) -> int:
    draft = layout.new_genesis_draft(args.out, args.chain_id, args.rules, args.time_ms)
    print_json({"genesis": str(args.out), "chain_id": draft.chain_id,
                "genesis_time_ms": draft.genesis_time_ms, "rules": draft.format,
                "authorities": [], "emergency": None})
    return 0


def _genesis_add_authority(args: argparse.Namespace) -> int:
    draft, added = layout.add_genesis_authority(args.genesis, args.name, args.key)
    print_json({"genesis": str(args.genesis),
                "added": {"name": added.name, "public_key": added.public_key.hex(),
                          "peer_id": crypto.peer_id(added.public_key)},
                "authorities": [a.name for a in draft.authorities]})
    return 0


def _genesis_hash(args: argparse.Namespace) -> int:
    """The hash that names the network, which every hospital checks out of band before it runs
    `init` with the file; only of a genesis a node can run."""
    from healthnode.home.config import load_genesis

    genesis = load_genesis(args.file)
    print_json({"genesis_hash": genesis.hash.hex(), "chain_id": genesis.chain_id,
                "genesis_time_ms": genesis.genesis_time_ms, "rules": genesis.format,
                "authorities": [{"name": a.name, "public_key": a.public_key.hex()}
                                for a in genesis.authorities],
                "emergency_key": genesis.emergency is not None})
    return 0


def _add_genesis(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "genesis", help="found a network: a genesis draft, its authorities, its hash "
                        "(docs/operations.md, Founding a network)")
    actions = parser.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="write a new genesis draft: default consensus "
                                         "parameters, no authority, no emergency key")
    new.add_argument("--out", type=Path, required=True, help="the draft to create (never "
                                                             "overwritten)")
    new.add_argument("--chain-id", required=True, help="the network's name: lowercase letters, "
                                                      "digits and '-'")
    new.add_argument("--rules", type=int, default=GENESIS_FORMAT, metavar="VERSION",
                     help=f"the ledger rules version the chain starts with ({RULES_OLDEST}.."
                          f"{RULES_NEWEST}; default {GENESIS_FORMAT}, the newest)")
    new.add_argument("--time-ms", type=_non_negative_int, metavar="MS",
                     help="the genesis time in milliseconds since 1970 (default: now)")
    new.set_defaults(handler=_genesis_new)
    add = actions.add_parser("add-authority",
                             help="add a founding hospital to a draft by its node key's public "
                                  "half (`keys public`; a key file serves too, no passphrase "
                                  "asked)")
    add.add_argument("--genesis", type=Path, required=True, help="the draft, rewritten in place")
    add.add_argument("--name", required=True, help="the hospital's name on chain")
    add.add_argument("--key", type=Path, required=True, metavar="NODE_PUBKEY_FILE",
                     help="the hospital's node key file or its public half")
    add.set_defaults(handler=_genesis_add_authority)
    digest = actions.add_parser("hash", help="print the genesis hash that every hospital checks "
                                             "out of band (refuses a draft no node can run)")
    digest.add_argument("file", type=Path)
    digest.set_defaults(handler=_genesis_hash)


# --- admin ---------------------------------------------------------------------------------

def _admin(args: argparse.Namespace) -> int:
    if args.socket is not None:
        socket_path = args.socket
    elif args.home is not None:
        socket_path = args.home / config.load_config(args.home).admin.socket
    else:
        raise HealthnodeError("give --home DIR (the node's home) or --socket PATH")
    try:
        params = rpc.parse_cli_params(args.param)
    except ValueError as error:
        raise HealthnodeError(str(error)) from None
    print_json(client.call(socket_path, args.method, params, timeout_s=args.timeout))
    return 0


def _add_admin(subparsers: Any) -> None:
    admin = subparsers.add_parser("admin", help="call a method on a running node's admin socket")
    admin.add_argument("--home", type=Path, help="the node's home (its config names the socket)")
    admin.add_argument("--socket", type=Path, metavar="PATH",
                       help="the admin socket itself, instead of --home")
    admin.add_argument("--timeout", type=_positive_float, default=client.TIMEOUT_S_DEFAULT,
                       metavar="SECONDS",
                       help=f"how long to wait for the answer ({client.TIMEOUT_S_DEFAULT:g}: "
                            "longer than any wait of the node)")
    admin.add_argument("method", help="e.g. status, peers; `methods` lists them all")
    admin.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="a parameter; VALUE is parsed as JSON when it parses")
    admin.set_defaults(handler=_admin)


def _migrate(args: argparse.Namespace) -> int:
    from healthnode.home.migrate import migrate_home  # plyvel: this command only

    logs.configure_logging("info")  # its steps on stderr; the report alone on stdout
    print_json(migrate_home(args.home, args.backup).to_json())
    return 0


def _add_migrate(subparsers: Any) -> None:
    migrate = subparsers.add_parser(
        "migrate", help="take a stopped node's chain store to this release's format, after "
                        "backing it up (docs/operations.md, Upgrading a node)")
    migrate.add_argument("--home", type=Path, required=True)
    migrate.add_argument("--backup", type=Path, metavar="DIR",
                         help="where the backup taken first goes (a new or empty directory; "
                              "default HOME/backups/pre-migrate-format<N>-<time>)")
    migrate.set_defaults(handler=_migrate)


def _backup(args: argparse.Namespace) -> int:
    """Start a backup on the running node, show its progress on stderr until it ends, and print
    its result (admin methods `backup` and `backup_status`)."""
    socket_path = args.home / config.load_config(args.home).admin.socket
    client.call(socket_path, "backup", {"dir": str(args.dir.absolute())})
    while True:
        status = client.call(socket_path, "backup_status")
        if status.get("state") != "running":
            break
        print(f"backup: {status['keys_copied']:,} keys, {status['bytes_copied'] / 2**20:.1f} MiB "
              f"copied (the store takes about {status['bytes_estimate'] / 2**20:.1f} MiB on "
              f"disk, compressed)", file=sys.stderr, flush=True)
        time.sleep(args.interval)
    print_json(status)
    return 0 if status.get("state") == "done" else 1


def _add_backup(subparsers: Any) -> None:
    backup = subparsers.add_parser(
        "backup", help="back up a running node's store into a new directory, showing progress "
                       "(docs/operations.md, Backup and restore)")
    backup.add_argument("--home", type=Path, required=True)
    backup.add_argument("--dir", type=Path, required=True,
                        help="a new or empty directory (any size of store: the copy runs in "
                             "the background and this command follows it)")
    backup.add_argument("--interval", type=_positive_float, default=1.0, metavar="SECONDS",
                        help="how often progress is shown")
    backup.set_defaults(handler=_backup)


def _health(args: argparse.Namespace) -> int:
    """Ask the node's /readyz (or /healthz with --live) on its metrics address: for a container's
    or a supervisor's health check. Exit 0 when it answers 200, 1 otherwise."""
    import urllib.error
    import urllib.request

    node_config = config.load_config(args.home)
    if not node_config.metrics.enabled:
        raise HealthnodeError(f"{args.home}: [metrics] is disabled; the probes are served there")
    host, _, port = node_config.metrics.listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 (asking, not binding)
    url = f"http://{host}:{port}/{'healthz' if args.live else 'readyz'}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        raise HealthnodeError(f"{url}: {getattr(error, 'reason', error)} (is the node "
                              "running?)") from None
    print(body.decode(errors="replace"))
    return 0 if status == 200 else 1


def _add_health(subparsers: Any) -> None:
    health = subparsers.add_parser(
        "health", help="exit 0 when the node is ready (its /readyz), 1 when not: for health "
                       "checks (docs/operations.md)")
    health.add_argument("--home", type=Path, required=True)
    health.add_argument("--live", action="store_true",
                        help="ask only whether the node is alive (/healthz)")
    health.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS")
    health.set_defaults(handler=_health)


# --- sim -----------------------------------------------------------------------------------

def _sim(args: argparse.Namespace) -> int:
    from healthnode.tools.sim import simulator, world

    if args.byzantine >= args.nodes:
        raise HealthnodeError(f"--byzantine {args.byzantine} leaves no correct node of "
                              f"{args.nodes}")
    config = world.SimConfig(nodes=args.nodes, byzantine=args.byzantine)
    summary = simulator.run_many(args.first_seed, args.seeds, config, args.jobs)
    if args.json:
        print_json(summary.to_json())
    else:
        print(f"seeds run: {summary.seeds} (from {summary.first_seed}), nodes {summary.nodes}, "
              f"byzantine {summary.byzantine}")
        print(f"heights finalized: {summary.heights_finalized}")
        print(f"violations: {summary.violations}")
        print(f"worst recovery: {summary.worst_recovery_ms} ms (seed "
              f"{summary.worst_recovery_seed}; bound {summary.liveness_bound_ms} ms)")
        print(f"equivocations detected: {summary.equivocations_detected}, "
              f"evidence committed: {summary.evidence_committed}")
        for result in summary.failing[:20]:
            print(f"seed {result.seed} failed: {result.violations[0]}")
            print(f"  replay: {result.replay}")
    return 1 if summary.violations else 0


def _add_sim(subparsers: Any) -> None:
    sim = subparsers.add_parser(
        "sim", help="run the seeded consensus simulator and check its invariants")
    sim.add_argument("--seeds", type=_positive_int, default=100, help="how many seeds to run")
    sim.add_argument("--first-seed", type=_non_negative_int, default=0,
                     help="the first seed (replay one failing seed with --seeds 1)")
    sim.add_argument("--nodes", type=_positive_int, default=4, help="authorities")
    sim.add_argument("--byzantine", type=_non_negative_int, default=1,
                     help="byzantine authorities; more than (nodes-1)/3 must produce a fork")
    sim.add_argument("--jobs", type=_positive_int, default=1, help="worker processes")
    sim.add_argument("--json", action="store_true", help="print the summary as JSON")
    sim.set_defaults(handler=_sim)


# --- node -----------------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    from healthnode.node.runner import run_node  # imports libp2p (~0.7 s): only here

    if args.key_fd is not None and args.key_fd == args.passphrase_fd:
        raise HealthnodeError("--key-fd and --passphrase-fd must be two descriptors")
    return run_node(args.home, KeySource(args.key_file, args.key_fd, args.key_env_file,
                                         args.passphrase_file, args.passphrase_fd))


def _localnet(args: argparse.Namespace) -> int:
    from healthnode.tools.localnet import run_localnet

    return run_localnet(args.dir, args.nodes, args.base_port, args.demo)


def _verify(args: argparse.Namespace) -> int:
    """Check a stopped node's chain, or a backup's, offline from its genesis (ledger/replay):
    every block re-executed from the genesis; on a node that pruned bodies or joined from a
    snapshot, the headers and certificates from the genesis to its oldest kept state, and the
    blocks after that state re-executed from it (docs/operations.md, "Pruning")."""
    from healthnode.home.config import load_genesis
    from healthnode.ledger import rules, smt
    from healthnode.ledger.replay import replay_chain
    from healthnode.ledger.state import META_KEY
    from healthnode.protocol.block import VerificationError
    from healthnode.store.leveldb import ChainStore

    where: Path = args.home
    is_backup = (where / backup.BACKUP_CHAIN).is_dir() and not (where / "data").exists()
    chain = where / backup.BACKUP_CHAIN if is_backup else \
        where / config.load_config(where).node.data_dir / backup.BACKUP_CHAIN
    if not chain.is_dir():
        raise HealthnodeError(f"{chain}: no chain store here (a node home or a backup)")
    genesis = load_genesis(args.genesis or where / config.GENESIS_FILE)
    started = last_shown = time.monotonic()
    # Any format: verifying an old store or backup (before or after `migrate`) is what an
    # operator does around an upgrade; replaying reads only blocks, which every format holds.
    with ChainStore.open(chain, genesis, any_format=True) as store:
        head = store.head.height

        def progress(height: int) -> None:
            nonlocal last_shown
            now = time.monotonic()
            if now - last_shown >= 2 or height == head:
                last_shown = now
                print(f"verify: height {height} of {head} ({100 * height // max(head, 1)} %), "
                      f"{now - started:.0f} s", file=sys.stderr, flush=True)

        from_state = 0  # the height of the state re-executed from (0: the genesis)
        try:
            if store.first_body == 1:
                state = replay_chain(genesis, store.blocks(), progress)
            else:
                from_state, start = _verify_to_kept_state(store, genesis, progress)
                state = replay_chain(genesis, store.blocks(from_state + 1), progress, start)
        except VerificationError as error:
            raise HealthnodeError(f"verify failed at {error}") from None
        stored_root = store.block(head).header.state_hash if head else None  # type: ignore[union-attr]
        items, stored = state.items(), store.state_items()
        if from_state and head:
            # From a snapshot, the replayed tree's nodes are all of the snapshot's height or
            # later, so the root's version may differ from the store's: the meta is compared
            # without it (its state hash is compared, and is the root).
            mine, theirs = rules.chain_meta(state), rules.chain_meta(store)
            if (mine.chain_id, mine.height, mine.time_ms, mine.state_hash) != \
                    (theirs.chain_id, theirs.height, theirs.time_ms, theirs.state_hash):
                raise HealthnodeError(f"verify failed at height {head}: stored state: the "
                                      f"chain meta is not the one the chain executes to")
            del items[META_KEY], stored[META_KEY]
        if head and items != stored:
            raise HealthnodeError(f"verify failed at height {head}: stored state: the store's "
                                  f"state is not the state the chain executes to")
        items = state.items()
        meta = rules.chain_meta(store)
        try:  # the stored tree proves every key of the replayed state against the head's root
            root = rules.tree_root(meta)
            for key, value in items.items():
                if rules.in_tree(key) and not smt.verify(meta.state_hash, crypto.digest(key),
                                                      crypto.digest(value), smt.prove(
                                                          store, root, crypto.digest(key))):
                    raise smt.TreeError(f"key {key[:12]!r} does not prove")
        except smt.TreeError as error:
            raise HealthnodeError(f"verify failed at height {head}: stored tree: {error}") \
                from None
    print_json({"ok": True, "chain_id": genesis.chain_id, "height": head,
                "state_root": stored_root.hex() if stored_root else None,
                # Headers and certificates alone up to `headers_checked_to`; every block after
                # `replayed_from` re-executed (0: from the genesis, every block).
                "replayed_from": from_state, "headers_checked_to": from_state,
                "base": store.base, "pruned_to": store.pruned,
                "seconds": round(time.monotonic() - started, 3)})
    return 0


def _verify_to_kept_state(store: ChainStore, genesis: Genesis,
                          progress: Progress) -> tuple[int, Start]:
    """The first part of `verify` on a node that holds no bodies below `store.first_body`: the
    headers and certificates from the genesis to its oldest kept snapshot (through the kept
    set-change heads below the height it joined from, if it joined by state sync), and that
    snapshot's state rebuilt and checked against the header's state root. Returns the
    snapshot's height and where to replay from; VerificationError otherwise."""
    from healthnode.ledger import snapshot
    from healthnode.ledger.replay import Start, check_headers
    from healthnode.protocol.block import VerificationError

    kept = store.snapshots()
    if not kept or kept[-1] + 1 < store.first_body:
        raise VerificationError(f"height {store.first_body - 1}: state: no kept snapshot from "
                                f"which the blocks this node holds can be re-executed")
    height = kept[-1]
    changes = {head.header.height: head for head in store.set_changes(height)}
    below = [(head.header, head.certificate) for at, head in sorted(changes.items())
             if at < store.base]
    linked_from = max(store.base, 1)
    header = check_headers(genesis, [*below, *store.headers(linked_from, height)], changes,
                           linked_from, progress)
    assert header is not None and header.height == height
    state, meta = snapshot.state_of_pairs(genesis.chain_id, height, header.time_ms,
                                          store.snapshot_pairs(height))
    if meta.state_hash != header.state_hash:
        raise VerificationError(f"height {height}: snapshot: its pairs do not fold to the "
                                f"certified state root")
    return height, Start(state, height, header.hash)


def _bench(args: argparse.Namespace) -> int:
    from healthnode.tools.bench.run import main as bench_main

    return bench_main(args.nodes, args.txs, args.json)


# Commands with a parser of their own, which takes every option (--help included): the module
# whose `main(argv)` runs them, and the line `healthnode --help` shows.
OWN_PARSERS: dict[str, tuple[str, str]] = {
    "nemesis": ("healthnode.tools.nemesis.__main__",
                "fault injection against a running network (docs/reliability.md); "
                "`healthnode nemesis --help` for its options"),
    "soak": ("healthnode.tools.soak.__main__",
             "run a local network for a stated time under a mixed load and record how each "
             "node's resources evolve (docs/reliability.md); `healthnode soak --help`"),
}


def _run_own_parser(name: str, arguments: list[str]) -> int:
    module = importlib.import_module(OWN_PARSERS[name][0])  # imported by the command only
    code: int = module.main(arguments)
    return code


def _add_node_commands(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="run a node (SIGTERM or Ctrl-C stops it cleanly)")
    run.add_argument("--home", type=Path, required=True)
    key = run.add_mutually_exclusive_group()
    key.add_argument("--key-file", type=Path, metavar="PATH",
                     help="the node key file, instead of the home's node_key.json (systemd "
                          "credentials, container secrets; docs/operations.md)")
    key.add_argument("--key-fd", type=_non_negative_int, metavar="N",
                     help="read the node key file from inherited descriptor N, once")
    key.add_argument("--key-env-file", type=Path, metavar="PATH",
                     help=f"read the node key from {KEY_ENV} (a key file in base64) in this "
                          "environment file, once")
    passphrase = run.add_mutually_exclusive_group()
    passphrase.add_argument("--passphrase-file", type=Path, metavar="PATH",
                            help="a sealed node key's passphrase (else "
                                 f"${keys.PASSPHRASE_ENV}, else the terminal)")
    passphrase.add_argument("--passphrase-fd", type=_non_negative_int, metavar="N",
                            help="read a sealed node key's passphrase from inherited "
                                 "descriptor N, once")
    run.set_defaults(handler=_run)
    localnet = subparsers.add_parser(
        "localnet", help="run a whole local network, one process per node")
    localnet.add_argument("--nodes", type=_positive_int, default=4)
    localnet.add_argument("--dir", type=Path, default=Path("localnet"),
                          help="network directory (made on first run, resumed after)")
    localnet.add_argument("--base-port", type=_port, default=layout.DEFAULT_BASE_PORT)
    localnet.add_argument("--demo", action="store_true",
                          help="once ready, walk through a patient, two clinicians, a grant, a "
                               "read, a revoke and the audit trail")
    localnet.set_defaults(handler=_localnet)
    verify = subparsers.add_parser(
        "verify", help="check a stopped node's chain, or a backup, offline from its genesis: "
                       "links, certificates, roots and the state by re-execution")
    verify.add_argument("--home", type=Path, required=True,
                        help="a stopped node's home, or a backup directory")
    verify.add_argument("--genesis", type=Path,
                        help="check against this genesis instead of the one in --home")
    verify.set_defaults(handler=_verify)
    bench = subparsers.add_parser(
        "bench", help="measure a fresh local network: throughput, latency, catch-up, memory")
    bench.add_argument("--nodes", type=_positive_int, default=4)
    bench.add_argument("--txs", type=_positive_int, default=20_000,
                       help="transactions of the full-load and catch-up runs")
    bench.add_argument("--json", action="store_true", help="one JSON object instead of text")
    bench.set_defaults(handler=_bench)
    for name, (_module, text) in OWN_PARSERS.items():  # listed here; `main` runs them
        own = subparsers.add_parser(name, add_help=False, help=text)
        own.add_argument("arguments", nargs=argparse.REMAINDER)
        own.set_defaults(handler=lambda args, name=name: _run_own_parser(name, args.arguments))


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
    _add_genesis(subparsers)
    _add_admin(subparsers)
    _add_health(subparsers)
    _add_backup(subparsers)
    _add_migrate(subparsers)
    _add_node_commands(subparsers)
    _add_sim(subparsers)
    add_wallet_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    previous_umask = os.umask(PRIVATE_UMASK)  # restored for an in-process caller (a test)
    try:
        return _main(argv)
    finally:
        os.umask(previous_umask)


def _main(argv: Sequence[str] | None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in OWN_PARSERS:
        return _run_own_parser(arguments[0], arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    handler: Handler = args.handler
    try:
        return handler(args)
    except HealthnodeError as error:
        print(f"healthnode: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("healthnode: interrupted", file=sys.stderr)
        return 130
