package cli

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
)

// agentFlags binds the agent's command-line flags over a config (from
// --config, if given); flags that are set win over the file.
type agentFlags struct {
	config, node, dataDir, bind, api, consul, token, gossip         string
	logFormat, logLevel, fetch, fetchInto, handout                  string
	apiToken, peerAPI, gossipKey                                    string
	gossipPort, torrentPort, healthRetries, keep, maxPeers, peerSet int
	maxProcs                                                        int
	join, services, trustedKeys, publishRoots, tags                 listFlag
	drain, activate, healthCmd, healthURL                           string
	hookTimeout, healthInterval, peerRefresh                        time.Duration
	up, down                                                        sizeFlag
	pprof, insecureDev, allowSetuid, maxProcsSet                    bool
}

func runAgent(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "agent", "--node NAME --data-dir DIR --bind IP [flags]",
		"Run the Shoal daemon: join the swarm, watch each service's release key in Consul,\n"+
			"fetch new builds from peers into a cold directory, verify, drain, switch, health-check.\n"+
			"Stops cleanly on SIGINT/SIGTERM; interrupted fetches resume on the next start.")
	var f agentFlags
	fs.StringVar(&f.config, "config", "", "JSON config file (unknown keys are an error); flags override it")
	fs.StringVar(&f.node, "node", "", "unique node name in the cluster (required)")
	fs.StringVar(&f.dataDir, "data-dir", "", "absolute directory for archives, releases and state (required)")
	fs.StringVar(&f.bind, "bind", "", "IP address to listen on and advertise (required)")
	fs.StringVar(&f.api, "api", "", "control API: loopback host:port or unix:/path (default <bind>:7070 if bind is loopback, else 127.0.0.1:7070)")
	fs.StringVar(&f.apiToken, "api-token", "", "control API token, or @FILE (required if --api is not loopback; default $SHOAL_API_TOKEN)")
	fs.StringVar(&f.peerAPI, "peer-api", "", "peer API address, members only (default <bind>:7071)")
	fs.StringVar(&f.gossipKey, "gossip-key", "", "gossip key from `shoal keygen --gossip`, or @FILE (default $SHOAL_GOSSIP_KEY)")
	fs.Var(&f.trustedKeys, "trusted-key", "public key whose signed builds run here, or @FILE (repeatable)")
	fs.BoolVar(&f.insecureDev, "insecure-dev", false, "accept unsigned builds and plain gossip (a laptop only; says so everywhere)")
	fs.Var(&f.publishRoots, "publish-root", "only publish directories under this one (repeatable)")
	fs.Var(&f.tags, "tag", "a tag staged rollouts select hosts by, e.g. canary or zone=us-east-1a (repeatable)")
	fs.BoolVar(&f.allowSetuid, "allow-setuid", false, "keep setuid/setgid/sticky bits from builds of the --service(s)")
	fs.StringVar(&f.consul, "consul", "", "Consul HTTP address (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&f.token, "consul-token", "", "Consul ACL token (default $CONSUL_HTTP_TOKEN)")
	fs.Var(&f.join, "join", "gossip address of an existing member (repeatable, or comma-separated)")
	fs.IntVar(&f.gossipPort, "gossip-port", 0, "gossip TCP/UDP port (default 7946)")
	fs.IntVar(&f.torrentPort, "torrent-port", 0, "chunk-transfer TCP port (default 6881)")
	fs.StringVar(&f.gossip, "gossip-profile", "", "gossip timings: lan (default) or local (fast, for tests)")
	fs.Var(&f.services, "service", "service this host runs (repeatable); its hooks come from the flags below")
	fs.StringVar(&f.drain, "drain", "", "drain hook: shell command run before the switch")
	fs.StringVar(&f.activate, "activate", "", "activate hook: shell command run after the switch")
	fs.StringVar(&f.healthCmd, "health-cmd", "", "health check command (exit 0 = healthy)")
	fs.StringVar(&f.healthURL, "health-url", "", "health check URL (2xx = healthy)")
	fs.IntVar(&f.healthRetries, "health-retries", 0, "health attempts before switching back (default 5)")
	fs.DurationVar(&f.healthInterval, "health-interval", 0, "wait between health attempts (default 1s)")
	fs.DurationVar(&f.hookTimeout, "hook-timeout", 0, "limit for each drain/activate hook (default 30s)")
	fs.IntVar(&f.keep, "keep", 0, "releases to keep on disk per service (default 3; current and previous always stay)")
	fs.Var(&f.up, "upload-rate", "cap on piece upload, e.g. 10MB (per second; default unlimited)")
	fs.Var(&f.down, "download-rate", "cap on piece download, e.g. 10MB (per second; default unlimited)")
	fs.IntVar(&f.maxPeers, "max-peers", 0, "connections per build (default 50)")
	fs.IntVar(&f.peerSet, "peer-set", 0, "members a fetching host dials per build, a random sample topped up as connections close (default: follows the fleet, 5 up to 63 members, then one more per doubling)")
	fs.DurationVar(&f.peerRefresh, "peer-refresh", 0, "how often each fetch's peer set is topped up (default 2s)")
	fs.StringVar(&f.handout, "handout", "", "on (default): the origin hands each piece to one host over HTTP; off: the origin is a plain torrent seed (for measurement)")
	fs.StringVar(&f.fetch, "fetch", "", "fetch method: swarm (default) or origin (bench baseline: HTTP from the origin only)")
	fs.StringVar(&f.fetchInto, "fetch-into", "", "where fetched bytes go: release (default: each file straight into the cold release, written once) or archive (an archive unpacked at install: each byte written twice)")
	fs.IntVar(&f.maxProcs, "max-procs", 0, "cores the agent's Go code may use at once (GOMAXPROCS); 0 = every core (default $GOMAXPROCS if set, else 1: a deploy stays in the background)")
	fs.BoolVar(&f.pprof, "pprof", false, "serve Go's profiler at /debug/pprof/ on the API address")
	fs.StringVar(&f.logFormat, "log-format", "", "json or console (default: console on a terminal, else json)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; see `shoal agent --help`", fs.Arg(0))
	}
	fs.Visit(func(fl *flag.Flag) { f.maxProcsSet = f.maxProcsSet || fl.Name == "max-procs" })
	cfg, err := f.build()
	if err != nil {
		return err
	}
	log, err := NewLogger(env.Stderr, f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	if n := cfg.Procs(); n > 0 {
		runtime.GOMAXPROCS(n)
	}
	a, err := agent.New(cfg, log.With().Str("node", cfg.Swarm.Node).Logger())
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func (f *agentFlags) build() (agent.Config, error) {
	var cfg agent.Config
	if f.config != "" {
		var err error
		if cfg, err = agent.LoadConfig(f.config); err != nil {
			return cfg, err
		}
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.Swarm.Node, f.node)
	set(&cfg.DataDir, f.dataDir)
	set(&cfg.Swarm.BindAddr, f.bind)
	set(&cfg.API, f.api)
	set(&cfg.Consul.Address, f.consul)
	set(&cfg.Consul.Token, f.token)
	set(&cfg.Swarm.Gossip, f.gossip)
	set(&cfg.Fetch, f.fetch)
	set(&cfg.FetchInto, f.fetchInto)
	set(&cfg.APIToken, f.apiToken)
	set(&cfg.PeerAPI, f.peerAPI)
	set(&cfg.GossipKey, f.gossipKey)
	cfg.TrustedKeys = append(cfg.TrustedKeys, f.trustedKeys...)
	cfg.PublishRoots = append(cfg.PublishRoots, f.publishRoots...)
	cfg.Tags = append(cfg.Tags, f.tags...)
	cfg.InsecureDev = cfg.InsecureDev || f.insecureDev
	cfg.Pprof = cfg.Pprof || f.pprof
	if f.maxProcsSet {
		cfg.MaxProcs = &f.maxProcs
	}
	if len(f.join) > 0 {
		cfg.Swarm.Join = f.join
	}
	if f.gossipPort != 0 {
		cfg.Swarm.GossipPort = f.gossipPort
	}
	if f.torrentPort != 0 {
		cfg.Swarm.TorrentPort = f.torrentPort
	}
	if f.up != 0 {
		cfg.Swarm.UploadRate = int64(f.up)
	}
	if f.down != 0 {
		cfg.Swarm.DownloadRate = int64(f.down)
	}
	if f.maxPeers != 0 {
		cfg.Swarm.MaxPeers = f.maxPeers
	}
	switch f.handout {
	case "", "on":
	case "off":
		cfg.Swarm.Handout.Off = true
	default:
		return cfg, fmt.Errorf("--handout %q: use on or off", f.handout)
	}
	if f.peerSet != 0 {
		cfg.Swarm.PeerSet = f.peerSet
	}
	if f.peerRefresh != 0 {
		cfg.Swarm.PeerRefresh = core.Duration(f.peerRefresh)
	}
	if cfg.Services == nil {
		cfg.Services = map[string]agent.ServiceConfig{}
	}
	for _, name := range f.services {
		sc := cfg.Services[name]
		h := &sc.Hooks
		set(&h.Drain, f.drain)
		set(&h.Activate, f.activate)
		set(&h.HealthCmd, f.healthCmd)
		set(&h.HealthURL, f.healthURL)
		if f.healthRetries != 0 {
			h.HealthRetries = f.healthRetries
		}
		if f.healthInterval != 0 {
			h.HealthInterval = core.Duration(f.healthInterval)
		}
		if f.hookTimeout != 0 {
			h.HookTimeout = core.Duration(f.hookTimeout)
		}
		if f.keep != 0 {
			sc.KeepReleases = f.keep
		}
		sc.AllowSetuid = sc.AllowSetuid || f.allowSetuid
		cfg.Services[name] = sc
	}
	return cfg, cfg.Finish()
}

func runValidate(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "validate", "CONFIG.json", "Check an agent config file: strict JSON (unknown keys are errors), then every field.")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	cfg, err := agent.LoadConfig(fs.Arg(0))
	if err != nil {
		return err
	}
	if err := cfg.Finish(); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s: valid (node %s, %d services: %v)\n", fs.Arg(0), cfg.Swarm.Node, len(cfg.Services), sortedKeys(cfg.Services))
	return nil
}
