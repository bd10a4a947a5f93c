package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/shoal-deploy/shoal/signal"
)

// apiClient talks to a local agent's HTTP API.
type apiClient struct {
	addr string
	hc   *http.Client
}

func newAPI(addr string, timeout time.Duration) *apiClient {
	return &apiClient{addr: addr, hc: &http.Client{Timeout: timeout}}
}

func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
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
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("agent at %s: %s %s: %s", c.addr, method, path, resp.Status)
	}
	return json.Unmarshal(b, out)
}

// consulFlags adds --consul and --consul-token to a command.
type consulFlags struct{ addr, token, prefix string }

func (c *consulFlags) bind(fs interface {
	StringVar(*string, string, string, string)
}) {
	fs.StringVar(&c.addr, "consul", "", "Consul HTTP address (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&c.token, "consul-token", "", "Consul ACL token (default $CONSUL_HTTP_TOKEN)")
	fs.StringVar(&c.prefix, "prefix", "", "Consul KV prefix (default shoal)")
}

func (c *consulFlags) client() (*signal.Client, error) {
	return signal.New(signal.Config{Address: c.addr, Token: c.token, Prefix: c.prefix}, nopLogger())
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
