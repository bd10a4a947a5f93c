# Shoal — see README.md. `make demo` runs a local fleet end to end; `make test` runs every test.
GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/shoal-deploy/shoal/agent.Version=$(VERSION)
# Pure Go: no cgo (anacrolix/torrent's sqlite and libutp stay out).
export CGO_ENABLED = 0
# Tests that need the race detector need cgo; these tags keep torrent's cgo parts out.
RACE_TAGS := nosqlite,disable_libutp
# Every package but the end-to-end suite (a fixed list once left ./trust's tests out of make test).
UNIT_PKGS := $(shell $(GO) list ./... | grep -v /e2e$$)

.PHONY: all build consul test unit e2e vet demo bench clean fuzz faults bench-commander bench-deps

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/shoal ./cmd/shoal
	$(GO) build -o bin/demo-app ./cmd/demo-app

# Consul v1.14.11 (MPL) is pinned as a Go tool in its own module, so the
# product's go.mod stays lean. The first build takes minutes; later ones hit the cache.
consul: bin/consul
bin/consul: tools/consul/go.mod tools/consul/go.sum
	cd tools/consul && $(GO) build -o ../../bin/consul github.com/hashicorp/consul
	@touch bin/consul

vet:
	$(GO) vet ./...
	$(GO) vet -tags $(RACE_TAGS) ./...

# Allocation counts and heap sizes mean nothing under -race: the tests that measure them run again without it.
unit: consul
	CGO_ENABLED=1 $(GO) test -race -tags $(RACE_TAGS) -count=1 $(UNIT_PKGS)
	$(GO) test -count=1 -run 'Allocates|IdleConnections' ./swarm/

e2e: consul build
	$(GO) test -count=1 -timeout 15m ./e2e/...

test: vet unit e2e

# The fault suite's long versions (make test runs a short one of each):
# 20 rounds of kill -9 at every deploy step, a soak of 100 deploys.
faults: consul build
	SHOAL_CRASH_ROUNDS=20 SHOAL_SOAK_DEPLOYS=100 $(GO) test -count=1 -timeout 60m -v \
		-run 'TestKillAtEveryStep|TestSoakDeploys|TestKillFifthOfFleetMidFetch|TestOriginDiesMidFetch|TestConsulOutageAndDataLoss|TestDiskFullDuringFetch|TestScrubRepairsIdleCorruption|TestSupersededFetchIsLetGo' ./e2e/...

# The commander's timings on a loopback fleet (one-shot vs staged, failed gate to rolled back).
COMMANDER_HOSTS ?= 40
bench-commander: consul build
	SHOAL_COMMANDER_BENCH=$(COMMANDER_HOSTS) $(GO) test -count=1 -timeout 20m -v -run TestCommanderTimings ./e2e/

# Each fuzz target for FUZZTIME (make test runs their seed corpora).
FUZZTIME ?= 30s
FUZZ_TARGETS := ./core:FuzzUnmarshalManifest ./core:FuzzUnmarshalRelease ./swap:FuzzUnpack ./swap:FuzzLayout \
	./trust:FuzzPeerAuthCheck ./trust:FuzzParseKeys ./agent:FuzzDecodeRequests
fuzz: consul
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "== $$fn ($$pkg, $(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 200x $$pkg || exit 1; done

demo: build consul
	./scripts/demo.sh

# The default sweep: N = 5,10,20,40, 100 MB, 10 MB/s up and down, 3 runs, p2p, origin and the
# BitTorrent reference.
# Kernel-shaped network namespaces when root (iproute2's ip and tc), else loopback.
BENCH_NET ?= $(shell [ "$$(id -u)" = 0 ] && command -v tc >/dev/null && echo netns || echo loopback)
# The BitTorrent reference (--method bittorrent): aria2c, opentracker, mktorrent from Debian.
bench-deps:
	@missing=""; for t in aria2c opentracker mktorrent; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then echo "installing aria2 opentracker mktorrent (missing:$$missing)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y aria2 opentracker mktorrent >/dev/null; fi

bench: build consul bench-deps
	./bin/shoal bench --net $(BENCH_NET) --consul-bin bin/consul --out bench-out --method p2p,origin,bittorrent $(BENCH_ARGS)

clean:
	rm -rf bin bench-out .demo
