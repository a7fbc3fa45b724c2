"""Where `healthnode run` takes the node key from, and the passphrase of a sealed one.

By default the key is the home's `node_key.json`, in clear or sealed under a passphrase
(keys.py). A hospital that keeps the key out of the home leaves there only the key's public half
(`healthnode keys public`) and names one source when it starts the node:

- `--key-file PATH`: a key file elsewhere, such as the one systemd's `LoadCredential=` (or
  `LoadCredentialEncrypted=`) puts in `$CREDENTIALS_DIRECTORY`, or a container's secret;
- `--key-fd N`: a key file's bytes on an inherited descriptor, read to its end and closed: for a
  wrapper that opens a file the node's own user cannot read (`3</etc/healthnode/node_key.json`);
- `--key-env-file PATH`: a file of NAME=VALUE lines in the syntax of systemd's `EnvironmentFile=`
  and `docker run --env-file`, whose `HEALTHNODE_NODE_KEY` is a key file in base64.

Any of them may hold a clear or a sealed key. A sealed key's passphrase comes from
`--passphrase-fd N`, else `--passphrase-file PATH`, else `HEALTHNODE_PASSPHRASE` (then removed from
the node's environment, so nothing it starts inherits it), else the terminal. Every source is read
once, before the node opens anything else. No secret travels in the command line (the options
name descriptors and files), and no error quotes what a source holds. A file holding a clear key
or a passphrase must be readable by the node's user alone, as the home must (modes.py).

With a key from elsewhere, the home's `node_key.json` must be absent or the public half of that
same key: a node takes its key from one place, and a clear copy left in the home would be the
one a thief reads.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from healthnode import crypto, limits
from healthnode.errors import KeyFileError
from healthnode.home import keys
from healthnode.home.config import KEY_FILE
from healthnode.home.files import read_limited
from healthnode.home.modes import check_secret_file

KEY_ENV: Final = "HEALTHNODE_NODE_KEY"
ENV_FILE_BYTES_MAX: Final = 64 * 1024  # a base64 key file (under 22 KiB) and a few other lines
PASSPHRASE_BYTES_MAX: Final = 4096
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class KeySource:
    """The options of `healthnode run` that say where the node key and its passphrase are; at
    most one of `file`, `fd` and `env_file`, and at most one of the passphrase's two."""

    file: Path | None = None
    fd: int | None = None
    env_file: Path | None = None
    passphrase_file: Path | None = None
    passphrase_fd: int | None = None

    def outside(self) -> str | None:
        """The option naming a key outside the home, as the operator gave it; None: the home's."""
        if self.file is not None:
            return f"--key-file {self.file}"
        if self.fd is not None:
            return f"--key-fd {self.fd}"
        if self.env_file is not None:
            return f"--key-env-file {self.env_file}"
        return None


def parse_env_file(text: str, source: str) -> dict[str, str]:
    """The NAME=VALUE lines of an environment file as systemd's `EnvironmentFile=` and docker's
    `--env-file` read them: blank lines and lines starting with # or ; are skipped, and a value
    may be quoted. An error names the line by its number, never by what it holds."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        name, equals, value = stripped.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or _ENV_NAME.fullmatch(name) is None:
            raise KeyFileError(f"{source}: line {number} is not NAME=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def key_from_env_file(text: str, source: str) -> dict[str, Any]:
    """The key document carried by an environment file's HEALTHNODE_NODE_KEY (base64)."""
    value = parse_env_file(text, source).get(KEY_ENV)
    if not value:
        raise KeyFileError(f"{source}: no {KEY_ENV}= line (a node key file in base64: "
                           f"base64 -w0 node_key.json)")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or a ValueError for a character beyond ASCII
        raise KeyFileError(f"{source}: {KEY_ENV} is not base64 (make it with: "
                           f"base64 -w0 node_key.json)") from None
    return keys.parse_key_document(raw, f"{source} ({KEY_ENV})")


def load_node_key(home: Path, source: KeySource) -> crypto.Identity:
    """The node's identity from the home's key file or from the source the options name
    (module docstring); KeyFileError naming the source and what to do."""
    home_file = home / KEY_FILE
    outside = source.outside()
    if outside is None:
        document, where = keys.read_key_document(home_file), str(home_file)
    else:
        document, where = _read_outside(source), outside
        if keys.secret_form(document) == "none":
            raise KeyFileError(f"{where}: holds a public key only, not the node key")
        _check_home_key_agrees(home_file, document, outside)
    passphrase = None
    if keys.secret_form(document) == "sealed":
        passphrase = _passphrase(source)
    elif source.passphrase_file is not None or source.passphrase_fd is not None:
        raise KeyFileError(f"{where}: the node key is not sealed, so it takes no passphrase: "
                           f"drop --passphrase-file or --passphrase-fd")
    elif source.file is not None:
        check_secret_file(source.file, KeyFileError)
    return keys.open_identity(document, where, passphrase, expected_kind="node")


def _read_outside(source: KeySource) -> dict[str, Any]:
    if source.file is not None:
        return keys.read_key_document(source.file)
    if source.fd is not None:
        raw = _read_fd(source.fd, limits.KEY_FILE_BYTES_MAX, "--key-fd")
        return keys.parse_key_document(raw, f"--key-fd {source.fd}")
    assert source.env_file is not None
    check_secret_file(source.env_file, KeyFileError)
    raw = read_limited(source.env_file, ENV_FILE_BYTES_MAX, KeyFileError, "environment file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{source.env_file}: not UTF-8 text") from None
    return key_from_env_file(text, str(source.env_file))


def _check_home_key_agrees(home_file: Path, document: dict[str, Any], outside: str) -> None:
    if not home_file.exists():
        return
    in_home = keys.read_key_document(home_file)
    if keys.secret_form(in_home) != "none":
        raise KeyFileError(f"{home_file} holds the node key too, and {outside} was given: a "
                           f"node takes its key from one place. Move the home's key out and "
                           f"leave its public half there (healthnode keys public), or drop "
                           f"{outside.split(maxsplit=1)[0]}")
    if in_home["public_key"] != document["public_key"]:
        raise KeyFileError(f"{outside} holds key {document['public_key'].hex()[:16]}, but this "
                           f"home's node is {in_home['public_key'].hex()[:16]} ({home_file}): "
                           f"give this node's key")


def _passphrase(source: KeySource) -> str:
    if source.passphrase_fd is not None:
        raw = _read_fd(source.passphrase_fd, PASSPHRASE_BYTES_MAX, "--passphrase-fd")
        try:
            passphrase = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise KeyFileError(f"--passphrase-fd {source.passphrase_fd}: not UTF-8 text") \
                from None
        if not passphrase:
            raise KeyFileError(f"--passphrase-fd {source.passphrase_fd}: empty")
        return passphrase
    if source.passphrase_file is not None:
        check_secret_file(source.passphrase_file, KeyFileError)
    passphrase = keys.obtain_passphrase(source.passphrase_file, confirm=False)
    os.environ.pop(keys.PASSPHRASE_ENV, None)
    return passphrase


def _read_fd(fd: int, bytes_max: int, option: str) -> bytes:
    """Everything on descriptor `fd` up to its end, which is then closed; at most `bytes_max`."""
    try:
        handle = os.fdopen(fd, "rb")
    except OSError as error:
        raise KeyFileError(f"{option} {fd}: not an open descriptor ({error.strerror}); open it "
                           f"for the node, e.g. `{fd}<FILE` in a shell") from None
    with handle:
        try:
            raw = handle.read(bytes_max + 1)
        except OSError as error:
            raise KeyFileError(f"{option} {fd}: cannot read ({error.strerror})") from None
    if len(raw) > bytes_max:
        raise KeyFileError(f"{option} {fd}: more than {bytes_max} bytes")
    return raw
