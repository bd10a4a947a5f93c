package signal

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// The expected fleet. Gossip knows who is up; Consul's catalog knows who
// should be. Every agent registers a service named "shoal" (ID
// shoal-<node>), tagged with the services it runs, with a TTL check it
// keeps passing while it runs. A host that dies stays registered with its
// check critical, so `shoal status --wait` can name it instead of
// silently counting the hosts that are left.

// CatalogService is the Consul service name agents register under.
const CatalogService = "shoal"

// HostTTL is how long a registered host counts as up without a heartbeat.
const HostTTL = 30 * time.Second

// Host is one agent as Consul's catalog knows it.
type Host struct {
	Node string `json:"node"`
	// Status is the TTL check's: passing, warning or critical (down).
	Status string `json:"status"`
	// Services the host runs.
	Services []string `json:"services"`
	// Tags place the host in staged rollouts.
	Tags []string `json:"tags,omitempty"`
}

func checkID(node string) string { return "shoal-" + node + "-ttl" }

// Register adds this agent to the catalog (again: it is idempotent) with a
// passing TTL check. Call Heartbeat at least every HostTTL/2.
func (c *Client) Register(ctx context.Context, node, addr string, port int, services, tags []string) error {
	reg := &api.AgentServiceRegistration{
		ID: "shoal-" + node, Name: CatalogService, Tags: services, Address: addr, Port: port,
		Meta: map[string]string{"node": node, "tags": strings.Join(tags, ",")},
		Check: &api.AgentServiceCheck{CheckID: checkID(node), Name: "shoal agent " + node, TTL: HostTTL.String(),
			Status: api.HealthPassing, DeregisterCriticalServiceAfter: (72 * time.Hour).String()},
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.cl.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return c.unreachable("register "+node+" in the catalog", err)
	}
	return nil
}

// Heartbeat keeps this agent's TTL check passing.
func (c *Client) Heartbeat(ctx context.Context, node string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.cl.Agent().UpdateTTLOpts(checkID(node), "shoal agent running", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return c.unreachable("heartbeat for "+node, err)
	}
	return nil
}

// Deregister removes this agent from the catalog (a clean shutdown).
func (c *Client) Deregister(ctx context.Context, node string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.cl.Agent().ServiceDeregisterOpts("shoal-"+node, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return c.unreachable("deregister "+node, err)
	}
	return nil
}

// ExpectedHosts lists the agents registered as running service, sorted.
func (c *Client) ExpectedHosts(ctx context.Context, service string) ([]Host, error) {
	entries, _, err := c.cl.Health().Service(CatalogService, service, false, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, c.unreachable("list the hosts of "+service, err)
	}
	var out []Host
	for _, e := range entries {
		h := Host{Node: e.Service.Meta["node"], Status: e.Checks.AggregatedStatus(), Services: e.Service.Tags}
		if t := e.Service.Meta["tags"]; t != "" {
			h.Tags = strings.Split(t, ",")
		}
		if h.Node == "" {
			h.Node = e.Service.ID
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

// String says what a host's check means for an operator.
func (h Host) String() string {
	if h.Status == api.HealthPassing {
		return h.Node
	}
	return fmt.Sprintf("%s (registered in Consul, check %s: not heard from for over %s)", h.Node, h.Status, HostTTL)
}
