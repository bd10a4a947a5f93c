package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Client talks to an agent's local HTTP API. The CLI, the bench harness
// and the agent itself (gathering the fleet) use it.
type Client struct {
	addr string
	hc   *http.Client
}

// NewClient returns a client for the agent API at addr (host:port); a zero
// timeout means none.
func NewClient(addr string, timeout time.Duration) *Client {
	return &Client{addr: addr, hc: &http.Client{Timeout: timeout}}
}

// Addr is the API address.
func (c *Client) Addr() string { return c.addr }

// Do sends body (if not nil) as JSON and decodes the JSON answer into out.
// A non-2xx answer becomes an error carrying the agent's message.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.addr+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return ctx.Err()
		}
		return fmt.Errorf("cannot reach the shoal agent at %s: %w (is `shoal agent` running? set --api or SHOAL_API)", c.addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode/100 != 2 {
		var e apiError
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("agent at %s: %s %s: %s", c.addr, method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// Fleet returns every member's status, gathered by this agent.
func (c *Client) Fleet(ctx context.Context) ([]FleetHost, error) {
	var hosts []FleetHost
	err := c.Do(ctx, http.MethodGet, "/v1/fleet", nil, &hosts)
	return hosts, err
}

// Status returns this agent's status.
func (c *Client) Status(ctx context.Context) (HostStatus, error) {
	var st HostStatus
	err := c.Do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}
