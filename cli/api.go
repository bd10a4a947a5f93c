package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/signal"
	"github.com/shoal-deploy/shoal/trust"
)

// newAPI is a client for the agent's control API at addr, with the token
// from $SHOAL_API_TOKEN (the token itself, or @file) if set.
func newAPI(env Env, addr string, timeout time.Duration) (*agent.Client, error) {
	c := agent.NewClient(addr, timeout)
	if v := env.Getenv("SHOAL_API_TOKEN"); v != "" {
		tok, err := trust.ReadValue(v)
		if err != nil {
			return nil, fmt.Errorf("SHOAL_API_TOKEN: %w", err)
		}
		c.WithToken(tok)
	}
	return c, nil
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
