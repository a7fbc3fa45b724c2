"""Fault injection in the style of Jepsen and CometBFT's e2e perturbations: `python -m
healthnode.tools.nemesis` (docs/reliability.md).

Theory of operation. A run has three parts that never share state except through the history
file:

- *Clients* (`runner.py`) submit record anchors through the nodes' admin sockets and write one JSON
  line per event to the history: `invoke` before submitting, then `ok` once the transaction is
  final on the node it was submitted to (with its height), or `fail` (refused by the node, the node
  unreachable, or not final within the client's timeout, which is indeterminate: it may still be
  committed later). Only `ok` operations are *acknowledged*.
- The *nemesis* (`runner.py`, `faults.py`) kills, pauses, restarts, isolates and partitions nodes
  on a seeded schedule through a backend (`backends.py`: local processes in network namespaces
  with nftables, or the compose network through podman/docker), writing `nemesis` events, and
  after every heal measures *recovery*: the time until a fresh transaction is final on every node.
- The *checker* (`checker.py`) is a pure function of the history and of every node's blocks read
  after the final heal: every acknowledged transaction is on every node exactly once (at the
  height it was acknowledged at), no transaction is on any node twice, and every node holds the
  same block hash at every height (no fork).
"""
