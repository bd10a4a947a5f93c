// Package cli is the `shoal` command line as a library: Run(args) parses a
// subcommand and runs it. One file per subcommand; cmd/shoal is a thin main.
// Every command has --help, prints a one-line reason and exits non-zero on
// failure, and prints JSON with --json where it prints data.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
)

// Env is what a command may touch: its streams and environment.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env Env, args []string) error
}

func commands() []command {
	return []command{
		{"agent", "run the daemon on this host", runAgent},
		{"publish", "pack a directory as a build, publish its manifest, seed it from this host", runPublish},
		{"deploy", "make a published build the desired release, at once or in stages with gates", runDeploy},
		{"rollback", "make the previous build the desired release again (no bytes move)", runRollback},
		{"status", "show every host of the fleet: state, builds, progress, peers", runStatus},
		{"builds", "list the published builds of a service", runBuilds},
		{"history", "show a service's deploys, rollouts, gate failures, rollbacks and locks", runHistory},
		{"lock", "lock a service against deploys (rollbacks stay allowed)", runLock},
		{"unlock", "lift a service's deploy lock", runUnlock},
		{"window", "show or set when a service may be deployed", runWindow},
		{"keygen", "make a signing key pair, a gossip key or a control API token", runKeygen},
		{"validate", "check an agent config file and exit", runValidate},
		{"bench", "measure fleet-wide pull time on a local fleet (p2p vs origin, against T*)", runBench},
		{"model", "model pull time, per-host work and gossip at 1,000-10,000 hosts", runModel},
		{"version", "print the version", runVersion},
	}
}

// exitError carries an exit code other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(code int, err error) error { return &exitError{code, err} }

// errUsage marks an error already explained by usage text.
var errUsage = errors.New("usage")

// Run runs one shoal command line (without the program name) and returns
// the process exit code.
func Run(ctx context.Context, env Env, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.Stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, env, args[1:])
			var ec *exitError
			switch {
			case err == nil || errors.Is(err, flag.ErrHelp):
				return 0
			case errors.As(err, &ec):
				fmt.Fprintf(env.Stderr, "shoal %s: %v\n", c.name, ec.err)
				return ec.code
			case errors.Is(err, errUsage):
				return 2
			case errors.Is(err, context.Canceled):
				return 130
			default:
				fmt.Fprintf(env.Stderr, "shoal %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(env.Stderr, "shoal: unknown command %q; run `shoal --help`\n", args[0])
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "shoal — pull-based, peer-to-peer build deploys.")
	fmt.Fprintln(w, "\nUsage: shoal <command> [flags] [args]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun `shoal <command> --help` for its flags.")
	fmt.Fprintln(w, "Environment: CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_* TLS variables; SHOAL_API (agent control API address),")
	fmt.Fprintln(w, "SHOAL_API_TOKEN (its token), SHOAL_SIGNING_KEY (publish), SHOAL_GOSSIP_KEY (agent).")
}

// newFlags makes a flag set whose --help prints the synopsis, the
// description and the flags to stdout.
func newFlags(env Env, name, synopsis, desc string) *flag.FlagSet {
	fs := flag.NewFlagSet("shoal "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fs.SetOutput(env.Stdout)
		fmt.Fprintf(env.Stdout, "Usage: shoal %s %s\n\n%s\n\nFlags:\n", name, synopsis, desc)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags, mapping errors to errUsage (already printed).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

// interleave lets flags follow positional args: `deploy web v1 --json`.
func interleave(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func apiDefault(env Env) string {
	if v := env.Getenv("SHOAL_API"); v != "" {
		return v
	}
	return "127.0.0.1:7070"
}

// HumanBytes prints n in the largest fitting binary unit.
func HumanBytes(n int64) string {
	const u = 1024
	if n < u {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), 0
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	for f /= u; f >= u && i < len(units)-1; f /= u {
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// sizeFlag is a flag.Value holding a byte count.
type sizeFlag int64

func (s *sizeFlag) String() string {
	n := int64(*s)
	switch {
	case n == 0:
		return "0"
	case n%1e9 == 0:
		return strconv.FormatInt(n/1e9, 10) + "GB"
	case n%1e6 == 0:
		return strconv.FormatInt(n/1e6, 10) + "MB"
	case n%1e3 == 0:
		return strconv.FormatInt(n/1e3, 10) + "KB"
	}
	return strconv.FormatInt(n, 10)
}
func (s *sizeFlag) Set(v string) error {
	n, err := core.ParseSize(v)
	*s = sizeFlag(n)
	return err
}

// listFlag collects repeated or comma-separated values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// NewLogger logs JSON to w, or a console format when w is a terminal or format is "console".
func NewLogger(w io.Writer, format, level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	if format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				format = "console"
			}
		}
	}
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	default:
		return zerolog.Nop(), fmt.Errorf("log format %q: use json or console", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
