package cli

import (
	"context"
	"fmt"
	"strconv"

	"github.com/shoal-deploy/shoal/bench"
)

func runModel(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "model", "[flags]",
		"Model a deploy past the fleets one machine can run: a piece-by-piece simulation of the swarm\n"+
			"(bounded random peer sets, the origin's hand-out, one piece per host per round each way) and\n"+
			"of memberlist's gossip, at any fleet size. Prints completion as a multiple of the fluid bound\n"+
			"S/u (p50, p99, p99.9, max), connections and messages per host, the origin's upload, and how\n"+
			"long gossip takes to tell every member. Assumptions: docs/BENCHMARKS.md (The model).\n"+
			"--kraken sets Kraken's published case: 3 GB to 2,600 hosts at 300 MB/s.")
	hosts := listFlag{}
	fs.Var(&hosts, "hosts", "fleet sizes, comma-separated (default 20,40,80,1000,10000)")
	size, up := sizeFlag(100e6), sizeFlag(10e6)
	fs.Var(&size, "size", "build size")
	fs.Var(&up, "up", "upload and download cap per host, per second")
	peerSet := fs.Int("peer-set", 0, "members each host dials (the agent's peer_set); 0 follows the fleet as the agent does: 5 up to 63 hosts, then one more per doubling")
	seed := fs.Uint64("seed", 1, "random seed (the same seed gives the same figures)")
	cpu := fs.Float64("host-cpu-per-gb", 0, "measured host CPU-s per GB (from shoal bench) to turn the build size into CPU per host")
	kraken := fs.Bool("kraken", false, "Kraken's published case: --size 3GB --up 300MB --hosts 2600")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *kraken {
		size, up, hosts = sizeFlag(3e9), sizeFlag(300e6), listFlag{"2600"}
	}
	if len(hosts) == 0 {
		hosts = listFlag{"20", "40", "80", "1000", "10000"}
	}
	cfg := bench.ModelConfig{Size: int64(size), Up: float64(up), PeerSet: *peerSet, Seed: *seed, HostCPUPerGB: *cpu}
	for _, h := range hosts {
		n, err := strconv.Atoi(h)
		if err != nil || n < 2 || n > 100000 {
			return fmt.Errorf("--hosts %q: want fleet sizes from 2 to 100000", h)
		}
		cfg.Hosts = append(cfg.Hosts, n)
	}
	if cfg.Size < 1<<20 || cfg.Up <= 0 || cfg.PeerSet < 0 {
		return fmt.Errorf("want --size of at least 1 MiB, a positive --up and a --peer-set of 0 (follow the fleet) or more")
	}
	return bench.WriteModel(env.Stdout, cfg, bench.Model(cfg))
}
