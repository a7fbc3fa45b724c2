"""healthnode: a permissioned network of hospital nodes that keeps patients' encrypted records."""

__version__ = "0.1.0"
