#!/bin/sh
# The image's entrypoint. `run` (the default): make /data a node home, then exec the node; options
# after `run` go to `healthnode run` (e.g. `run --key-file /run/secrets/node_key`: the node key kept
# out of the volume, which then holds its public half; docs/operations.md, "The node key").
#   HEALTHNODE_SEED=DIR      copy a generated home (key, genesis, config) from DIR into an empty
#                            /data first; waits up to HEALTHNODE_SEED_WAIT_S (60) for DIR to appear,
#                            so a compose service can start alongside the one that generates it.
#   HEALTHNODE_GENESIS=FILE  the genesis for `healthnode init` (default /data/genesis.json).
#   HEALTHNODE_LISTEN_OWN_ADDRESS=1  listen on the container's own IPv4 address (see below).
# Any other command is run as given (e.g. `healthnode testnet ...`, `healthnode admin ...`).
# The node refuses a home that others may read (docs/operations.md, "File modes"): everything made
# here is private (umask 077), and the volume is made so at every start, since a fresh volume's
# root comes with the image's 0755 and one written by an older image holds 0644 files.
set -eu
umask 077
home=/data
if [ "${1:-run}" != "run" ]; then
    exec "$@"
fi
[ "$#" -gt 0 ] && shift
if [ -n "${HEALTHNODE_SEED:-}" ] && [ ! -f "$home/node_key.json" ]; then
    waited=0
    while [ ! -f "$HEALTHNODE_SEED/config.toml" ]; do
        if [ "$waited" -ge "${HEALTHNODE_SEED_WAIT_S:-60}" ]; then
            echo "healthnode-entrypoint: no seed home at $HEALTHNODE_SEED after ${waited}s" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    mkdir -p "$home"
    cp -a "$HEALTHNODE_SEED/." "$home/"
fi
chmod -R go-rwx "$home"
genesis="${HEALTHNODE_GENESIS:-$home/genesis.json}"
if [ ! -f "$genesis" ]; then
    echo "healthnode-entrypoint: no genesis at $genesis (set HEALTHNODE_SEED or HEALTHNODE_GENESIS)" >&2
    exit 1
fi
healthnode init --home "$home" --genesis "$genesis" >/dev/null
if [ "${HEALTHNODE_LISTEN_OWN_ADDRESS:-0}" = 1 ]; then
    # Listen on this container's own address, not 0.0.0.0: a node listening on 0.0.0.0 announces
    # 127.0.0.1 among its addresses, the others keep it in their libp2p peerstore, and after a
    # cut their redials reach their own port instead (the handshake fails on the peer id, for
    # good). Rewritten at every start, since a restarted container may get a new address.
    python3 - "$home/config.toml" <<'PY'
import socket, sys, tomllib, tomli_w
path = sys.argv[1]
with open(path, "rb") as file:
    config = tomllib.load(file)
address = socket.gethostbyname(socket.gethostname())
p2p = config.setdefault("p2p", {})
listen = p2p.get("listen", ["/ip4/0.0.0.0/tcp/26600"])
port = listen[0].rstrip("/").split("/")[-1] if listen else "26600"
p2p["listen"] = [f"/ip4/{address}/tcp/{port}"]
with open(path, "wb") as file:
    tomli_w.dump(config, file)
print(f"healthnode-entrypoint: listening on {address}:{port}", file=sys.stderr)
PY
fi
exec healthnode run --home "$home" "$@"
