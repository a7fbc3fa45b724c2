"""A flood from fresh keys against a real node whose budgets are set small in its config.

Keys cost nothing: 100 fresh keys (1,000 under `-m slow`) send every transaction kind that any
key may sign (emergency.policy, consent.grant, consent.revoke, record.anchor with its upload,
record.erase) and uploads to node0 of a two-hospital network, at least twice what each of
node0's budgets takes, and providers upload what patients' keys cannot. Each budget refuses with
its own code: the door's (`budget_` and its key in `[budgets]`, ledger/door.py), the pending
uploads' (`upload_quota`, `node_upload_full`), the mempool's room for all but the authorities
(`mempool_full`), and the ledger's per key (`signer_grants_per_day`, `signer_policies_per_day`),
which a provider's key meets, being outside the door's budgets of patients' keys. Meanwhile a
patient reads her record (the node's own access.log, in the pool's reserve, also while the rest
of the pool is full and the network stalls) and a registered provider adds one for her. The pool
and node0's disk stay within their figures, and a restart gives no day's upload budget back.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from healthnode import crypto
from healthnode.crypto import Identity
from healthnode.home import config
from healthnode.protocol.client import ClientRequest, SubmitRequest, UploadRequest
from healthnode.protocol.tx import (
    AnyTx,
    ConsentGrant,
    ConsentRevoke,
    EmergencyPolicy,
    KeyWrap,
    RecordAnchor,
    RecordErase,
)
from healthnode.store.blob_files import TEMPORARY_PREFIX
from healthnode.wallet.connection import Refused, connect
from tests import wallet_cli as cli
from tests.cluster import CHAIN_ID, LAB_TAG, Cluster, wait_for

KIB = 1024
# node0's budgets, small: the flood below offers each at least twice what it takes.
BUDGETS: dict[str, int] = {
    "patient_anchors_per_minute": 12,
    "patient_grants_per_minute": 12,
    "patient_revokes_per_minute": 5,
    "patient_erasures_per_minute": 5,
    "patient_policies_per_minute": 10,
    # Above what the count budgets let in in a minute (~9 KB), below 12 grants of 1.5 KB.
    "patient_tx_bytes_per_minute": 12 * KIB,
    "patient_upload_bytes_per_day": 32 * KIB,
    "upload_bytes_per_day": 64 * KIB,
    "pending_upload_bytes_per_key": 4 * KIB,
    "pending_upload_bytes": 40 * KIB,
}
TXS_MAX, RESERVED_TXS = 80, 16  # the pool: 64 for anyone, and 16 more for the authorities
GENERAL_ROOM = TXS_MAX - RESERVED_TXS
RECORD_BYTES = 1024  # a padded length (protocol/padding.py)
UPLOADERS = 16  # providers that fill the pending uploads and spend the day's upload budget
PER_KEY = BUDGETS["pending_upload_bytes_per_key"] // RECORD_BYTES
SIGNER_GRANTS_PER_DAY, SIGNER_POLICIES_PER_DAY = 200, 64  # the ledger's (limits.py)
BATCH = 60  # transactions of one key sent at once, within the pool's general room

Make = Callable[[], ClientRequest]  # a request, made when it is sent (with the next nonce)


def minute() -> int:
    return int(time.time() * 1000) // 60_000


def start_of_a_minute(margin_s: float) -> None:
    """Wait, if less than `margin_s` of the current minute is left, for the next one."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.2)


@dataclass
class Key:
    """A key that signs with its next nonce; it moves on only when a node took a transaction."""

    identity: Identity = field(default_factory=Identity.generate)
    nonce: int = 0

    @property
    def public(self) -> bytes:
        return self.identity.public_key

    def submit(self, cls: type[Any], **fields: Any) -> SubmitRequest:
        tx = cls(signer=b"", nonce=self.nonce + 1, **fields).sign(self.identity, CHAIN_ID)
        return SubmitRequest(tx, 0)


@dataclass
class Outcome:
    """What a phase offered and what came of it: each request's refusal code (None: taken) and
    the minute of the clock it was answered in, and the requests taken."""

    codes: list[str | None] = field(default_factory=list)
    at: list[int] = field(default_factory=list)
    taken_requests: list[tuple[Key, ClientRequest]] = field(default_factory=list)

    def taken(self) -> int:
        return self.codes.count(None)

    def taken_by_minute(self) -> Counter[int]:
        return Counter(at for at, code in zip(self.at, self.codes, strict=True) if code is None)

    def refused(self, code: str) -> int:
        return self.codes.count(code)

    def txs(self) -> list[AnyTx]:
        return [r.tx for _, r in self.taken_requests if isinstance(r, SubmitRequest)]

    def uploads(self) -> list[tuple[Key, bytes]]:
        return [(k, r.ciphertext) for k, r in self.taken_requests if isinstance(r, UploadRequest)]


def send(home: str, work: list[tuple[Key, list[Make]]]) -> Outcome:
    """Each key's requests over a connection of its own, in order."""
    outcome = Outcome()

    async def main() -> None:
        for key, makes in work:
            async with connect(key.identity, home) as connection:
                for make in makes:
                    request = make()
                    try:
                        await connection.request(request)
                    except Refused as refused:
                        outcome.codes.append(refused.code)
                        continue
                    finally:
                        outcome.at.append(minute())
                    outcome.codes.append(None)
                    outcome.taken_requests.append((key, request))
                    if isinstance(request, SubmitRequest):
                        key.nonce += 1

    trio.run(main)
    return outcome


def body(label: str) -> bytes:
    """A ciphertext of a padded length, its own."""
    return (label.encode() + os.urandom(16)).ljust(RECORD_BYTES, b".")


def upload(data: bytes) -> Make:
    return lambda: UploadRequest(data)


def anchor(key: Key, data: bytes) -> Make:
    return lambda: key.submit(RecordAnchor, patient=key.public,
                              ciphertext_hash=crypto.digest(data), ciphertext_bytes=len(data),
                              tags=(LAB_TAG,), key_wraps=(KeyWrap(key.public, b"w" * 80),),
                              supersedes=None)


def grant(key: Key, grantee: bytes, tags: tuple[bytes, ...] = (LAB_TAG,),
          tag_key_wrap: bytes | None = None) -> Make:
    return lambda: key.submit(ConsentGrant, grantee=grantee, actions=("read",),
                              scope_records=(), scope_tags=tuple(sorted(tags)),
                              expires_at_ms=None, key_wraps=(), tag_key_wrap=tag_key_wrap)


def policy(key: Key, tags: tuple[bytes, ...] = ()) -> Make:
    return lambda: key.submit(EmergencyPolicy, allowed_tags=tags, wraps=())


def assert_budget(outcome: Outcome, name: str, per: int = 1, also: frozenset[str] = frozenset()
                  ) -> None:
    """The door budget `name` took at least one and no more than its figure in any minute
    (`per`: the amount of each request), offered at least twice its figure, and refused the
    rest by its own code (or by one of `also`)."""
    figure, code = BUDGETS[name], f"budget_{name}"
    assert len(outcome.codes) * per >= 2 * figure, (name, len(outcome.codes))
    by_minute = outcome.taken_by_minute()
    assert by_minute and all(taken * per <= figure for taken in by_minute.values()), \
        (name, by_minute)
    assert outcome.refused(code) >= 1 and set(outcome.codes) <= {None, code, *also}, \
        (name, Counter(outcome.codes))


def taken_and_refused_by(outcome: Outcome, code: str) -> None:
    """Each request was taken or refused by `code`."""
    assert set(outcome.codes) <= {None, code} and outcome.refused(code) >= 1, \
        Counter(outcome.codes)


def access_log_waiting(cluster: Cluster) -> dict[str, Any] | None:
    waiting = pool(cluster)
    return waiting if waiting["by_kind"].get("access.log") else None


def final(cluster: Cluster, txs: list[AnyTx], timeout_s: float = 60) -> None:
    cluster.wait_final([tx.hash.hex() for tx in txs], [0], timeout_s)


def in_batches(cluster: Cluster, home: str, key: Key, makes: list[Make]) -> None:
    """One key's transactions, all taken and final, a batch at a time."""
    for start in range(0, len(makes), BATCH):
        outcome = send(home, [(key, makes[start:start + BATCH])])
        assert outcome.taken() == len(outcome.codes), Counter(outcome.codes)
        final(cluster, outcome.txs()[-1:])


def pool(cluster: Cluster) -> dict[str, Any]:
    waiting: dict[str, Any] = cluster.admin(0, "mempool", limit=0)
    assert waiting["txs"] <= TXS_MAX and waiting["txs_max"] == TXS_MAX
    return waiting


def blob_files(home: Path) -> dict[str, int]:
    """node0's ciphertext files (hash in hex -> size): the disk that uploads take."""
    return {path.name: path.stat().st_size for path in (home / "data" / "blobs").rglob("*")
            if path.is_file() and not path.name.startswith(TEMPORARY_PREFIX)}


def check_disk(home: Path, anchored: set[str]) -> None:
    """Everything in node0's ciphertext store came through its door today: within the day's
    budget of every key; and what no anchor names within the pending cap."""
    files = blob_files(home)
    assert sum(files.values()) <= BUDGETS["upload_bytes_per_day"]
    assert sum(size for name, size in files.items() if name not in anchored) <= \
        BUDGETS["pending_upload_bytes"]


@dataclass
class Network:
    cluster: Cluster
    people: cli.People
    home: str  # node0's, which the flood is sent to
    providers: dict[str, Key]  # registered, signing in this process


def small_budgets(home: Path) -> None:
    node_config = config.load_config(home)
    config.write_config(dataclasses.replace(
        node_config,
        mempool=dataclasses.replace(node_config.mempool, txs_max=TXS_MAX,
                                    reserved_txs=RESERVED_TXS),
        budgets=config.BudgetsSection(**BUDGETS)), home)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    cluster = Cluster(tmp_path / "net", nodes=2)
    small_budgets(cluster.homes[0])
    cluster.start_all()
    try:
        people = cli.People(cluster, tmp_path)
        people.new("alice", "patient")
        people.new("lab", "provider")
        people.register(0, "lab", ["lab"], "Flood Lab")
        providers = {name: Key() for name in ["ledger", "filler", *(
            f"uploader{i}" for i in range(UPLOADERS))]}
        registered = [cluster.admin(0, "provider_register", provider=key.public.hex(),
                                    roles=["clinician"], display_name=name, wait=False)
                      for name, key in providers.items()]
        cluster.wait_final([done["tx_hash"] for done in registered], [0, 1], 60)
        yield Network(cluster, people, str(cluster.homes[0]), providers)
    finally:
        cluster.close()


# 100 keys (about 30 s on the developers' machine) and 1,000 (about 200 s), both under -m slow
# (CI runs them): the default suite has no room for either.
@pytest.mark.parametrize("keys", [100, 1000])
@pytest.mark.slow
def test_a_flood_from_fresh_keys_meets_every_budget_and_reads_go_on(
        network: Network, keys: int, tmp_path: Path) -> None:
    cluster, people, home = network.cluster, network.people, network.home
    node0 = cluster.homes[0]
    lab = bytes.fromhex(people.public["lab"])
    # Before the flood: a patient's record, and her grant of writing to the lab.
    note = tmp_path / "note.txt"
    note.write_text("Na+ 140 mmol/L")
    own = cli.ok("record", "add", *people.wallet(0, "alice"), "--patient",
                 str(people.keys["alice"]), "--category", "lab", str(note))
    cli.ok("grant", *people.wallet(0, "alice"), "--to", people.public["lab"], "--category",
           "lab", "--write")
    anchored = {own["ciphertext_hash"]}
    fresh = [Key() for _ in range(keys)]

    # --- the network stalls (node1 down: no quorum), and the flood fills the pool ------------
    cluster.kill(1, signal.SIGTERM)
    filler = network.providers["filler"]
    room = GENERAL_ROOM - BUDGETS["patient_policies_per_minute"]
    filled = send(home, [(filler, [grant(filler, lab, (bytes([n + 1]) * 32,))
                                   for n in range(room)])])
    assert filled.taken() == room
    # Within one minute of the node's clock: after a minute's turn the budget would admit the
    # rest and the full pool refuse them all, and the budget would show no refusal of its own.
    start_of_a_minute(margin_s=20)
    policies = send(home, [(key, [policy(key)]) for key in fresh])
    # (In a minute after the first, the pool is full before the budget is spent.)
    assert_budget(policies, "patient_policies_per_minute", also=frozenset({"mempool_full"}))
    assert pool(cluster)["txs"] >= GENERAL_ROOM
    stalled = send(home, [(key, [grant(key, lab)]) for key in fresh])
    assert stalled.refused("mempool_full") == keys, Counter(stalled.codes)  # and not charged
    out = tmp_path / "read-in-a-full-pool.txt"
    reader = subprocess.Popen(
        cli.command("record", "get", *people.wallet(0, "alice"), own["record_id"], "--out",
                    str(out)), env=cli.environment(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        waiting = wait_for(lambda: access_log_waiting(cluster), 60,
                           "the read's access.log waiting in the reserve")
        assert waiting["txs"] == GENERAL_ROOM + 1  # the rest of the pool is full
        cluster.start(1)
        cluster.wait_ready(1)
        _, error = reader.communicate(timeout=120)
    finally:
        reader.kill()
    assert reader.returncode == 0, error[-2000:]
    assert out.read_text() == "Na+ 140 mmol/L"
    wait_for(lambda: pool(cluster)["txs"] == 0, 60, "the pool drained")

    # --- the network runs, and the flood meets every door budget of patients' keys -----------
    grants = send(home, [(key, [grant(key, lab)]) for key in fresh])
    assert_budget(grants, "patient_grants_per_minute")
    final(cluster, grants.txs())
    revokes = send(home, [(key, [lambda key=key, tx=tx: key.submit(ConsentRevoke,
                                                                   grant_id=tx.hash)])
                          for (key, _), tx in zip(grants.taken_requests, grants.txs(),
                                                  strict=True)])
    assert_budget(revokes, "patient_revokes_per_minute")

    bodies = {key.public: body(f"fresh-{index}") for index, key in enumerate(fresh)}
    uploads = send(home, [(key, [upload(bodies[key.public])]) for key in fresh])
    assert_budget(uploads, "patient_upload_bytes_per_day", per=RECORD_BYTES)
    assert uploads.taken() * RECORD_BYTES <= BUDGETS["patient_upload_bytes_per_day"]  # a day
    anchors = send(home, [(key, [anchor(key, data)]) for key, data in uploads.uploads()])
    assert_budget(anchors, "patient_anchors_per_minute")
    missing = send(home, [(key, [anchor(key, body("never-uploaded"))]) for key in fresh[:3]])
    assert missing.refused("ciphertext_missing") == 3
    final(cluster, anchors.txs())
    anchored |= {tx.ciphertext_hash.hex() for tx in anchors.txs()
                 if isinstance(tx, RecordAnchor)}
    erasures = send(home, [(key, [lambda key=key, tx=tx: key.submit(RecordErase,
                                                                    record_id=tx.hash)])
                           for (key, _), tx in zip(anchors.taken_requests, anchors.txs(),
                                                   strict=True)])
    assert_budget(erasures, "patient_erasures_per_minute")
    final(cluster, erasures.txs())

    # During the flood, a registered provider adds a record for the patient, who reads it.
    result = tmp_path / "potassium.txt"
    result.write_text("K+ 4.1 mmol/L")
    added = cli.ok("record", "add", *people.wallet(0, "lab"), "--patient",
                   people.public["alice"], "--category", "lab", str(result))
    anchored.add(added["ciphertext_hash"])
    read = tmp_path / "potassium-read.txt"
    cli.ok("record", "get", *people.wallet(0, "alice"), added["record_id"], "--out", str(read))
    assert read.read_text() == "K+ 4.1 mmol/L"
    check_disk(node0, anchored)

    # --- providers' uploads meet the pending caps, then the day's budget of every key --------
    uploaders = [network.providers[f"uploader{i}"] for i in range(UPLOADERS)]
    one_key = send(home, [(uploaders[0], [upload(body(f"u0-{n}")) for n in range(2 * PER_KEY)])])
    assert (one_key.taken(), one_key.refused("upload_quota")) == (PER_KEY, PER_KEY)
    pending_before = sum(size for name, size in blob_files(node0).items() if name not in anchored)
    full = send(home, [(key, [upload(body(f"u{index}-{n}")) for n in range(PER_KEY)])
                       for index, key in enumerate(uploaders[1:], start=1)])
    taken_and_refused_by(full, "node_upload_full")
    assert pending_before + len(full.codes) * RECORD_BYTES >= 2 * BUDGETS["pending_upload_bytes"]
    check_disk(node0, anchored)
    # The providers anchor what they uploaded (their own records: no door budget of patients'
    # keys), which empties the pending room, and upload again until the day's budget is spent.
    theirs = send(home, [(key, [anchor(key, data) for data in sorted(
        data for owner, data in one_key.uploads() + full.uploads() if owner is key)])
        for key in uploaders])
    assert theirs.taken() == len(theirs.codes)
    final(cluster, theirs.txs())
    anchored |= {tx.ciphertext_hash.hex() for tx in theirs.txs() if isinstance(tx, RecordAnchor)}
    day = send(home, [(key, [upload(body(f"again-{index}-{n}")) for n in range(PER_KEY)])
                      for index, key in enumerate(uploaders)])
    taken_and_refused_by(day, "budget_upload_bytes_per_day")
    offered_today = RECORD_BYTES * (len(uploads.codes) + len(one_key.codes) + len(full.codes)
                                    + len(day.codes))
    assert offered_today >= 2 * BUDGETS["upload_bytes_per_day"]
    check_disk(node0, anchored)

    # --- the ledger's daily budgets per key, met by a provider's key (outside the door's) ----
    ledger = network.providers["ledger"]
    in_batches(cluster, home, ledger, [grant(ledger, lab, ((n + 1).to_bytes(2, "big") * 16,))
                                       for n in range(SIGNER_GRANTS_PER_DAY)])
    over = send(home, [(ledger, [grant(ledger, lab, (bytes([n, 255]) * 16,))
                                 for n in range(SIGNER_GRANTS_PER_DAY)])])
    assert over.refused("signer_grants_per_day") == SIGNER_GRANTS_PER_DAY, Counter(over.codes)
    in_batches(cluster, home, ledger, [policy(ledger) for _ in range(SIGNER_POLICIES_PER_DAY)])
    over = send(home, [(ledger, [policy(ledger, (bytes([n]) * 32,))
                                 for n in range(SIGNER_POLICIES_PER_DAY)])])
    assert over.refused("signer_policies_per_day") == SIGNER_POLICIES_PER_DAY, Counter(over.codes)

    # Every door budget so far refused under its own code, and the node counted each.
    for name in BUDGETS:
        if not name.startswith("pending_") and name != "patient_tx_bytes_per_minute":
            assert cluster.rejected(0, f"budget_{name}") >= 1, name

    # --- a restart gives no day's upload budget back (the minutes' budgets start again) -------
    cluster.kill(0, signal.SIGTERM)
    cluster.start(0)
    cluster.wait_ready(0)
    after = send(home, [(Key(), [upload(body("after-restart"))]),
                        (filler, [upload(body("a-provider-after-restart"))])])
    assert after.codes == ["budget_patient_upload_bytes_per_day", "budget_upload_bytes_per_day"]

    # --- large transactions meet the bytes budget before their count's ------------------------
    tags = tuple(crypto.keyed_digest(b"flood".ljust(32, b"."), bytes([n])) for n in range(32))
    large = [Key() for _ in range(keys)]
    big = send(home, [(key, [grant(key, lab, tags, b"t" * 256)]) for key in large])
    size = len(big.txs()[0].encode())
    assert BUDGETS["patient_tx_bytes_per_minute"] // size < BUDGETS["patient_grants_per_minute"]
    assert_budget(big, "patient_tx_bytes_per_minute", per=size)  # the bytes bind first
    for name in ("patient_tx_bytes_per_minute", "patient_upload_bytes_per_day",
                 "upload_bytes_per_day"):
        assert cluster.rejected(0, f"budget_{name}") >= 1, name
    check_disk(node0, anchored)
    assert pool(cluster)["txs"] <= TXS_MAX
