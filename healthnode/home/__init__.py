"""A node's home, in one place: its layout and how it is made (`layout.py`: `healthnode
testnet`, `healthnode init`), its configuration (`config.py`: config.toml and the genesis file),
key files (`keys.py`: node and wallet keys, emergency shares), backup and restore (`backup.py`),
and reading a file with a size limit (`files.py`).

A home holds what one hospital's node needs and nothing another hospital has:

    <home>/node_key.json   the node's Ed25519 identity (mode 0600) = libp2p identity = validator key
    <home>/genesis.json    the network's genesis (identical on every node; its hash is checked)
    <home>/config.toml     where this node listens and whom it dials (config.py)
    <home>/data/           LevelDB and blobs, created by the daemon
"""
