"""Node homes and the genesis they share: `healthnode testnet` (a whole network's genesis and
homes), `healthnode genesis` (a genesis assembled from the founding hospitals' public keys) and
`healthnode init`.

A home holds what one hospital's node needs and nothing another hospital has:

    <home>/node_key.json   the node's Ed25519 identity (mode 0600) = libp2p identity = validator key
    <home>/genesis.json    the network's genesis (identical on every node; its hash is checked)
    <home>/config.toml     where this node listens and whom it dials (home/config.py)
    <home>/data/           LevelDB and blobs, created by the daemon

Every directory of a home is 0700 and every file 0600 (home/modes.py): both commands make their
homes under umask 077 and make the home directory 0700 even when it existed.

`testnet` deals every node key (and the break-glass key) itself, which is fine for a test
network on one machine. A real network is founded without any machine that holds more than its
own hospital's key (docs/operations.md, "Founding a network"): each hospital makes its node key
(`healthnode keys new --kind node`) and hands over its public half only; a founder writes a draft
(`genesis new`: no authority, no emergency key) and adds each hospital's key to it
(`genesis add-authority`); every hospital checks the finished genesis's hash out of band
(`genesis hash`) and runs `init --genesis FILE --key ITS_KEY`, which puts its own key, as it
holds it (clear, sealed, or its public half when the key stays outside the home), into the new
home. The break-glass key is made on chain once the network runs, so no file here holds it.
"""

from __future__ import annotations

import json
import random
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from healthnode import clock, crypto, limits
from healthnode.crypto import threshold
from healthnode.errors import GenesisError, HomeError, KeyFileError
from healthnode.home import config, keys
from healthnode.home.config import load_genesis, load_genesis_draft, write_genesis
from healthnode.home.files import create_private, read_limited, replace_private
from healthnode.home.modes import make_private_dir, private_umask
from healthnode.protocol.genesis import (
    DEFAULT_PARAMS,
    GENESIS_FORMAT,
    ROUNDS_FROM,
    RULES_NEWEST,
    RULES_OLDEST,
    Authority,
    EmergencyKey,
    Genesis,
    GenesisDraft,
    ShareCommitment,
    genesis_text,
)

DEFAULT_BASE_PORT = 26600
METRICS_PORT_OFFSET = 100  # metrics of node i listen on base_port + 100 + i
DEFAULT_CHAIN_ID = "healthnode-testnet"
NODES_MAX = 64


@dataclass(frozen=True, slots=True)
class NodeHome:
    path: Path
    name: str
    public_key: bytes

    @property
    def peer_id(self) -> str:
        return crypto.peer_id(self.public_key)

    def describe(self) -> dict[str, str]:
        return {"home": str(self.path), "name": self.name,
                "public_key": self.public_key.hex(), "peer_id": self.peer_id}


def make_testnet(nodes: int, out: Path, base_port: int = DEFAULT_BASE_PORT,
                 hosts: str | None = None, chain_id: str = DEFAULT_CHAIN_ID,
                 now_ms: int | None = None, rules_version: int = GENESIS_FORMAT,
                 keygen: bool = False) -> tuple[Genesis, list[NodeHome]]:
    """Write `out/genesis.json` and `out/node{i}/` homes for `nodes` authorities, for a chain
    that starts with ledger rules `rules_version` (the newest by default; an older one to
    rehearse a rules upgrade).

    The emergency key is dealt here, each share written into its node's home only (quick, for
    tests and a localnet, where one person holds every home anyway), unless `keygen`: then the
    genesis has none, and the nodes generate it among themselves once they run (rules version
    4 on, ledger/rules/rounds.py), as a founded network does.

    Without `hosts`, node i listens on 127.0.0.1:`base_port + i`. With a template such as
    "node{i}", every node listens on 0.0.0.0:`base_port` and dials the others by host name
    (a compose network)."""
    if not 1 <= nodes <= NODES_MAX:
        raise HomeError(f"--nodes must be within 1..{NODES_MAX}, got {nodes}")
    if hosts is not None and "{i}" not in hosts:
        raise HomeError(f"--hosts template {hosts!r} must contain {{i}}")
    last_port = base_port + (0 if hosts else nodes - 1) + METRICS_PORT_OFFSET
    if base_port < 1024 or last_port > 65535:
        raise HomeError(f"--base-port {base_port} leaves ports outside 1024..65535")
    _check_rules_version(rules_version)
    if keygen and rules_version < ROUNDS_FROM:
        raise HomeError(f"--keygen needs rules version {ROUNDS_FROM} or later, got "
                        f"{rules_version}")
    if (out / config.GENESIS_FILE).exists():
        raise HomeError(f"{out} already holds a testnet; choose another --out or remove it")
    with private_umask():
        return _write_testnet(nodes, out, base_port, hosts, chain_id, now_ms, rules_version,
                              keygen)


def _write_testnet(nodes: int, out: Path, base_port: int, hosts: str | None, chain_id: str,
                   now_ms: int | None, rules_version: int, keygen: bool
                   ) -> tuple[Genesis, list[NodeHome]]:
    out.mkdir(parents=True, exist_ok=True)
    identities = [crypto.Identity.generate() for _ in range(nodes)]
    names = [f"node{i}" for i in range(nodes)]
    # The break-glass key: dealt here, each share written to its authority's home only, and the
    # secret never kept; or generated by the nodes themselves once they run (`keygen`).
    dealing = None if keygen else threshold.deal(threshold.quorum_threshold(nodes), nodes)
    emergency = None if dealing is None else EmergencyKey(
        dealing.public_key, dealing.threshold, tuple(
            ShareCommitment(identity.public_key, index + 1, commitment)
            for index, (identity, commitment) in enumerate(zip(identities, dealing.commitments,
                                                                strict=True))))
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_ms=now_ms if now_ms is not None else clock.now_ms(),
        authorities=tuple(
            Authority(name=name, public_key=identity.public_key)
            for name, identity in zip(names, identities, strict=True)
        ),
        params=DEFAULT_PARAMS,
        emergency=emergency,
        format=rules_version,
    )
    try:
        genesis.validate()
    except GenesisError as error:
        raise HomeError(str(error)) from None
    write_genesis(genesis, out / config.GENESIS_FILE)

    def dial_address(i: int) -> str:
        peer = crypto.peer_id(identities[i].public_key)
        if hosts is not None:
            return f"/dns4/{hosts.format(i=i)}/tcp/{base_port}/p2p/{peer}"
        return f"/ip4/127.0.0.1/tcp/{base_port + i}/p2p/{peer}"

    homes = []
    for i, (name, identity) in enumerate(zip(names, identities, strict=True)):
        home = out / name
        home.mkdir(mode=0o700)
        keys.write_private_file(home / config.KEY_FILE,
                                keys.encode_key_file("node", identity, None))
        if dealing is not None:
            keys.write_private_file(home / config.EMERGENCY_SHARE_FILE,
                                    keys.encode_emergency_share(i + 1, dealing.shares[i]))
        write_genesis(genesis, home / config.GENESIS_FILE)
        if hosts is not None:
            listen, metrics = f"/ip4/0.0.0.0/tcp/{base_port}", f"0.0.0.0:{base_port + 100}"
        else:
            listen = f"/ip4/127.0.0.1/tcp/{base_port + i}"
            metrics = f"127.0.0.1:{base_port + METRICS_PORT_OFFSET + i}"
        node_config = config.NodeConfig(
            node=config.NodeSection(name=name),
            p2p=replace(config.P2PSection(), listen=(listen,),
                        peers=tuple(dial_address(j) for j in range(nodes) if j != i),
                        dial_local=hosts is None),
            metrics=config.MetricsSection(listen=metrics),
        )
        config.write_config(node_config, home)
        homes.append(NodeHome(home, name, identity.public_key))
    return genesis, homes


def _check_rules_version(rules_version: int) -> None:
    if not RULES_OLDEST <= rules_version <= RULES_NEWEST:
        raise HomeError(f"--rules must be within {RULES_OLDEST}..{RULES_NEWEST} (the versions "
                        f"this release carries), got {rules_version}")


# --- founding a network: the genesis draft ----------------------------------------------------


def new_genesis_draft(out: Path, chain_id: str, rules_version: int = GENESIS_FORMAT,
                      now_ms: int | None = None) -> GenesisDraft:
    """Write a new genesis draft at `out` (never over an existing file): the default consensus
    parameters, the genesis time (`now_ms`, else now), no authority yet and no emergency key
    (protocol/genesis.py, `GenesisDraft.new`)."""
    _check_rules_version(rules_version)
    draft = GenesisDraft.new(chain_id, now_ms if now_ms is not None else clock.now_ms(),
                             rules_version, source=str(out))
    with private_umask():
        create_private(out, genesis_text(draft).encode("utf-8"), HomeError,
                       " (add authorities to a draft with `healthnode genesis add-authority`)")
    return draft


def add_genesis_authority(path: Path, name: str, key_file: Path) -> tuple[GenesisDraft,
                                                                           Authority]:
    """Add the hospital `name` whose node key file is `key_file` to the draft at `path`, and
    rewrite the draft in place (atomically). Only the key's public half is read: the file may
    be the key as `keys new --kind node` wrote it (clear or sealed: no passphrase is asked) or
    what `keys public` made of it, which is all a hospital needs to hand over. A key or a name
    already in the draft, and a key of another kind than a node's, are refused."""
    draft = load_genesis_draft(path)
    public_key = keys.read_node_public_key(key_file)
    updated = draft.with_authority(name, public_key, source=str(path))
    with private_umask():
        replace_private(path, genesis_text(updated).encode("utf-8"), HomeError)
    return updated, updated.authorities[-1]


# --- init ---------------------------------------------------------------------------------------


def init_home(home: Path, genesis_path: Path, key_file: Path | None = None,
              replay: bool = False) -> NodeHome:
    """Prepare one node's home: its node key, the genesis, a default config.

    The node key is `key_file` when one is given (the key the hospital made itself, copied in as
    it is: clear, sealed, or its public half when the key is kept outside the home and given to
    `healthnode run` by --key-file, --key-fd or --key-env-file; home/node_key.py), else the one
    already in the home, else a new one made here. Only public keys are read, so a sealed key
    needs no passphrase. `replay`: the node replays every block from the genesis instead of
    taking a peer's snapshot of the state (`[node] state_sync = false`). Refuses a home that
    already has a different genesis (a node cannot silently change networks) or another node
    key than `key_file`, before writing anything."""
    genesis = load_genesis(genesis_path)
    given_key = None  # (the key file's bytes, its public key)
    if key_file is not None:
        raw = read_limited(key_file, limits.KEY_FILE_BYTES_MAX, KeyFileError, "key file")
        given_key = (raw, keys.node_public_key(keys.parse_key_document(raw, str(key_file)),
                                                  str(key_file)))
    with private_umask():
        return _init_home(home, genesis, key_file, given_key, replay)


def _init_home(home: Path, genesis: Genesis, key_file: Path | None,
               given_key: tuple[bytes, bytes] | None, replay: bool) -> NodeHome:
    home_genesis = home / config.GENESIS_FILE
    key_path = home / config.KEY_FILE
    if home_genesis.exists():
        existing = load_genesis(home_genesis)
        if existing.hash != genesis.hash:
            raise HomeError(f"{home} already belongs to chain {existing.chain_id!r} "
                            f"with another genesis; refusing to replace it")
    public_key = keys.read_node_public_key(key_path) if key_path.exists() else None
    if given_key is not None and public_key is not None and public_key != given_key[1]:
        raise HomeError(f"{key_path} holds node key {public_key.hex()[:16]}, not "
                        f"{given_key[1].hex()[:16]} of {key_file}: a home has one node key; "
                        f"init a new home for this key")
    make_private_dir(home)
    if not home_genesis.exists():
        write_genesis(genesis, home_genesis)
    if public_key is None and given_key is not None:
        keys.write_private_file(key_path, given_key[0])
        public_key = given_key[1]
    elif public_key is None:
        public_key = keys.create_key_file(key_path, "node", None).public_key
    names = {a.public_key: a.name for a in genesis.authorities}
    name = names.get(public_key, "observer")
    if not (home / config.CONFIG_FILE).exists():
        config.write_config(config.NodeConfig(node=config.NodeSection(
            name=name, state_sync=not replay)), home)
    else:
        existing_config = config.load_config(home)  # an existing config must still be valid
        if replay and existing_config.node.state_sync:
            config.write_config(replace(existing_config, node=replace(
                existing_config.node, state_sync=False)), home)
    return NodeHome(home, name, public_key)


def testnet_summary(genesis: Genesis, homes: list[NodeHome], out: Path) -> str:
    return json.dumps({
        "chain_id": genesis.chain_id,
        "genesis": str(out / config.GENESIS_FILE),
        "genesis_hash": genesis.hash.hex(),
        "nodes": [home.describe() for home in homes],
    }, indent=2)


def free_base_port(count: int, attempts: int = 200) -> int:
    """A base port P such that P..P+count-1 (p2p) and P+100.. (metrics) are free on 127.0.0.1
    right now, for throwaway networks (tests, benchmarks)."""
    chooser = random.SystemRandom()
    for _ in range(attempts):
        # Below Linux's ephemeral range (32768-60999 by default): a port found free there can
        # be taken a moment later as the local end of some outgoing connection.
        base = chooser.randrange(20_000, 32_000, 10)
        ports = [base + i for i in range(count)]
        ports += [base + METRICS_PORT_OFFSET + i for i in range(count)]
        if all(_port_free(port) for port in ports):
            return base
    raise HomeError(f"no free range of {count} ports found on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
