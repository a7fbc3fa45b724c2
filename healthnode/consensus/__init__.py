"""The consensus core: a sans-IO Tendermint round (core.py) and what it exchanges with the node
shell (events.py), its double-sign guard (safety.py) and evidence (evidence.py).
docs/consensus.md describes the algorithm, the shell contract and the fault model."""
