"""The wallet's command line: `patient|provider new`, `record add|get|list|erase`, `grant [list]`,
`revoke`, `audit` (the names are a contract with users and scripts, docs/wallet.md).

Parsers only here; a command imports the wallet (and with it libp2p, ~0.7 s) when it runs. Every
refusal surfaces as a HealthnodeError, which the main CLI prints as one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from healthnode import crypto
from healthnode.errors import HealthnodeError
from healthnode.home import keys
from healthnode.protocol.tx import EMERGENCY_PURPOSES, PURPOSES, REPRESENTATIVE_SCOPES
from healthnode.wallet import trust

if TYPE_CHECKING:
    from healthnode.wallet.commands import Wallet

WALLET_KINDS = ("patient", "provider")
GENESIS_HELP = ("the network's genesis file, or its hash from your hospital: pins the key to "
                "that network, once (kept beside the key as KEY.pin.json)")


FOLLOW_INTERVAL_S: Final = 1.0  # how often `audit --follow` asks (a block is 5 s when idle)
FOLLOW_RETRY_S: Final = 2.0  # after a node went away


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _hex32(text: str, what: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise HealthnodeError(f"{what} {text[:80]!r} is not hex") from None
    if len(value) != 32:
        raise HealthnodeError(f"{what} must be 32 bytes (64 hex digits), got {len(value)}")
    return value


def public_key_argument(text: str, what: str) -> bytes:
    """A public key given as 64 hex digits or as a key file (whose public part is read)."""
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    path = Path(text)
    if path.is_file():
        public_key: bytes = keys.read_key_document(path)["public_key"]
        return public_key
    raise HealthnodeError(f"{what} {text[:80]!r} is neither a public key (64 hex digits) nor "
                          "a key file")


def _identity(args: argparse.Namespace) -> crypto.Identity:
    document = keys.read_key_document(args.as_key)
    if document["kind"] not in WALLET_KINDS:
        raise HealthnodeError(f"--as {args.as_key}: a {document['kind']} key; a wallet acts "
                              "with a patient or provider key")
    passphrase = keys.obtain_passphrase(args.passphrase_file, confirm=False)
    return keys.load_identity(args.as_key, passphrase)


def _run(args: argparse.Namespace, operation: Callable[[Wallet], Awaitable[Any]]) -> Any:
    """Run a wallet operation through the nodes of `--node`, in order, as the key of `--as`,
    believing what the network's pinned genesis proves (wallet/trust.py)."""
    from healthnode.wallet.checked import fetch_pin
    from healthnode.wallet.commands import Wallet, parse_duration_ms
    from healthnode.wallet.connection import NodeConnection, run_wallet, with_fallback

    identity = _identity(args)
    pinned = trust.pin_for(args.as_key, _genesis_argument(args))
    fresh_ms = parse_duration_ms(args.fresh, "--fresh") if args.fresh else \
        trust.FRESH_MS_DEFAULT

    async def on(connection: NodeConnection) -> Any:
        nonlocal pinned
        if isinstance(pinned, bytes):
            pinned = await fetch_pin(connection, args.as_key, pinned)
        return await operation(Wallet(identity, connection, pinned, fresh_ms))

    def warn(text: str) -> None:
        print(f"warning: {text}", file=sys.stderr)

    async def main() -> Any:
        return await with_fallback(identity, args.node, on, warn)

    return run_wallet(main)


def _genesis_argument(args: argparse.Namespace) -> Any:
    return trust.parse_genesis_argument(args.genesis) if args.genesis else None


# --- handlers -------------------------------------------------------------------------------

def _new_key(kind: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        given = _genesis_argument(args)  # checked before the key is made
        if trust.pin_path(args.out).exists():
            raise HealthnodeError(f"{trust.pin_path(args.out)} exists: a pin of an earlier key "
                                  f"of that name; move it away first")
        passphrase = keys.obtain_passphrase(args.passphrase_file, confirm=True)
        identity = keys.create_key_file(args.out, kind, passphrase)
        described = {"kind": kind, "public_key": identity.public_key.hex(),
                     "file": str(args.out)}
        if given is not None:
            pinned = trust.pin_for(args.out, given)
            described["genesis_hash"] = (pinned if isinstance(pinned, bytes)
                                         else pinned.genesis.hash).hex()
        _print_json(described)
        return 0
    return handler


def _record_add(args: argparse.Namespace) -> int:
    patient = public_key_argument(args.patient, "--patient")
    try:
        size = args.file.stat().st_size
        if size > 17 * 1024 * 1024:
            raise HealthnodeError(f"{args.file}: {size} bytes; a record holds at most 16 MiB")
        plaintext = args.file.read_bytes()
    except OSError as error:
        raise HealthnodeError(f"{args.file}: cannot read ({error.strerror})") from None
    supersedes = _hex32(args.supersedes, "--supersedes") if args.supersedes else None
    _print_json(_run(args, lambda w: w.add_record(patient, args.category, plaintext,
                                                  supersedes)))
    return 0


def _record_get(args: argparse.Namespace) -> int:
    record_id = _hex32(args.record_id, "RECORD_ID")
    if args.break_glass:
        purpose = args.purpose or "emergency"
        if purpose not in EMERGENCY_PURPOSES:
            raise HealthnodeError(f"--purpose {purpose!r}: a break-glass read gives one of "
                                  f"{', '.join(sorted(EMERGENCY_PURPOSES))}")
        plaintext, described = _run(args, lambda w: w.break_glass(record_id, purpose, args.note))
    else:
        plaintext, described = _run(args, lambda w: w.get_record(
            record_id, args.purpose or "treatment", args.note))
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(plaintext)
    described["out"] = str(args.out)
    _print_json(described)
    return 0


def _record_list(args: argparse.Namespace) -> int:
    patient = public_key_argument(args.patient, "--patient") if args.patient else None
    return _print_list(args, _run(args, lambda w: w.list_records(patient)), "no records",
                       _record_line)


def _record_line(r: dict[str, Any]) -> str:
    state = f"erased at {r['erased_height']}" if r["erased_height"] else (
        "superseded" if r["superseded_by"] else "current")
    categories = ",".join(r["categories"]) if r["categories"] else "(blinded)"
    return (f"{r['record_id']}  {_when(r['time_ms'])}  {categories:<20} "
            f"{r['ciphertext_bytes']:>9} B  author {r['author'][:12]}  {state}")


def _print_list(args: argparse.Namespace, items: list[dict[str, Any]], empty: str,
                line: Callable[[dict[str, Any]], str]) -> int:
    """A listing: JSON with --json, else one line per item, or `empty` when there is none."""
    if args.json:
        _print_json(items)
        return 0
    if not items:
        print(empty)
    for item in items:
        print(line(item))
    return 0


def _record_history(args: argparse.Namespace) -> int:
    record_id = _hex32(args.record_id, "RECORD_ID")
    return _print_list(args, _run(args, lambda w: w.record_history(record_id)), "no versions",
                       _version_line)


def _version_line(v: dict[str, Any]) -> str:
    if not v["readable"]:
        return f"v{v['version']:<3} {v['record_id']}  (a version you may not read)"
    state = f"erased at {v['erased_height']}" if v["erased_height"] else (
        "current" if v["current"] else "superseded")
    return (f"v{v['version']:<3} {v['record_id']}  {_when(v['time_ms'])}  height "
            f"{v['height']:<8} author {v['author'][:16]}  {state}")


def _record_erase(args: argparse.Namespace) -> int:
    record_id = _hex32(args.record_id, "RECORD_ID")
    _print_json(_run(args, lambda w: w.erase_record(record_id)))
    return 0


def _record_erasure(args: argparse.Namespace) -> int:
    record_id = _hex32(args.record_id, "RECORD_ID")
    erasure = _run(args, lambda w: w.erasure(record_id))
    if args.json:
        _print_json(erasure)
        return 0
    print(f"record {erasure['record_id']} erased at height {erasure['erased_height']} "
          f"({_when(erasure['erased_time_ms'])})")
    for purge in erasure["purged"]:
        print(f"  purged by {purge['name'] or purge['public_key'][:16]} at height "
              f"{purge['height']}")
    for node in erasure["not_yet"]:
        print(f"  not yet confirmed by {node['name'] or node['public_key'][:16]}")
    if not erasure["proven"]:
        print("  (this node proved no statement: none made yet, or it is behind or hides them; "
              "ask another node with --node)")
    return 0


def _grant(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _grant_list(args)
    if not args.to:
        raise HealthnodeError("grant: --to is required (the provider's public key or key file)")
    from healthnode.wallet.commands import DEFAULT_GRANT_PURPOSES, parse_duration_ms

    grantee = public_key_argument(args.to, "--to")
    record_ids = [_hex32(r, "--record") for r in args.record]
    expires = parse_duration_ms(args.expires) if args.expires else None
    purposes = args.purpose or list(DEFAULT_GRANT_PURPOSES)
    if args.for_patient:
        if record_ids:
            raise HealthnodeError("grant --for: a representative grants by --category")
        patient = public_key_argument(args.for_patient, "--for")
        _print_json(_run(args, lambda w: w.grant_for(patient, grantee, args.category,
                                                     args.write, expires, purposes)))
        return 0
    _print_json(_run(args, lambda w: w.grant(grantee, args.category, record_ids, args.write,
                                             expires, purposes)))
    return 0


def parse_until_ms(text: str) -> int:
    """`--until`: a date (2034-05-01, UTC midnight), a time (2034-05-01T12:00:00Z), or a
    duration from now (90d, 30s)."""
    from healthnode.clock import now_ms
    from healthnode.wallet.commands import DURATION, parse_duration_ms

    if DURATION.fullmatch(text.strip()):
        return now_ms() + parse_duration_ms(text, "--until")
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise HealthnodeError(f"--until {text[:40]!r}: a date (2034-05-01), a time "
                              f"(2034-05-01T12:00:00Z) or a duration (90d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _representative(args: argparse.Namespace) -> int:
    if args.action == "appoint":
        if not args.to or not args.until:
            raise HealthnodeError("representative appoint: --to and --until are required")
        representative = public_key_argument(args.to, "--to")
        until = parse_until_ms(args.until)
        _print_json(_run(args, lambda w: w.appoint(representative, args.scope, until)))
        return 0
    if bool(args.to) == bool(args.for_patient):
        raise HealthnodeError("representative end: --to REPRESENTATIVE (you are the patient) "
                              "or --for PATIENT (you are the representative)")
    if args.to:
        representative = public_key_argument(args.to, "--to")
        _print_json(_run(args, lambda w: w.end_appointment(w.me, representative)))
    else:
        patient = public_key_argument(args.for_patient, "--for")
        _print_json(_run(args, lambda w: w.end_appointment(patient, w.me)))
    return 0


def _grant_list(args: argparse.Namespace) -> int:
    return _print_list(args, _run(args, lambda w: w.list_grants()), "no grants", _grant_line)


def _grant_line(g: dict[str, Any]) -> str:
    other = g["grantee"] if g["direction"] == "given" else g["patient"]
    scope = ",".join(g["categories"] or []) or f"{len(g['records'])} records"
    status = "in force" if g["in_force"] else (
        f"revoked at {g['revoked_height']}" if g["revoked_height"] else "expired")
    purposes = ",".join(p["code"] for p in g["purposes"])
    return (f"{g['grant_id']}  {g['direction']:<8} {other[:16]}  {'+'.join(g['actions']):<10} "
            f"{purposes:<14} {scope:<24} {status}")


def _revoke(args: argparse.Namespace) -> int:
    if (args.grant_id is None) == (args.provider is None):
        raise HealthnodeError("revoke: give either a GRANT_ID or --provider KEY")
    if args.provider is not None:
        provider = public_key_argument(args.provider, "--provider")
        if args.for_patient:
            patient = public_key_argument(args.for_patient, "--for")
            _print_json(_run(args, lambda w: w.revoke_provider_for(patient, provider)))
            return 0
        _print_json(_run(args, lambda w: w.revoke_provider(provider)))
        return 0
    grant_id = _hex32(args.grant_id, "GRANT_ID")
    if args.for_patient:
        patient = public_key_argument(args.for_patient, "--for")
        _print_json(_run(args, lambda w: w.revoke_for(patient, grant_id)))
        return 0
    _print_json(_run(args, lambda w: w.revoke(grant_id)))
    return 0


def _audit(args: argparse.Namespace) -> int:
    if args.follow:
        return _audit_follow(args)
    return _print_list(args, _run(args, lambda w: w.audit()), "no accesses recorded",
                       _audit_line)


def _audit_follow(args: argparse.Namespace) -> int:
    """Every access so far, then each new one as it is final (asked every
    FOLLOW_INTERVAL_S), until interrupted. A node that goes away is warned of and asked again
    (or the next `--node`), from where the list stopped: nothing is printed twice."""
    import trio

    from healthnode.wallet.connection import Refused, WalletError

    after: bytes | None = None

    async def follow(wallet: Any) -> None:
        nonlocal after
        while True:
            lines, after = await wallet.audit_after(after)
            for line in lines:
                print(json.dumps(line, sort_keys=True) if args.json else _audit_line(line),
                      flush=True)
            await trio.sleep(FOLLOW_INTERVAL_S)

    while True:
        try:
            _run(args, follow)
        except Refused:
            raise  # the node's answer, not its absence: asking again would change nothing
        except WalletError as error:
            print(f"warning: {error}; following again in {FOLLOW_RETRY_S} s", file=sys.stderr,
                  flush=True)
            time.sleep(FOLLOW_RETRY_S)


def _audit_line(line: dict[str, Any]) -> str:
    if line["kind"] == "act":
        return (f"{_when(line['time_ms'])}  {line['act']} by representative "
                f"{line['representative'][:16]} for you (transaction {line['tx'][:16]})")
    if line["kind"] == "erasure":
        return (f"{_when(line['time_ms'])}  record {line['record_id'][:16]} erased by you "
                f"(`healthnode record erasure` shows its purge)")
    flag = "!! BREAK-GLASS !! " if line["break_glass"] else ""
    note = f"  note: {line['note']}" if line["note"] else ""
    reader = line["reader_name"] or line["reader"][:16]
    hospital = line["hospital_name"] or line["hospital"][:16]
    return (f"{_when(line['time_ms'])}  {flag}record {line['record_id'][:16]} read by "
            f"{reader} through {hospital} ({line['purpose']}){note}")


def _emergency(args: argparse.Namespace) -> int:
    if args.action == "list":
        policy = _run(args, lambda w: w.emergency_list())
        if args.json:
            _print_json(policy)
        elif not policy["available"]:
            print("this network has no break-glass key")
        else:
            allowed = ", ".join(policy["allowed"]) or "nothing"
            print(f"emergency providers may read without a grant: {allowed}")
        return 0
    if args.action == "allow" and not args.category:
        raise HealthnodeError("emergency allow: give at least one --category")
    allow = args.category if args.action == "allow" else []
    deny = args.category if args.action == "deny" else []
    deny_all = args.action == "deny" and not args.category
    _print_json(_run(args, lambda w: w.emergency_set(allow, deny, deny_all)))
    return 0


def _when(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --- parsers --------------------------------------------------------------------------------

FOR_HELP: Final = "as its representative: the patient's public key or key file"

def _wallet_options(parser: argparse.ArgumentParser, *, json_output: bool = False) -> None:
    parser.add_argument("--node", required=True, action="append",
                        help="the node: its multiaddr (/ip4/H/tcp/P/p2p/ID) or its home "
                             "directory; repeat it to name nodes to fall back on, in order")
    parser.add_argument("--as", dest="as_key", required=True, type=Path, metavar="KEY",
                        help="your patient or provider key file")
    parser.add_argument("--passphrase-file", type=Path,
                        help=f"the key's passphrase (else ${keys.PASSPHRASE_ENV}, else asked)")
    parser.add_argument("--genesis", metavar="FILE_OR_HASH", help=GENESIS_HELP)
    parser.add_argument("--fresh", metavar="DURATION",
                        help="how old the newest certified state that a node serves may be "
                             f"(default {trust.FRESH_MS_DEFAULT // 1000}s)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_wallet_commands(subparsers: Any) -> None:
    for kind in WALLET_KINDS:
        group = subparsers.add_parser(kind, help=f"make a {kind} key")
        actions = group.add_subparsers(dest="action", required=True)
        new = actions.add_parser("new", help=f"create a {kind} key file (passphrase, mode 0600)")
        new.add_argument("--out", required=True, type=Path)
        new.add_argument("--passphrase-file", type=Path)
        new.add_argument("--genesis", metavar="FILE_OR_HASH", help=GENESIS_HELP)
        new.set_defaults(handler=_new_key(kind))

    record = subparsers.add_parser("record", help="add, read, list or erase records")
    actions = record.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="encrypt a file (FHIR JSON is validated) and anchor it")
    _wallet_options(add)
    add.add_argument("--patient", required=True, help="the patient's public key or key file")
    add.add_argument("--category", action="append", default=[], required=True,
                     help="a category such as lab (repeatable; blinded before it leaves)")
    add.add_argument("--supersedes", help="the record id this one amends")
    add.add_argument("file", type=Path)
    add.set_defaults(handler=_record_add)
    get = actions.add_parser("get", help="read a record (the read is logged on chain first)")
    _wallet_options(get)
    get.add_argument("record_id")
    get.add_argument("--out", required=True, type=Path, help="where to write the plaintext")
    get.add_argument("--purpose", choices=sorted(PURPOSES),
                     help="why you read it (default treatment; emergency with --break-glass)")
    get.add_argument("--note", help="a reason in your words, sealed to the patient")
    get.add_argument("--break-glass", action="store_true",
                     help="emergency access without a grant (emergency role; the patient's "
                          "emergency policy must allow the record's category)")
    get.set_defaults(handler=_record_get)
    listing = actions.add_parser("list", help="your records, or those a patient granted you")
    _wallet_options(listing, json_output=True)
    listing.add_argument("--patient", help="a patient who granted you access")
    listing.set_defaults(handler=_record_list)
    history = actions.add_parser("history", help="a record's versions, oldest first: who "
                                                 "amended it, and when")
    _wallet_options(history, json_output=True)
    history.add_argument("record_id")
    history.set_defaults(handler=_record_history)
    erase = actions.add_parser("erase", help="crypto-shred one of your records on every node")
    _wallet_options(erase)
    erase.add_argument("record_id")
    erase.set_defaults(handler=_record_erase)
    erasure = actions.add_parser(
        "erasure", help="which hospitals' nodes have purged an erased record from their disks")
    _wallet_options(erasure, json_output=True)
    erasure.add_argument("record_id")
    erasure.set_defaults(handler=_record_erasure)

    grant = subparsers.add_parser("grant", help="let a provider read (and write) your records; "
                                                "'grant list' lists grants")
    grant.add_argument("action", nargs="?", choices=["list"])
    _wallet_options(grant, json_output=True)
    grant.add_argument("--to", help="the provider's public key or key file")
    grant.add_argument("--category", action="append", default=[])
    grant.add_argument("--record", action="append", default=[], metavar="RECORD_ID")
    grant.add_argument("--write", action="store_true",
                       help="also let the provider add records (it receives your tag key)")
    grant.add_argument("--expires", metavar="DURATION", help="e.g. 30d, 12h, 90m")
    grant.add_argument("--for", dest="for_patient", metavar="PATIENT", help=FOR_HELP)
    grant.add_argument("--purpose", action="append", choices=sorted(PURPOSES), default=[],
                       help="a purpose the provider may read for (repeat for more; default: "
                            "treatment alone); docs/ledger.md lists each one's FHIR code")
    grant.set_defaults(handler=_grant)

    revoke = subparsers.add_parser("revoke", help="end one of your grants, or with --provider "
                                                  "every grant to one provider at once")
    _wallet_options(revoke)
    revoke.add_argument("grant_id", nargs="?")
    revoke.add_argument("--provider", metavar="KEY",
                        help="revoke every grant to this provider (public key or key file) in "
                             "one transaction; prints the grants revoked")
    revoke.add_argument("--for", dest="for_patient", metavar="PATIENT", help=FOR_HELP)
    revoke.set_defaults(handler=_revoke)

    representative = subparsers.add_parser(
        "representative", help="appoint a representative to act for you, or end an appointment")
    representative.add_argument("action", choices=["appoint", "end"])
    _wallet_options(representative, json_output=True)
    representative.add_argument("--to", metavar="KEY",
                                help="the representative's public key or key file")
    representative.add_argument("--scope", action="append", default=[],
                                choices=sorted(REPRESENTATIVE_SCOPES),
                                help="what it may do: read, grant (and revoke), policy "
                                     "(emergency), write; repeat for several")
    representative.add_argument("--until", metavar="DATE",
                                help="when it ends (block time): 2034-05-01, "
                                     "2034-05-01T12:00:00Z, or 90d from now")
    representative.add_argument("--for", dest="for_patient", metavar="PATIENT",
                                help="end: the patient whose appointment of you ends")
    representative.set_defaults(handler=_representative)

    emergency = subparsers.add_parser(
        "emergency", help="your break-glass policy: which categories emergency staff may read "
                          "without a grant")
    emergency.add_argument("action", choices=["allow", "deny", "list"],
                           help="deny without --category denies everything")
    _wallet_options(emergency, json_output=True)
    emergency.add_argument("--category", action="append", default=[])
    emergency.set_defaults(handler=_emergency)

    audit = subparsers.add_parser("audit", help="every recorded access to your records")
    _wallet_options(audit, json_output=True)
    audit.add_argument("--follow", action="store_true",
                       help="then print each new access as it is final, until interrupted "
                            "(with --json: one JSON object a line)")
    audit.set_defaults(handler=_audit)


__all__ = ["add_wallet_commands"]
