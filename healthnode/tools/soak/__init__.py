"""`healthnode soak`: prove that a node lasts (docs/reliability.md, "The soak").

Theory of operation. A soak runs a real N-node network (one `healthnode run` process per node)
for a stated time under a mixed load, all at once: real wallet commands in a row and in bursts,
wallets and TCP clients that hang up mid-request, ordinary and hostile admin requests, and a
nemesis that cuts authority links and pauses nodes. Every `--interval-s` it records each node's
RSS, open file descriptors, trio tasks and connections by kind, and the wallet commands' latency;
every failure is kept with its cause and classified as explained by a fault or not. It writes
OUT/soak.json and OUT/soak.png and exits 0 only when no node crashed, no failure is unexplained,
every explained failure succeeded when retried, and no hostile request killed a node.

    plan.py     what to do and when: the seeded fault schedule, the command mix, hostile cases
    record.py   what was seen and what it means: classification, intervals, growth, verdict
    load.py     the clients: wallet commands, hang-ups, raw admin exchanges (trio)
    nodes.py    the node processes: start, pause, stop; their /proc figures and links
    actors.py   the concurrent actors of a run (trio) and the samples
    runner.py   the run: the network up and down, signals, the files it writes
    plot.py     soak.png (matplotlib, an optional extra, imported only there)

plan.py and record.py are pure (no I/O, no clock); tests/test_soak.py drives them directly.
"""
