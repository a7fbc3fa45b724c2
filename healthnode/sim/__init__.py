"""The seeded consensus simulator (healthnode/sim/simulator.py; docs/consensus.md)."""
