"""Key files: a node's identity in clear (mode 0600), a patient's or provider's under a passphrase.

A node must restart unattended, so its key file holds the Ed25519 seed in clear and is readable by
the daemon's user only (like CometBFT's priv_validator_key.json); protect the node home. A patient's
or provider's key is theirs alone: its file holds the seed encrypted with XSalsa20-Poly1305
(`nacl.secret.SecretBox`) under a key stretched from the passphrase with argon2id, with libsodium's
"interactive" limits (64 MiB, 2 passes: ~0.1 s on this machine) recorded in the file so they can be
raised later without breaking old files. A wrong passphrase fails authentication and is reported as
such; after decryption the seed must reproduce the public key written beside it.

The passphrase comes from `--passphrase-file`, else `HEALTHNODE_PASSPHRASE`, else the terminal.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from healthnode import crypto, limits, logs
from healthnode.errors import KeyFileError
from healthnode.home.files import read_limited

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
    if kind not in KINDS:
        raise KeyFileError(f"unknown key kind {kind!r} (expected one of {', '.join(KINDS)})")
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "public_key": identity.public_key.hex(),
    }
    if kind in ENCRYPTED_KINDS:
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


def check_new_passphrase(passphrase: str) -> None:
    if len(passphrase) < limits.PASSPHRASE_CHARS_MIN:
        raise KeyFileError(
            f"the passphrase must have at least {limits.PASSPHRASE_CHARS_MIN} characters"
        )


def read_key_document(path: Path) -> dict[str, Any]:
    """The parsed, shape-checked key file (the secret still sealed where it is encrypted)."""
    raw = read_limited(path, limits.KEY_FILE_BYTES_MAX, KeyFileError, "key file")
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KeyFileError(f"{path}: not a healthnode key file (not JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise KeyFileError(f"{path}: not a healthnode key file (format {FORMAT_VERSION})")
    kind = document.get("kind")
    if kind not in KINDS:
        raise KeyFileError(f"{path}: unknown key kind {kind!r}")
    public_key = _hex_field(document, "public_key", path, crypto.PUBLIC_KEY_BYTES)
    document["public_key"] = public_key
    return document


def _hex_field(document: dict[str, Any], name: str, path: Path, size: int | None) -> bytes:
    value = document.get(name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or (size is not None and len(raw) != size):
        raise KeyFileError(f"{path}: field {name!r} is missing or malformed")
    return raw


def load_identity(path: Path, passphrase: str | None = None,
                  expected_kind: str | None = None) -> crypto.Identity:
    """Open a key file. Encrypted kinds need the passphrase."""
    document = read_key_document(path)
    kind = document["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise KeyFileError(f"{path}: holds a {kind} key, expected a {expected_kind} key")
    if kind in ENCRYPTED_KINDS:
        seed = _open_sealed_seed(document, path, passphrase)
    else:
        seed = _hex_field(document, "seed", path, crypto.SEED_BYTES)
    identity = crypto.Identity.from_seed(seed)
    if identity.public_key != document["public_key"]:
        raise KeyFileError(f"{path}: the secret does not match the public key (file corrupt)")
    return identity


def _open_sealed_seed(document: dict[str, Any], path: Path, passphrase: str | None) -> bytes:
    if passphrase is None:
        raise KeyFileError(f"{path}: this {document['kind']} key needs its passphrase")
    params = document.get("encryption")
    if not isinstance(params, dict) or params.get("kdf") != "argon2id" \
            or params.get("cipher") != "xsalsa20poly1305":
        raise KeyFileError(f"{path}: unsupported or missing encryption parameters")
    opslimit, memlimit = params.get("opslimit"), params.get("memlimit")
    if type(opslimit) is not int or type(memlimit) is not int \
            or not 1 <= opslimit <= _KDF_OPSLIMIT_MAX or not 8192 <= memlimit <= _KDF_MEMLIMIT_MAX:
        raise KeyFileError(f"{path}: key derivation limits are missing or out of range")
    salt = _hex_field(params, "salt", path, nacl.pwhash.argon2id.SALTBYTES)
    ciphertext = _hex_field(params, "ciphertext", path, None)
    box = nacl.secret.SecretBox(_derive_key(passphrase, salt, opslimit, memlimit))
    try:
        return box.decrypt(ciphertext)
    except nacl.exceptions.CryptoError:
        raise KeyFileError(f"{path}: wrong passphrase (or the key file was altered)") from None


def write_private_file(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 and write `data`; never overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as error:
        raise KeyFileError(f"{path}: cannot create ({error.strerror})") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


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


def encode_emergency_share(index: int, share: int) -> bytes:
    document = {"format": FORMAT_VERSION, "kind": "emergency-share", "index": index,
                "share": share.to_bytes(32, "little").hex()}
    return (json.dumps(document, indent=2) + "\n").encode()


def load_emergency_share(path: Path) -> tuple[int, int]:
    """(index, share) from an emergency share file; KeyFileError naming what is wrong."""
    raw = read_limited(path, limits.KEY_FILE_BYTES_MAX, KeyFileError, "emergency share file")
    try:
        document = json.loads(raw)
        index, share_hex = document["index"], document["share"]
        if document.get("kind") != "emergency-share" or type(index) is not int:
            raise ValueError("not an emergency share file")
        share = int.from_bytes(bytes.fromhex(share_hex), "little")
        if len(share_hex) != 64 or not 1 <= index <= limits.AUTHORITIES_MAX:
            raise ValueError("malformed index or share")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise KeyFileError(f"{path}: {error}") from None
    return index, share


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
