package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
)

func versionString() string { return agent.Version }

// HostRow is one host's view of one service, as `shoal status --json` prints it.
type HostRow struct {
	Node    string               `json:"node"`
	Error   string               `json:"error,omitempty"`
	Service *agent.ServiceStatus `json:"service,omitempty"`
	// Insecure: the host runs in dev mode (unsigned builds, plain gossip).
	Insecure bool `json:"insecure_dev,omitempty"`
	// Banned lists peers this host banned for sending corrupt pieces.
	Banned []string `json:"banned_peers,omitempty"`
	// Down: registered in Consul's catalog for this service, absent from
	// gossip, its check failing: the host should run it and is down.
	Down bool `json:"down,omitempty"`
}

func runStatus(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "status", "[SERVICE]",
		"Show every host of the fleet, gathered through one agent (which knows the members):\n"+
			"state, live and desired build, fetch progress, bytes from the origin vs peers, errors.\n"+
			"With --wait, read the release from Consul and keep polling until every host has handled\n"+
			"that release (its build and sequence number): exit 0 if all are active on it, 1 if any\n"+
			"failed, 2 if it timed out or a host that should run SERVICE (registered in Consul's\n"+
			"catalog) is down.")
	api := fs.String("api", apiDefault(env), "address of any agent's API ($SHOAL_API)")
	var c consulFlags
	c.bind(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	wait := fs.Bool("wait", false, "poll until every host settled (see above)")
	watch := fs.Bool("watch", false, "redraw every second until interrupted")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up --wait after this long")
	pos, err := interleave(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		fs.Usage()
		return errUsage
	}
	service := ""
	if len(pos) == 1 {
		service = pos[0]
	}
	cl, err := newAPI(env, *api, 10*time.Second)
	if err != nil {
		return err
	}
	if !*wait && !*watch {
		rows, err := fleetRows(ctx, cl, service)
		if err != nil {
			return err
		}
		return printRows(env.Stdout, rows, *asJSON)
	}
	if *wait && service == "" {
		return errors.New("--wait needs a SERVICE")
	}
	var rel *core.Release
	if *wait {
		sig, err := c.client()
		if err != nil {
			return err
		}
		// What the fleet must reach: this release, not each host's own
		// idea of it (a host that has not seen a new deploy yet still
		// reports the old one as desired, and would count as done).
		if rel, err = sig.Release(ctx, service); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(*timeout)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := ""
	for {
		rows, err := fleetRows(ctx, cl, service)
		if err != nil {
			return err
		}
		if *wait {
			if rows, err = withExpected(ctx, c, rows, service); err != nil {
				return err
			}
		}
		if *watch {
			fmt.Fprint(env.Stdout, "\033[H\033[2J")
			_ = printRows(env.Stdout, rows, false)
		} else if line := progressLine(rows); line != last && !*asJSON {
			fmt.Fprintln(env.Stderr, line)
			last = line
		}
		if *wait {
			if done, failed, down := settled(rows, rel); done {
				_ = printRows(env.Stdout, rows, *asJSON)
				if failed > 0 {
					return fmt.Errorf("%d host(s) failed; see the ERROR column", failed)
				}
				if len(down) > 0 {
					return exitCode(2, fmt.Errorf("%d host(s) that should run %s are down: %s", len(down), service, strings.Join(down, ", ")))
				}
				return nil
			}
			if time.Now().After(deadline) {
				_ = printRows(env.Stdout, rows, *asJSON)
				return exitCode(2, fmt.Errorf("%s release #%d (%s) not settled after %s: %s", service, rel.Seq, rel.Build, *timeout, pending(rows, rel)))
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func fleetRows(ctx context.Context, c *agent.Client, service string) ([]HostRow, error) {
	fleet, err := c.Fleet(ctx)
	if err != nil {
		return nil, err
	}
	var rows []HostRow
	for _, h := range fleet {
		if h.Status == nil {
			rows = append(rows, HostRow{Node: h.Member.Name, Error: h.Error})
			continue
		}
		for i := range h.Status.Services {
			s := h.Status.Services[i]
			if service == "" || s.Service == service {
				rows = append(rows, HostRow{Node: h.Member.Name, Service: &s, Insecure: h.Status.Insecure, Banned: h.Status.BannedPeers})
			}
		}
	}
	return rows, nil
}

// settled: every host has handled release rel (active on its build, or
// failed while handling it: same build and sequence number), or is down
// (expected from Consul's catalog, not heard from).
func settled(rows []HostRow, rel *core.Release) (done bool, failed int, down []string) {
	if len(rows) == 0 || rel == nil {
		return false, 0, nil
	}
	for _, r := range rows {
		switch {
		case r.Down:
			down = append(down, r.Node)
		case !handled(r, rel):
			return false, 0, nil
		case r.Service.State == core.StateFailed:
			failed++
		}
	}
	return true, failed, down
}

// withExpected adds a row for every host Consul's catalog says should run
// service but gossip does not list: down if its check fails, otherwise
// not heard from yet.
func withExpected(ctx context.Context, c consulFlags, rows []HostRow, service string) ([]HostRow, error) {
	sig, err := c.client()
	if err != nil {
		return nil, err
	}
	hosts, err := sig.ExpectedHosts(ctx, service)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.Node] = true
	}
	for _, h := range hosts {
		if seen[h.Node] {
			continue
		}
		rows = append(rows, HostRow{Node: h.Node, Error: "not in gossip: " + h.String(), Down: h.Status == "critical"})
	}
	return rows, nil
}

// handled: the host has handled release rel. During a staged rollout
// (and at rel's current stage) a host the rollout has not reached is done
// when it runs the previous build with rel's build prefetched.
func handled(r HostRow, rel *core.Release) bool {
	s := r.Service
	if s == nil || s.Seq != rel.Seq || s.Applying {
		return false
	}
	want := rel.Build
	if rel.Rollout != nil {
		if s.Stage != rel.Rollout.Stage {
			return false
		}
		if s.Held {
			want = rel.Previous
		}
	}
	if s.Desired != want {
		return false
	}
	if s.State == core.StateFailed {
		return true
	}
	return s.State == core.StateActive && s.Current == want && (!s.Held || s.Prefetched == rel.Build)
}

// pending names the hosts that have not handled rel.
func pending(rows []HostRow, rel *core.Release) string {
	var out []string
	for _, r := range rows {
		if handled(r, rel) {
			continue
		}
		switch {
		case r.Service == nil:
			out = append(out, r.Node+" (unreachable: "+r.Error+")")
		default:
			out = append(out, fmt.Sprintf("%s (%s, desired %s #%d)", r.Node, r.Service.State, dash(r.Service.Desired), r.Service.Seq))
		}
	}
	if len(out) == 0 {
		return "no host reported"
	}
	return "waiting for " + strings.Join(out, ", ")
}

func progressLine(rows []HostRow) string {
	counts := map[core.State]int{}
	var have, total int64
	for _, r := range rows {
		if r.Service == nil {
			counts["unreachable"]++
			continue
		}
		counts[r.Service.State]++
		if f := r.Service.Fetch; f != nil && r.Service.Desired == f.Build {
			have += f.Have
			total += f.Total
		}
	}
	var parts []string
	for _, st := range []core.State{core.StateIdle, core.StateFetching, core.StateVerifying, core.StateReady,
		core.StateDraining, core.StateActive, core.StateFailed, "unreachable"} {
		if counts[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[st], st))
		}
	}
	pct := ""
	if total > 0 {
		pct = fmt.Sprintf(" — %s of %s fetched (%.0f%%)", HumanBytes(have), HumanBytes(total), 100*float64(have)/float64(total))
	}
	return fmt.Sprintf("%d hosts: %s%s", len(rows), strings.Join(parts, ", "), pct)
}

func printRows(w io.Writer, rows []HostRow, asJSON bool) error {
	if asJSON {
		if rows == nil {
			rows = []HostRow{}
		}
		return printJSON(w, rows)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSERVICE\tSTATE\tCURRENT\tDESIRED\tFETCHED\tFROM PEERS\tFROM ORIGIN\tUPLOADED\tPEERS\tERROR")
	for _, r := range rows {
		if r.Service == nil {
			fmt.Fprintf(tw, "%s\t-\tunreachable\t-\t-\t-\t-\t-\t-\t-\t%s\n", r.Node, r.Error)
			continue
		}
		s := r.Service
		fetched, peers, origin, up, npeers := "-", "-", "-", "-", "-"
		if f := s.Fetch; f != nil {
			fetched = fmt.Sprintf("%s %3.0f%%", f.Build, 100*float64(f.Have)/float64(max(f.Total, 1)))
			peers, origin, up = HumanBytes(f.FromPeers), HumanBytes(f.FromOrigin), HumanBytes(f.Uploaded)
			npeers = fmt.Sprint(len(f.Peers))
		}
		state := string(s.State)
		if s.Phase != "" {
			state += "/" + s.Phase
		}
		if r.Insecure {
			state += " [INSECURE-DEV]"
		}
		errText := s.LastError
		if s.Note != "" {
			errText = strings.TrimPrefix(errText+"; "+s.Note, "; ")
		}
		if len(r.Banned) > 0 {
			errText = strings.TrimPrefix(errText+"; banned for corrupt pieces: "+strings.Join(r.Banned, ", "), "; ")
		}
		if len(errText) > 120 {
			errText = errText[:117] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Node, s.Service, state, dash(s.Current), dash(s.Desired),
			fetched, peers, origin, up, npeers, errText)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if line := summary(rows); line != "" {
		fmt.Fprintln(w, line)
	}
	return nil
}

// summary says where the bytes of the latest fetches came from.
func summary(rows []HostRow) string {
	var hosts int
	var origin, peers int64
	builds := map[string]bool{}
	for _, r := range rows {
		if r.Service == nil || r.Service.Fetch == nil || r.Service.Fetch.Received == 0 {
			continue
		}
		f := r.Service.Fetch
		hosts++
		origin += f.FromOrigin
		peers += f.FromPeers
		builds[f.Build] = true
	}
	if hosts == 0 {
		return "no host fetched anything for its latest deploy"
	}
	total := origin + peers
	return fmt.Sprintf("%d host(s) fetched %s of %s: %s (%.0f%%) from the origin, %s (%.0f%%) from other peers",
		hosts, HumanBytes(total), strings.Join(sortedKeys(builds), ", "), HumanBytes(origin), 100*float64(origin)/float64(total),
		HumanBytes(peers), 100*float64(peers)/float64(total))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
