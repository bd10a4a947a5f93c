package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/shoal-deploy/shoal/bench"
)

func runBench(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "bench", "[flags]",
		"Measure fleet-wide pull time: for each method and fleet size N, start a real fleet (Consul dev\n"+
			"agent, an origin agent and N agents), publish a random build from the origin, deploy it and\n"+
			"time each host from the Consul write to a verified copy and to active. Compares Shoal's swarm\n"+
			"(p2p) with every host pulling from the origin over HTTP (origin) and with a stock BitTorrent\n"+
			"swarm (bittorrent: aria2c and opentracker, make bench-deps), against the fluid bound T*.\n"+
			"Reports machine CPU per run and per GB delivered.\n"+
			"Writes a table to stdout, results.jsonl and scaling.svg / cdf.svg to --out.")
	hosts := listFlag{}
	fs.Var(&hosts, "hosts", "fleet sizes to sweep, comma-separated (default 5,10,20,40)")
	size, up, down := sizeFlag(100e6), sizeFlag(10e6), sizeFlag(10e6)
	fs.Var(&size, "size", "build size")
	fs.Var(&up, "up", "upload cap per host, origin included, per second (0 = none)")
	fs.Var(&down, "down", "download cap per host, per second (0 = none)")
	runs := fs.Int("runs", 3, "runs per method and N: consecutive builds deployed to one fleet (each run's peak RSS is its own)")
	fs.IntVar(runs, "builds", 3, "the same as --runs")
	out := fs.String("out", "bench-out", "directory for results.jsonl and plots")
	netMode := fs.String("net", "loopback", "loopback (caps by Shoal's limiters) or netns (kernel-shaped namespaces; root)")
	mtu := fs.Int("mtu", 1500, "link MTU in netns mode (9000: jumbo frames, as in most datacenter networks)")
	methods := listFlag{}
	fs.Var(&methods, "method", "p2p, origin and/or bittorrent (aria2c + opentracker, the reference a user would pick instead; default p2p,origin)")
	consulBin := fs.String("consul-bin", "bin/consul", "consul binary (built by make consul)")
	shoalBin := fs.String("shoal-bin", "", "shoal binary for the agents (default: this one)")
	timeout := fs.Duration("timeout", 10*time.Minute, "limit for one run")
	cleanup := fs.Bool("cleanup", false, "only remove namespaces a killed bench left behind, then exit")
	keep := fs.Bool("keep", false, "keep the work directory (agent logs and data dirs) for a post-mortem")
	prof := fs.Duration("profile", 0, "record a CPU profile of the median host for this long from the deploy, and its heap, into --out (p2p, origin)")
	agentArgs := listFlag{}
	fs.Var(&agentArgs, "agent-arg", "add this to every agent's command line, e.g. --agent-arg=--handout=off (repeatable; p2p and origin)")
	report := fs.Bool("report", false, "run nothing: print the table and redraw the plots from --out/results.jsonl")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *cleanup {
		n := bench.CleanupStale(ctx)
		fmt.Fprintf(env.Stdout, "removed %d stale bench namespaces\n", n)
		return nil
	}
	if *report {
		results, err := bench.ReadJSONLines(filepath.Join(*out, "results.jsonl"))
		if err != nil {
			return err
		}
		if err := bench.WriteTable(env.Stdout, results); err != nil {
			return err
		}
		return bench.WritePlots(*out, results)
	}
	if len(hosts) == 0 {
		hosts = listFlag{"5", "10", "20", "40"}
	}
	if len(methods) == 0 {
		methods = listFlag{"p2p", "origin"}
	}
	cfg := bench.Config{Size: int64(size), Up: int64(up), Down: int64(down), Runs: *runs, Out: *out,
		Net: *netMode, MTU: *mtu, Methods: methods, Timeout: *timeout, Progress: env.Stderr, Keep: *keep, Profile: *prof, AgentArgs: agentArgs}
	for _, h := range hosts {
		n, err := strconv.Atoi(h)
		if err != nil {
			return fmt.Errorf("--hosts %q: want numbers like 5,10,20", h)
		}
		cfg.Hosts = append(cfg.Hosts, n)
	}
	var err error
	if cfg.ShoalBin = *shoalBin; cfg.ShoalBin == "" {
		if cfg.ShoalBin, err = os.Executable(); err != nil {
			return err
		}
	}
	if cfg.ConsulBin, err = filepath.Abs(*consulBin); err != nil {
		return err
	}
	if _, err := os.Stat(cfg.ConsulBin); err != nil {
		return fmt.Errorf("no consul binary at %s: run `make consul` or pass --consul-bin", cfg.ConsulBin)
	}
	results, runErr := bench.Run(ctx, cfg)
	if len(results) > 0 {
		if err := bench.WriteTable(env.Stdout, results); err != nil {
			return err
		}
		if err := bench.AppendJSONLines(filepath.Join(*out, "results.jsonl"), results); err != nil {
			return err
		}
		if err := bench.WritePlots(*out, results); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "results appended to %s; plots in %s\n", filepath.Join(*out, "results.jsonl"), *out)
	}
	return runErr
}
