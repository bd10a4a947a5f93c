package cli

import (
	"encoding/json"
	"io"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/signal"
)

func newAPI(addr string, timeout time.Duration) *agent.Client { return agent.NewClient(addr, timeout) }

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
