"""The operator's admin socket: JSON-RPC 2.0 over a Unix socket in the node home."""
