package bench

import (
	"context"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/fleet"
)

// api talks to an agent; publishing a large build can take a while.
func api(addr string) *agent.Client { return agent.NewClient(addr, 10*time.Minute) }

func fleetStatus(ctx context.Context, f *fleet.Fleet) ([]agent.FleetHost, error) {
	return api(f.Agents[0].API).Fleet(ctx)
}
