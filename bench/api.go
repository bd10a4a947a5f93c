package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/fleet"
)

// api is a client for one of the fleet's agents, with the fleet's token;
// publishing a large build can take a while.
func api(f *fleet.Fleet, a *fleet.Agent) *agent.Client {
	return agent.NewClient(a.API, 10*time.Minute).WithToken(f.Secrets.Token())
}

func fleetStatus(ctx context.Context, f *fleet.Fleet) ([]agent.FleetHost, error) {
	return api(f, f.Agents[0]).Fleet(ctx)
}

// profile records a CPU profile of the median fetching host for
// cfg.Profile, then its heap, into cfg.Out (needs the agents' --pprof).
func profile(ctx context.Context, cfg Config, f *fleet.Fleet, method string, n, run int) error {
	a := f.Agents[(n+1)/2]
	name := fmt.Sprintf("profile-%s-n%d-r%d-%s", method, n, run, a.Spec.Node)
	get := func(path, file string) error {
		out, err := os.Create(filepath.Join(cfg.Out, file))
		if err != nil {
			return err
		}
		err = api(f, a).Download(ctx, path, out)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		return err
	}
	secs := max(1, int(cfg.Profile.Seconds()))
	if err := get(fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), name+"-cpu.pb.gz"); err != nil {
		return err
	}
	return get("/debug/pprof/heap", name+"-heap.pb.gz")
}
