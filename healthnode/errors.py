"""The typed errors of healthnode that are not the codec's own (see codec.py).

Every error that reaches an operator or a wallet user says what was wrong in one line; the CLI
prints `str(error)` and exits non-zero. None of them carries a secret.
"""


class HealthnodeError(Exception):
    """Base of every error healthnode raises on purpose."""


class ConfigError(HealthnodeError):
    """A node configuration file is missing, malformed or holds a bad value."""


class KeyFileError(HealthnodeError):
    """A key file cannot be read, has the wrong format, or the passphrase does not open it."""


class GenesisError(HealthnodeError):
    """A genesis file is malformed or inconsistent."""


class HomeError(HealthnodeError):
    """A node home directory is missing pieces or would be overwritten."""


class StoreError(HealthnodeError):
    """The chain store cannot be opened or does not verify (in use, damaged, other genesis)."""


class TxRefused(HealthnodeError):
    """A transaction the node signed itself was refused by its mempool or the ledger: `code`
    is the refusal's fixed name (the ledger's or the mempool's reason), `detail` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
