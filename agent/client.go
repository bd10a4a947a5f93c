package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/trust"
)

// Client talks to an agent's control API. The CLI and the bench harness use it.
type Client struct {
	addr  string
	base  string // URL prefix
	token string
	hc    *http.Client
}

// NewClient returns a client for the control API at addr: host:port, or
// "unix:/path" for a unix socket. A zero timeout means none.
func NewClient(addr string, timeout time.Duration) *Client {
	c := &Client{addr: addr, base: "http://" + addr, hc: &http.Client{Timeout: timeout}}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		c.base = "http://shoal-agent"
		c.hc.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
	}
	return c
}

// WithToken makes the client send the agent's control API token.
func (c *Client) WithToken(token string) *Client {
	c.token = token
	return c
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
	resp, err := c.send(ctx, method, path, rd)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// Download copies the answer to GET path into w (a profile, say); errors
// as Do's.
func (c *Client) Download(ctx context.Context, path string, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// send makes one request with the token and turns a failure to connect or
// a non-2xx answer into an error; the caller closes the body.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("cannot reach the shoal agent at %s: %w (is `shoal agent` running? set --api or SHOAL_API)", c.addr, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		var e apiError
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("agent at %s: %s %s: %s", c.addr, method, path, resp.Status)
	}
	return resp, nil
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

// Publish has the agent pack req.Dir, signs the draft manifest with key
// (nil: unsigned, which only dev-mode agents accept) and hands it back to
// be published. It returns the published manifest, and whether the same
// content had already been published under that name (then nothing changed).
func (c *Client) Publish(ctx context.Context, req PublishRequest, key *trust.SigningKey) (*core.Manifest, bool, error) {
	var resp PublishResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/publish", req, &resp); err != nil {
		return nil, false, err
	}
	if resp.Manifest == nil {
		return nil, false, fmt.Errorf("agent at %s returned no manifest", c.addr)
	}
	if resp.Published {
		return resp.Manifest, true, nil
	}
	m := resp.Manifest
	if key != nil {
		key.Sign(m)
	}
	var out core.Manifest
	if err := c.Do(ctx, http.MethodPost, "/v1/publish/commit", m, &out); err != nil {
		return nil, false, err
	}
	return &out, false, nil
}
