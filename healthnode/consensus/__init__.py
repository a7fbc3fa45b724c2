"""The consensus core: a sans-IO Tendermint round (core.py: the rules, the lock, the signing) and
what it exchanges with the node shell (events.py, source.py), its double-sign guard (safety.py),
the height's messages and vote tallies (height.py), block validity (validity.py), other heights
and block requests (catchup.py), the evidence pool (evidence_pool.py) and timeouts (checks.py).
docs/consensus.md describes the algorithm, the shell contract and the fault model."""
