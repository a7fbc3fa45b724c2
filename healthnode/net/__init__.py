"""Networking: stream framing now; the libp2p adapter (the only module importing libp2p) later."""
