"""Node logs hold nothing that links a patient: a mixed workload on a real 4-node network, then
every line of every node's log searched for every id of the test (docs/operations.md, "What the
logs hold about patients").

The nodes log at debug level, libp2p's own records included. The workload: a patient allows
break-glass for a category and adds two records; a clinician is granted one of them and reads it
twice through another hospital; an emergency provider reads the other by break-glass (each
holder asked releases a share); the grant is revoked and a read refused; the patient reads its audit
trail and erases the first record; the patient's key opens a node-only stream, which is refused.
The ids searched for: the patient's and the providers' public keys (hex, and as libp2p peer ids),
the record ids and ciphertext hashes, the grant id, the access.logs named to the wallets, and the
hash of every transaction on the chain (each one is a patient's, a provider's, or a node's
registration of a provider or access.log of a read), and each node's log salt. Each is looked for
in full and as every window of 16 characters, so that no prefix, suffix or middle part of one is
left in a log. Then the log pseudonyms: stable for one reader on one node, under the salt in the
node's home (mode 0600), which a backup does not copy.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from healthnode import crypto, logs
from healthnode.home.config import LOG_SALT_FILE, LogSection, load_config, write_config
from healthnode.home.keys import load_identity
from healthnode.net.framing import P2PError
from healthnode.net.p2p import P2P
from healthnode.protocol.wire import SYNC_FRAME_BYTES_MAX, SYNC_PROTOCOL
from healthnode.tools.launcher import LOG_FILE
from tests import wallet_cli as cli
from tests.cluster import Cluster

pytestmark = pytest.mark.slow  # 34 s alone, about a minute beside other work; CI runs it

WINDOW = 16  # characters: 8 bytes of hex, the prefix length logs used to keep
HEX_RUN = re.compile(rf"[0-9a-fA-F]{{{WINDOW},}}")
BASE58_RUN = re.compile(rf"[1-9A-HJ-NP-Za-km-z]{{{WINDOW},}}")


def windows(text: str) -> set[str]:
    return {text[i:i + WINDOW] for i in range(len(text) - WINDOW + 1)}


@dataclasses.dataclass
class Secrets:
    """What must not appear in a log, by what it is (for the failure message)."""

    hex_windows: dict[str, str] = dataclasses.field(default_factory=dict)
    base58_windows: dict[str, str] = dataclasses.field(default_factory=dict)

    def add_hex(self, what: str, value: str) -> None:
        assert len(value) == 64, (what, value)
        for window in windows(value.lower()):
            self.hex_windows[window] = what

    def add_key(self, who: str, public_key: str) -> None:
        self.add_hex(f"{who}'s public key", public_key)
        for window in windows(crypto.peer_id(bytes.fromhex(public_key))):
            self.base58_windows[window] = f"{who}'s peer id"

    def found_in(self, line: str) -> list[str]:
        hits = [self.hex_windows[w] for run in HEX_RUN.findall(line)
                for w in windows(run.lower()) if w in self.hex_windows]
        hits += [self.base58_windows[w] for run in BASE58_RUN.findall(line)
                 for w in windows(run) if w in self.base58_windows]
        return sorted(set(hits))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "net")
    for home in cluster.homes:
        config = load_config(home)
        write_config(dataclasses.replace(config, log=LogSection("debug", "json")), home)
    cluster.start_all()
    try:
        yield cluster
    finally:
        cluster.close()


def _workload(cluster: Cluster, people: cli.People, secrets: Secrets) -> int:
    """Run the workload, adding each id it meets to `secrets`; how many holders released a
    break-glass share."""
    for who, kind in [("patient", "patient"), ("clinician", "provider"), ("er", "provider")]:
        people.new(who, kind)
        secrets.add_key(who, people.public[who])
    people.register(1, "clinician", ["clinician"], "Dr Clinician")
    people.register(2, "er", ["clinician", "emergency"], "Dr ER")
    cli.ok("emergency", "allow", *people.wallet(0, "patient"), "--category", "allergy")
    records = {}
    for name, category in [("lab", "lab"), ("allergy", "allergy")]:
        source = people.dir / f"{name}.in"
        source.write_text(f"a {name} result")
        added = cli.ok("record", "add", *people.wallet(0, "patient"), "--patient",
                       str(people.keys["patient"]), "--category", category, str(source))
        records[name] = added["record_id"]
        secrets.add_hex(f"record id ({name})", added["record_id"])
        secrets.add_hex(f"ciphertext hash ({name})", added["ciphertext_hash"])
    granted = cli.ok("grant", *people.wallet(1, "patient"), "--to", people.public["clinician"],
                     "--category", "lab")
    secrets.add_hex("grant id", granted["grant_id"])
    for _ in range(2):
        read = cli.ok("record", "get", *people.wallet(2, "clinician"), records["lab"], "--out",
                      str(people.dir / "lab.out"))
        secrets.add_hex("access.log of a read", read["access_tx"])
    glass = cli.ok("record", "get", *people.wallet(3, "er"), records["allergy"], "--out",
                   str(people.dir / "allergy.out"), "--break-glass")
    for access in glass["access"]:
        secrets.add_hex("access.log of a break-glass read", access["access_tx"])
    assert glass["access"]
    cli.ok("revoke", *people.wallet(3, "patient"), granted["grant_id"])
    cli.refused("record_not_readable", "record", "get", *people.wallet(1, "clinician"),
                records["lab"], "--out", str(people.dir / "nope"))
    assert cli.ok("audit", *people.wallet(2, "patient"), "--json")
    cli.ok("record", "erase", *people.wallet(1, "patient"), records["lab"])
    patient = load_identity(people.keys["patient"], cli.PASSPHRASE)
    trio.run(_open_a_node_only_stream, cluster, patient)
    return len(glass["access"])


async def _open_a_node_only_stream(cluster: Cluster, who: crypto.Identity) -> None:
    """A wallet's key asks node0 for block sync, which only authorities may: refused."""
    wallet = P2P(who)
    address = f"{load_config(cluster.homes[0]).p2p.listen[0]}/p2p/" \
              f"{crypto.peer_id(cluster.public_keys[0])}"
    async with wallet.running(["/ip4/127.0.0.1/tcp/0"]):
        await wallet.dial(address)
        try:
            stream = await wallet.open_stream(cluster.public_keys[0], SYNC_PROTOCOL,
                                              SYNC_FRAME_BYTES_MAX)
            with trio.fail_after(20):
                assert await stream.receive() is None
        except P2PError:
            pass


def _every_tx_hash(cluster: Cluster) -> list[str]:
    head = cluster.height(1)
    cluster.wait_height(head, [0, 1, 2, 3], 30)
    return [tx for height in range(1, head + 1)
            for tx in cluster.admin(1, "block", height=height)["txs"]]


def _log_lines(cluster: Cluster) -> list[tuple[str, str]]:
    return [(home.name, line) for home in cluster.homes
            for line in (home / LOG_FILE).read_text(errors="replace").splitlines()]


def _assert_found_in_none(lines: list[tuple[str, str]], secrets: Secrets) -> None:
    leaks = [f"{node}: {', '.join(found)}: {line[:400]}" for node, line in lines
             if (found := secrets.found_in(line))]
    assert not leaks, f"{len(leaks)} log lines hold ids:\n" + "\n".join(leaks[:20])


def test_no_node_log_holds_an_id_of_a_patient_or_a_provider(cluster: Cluster,
                                                              tmp_path: Path) -> None:
    people = cli.People(cluster, tmp_path)
    secrets = Secrets()
    holders = _workload(cluster, people, secrets)
    tx_hashes = _every_tx_hash(cluster)
    assert len(tx_hashes) >= 10
    for tx_hash in tx_hashes:
        secrets.add_hex("hash of a transaction on chain", tx_hash)
    backup = tmp_path / "backup"
    assert cluster.admin(1, "backup", dir=str(backup), wait=True)["state"] == "done"
    for index in range(4):
        cluster.kill(index, signal.SIGTERM)

    lines = _log_lines(cluster)
    assert len(lines) > 1000  # debug level, libp2p's records included
    _assert_found_in_none(lines, secrets)
    salts = {}
    for home in cluster.homes:
        path = home / LOG_SALT_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        salts[home.name] = path.read_bytes()
        assert len(salts[home.name]) == logs.PSEUDONYM_SALT_BYTES
    assert len(set(salts.values())) == 4  # one salt per node: pseudonyms differ between nodes
    logged_salts = Secrets()
    for node, salt in salts.items():
        logged_salts.add_hex(f"{node}'s log salt", salt.hex())
    _assert_found_in_none(lines, logged_salts)

    # What the lines say instead: the reader under node2's pseudonym, the same for both reads.
    clinician = bytes.fromhex(people.public["clinician"])
    released = [json.loads(line) for node, line in lines
                if node == "node2" and '"record_released"' in line]
    assert [event.get("reader_pseudonym") for event in released] == \
        [logs.pseudonym_with(salts["node2"], clinician)] * 2
    shares = [json.loads(line) for _, line in lines if '"break_glass_share_released"' in line]
    assert len(shares) == holders and all(event.get("reader_pseudonym") for event in shares)
    assert any('"stream_refused"' in line for node, line in lines if node == "node0")

    # A backup copies no salt: a restored node starts with a new one.
    copied = [path for path in backup.rglob("*") if path.is_file()]
    assert copied and not any(path.name == LOG_SALT_FILE for path in copied)
    assert not any(salt in path.read_bytes() for path in copied for salt in salts.values())
