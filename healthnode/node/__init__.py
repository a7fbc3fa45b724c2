"""The node daemon: the trio shell around the pure ledger and consensus cores."""
