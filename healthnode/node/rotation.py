"""This node's side of a rotation of its key (`node.rotate`: ledger/rules/rotation.py;
docs/operations.md, "Rotating a node key").

Theory of operation
-------------------
- **Stage** (`open_new_key`, `stage_new_key`; the admin method `key_rotate`). The operator makes
  the new key (`healthnode keys new --kind node`) and names its file; the node opens it (a sealed
  one with the passphrase file the operator names too), signs the `node.rotate` with its key and
  the new key's consent with the new key, and keeps the new key in the home as
  `node_key.next.json` (0600, synced) in the form the home keeps its key: the file as it is,
  clear or sealed, when the home holds the node key; the public half when the key is kept
  outside the home, which is then the operator's to replace (below). The new key's secret is
  not kept in memory beyond the signing.
- **Stop** (`stop_if_rotated`: a commit hook, and at open). Once the node has committed the block
  before its rotation's height, the ledger has retired its key: it would sign nothing that counts,
  and its libp2p identity (its peer id) is that key. So it stops there, as it does before a rules
  version it does not carry, logging `node_key_rotated` and exiting with what to do: start it
  again. Its emergency share file is kept (the ledger relabelled its commitment to the new key,
  same index, same share; node/emergency.py leaves a rotated key's share alone).
- **Take up** (`take_up_staged_key`, in `healthnode run` before the key is read). When the chain
  says that the home's key was rotated to the staged key, the staged file is renamed over
  `node_key.json`, so the old key's file is gone (its key signs nothing more), and the node runs as
  the new key. A staged key that the chain has not taken yet waits; one that is not the key the
  chain took is refused, naming both.
- **A key kept outside the home** (`run --key-file`, `--key-fd`, `--key-env-file`): the home holds
  its public half, so the staged file is the new key's public half and the take-up swaps the
  public halves; putting the new key where the supervisor gives it to the node, and destroying the
  old one, is the operator's job. Started with the old key, the node refuses, saying so.

The other nodes take the rotated node as an authority under its new key at once (their gossip
and block sync accept any authority of the ledger, and a gossip link is opened back to an
authority that dials in without a configured address: net/gossip.py). The peers in a node's
config follow their rotations from its next start (`follow_rotations`: the same address with
the new key's peer id), and until then in the addresses a wallet is given for break-glass.
"""

from __future__ import annotations

import os
from pathlib import Path

from healthnode import crypto, limits, logs
from healthnode.errors import HealthnodeError, KeyFileError
from healthnode.home import keys
from healthnode.home.config import GENESIS_FILE, KEY_FILE, NEXT_KEY_FILE, load_config, load_genesis
from healthnode.home.files import read_limited
from healthnode.home.modes import check_secret_file
from healthnode.ledger import rules
from healthnode.ledger.state import ROTATED, StateView, decode_value
from healthnode.protocol.state import KeyRotation
from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.rotation")


class KeyRotated(HealthnodeError):
    """This node's key was rotated away: the node stops after the block before the rotation's
    height, and does not start again with that key."""

    def __init__(self, home: Path, old_key: bytes, rotation: KeyRotation) -> None:
        staged = home / NEXT_KEY_FILE
        start = (f"start the node again: it takes up the new key staged in {staged}"
                 if staged.exists() else
                 f"start the node with the new key ({home / KEY_FILE}, or --key-file, --key-fd "
                 f"or --key-env-file for a key kept outside the home)")
        super().__init__(
            f"this node's key {old_key.hex()[:16]} is replaced by "
            f"{rotation.new_key.hex()[:16]} from height {rotation.height} (node.rotate) and "
            f"signs nothing more: {start} (docs/operations.md, 'Rotating a node key')")
        self.rotation = rotation


def stop_if_rotated(store: ChainStore, own_key: bytes, home: Path) -> None:
    """KeyRotated, logged, once the ledger retired `own_key` (from the block after the head)."""
    rotation = rules.rotated_to(store, own_key)
    if rotation is None:
        return
    error = KeyRotated(home, own_key, rotation)
    log.error("node_key_rotated", old_key=own_key.hex()[:16],
              new_key=rotation.new_key.hex()[:16], from_height=rotation.height,
              head=store.head.height, detail=str(error))
    raise error


# --- staging (admin key_rotate) ---------------------------------------------------------------

def open_new_key(key_file: Path, passphrase_file: Path | None
                 ) -> tuple[bytes, crypto.Identity]:
    """The new node key's file bytes and identity, checked as the node checks its own: a node
    key, a clear one readable by the node's user alone, a sealed one opened with the passphrase
    in `passphrase_file` (itself the node user's alone). KeyFileError naming what is wrong."""
    raw = read_limited(key_file, limits.KEY_FILE_BYTES_MAX, KeyFileError, "key file")
    document = keys.parse_key_document(raw, str(key_file))
    form = keys.secret_form(document)
    passphrase = None
    if form == "none":
        raise KeyFileError(f"{key_file}: holds a public key only; the rotation is signed with "
                           f"the new key itself")
    if form == "sealed":
        if passphrase_file is None:
            raise KeyFileError(f"{key_file}: a sealed key: give its passphrase_file too")
        check_secret_file(passphrase_file, KeyFileError)
        passphrase = keys.obtain_passphrase(passphrase_file, confirm=False)
    else:
        check_secret_file(key_file, KeyFileError)
    return raw, keys.open_identity(document, str(key_file), passphrase, expected_kind="node")


def stage_new_key(home: Path, raw: bytes, public_key: bytes, *, replace_other: bool
                  ) -> Path | None:
    """Keep the new key in the home as NEXT_KEY_FILE, in the form the home keeps its key (the
    module docstring); the path, or None when the home holds no key file at all (the key is
    given to the node from outside, and so will the new one be). A file staged already for the
    same key is kept; one for another key is replaced only when `replace_other` (no rotation of
    it can be under way), KeyFileError otherwise."""
    current = home / KEY_FILE
    if not current.exists():
        return None
    holds_key = keys.secret_form(keys.read_key_document(current)) != "none"
    staged = home / NEXT_KEY_FILE
    if staged.exists():
        held = keys.read_node_public_key(staged)
        if held == public_key:
            return staged
        if not replace_other:
            raise KeyFileError(f"{staged} holds key {held.hex()[:16]}, staged for a rotation of "
                               f"this node that waits in its mempool")
        staged.unlink()
        log.warning("staged_node_key_replaced", old=held.hex()[:16], new=public_key.hex()[:16])
    keys.write_private_file(staged, raw if holds_key else keys.encode_public_key_file(public_key))
    return staged


def unstage(staged: Path) -> None:
    """Remove a staged key whose rotation was refused."""
    staged.unlink(missing_ok=True)
    keys.sync_directory(staged.parent)


# --- at start ---------------------------------------------------------------------------------

def take_up_staged_key(home: Path) -> KeyRotation | None:
    """Before `healthnode run` reads its key: when the chain rotated the home's key to the
    staged one, the staged file takes `node_key.json`'s place (the rotation, for the log);
    None when there is nothing to take up yet. KeyFileError when the chain took another key."""
    staged, current = home / NEXT_KEY_FILE, home / KEY_FILE
    if not staged.exists() or not current.exists():
        return None
    old_key = keys.read_node_public_key(current)
    new_key = keys.read_node_public_key(staged)
    config = load_config(home)
    with ChainStore.open(home / config.node.data_dir / "chain",
                         load_genesis(home / GENESIS_FILE)) as store:
        rotation = rules.rotated_to(store, old_key)
    if rotation is None:
        return None  # not in force yet (or never final): the node runs as its key until then
    if rotation.new_key != new_key:
        raise KeyFileError(
            f"{staged} holds key {new_key.hex()[:16]}, but the chain replaced this node's key "
            f"{old_key.hex()[:16]} by {rotation.new_key.hex()[:16]} from height "
            f"{rotation.height}: put that key's file at {current} (docs/operations.md, "
            f"'Rotating a node key')")
    os.replace(staged, current)
    keys.sync_directory(home)
    return rotation


# --- the keys of other nodes, and this node's former keys ---------------------------------------

def follow_rotations(view: StateView, peers: dict[bytes, str]) -> dict[bytes, str]:
    """Configured peers (key -> address) under their keys of now: a rotated peer keeps its
    address, with the new key's peer id in place of the old."""
    followed = {}
    for key, address in peers.items():
        current = rules.current_key(view, key)
        followed[current] = address if current == key else address.replace(
            f"/p2p/{crypto.peer_id(key)}", f"/p2p/{crypto.peer_id(current)}")
    return followed


def former_keys(view: StateView, key: bytes) -> set[bytes]:
    """The keys whose place `key` took, through one rotation or several."""
    successor: dict[bytes, bytes] = {}
    for state_key, value in view.scan(ROTATED):
        successor[state_key[len(ROTATED):]] = decode_value(value, KeyRotation, state_key).new_key
    found: set[bytes] = set()
    frontier = {key}
    while frontier:
        frontier = {old for old, new in successor.items() if new in frontier} - found
        found |= frontier
    return found

