#!/usr/bin/env bash
# Shoal end to end on one machine: a real Consul, 5 agents on 127.0.0.2-6,
# a sample app per host, then publish → deploy → deploy → rollback.
# Run it with `make demo`. Every process and temp dir goes away on exit or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/bin
N=5
SIZE_MB=${SIZE_MB:-48}
WORK=$(mktemp -d /tmp/shoal-demo.XXXXXX)
PIDS=()

cleanup() {
  trap - EXIT INT TERM
  echo
  echo "== cleaning up: stopping ${#PIDS[@]} processes, removing $WORK"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "   KEEP=1: logs and data kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }

for b in shoal consul demo-app; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run 'make demo' (it builds everything)"; exit 1; }
done

HTTP_PORT=$(free_port)
say "starting a real Consul dev agent on 127.0.0.1:$HTTP_PORT"
"$BIN/consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port "$HTTP_PORT" \
  -server-port "$(free_port)" -serf-lan-port "$(free_port)" -serf-wan-port "$(free_port)" \
  -dns-port -1 -grpc-port -1 -grpc-tls-port -1 -log-level warn >"$WORK/consul.log" 2>&1 &
PIDS+=($!)
export CONSUL_HTTP_ADDR=127.0.0.1:$HTTP_PORT
for _ in $(seq 100); do
  "$BIN/shoal" builds web >/dev/null 2>&1 && break
  sleep 0.2
done

say "making the fleet's keys: a build-signing key pair and a gossip key"
"$BIN/shoal" keygen --out "$WORK/release"          # release.key signs builds, release.pub is what agents trust
"$BIN/shoal" keygen --gossip --out "$WORK/gossip.key"
export SHOAL_SIGNING_KEY=@$WORK/release.key          # `shoal publish` signs with it

say "starting $N hosts: a shoal agent and the sample app on each of 127.0.0.2-$((N+1))"
for i in $(seq 1 $N); do
  ip=127.0.0.$((i+1)); dir=$WORK/host-$i; mkdir -p "$dir"
  join=(); [ "$i" -gt 1 ] && join=(--join 127.0.0.2)
  tags=(); [ "$i" = 2 ] && tags=(--tag canary)
  "$BIN/shoal" agent --node "host-$i" --data-dir "$dir" --bind "$ip" --gossip-profile local \
    "${join[@]}" "${tags[@]}" --service web --log-format json \
    --gossip-key "@$WORK/gossip.key" --trusted-key "@$WORK/release.pub" \
    --drain "$BIN/demo-app --call drain --listen $ip:8080" \
    --activate "$BIN/demo-app --call resume --listen $ip:8080" \
    --health-url "http://$ip:8080/healthz" --health-interval 200ms \
    >"$dir/agent.log" 2>&1 &
  PIDS+=($!)
  "$BIN/demo-app" --listen "$ip:8080" --root "$dir/services/web" >"$dir/app.log" 2>&1 &
  PIDS+=($!)
  echo "  host-$i  agent API http://$ip:7070  app http://$ip:8080  data $dir ${tags[*]}"
done
export SHOAL_API=127.0.0.2:7070
for _ in $(seq 100); do
  [ "$("$BIN/shoal" status --json 2>/dev/null | grep -c '"node"')" -ge $N ] && break
  sleep 0.2
done
"$BIN/shoal" status

make_build() { # dir version
  mkdir -p "$1/bin" "$1/static"
  echo "$2" > "$1/VERSION"
  echo "<h1>Hello from build $2</h1>" > "$1/index.html"
  printf '#!/bin/sh\necho "running %s"\n' "$2" > "$1/bin/run"; chmod 755 "$1/bin/run"
  ln -s bin/run "$1/start"
  head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > "$1/static/assets.bin"
}

show_apps() {
  for i in $(seq 1 $N); do
    printf '  host-%d serves: %s\n' "$i" "$("$BIN/demo-app" --call get --listen 127.0.0.$((i+1)):8080 2>&1 || true)"
  done
}

say "publishing build v1 ($SIZE_MB MB of assets) from host-1: it packs and hashes, we sign, it writes the manifest to Consul and seeds"
make_build "$WORK/src-v1" v1
"$BIN/shoal" publish --service web --build v1 "$WORK/src-v1"

say "deploying v1: one Consul key change; every host pulls from its peers, verifies, drains, switches"
"$BIN/shoal" deploy web v1 --reason "first release"
"$BIN/shoal" status web --wait
show_apps

say "publishing v2 from host-3 and deploying it"
make_build "$WORK/src-v2" v2
"$BIN/shoal" publish --service web --build v2 --api 127.0.0.4:7070 "$WORK/src-v2"
"$BIN/shoal" deploy web v2
"$BIN/shoal" status web --wait
show_apps

say "publishing without the signing key is refused"
mkdir -p "$WORK/src-evil" && echo evil > "$WORK/src-evil/index.html"
SHOAL_SIGNING_KEY= "$BIN/shoal" publish --service web --build evil "$WORK/src-evil" 2>&1 | sed 's/^/  /' || true

say "errors spiked? roll back: every host still has v1 on disk, so nothing is fetched"
"$BIN/shoal" rollback web --reason "demo: errors spiked"
"$BIN/shoal" status web --wait
show_apps
ls -l "$WORK/host-2/services/web" | sed 's/^/  /'

say "someone who can write Consul but has no signing key deploys a copy of v2's manifest renamed 'evil': refused before a byte moves"
"$BIN/consul" kv get shoal/web/builds/v2 | sed 's/"build":"v2"/"build":"evil"/' | "$BIN/consul" kv put shoal/web/builds/evil - >/dev/null
"$BIN/shoal" deploy web evil --reason "demo: not signed by a trusted key"
"$BIN/shoal" status web --wait 2>&1 | sed 's/^/  /' || true
show_apps

say "act two, the deploy commander: back to v1, then v3 rolled out in stages (host-2 is tagged canary)"
"$BIN/shoal" rollback web --reason "demo: back to a good build"
"$BIN/shoal" status web --wait >/dev/null
make_build "$WORK/src-v3" v3
"$BIN/shoal" publish --service web --build v3 "$WORK/src-v3"
"$BIN/shoal" deploy web v3 --stages canary,50%,all --plan | sed 's/^/  /'
"$BIN/shoal" deploy web v3 --stages canary,50%,all --bake 3s --interval 500ms --reason "demo: staged"
show_apps

say "v4 is broken (its health check fails): the canary fails it and the commander rolls the whole fleet back by itself"
make_build "$WORK/src-v4" v4
echo "this build fails its health check" > "$WORK/src-v4/BROKEN"
"$BIN/shoal" publish --service web --build v4 "$WORK/src-v4"
"$BIN/shoal" deploy web v4 --stages canary,50%,all --bake 3s --interval 500ms --reason "demo: a bad build" 2>&1 | sed 's/^/  /' || true
show_apps
"$BIN/shoal" history web | tail -8 | sed 's/^/  /'

say "done: Shoal moved each build once from its origin and let the hosts feed each other"
echo "  (agent logs are JSON lines in $WORK/host-*/agent.log; run with KEEP=1 to keep them)"
