"""Key files: a node's identity in clear (mode 0600), a patient's or provider's under a passphrase.

A node must restart unattended, so its key file holds the Ed25519 seed in clear by default and is
readable by the daemon's user only (like CometBFT's priv_validator_key.json); the node refuses a
home that others may read (home/modes.py). A hospital that wants more may seal its node key under
a passphrase like a patient's (the node then needs the passphrase at every start), or keep the
key outside the home and leave there only its public half: a key file with neither seed nor
sealed seed, which `init`, `migrate` and restore read for the node's public key, and which tells
`healthnode run` to take the key from elsewhere (home/node_key.py).

A patient's or provider's key is theirs alone: its file holds the seed encrypted with
XSalsa20-Poly1305 (`nacl.secret.SecretBox`) under a key stretched from the passphrase with
argon2id, with libsodium's "interactive" limits (64 MiB, 2 passes: ~0.1 s on this machine)
recorded in the file so they can be raised later without breaking old files. A sealed node key is
sealed the same way. A wrong passphrase fails authentication and is reported as such; after
decryption the seed must reproduce the public key written beside it.

The passphrase comes from `--passphrase-file`, else `HEALTHNODE_PASSPHRASE`, else the terminal
(`healthnode run` may also take it from a descriptor: home/node_key.py).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from healthnode import crypto, limits, logs
from healthnode.crypto import threshold
from healthnode.errors import KeyFileError
from healthnode.home.files import create_private, read_limited

KINDS: Final = ("node", "provider", "patient")
ENCRYPTED_KINDS: Final = ("provider", "patient")
FORMAT_VERSION: Final = 1
PASSPHRASE_ENV: Final = "HEALTHNODE_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)

_KDF_OPSLIMIT: Final = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
_KDF_MEMLIMIT: Final = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
# Upper bounds on what a file may ask of us, so a crafted file cannot exhaust memory or time.
_KDF_OPSLIMIT_MAX: Final = nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE
_KDF_MEMLIMIT_MAX: Final = nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE


def _derive_key(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt,
        opslimit=opslimit, memlimit=memlimit,
    )


def encode_key_file(kind: str, identity: crypto.Identity, passphrase: str | None) -> bytes:
    """A key file for `identity`: sealed under `passphrase` when one is given (a patient's or a
    provider's always is), else with the seed in clear (a node's)."""
    if kind not in KINDS:
        raise KeyFileError(f"unknown key kind {kind!r} (expected one of {', '.join(KINDS)})")
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "public_key": identity.public_key.hex(),
    }
    if kind in ENCRYPTED_KINDS or passphrase is not None:
        if passphrase is None:
            raise KeyFileError(f"a {kind} key file needs a passphrase")
        check_new_passphrase(passphrase)
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        box = nacl.secret.SecretBox(_derive_key(passphrase, salt, _KDF_OPSLIMIT, _KDF_MEMLIMIT))
        document["encryption"] = {
            "kdf": "argon2id",
            "opslimit": _KDF_OPSLIMIT,
            "memlimit": _KDF_MEMLIMIT,
            "salt": salt.hex(),
            "cipher": "xsalsa20poly1305",
            "ciphertext": bytes(box.encrypt(identity.seed)).hex(),
        }
    else:
        document["seed"] = identity.seed.hex()
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def encode_public_key_file(public_key: bytes) -> bytes:
    """A node key file that holds the public key alone: the home's `node_key.json` of a node
    whose key is kept elsewhere (module docstring)."""
    document = {"format": FORMAT_VERSION, "kind": "node", "public_key": public_key.hex()}
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def check_new_passphrase(passphrase: str) -> None:
    if len(passphrase) < limits.PASSPHRASE_CHARS_MIN:
        raise KeyFileError(
            f"the passphrase must have at least {limits.PASSPHRASE_CHARS_MIN} characters"
        )


def read_key_document(path: Path) -> dict[str, Any]:
    """The parsed, shape-checked key file (the secret still sealed where it is encrypted)."""
    raw = read_limited(path, limits.KEY_FILE_BYTES_MAX, KeyFileError, "key file")
    return parse_key_document(raw, str(path))


def parse_key_document(raw: bytes, source: str) -> dict[str, Any]:
    """`read_key_document` of the bytes of a key file however they came (a file, a descriptor,
    an environment file); `source` names where in every error, which never quotes the bytes."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # also a number too long for int(), or nesting too deep
        raise KeyFileError(f"{source}: not a healthnode key file (not JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise KeyFileError(f"{source}: not a healthnode key file (format {FORMAT_VERSION})")
    kind = document.get("kind")
    if kind not in KINDS:
        raise KeyFileError(f"{source}: unknown key kind {kind!r}")
    public_key = _hex_field(document, "public_key", source, crypto.PUBLIC_KEY_BYTES)
    document["public_key"] = public_key
    if "seed" in document and "encryption" in document:
        raise KeyFileError(f"{source}: holds both a clear and a sealed secret (file corrupt)")
    return document


def secret_form(document: dict[str, Any]) -> str:
    """How a key document holds its secret: "sealed" (under a passphrase), "clear", or "none"
    (the public half of a node key kept elsewhere). A patient's or provider's is always judged
    sealed, so one that lost its encryption is refused as such when opened."""
    if "encryption" in document or document["kind"] in ENCRYPTED_KINDS:
        return "sealed"
    return "clear" if "seed" in document else "none"


def read_node_public_key(path: Path) -> bytes:
    """The public key of the node key file at `path`, clear, sealed or public only: what `init`,
    `migrate` and restore need, without a passphrase. A clear key is opened all the same, so a
    damaged one is found now rather than at the node's start."""
    return node_public_key(read_key_document(path), str(path))


def node_public_key(document: dict[str, Any], source: str) -> bytes:
    """`read_node_public_key` of a parsed key document (`parse_key_document`) from `source`."""
    if document["kind"] != "node":
        raise KeyFileError(f"{source}: holds a {document['kind']} key, expected a node key")
    if secret_form(document) == "clear":
        open_identity(document, source)
    public_key: bytes = document["public_key"]
    return public_key


def _hex_field(document: dict[str, Any], name: str, source: str, size: int | None) -> bytes:
    value = document.get(name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or (size is not None and len(raw) != size):
        raise KeyFileError(f"{source}: field {name!r} is missing or malformed")
    return raw


def load_identity(path: Path, passphrase: str | None = None,
                  expected_kind: str | None = None) -> crypto.Identity:
    """Open a key file. A sealed one needs the passphrase."""
    return open_identity(read_key_document(path), str(path), passphrase, expected_kind)


def open_identity(document: dict[str, Any], source: str, passphrase: str | None = None,
                  expected_kind: str | None = None) -> crypto.Identity:
    """The identity of a parsed key document (`parse_key_document`) from `source`."""
    kind = document["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise KeyFileError(f"{source}: holds a {kind} key, expected a {expected_kind} key")
    form = secret_form(document)
    if form == "none":
        raise KeyFileError(f"{source}: holds the node's public key only (its secret is kept "
                           f"outside the home): start the node with --key-file, --key-fd or "
                           f"--key-env-file (docs/operations.md)")
    if form == "sealed":
        seed = _open_sealed_seed(document, source, passphrase)
    else:
        seed = _hex_field(document, "seed", source, crypto.SEED_BYTES)
    identity = crypto.Identity.from_seed(seed)
    if identity.public_key != document["public_key"]:
        raise KeyFileError(f"{source}: the secret does not match the public key (file corrupt)")
    return identity


def _open_sealed_seed(document: dict[str, Any], source: str, passphrase: str | None) -> bytes:
    if passphrase is None:
        raise KeyFileError(f"{source}: this {document['kind']} key needs its passphrase")
    params = document.get("encryption")
    if not isinstance(params, dict) or params.get("kdf") != "argon2id" \
            or params.get("cipher") != "xsalsa20poly1305":
        raise KeyFileError(f"{source}: unsupported or missing encryption parameters")
    opslimit, memlimit = params.get("opslimit"), params.get("memlimit")
    if type(opslimit) is not int or type(memlimit) is not int \
            or not 1 <= opslimit <= _KDF_OPSLIMIT_MAX or not 8192 <= memlimit <= _KDF_MEMLIMIT_MAX:
        raise KeyFileError(f"{source}: key derivation limits are missing or out of range")
    salt = _hex_field(params, "salt", source, nacl.pwhash.argon2id.SALTBYTES)
    ciphertext = _hex_field(params, "ciphertext", source, None)
    box = nacl.secret.SecretBox(_derive_key(passphrase, salt, opslimit, memlimit))
    try:
        return box.decrypt(ciphertext)
    except nacl.exceptions.CryptoError:
        raise KeyFileError(f"{source}: wrong passphrase (or the key file was altered)") from None


def write_private_file(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 and write `data`, synced with its directory entry; never
    overwrite an existing file (a key)."""
    create_private(path, data, KeyFileError, " (a key)")
    sync_directory(path.parent)


def sync_directory(path: Path) -> None:
    """Make a file's creation, rename or deletion in `path` durable (a key file's name is as
    much a part of it as its bytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_key_file(path: Path, kind: str, passphrase: str | None) -> crypto.Identity:
    identity = crypto.Identity.generate()
    write_private_file(path, encode_key_file(kind, identity, passphrase))
    return identity


def obtain_passphrase(passphrase_file: Path | None, *, confirm: bool) -> str:
    """From `--passphrase-file`, else HEALTHNODE_PASSPHRASE, else asked on the terminal."""
    if passphrase_file is not None:
        try:
            text = passphrase_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise KeyFileError(f"{passphrase_file}: cannot read passphrase ({error})") from None
        passphrase = text.rstrip("\r\n")
        if not passphrase:
            raise KeyFileError(f"{passphrase_file}: the passphrase file is empty")
        return passphrase
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise KeyFileError(
            f"no passphrase: use --passphrase-file or set {PASSPHRASE_ENV} (no terminal to ask)"
        )
    passphrase = getpass.getpass("Passphrase: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != passphrase:
        raise KeyFileError("the two passphrases differ")
    return passphrase


# --- emergency key shares ---------------------------------------------------------------------
# An authority's share of the network's break-glass key (crypto/threshold.py): held like the
# node key (clear, mode 0600, unattended restarts), never in a backup, and worth nothing alone.


def _encode_numbered_scalar(kind: str, number_field: str, number: int, scalar_field: str,
                            scalar: int) -> bytes:
    """A file of one number and one 32-byte scalar (a share and its index, a round's epoch
    secret and its round), mode 0600 like a key."""
    document = {"format": FORMAT_VERSION, "kind": kind, number_field: number,
                scalar_field: scalar.to_bytes(32, "little").hex()}
    return (json.dumps(document, indent=2) + "\n").encode()


def _numbered_scalar_from_bytes(raw: bytes, source: str, kind: str, what: str,
                                number_field: str, number_max: int, scalar_field: str,
                                scalar_ok: Callable[[int], bool]) -> tuple[int, int]:
    """(number, scalar) from the bytes of such a file; KeyFileError naming `source` and what
    is wrong."""
    try:
        document = json.loads(raw)
        number, scalar_hex = document[number_field], document[scalar_field]
        if document.get("kind") != kind or type(number) is not int \
                or type(scalar_hex) is not str:
            raise ValueError(f"not an {what} file")
        scalar = int.from_bytes(bytes.fromhex(scalar_hex), "little")
        if len(scalar_hex) != 64 or not 1 <= number <= number_max or not scalar_ok(scalar):
            raise ValueError(f"malformed {number_field} or {scalar_field}")
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        raise KeyFileError(f"{source}: {error}") from None
    return number, scalar


def encode_emergency_share(index: int, share: int) -> bytes:
    return _encode_numbered_scalar("emergency-share", "index", index, "share", share)


def load_emergency_share(path: Path) -> tuple[int, int]:
    """(index, share) from an emergency share file; KeyFileError naming what is wrong."""
    raw = read_limited(path, limits.KEY_FILE_BYTES_MAX, KeyFileError, "emergency share file")
    return emergency_share_from_bytes(raw, str(path))


def emergency_share_from_bytes(raw: bytes, source: str) -> tuple[int, int]:
    """(index, share) from the bytes of an emergency share file; KeyFileError naming `source`
    and what is wrong."""
    return _numbered_scalar_from_bytes(raw, source, "emergency-share", "emergency share",
                                       "index", limits.AUTHORITIES_MAX, "share",
                                       lambda _share: True)


def encode_round_key(round_number: int, secret: int) -> bytes:
    """The epoch key of one round of the emergency key (ledger/rules/rounds.py): the secret
    `x` that opens this authority's sub-shares of that round, deleted when the round is over."""
    return _encode_numbered_scalar("emergency-round-key", "round", round_number, "secret",
                                   secret)


def load_round_key(path: Path) -> tuple[int, int]:
    """(round, secret) from a round key file; KeyFileError naming what is wrong."""
    raw = read_limited(path, limits.KEY_FILE_BYTES_MAX, KeyFileError, "emergency round key file")
    return round_key_from_bytes(raw, str(path))


def round_key_from_bytes(raw: bytes, source: str) -> tuple[int, int]:
    """(round, secret) from the bytes of a round key file; KeyFileError naming `source` and
    what is wrong."""
    return _numbered_scalar_from_bytes(raw, source, "emergency-round-key",
                                       "emergency round key", "round", limits.HEIGHT_MAX,
                                       "secret", lambda secret: 0 < secret < threshold.L)


# --- the salt of the log's pseudonyms ---------------------------------------------------------
# A node's log names a patient's key or record only by its pseudonym under this salt (logs.py):
# random, mode 0600, made at the node's first start, and never in a backup, so a restored node
# makes a new one (its pseudonyms then differ from the old log's, which is all that changes).


def load_or_create_log_salt(path: Path) -> bytes:
    """The salt in `path`, made first if there is none; KeyFileError when the file holds
    something else (deleting it is safe: the node makes a new one)."""
    if not path.exists():
        write_private_file(path, nacl.utils.random(logs.PSEUDONYM_SALT_BYTES))
    raw = read_limited(path, logs.PSEUDONYM_SALT_BYTES, KeyFileError, "log salt file")
    if len(raw) != logs.PSEUDONYM_SALT_BYTES:
        raise KeyFileError(f"{path}: not a log salt ({logs.PSEUDONYM_SALT_BYTES} bytes); delete "
                           f"it and the node makes a new one")
    return raw
