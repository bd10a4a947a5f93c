package bench

import (
	"context"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/fleet"
)

// api talks to an agent; publishing a large build can take a while.
// api is a client for one of the fleet's agents, with the fleet's token.
func api(f *fleet.Fleet, a *fleet.Agent) *agent.Client {
	return agent.NewClient(a.API, 10*time.Minute).WithToken(f.Secrets.Token())
}

func fleetStatus(ctx context.Context, f *fleet.Fleet) ([]agent.FleetHost, error) {
	return api(f, f.Agents[0]).Fleet(ctx)
}
