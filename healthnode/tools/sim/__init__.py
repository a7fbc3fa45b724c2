"""The seeded consensus simulator (healthnode/tools/sim/simulator.py; docs/consensus.md)."""
