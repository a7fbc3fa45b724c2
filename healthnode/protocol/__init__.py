"""The wire protocol: canonical encoding, message schemas, transactions, blocks, genesis.

Pure: no I/O, no clock, no randomness. Everything a node, a wallet or an auditor needs to agree on
the bytes of the chain lives here.
"""
