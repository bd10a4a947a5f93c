package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/signal"
)

func nopLogger() zerolog.Logger { return zerolog.Nop() }

func whoami() string {
	h, _ := os.Hostname()
	if u, err := user.Current(); err == nil {
		return u.Username + "@" + h
	}
	return h
}

func runDeploy(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "deploy", "SERVICE BUILD  |  --resume SERVICE  |  --pause SERVICE",
		"Make BUILD the desired release of SERVICE: one check-and-set write of the release key in\n"+
			"Consul. Every agent running SERVICE pulls it from its peers, verifies it, drains and switches.\n"+
			"The build must have been published. Follow with `shoal status SERVICE`.\n\n"+
			"With --stages, roll it out in stages and drive the rollout until it is done: every host\n"+
			"prefetches BUILD at once, but only the hosts a stage selects switch to it (a tag such as\n"+
			"canary or zone=us-east-1a, a percentage of the fleet by a stable hash of host and service,\n"+
			"or all). A stage is promoted once every host in it is active and healthy, every other\n"+
			"host has BUILD prefetched, it baked for --bake, and every gate passes. A failing gate\n"+
			"rolls the whole fleet back to the previous build (on disk: no transfer) and exits 1.\n"+
			"Exit codes: 0 done, 1 failed or rolled back, 2 usage.")
	var c consulFlags
	c.bind(fs)
	reason := fs.String("reason", "", "why (recorded in the release and the history)")
	asJSON := fs.Bool("json", false, "print the release record as JSON; with --stages, one JSON event per line")
	stages := fs.String("stages", "", "comma-separated stages, e.g. staging,canary,10%,50%,all")
	bake := fs.Duration("bake", 2*time.Minute, "how long each stage must stay healthy before promotion")
	step := fs.Bool("step", false, "advance by hand: after each stage bakes, stop; `shoal deploy --resume SERVICE` promotes to the next")
	hotfix := fs.Bool("hotfix", false, "bake each stage for "+hotfixBake.String()+" only (the gates still run)")
	interval := fs.Duration("interval", 5*time.Second, "how often hosts and gates are checked")
	check := fs.String("check", "", "gate: shell command run every interval (exit 0 = healthy; $SHOAL_STAGE, $SHOAL_BUILD set)")
	failedMax := fs.String("max-failed", "0", "gate: hosts of a stage that may fail (a count or a percentage)")
	metric := fs.String("metric", "", "gate: URL returning a number (or a Prometheus query URL), sampled every interval")
	metricMax := fs.Float64("metric-max", math.NaN(), "gate: the metric may not exceed this")
	zscore := fs.Float64("zscore", 0, "gate: the metric may not leave its pre-rollout mean by more than this many standard deviations (0: off)")
	baseline := fs.Int("baseline", 12, "metric samples (one per interval) taken before the rollout for --zscore")
	resume := fs.Bool("resume", false, "drive on the rollout of SERVICE in Consul (after a commander died, or --pause)")
	pause := fs.Bool("pause", false, "pause the rollout of SERVICE: its commander stops promoting and exits")
	planOnly := fs.Bool("plan", false, "print which hosts each stage would hold; change nothing")
	api := fs.String("api", apiDefault(env), "address of any agent's API, to follow the fleet ($SHOAL_API)")
	force := fs.Bool("force", false, "deploy outside the service's deploy window (recorded in the history)")
	keep := fs.Int("history", signal.HistoryKeep, "history entries to keep per service")
	pos, err := interleave(fs, args)
	if err != nil {
		return err
	}
	wantArgs := 2
	if *resume || *pause {
		wantArgs = 1
	}
	if len(pos) != wantArgs {
		fs.Usage()
		return errUsage
	}
	service := pos[0]
	if err := core.ValidName("service", service); err != nil {
		return err
	}
	if wantArgs == 2 {
		if err := core.ValidName("build", pos[1]); err != nil {
			return err
		}
	}
	sig, err := c.client()
	if err != nil {
		return err
	}
	if *pause {
		r, err := sig.Release(ctx, service)
		if err != nil {
			return err
		}
		if r.Rollout == nil {
			return fmt.Errorf("%s has no rollout in progress (release #%d, %s)", service, r.Seq, r.Build)
		}
		if _, err := sig.SetPaused(ctx, service, r.Rollout.ID, true); err != nil {
			return err
		}
		_ = sig.AppendHistory(ctx, service, signal.HistoryEntry{By: whoami(), Event: "paused", Build: r.Build, Seq: r.Seq, Rollout: r.Rollout.ID,
			Stage: r.Rollout.StageName(), Detail: *reason}, *keep)
		fmt.Fprintf(env.Stdout, "paused the rollout of %s %s at %s; `shoal deploy --resume %s` drives it on\n",
			service, r.Build, r.Rollout.Where(), service)
		return nil
	}
	var stageList []string
	if *stages != "" {
		for _, st := range strings.Split(*stages, ",") {
			st = strings.TrimSpace(st)
			if err := core.ValidStage(st); err != nil {
				return err
			}
			stageList = append(stageList, st)
		}
		if last := stageList[len(stageList)-1]; last != "all" && last != "100%" {
			stageList = append(stageList, "all")
			fmt.Fprintf(env.Stderr, "note: added a last stage \"all\": the rollout ends with every host on the build\n")
		}
	}
	if *planOnly {
		if len(stageList) == 0 {
			return errors.New("--plan needs --stages")
		}
		return plan(ctx, env, sig, service, stageList, *asJSON)
	}
	if !*resume {
		if err := checkWindow(ctx, env, sig, service, *force, *reason); err != nil {
			return err
		}
	}
	if !*resume && len(stageList) == 0 {
		r, err := sig.Deploy(ctx, service, pos[1], whoami(), *reason)
		if err != nil {
			return err
		}
		_ = sig.AppendHistory(ctx, service, signal.HistoryEntry{By: whoami(), Event: "deploy", Build: r.Build, Seq: r.Seq, Outcome: "released", Detail: *reason}, *keep)
		return printRelease(env, r, *asJSON, "deployed")
	}
	cl, err := newAPI(env, *api, 10*time.Second)
	if err != nil {
		return err
	}
	k := &commander{env: env, sig: sig, api: cl, c: c, service: service, by: whoami(), asJSON: *asJSON, keep: *keep}
	lock, err := sig.LockCommander(ctx, service, k.by)
	if err != nil {
		return err
	}
	defer lock.Release()
	if *resume {
		r, err := sig.Release(ctx, service)
		if err != nil {
			return err
		}
		if r.Rollout == nil {
			return fmt.Errorf("%s has no rollout to resume (release #%d, %s, %s)", service, r.Seq, r.Build, describe(r))
		}
		if r.Rollout.Params.Paused {
			if r, err = sig.SetPaused(ctx, service, r.Rollout.ID, false); err != nil {
				return err
			}
		}
		k.rel, k.p = r, r.Rollout.Params
		// Settings given again on the command line override the rollout's.
		fs.Visit(func(fl *flag.Flag) {
			switch fl.Name {
			case "bake":
				k.p.Bake = core.Duration(*bake)
			case "hotfix":
				k.p.Bake = core.Duration(hotfixBake)
			case "interval":
				k.p.Interval = core.Duration(*interval)
			case "check":
				k.p.Check = *check
			case "max-failed":
				k.p.MaxFailed = *failedMax
			case "step":
				k.p.Step = *step
			}
		})
		k.history(signal.HistoryEntry{Event: "resumed", Detail: *reason})
		k.emit(event{Event: "resumed", Message: fmt.Sprintf("resuming the rollout of %s %s at %s", service, r.Build, r.Rollout.Where())})
	} else {
		k.p = core.RolloutParams{Bake: core.Duration(*bake), Interval: core.Duration(*interval), MaxFailed: *failedMax,
			Check: *check, Metric: *metric, ZScore: *zscore, Baseline: *baseline, Step: *step}
		if *hotfix {
			k.p.Bake = core.Duration(hotfixBake)
		}
		if !math.IsNaN(*metricMax) {
			k.p.MetricMax = metricMax
		}
		if _, err := maxFailed(k.p.MaxFailed, 1); err != nil {
			return err
		}
	}
	if k.p.Interval <= 0 {
		k.p.Interval = core.Duration(5 * time.Second)
	}
	if k.p.Metric != "" {
		k.metric = newMetricGate(k.p.Metric, k.p.MetricMax, k.p.ZScore)
		switch {
		case k.p.Learnt:
			k.metric.mean, k.metric.std = k.p.Mean, k.p.Std
		case k.p.ZScore > 0:
			if err := k.learnBaseline(ctx); err != nil {
				return err
			}
			k.p.Mean, k.p.Std, k.p.Learnt = k.metric.mean, k.metric.std, true
		}
	}
	if !*resume {
		ro := &core.Rollout{ID: fmt.Sprintf("%s-%s-%d", service, pos[1], time.Now().Unix()), Stages: stageList, Params: k.p}
		r, err := sig.StartRollout(ctx, service, pos[1], k.by, *reason, ro)
		if err != nil {
			return err
		}
		k.rel = r
		if r.Previous == "" {
			fmt.Fprintf(env.Stderr, "note: %s has no previous build: every host takes %s at once\n", service, r.Build)
		}
		k.history(signal.HistoryEntry{Event: "rollout", Outcome: "started", Detail: strings.Join(stageList, ",") + " " + *reason})
		k.emit(event{Event: "started", Message: fmt.Sprintf("rolling out %s %s (release #%d, previous %s) in %d stages: %s; every host prefetches now",
			service, r.Build, r.Seq, cmp.Or(r.Previous, "none"), len(stageList), strings.Join(stageList, ", "))})
	}
	return k.drive(ctx, lock)
}

// learnBaseline samples the metric --baseline times, one per interval,
// before the rollout starts.
func (k *commander) learnBaseline(ctx context.Context) error {
	n := max(k.p.Baseline, 2)
	k.emit(event{Event: "baseline", Message: fmt.Sprintf("sampling %s %d times, every %s, for the anomaly test", k.p.Metric, n, k.p.Interval.D())})
	var xs []float64
	for i := 0; i < n; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(k.p.Interval.D()):
			}
		}
		v, err := k.metric.sample(ctx)
		if err != nil {
			return fmt.Errorf("metric baseline: %w", err)
		}
		xs = append(xs, v)
	}
	k.metric.learn(xs)
	return nil
}

func printRelease(env Env, r *core.Release, asJSON bool, verb string) error {
	if asJSON {
		return printJSON(env.Stdout, r)
	}
	prev := r.Previous
	if prev == "" {
		prev = "none"
	}
	fmt.Fprintf(env.Stdout, "%s %s %s (release #%d, previous %s)\nwatch it: shoal status %s\n", verb, r.Service, r.Build, r.Seq, prev, r.Service)
	return nil
}

func runRollback(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "rollback", "SERVICE",
		"Make the previous build the desired release of SERVICE again. Hosts keep the previous\n"+
			"release on disk, so they switch back without fetching anything.")
	var c consulFlags
	c.bind(fs)
	reason := fs.String("reason", "", "why (recorded in the release)")
	asJSON := fs.Bool("json", false, "print the release record as JSON")
	service, sig, err := serviceCommand(fs, &c, args)
	if err != nil {
		return err
	}
	if cur, err := sig.Release(ctx, service); err == nil && cur.Rollout != nil {
		fmt.Fprintf(env.Stderr, "aborting the rollout of %s %s at %s; its commander stops\n", service, cur.Build, cur.Rollout.Where())
	}
	r, err := sig.Rollback(ctx, service, whoami(), *reason)
	if err != nil {
		return err
	}
	_ = sig.AppendHistory(ctx, service, signal.HistoryEntry{By: whoami(), Event: "rollback", Build: r.Build, Seq: r.Seq, Outcome: "released", Detail: *reason}, signal.HistoryKeep)
	return printRelease(env, r, *asJSON, "rolled back")
}

func runBuilds(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "builds", "SERVICE", "List the published builds of SERVICE and which one is released.")
	var c consulFlags
	c.bind(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	service, sig, err := serviceCommand(fs, &c, args)
	if err != nil {
		return err
	}
	builds, err := sig.Builds(ctx, service)
	if err != nil {
		return err
	}
	rel, _ := sig.Release(ctx, service)
	if *asJSON {
		return printJSON(env.Stdout, map[string]any{"service": service, "builds": builds, "release": rel})
	}
	for _, b := range builds {
		mark := "  "
		if rel != nil && rel.Build == b {
			mark = "* "
		}
		fmt.Fprintln(env.Stdout, mark+b)
	}
	if len(builds) == 0 {
		fmt.Fprintf(env.Stdout, "no builds published for %s\n", service)
	}
	return nil
}

func runVersion(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "version", "", "Print the version.")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(env.Stdout, map[string]string{"version": versionString()})
	}
	fmt.Fprintln(env.Stdout, "shoal", versionString())
	return nil
}

func runLock(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "lock", "SERVICE --reason R",
		"Lock SERVICE against new deploys and rollouts (one already running goes on; `shoal deploy\n"+
			"--pause` stops it). Rollbacks stay allowed. `shoal unlock SERVICE` lifts it.")
	var c consulFlags
	c.bind(fs)
	reason := fs.String("reason", "", "why (required; shown to whoever tries to deploy)")
	service, sig, err := serviceCommand(fs, &c, args)
	if err != nil {
		return err
	}
	if *reason == "" {
		fs.Usage()
		return errUsage
	}
	if err := sig.Lock(ctx, service, whoami(), *reason); err != nil {
		return err
	}
	_ = sig.AppendHistory(ctx, service, signal.HistoryEntry{By: whoami(), Event: "lock", Detail: *reason}, signal.HistoryKeep)
	fmt.Fprintf(env.Stdout, "locked %s against deploys: %s\n", service, *reason)
	return nil
}

func runUnlock(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "unlock", "SERVICE", "Lift the deploy lock of SERVICE.")
	var c consulFlags
	c.bind(fs)
	service, sig, err := serviceCommand(fs, &c, args)
	if err != nil {
		return err
	}
	if err := sig.Unlock(ctx, service); err != nil {
		return err
	}
	_ = sig.AppendHistory(ctx, service, signal.HistoryEntry{By: whoami(), Event: "unlock"}, signal.HistoryKeep)
	fmt.Fprintf(env.Stdout, "unlocked %s\n", service)
	return nil
}

func runHistory(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "history", "SERVICE",
		"Show the deploy history of SERVICE, oldest first: deploys, rollouts, promotions, gate\n"+
			"failures, rollbacks, locks, with who, when, build, stage, gate values and outcome.")
	var c consulFlags
	c.bind(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	service, sig, err := serviceCommand(fs, &c, args)
	if err != nil {
		return err
	}
	hs, err := sig.History(ctx, service)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(env.Stdout, hs)
	}
	if len(hs) == 0 {
		fmt.Fprintf(env.Stdout, "no history for %s\n", service)
	}
	for _, h := range hs {
		line := fmt.Sprintf("%s  %-11s %-8s", h.At.Local().Format("2006-01-02 15:04:05"), h.Event, dash(h.Build))
		if h.Seq > 0 {
			line += fmt.Sprintf(" #%d", h.Seq)
		}
		if h.Stage != "" {
			line += " stage " + h.Stage
		}
		if h.Gate != "" {
			line += fmt.Sprintf(" gate %s = %s (limit %s)", h.Gate, h.Value, h.Limit)
		}
		if h.Outcome != "" {
			line += " → " + h.Outcome
		}
		if h.By != "" {
			line += "  by " + h.By
		}
		if h.Detail != "" {
			line += "  " + h.Detail
		}
		fmt.Fprintln(env.Stdout, line)
	}
	return nil
}

// now is the commander's clock: $SHOAL_NOW (RFC 3339) if set, for tests
// and dry runs of windows; the real time otherwise.
func now(env Env) time.Time {
	if v := env.Getenv("SHOAL_NOW"); v != "" {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			return t
		}
	}
	return time.Now()
}

// checkWindow refuses a deploy outside the service's window, unless forced
// (which the history records).
func checkWindow(ctx context.Context, env Env, sig *signal.Client, service string, force bool, reason string) error {
	w, err := sig.Window(ctx, service)
	if err != nil || w == nil {
		return err
	}
	t := now(env)
	if w.Open(t) {
		return nil
	}
	loc, _ := time.LoadLocation(w.TZ)
	at := t.In(loc).Format("Mon 15:04 MST")
	if !force {
		return fmt.Errorf("%s is outside its deploy window (%s; now %s); deploy inside it, or --force (recorded in the history)", service, w, at)
	}
	_ = sig.AppendHistory(ctx, service, signal.HistoryEntry{By: whoami(), Event: "override", Outcome: "forced",
		Detail: fmt.Sprintf("deployed outside the window %s at %s: %s", w, at, reason)}, signal.HistoryKeep)
	fmt.Fprintf(env.Stderr, "note: deploying outside the window of %s (%s; now %s), as forced\n", service, w, at)
	return nil
}

func runWindow(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "window", "SERVICE [--days mon-fri --hours 09:00-17:00 --tz Europe/Berlin | --clear]",
		"Show or set when SERVICE may be deployed. Outside the window `shoal deploy` is refused\n"+
			"unless --force (recorded in the history); rollbacks are always allowed.")
	var c consulFlags
	c.bind(fs)
	days := fs.String("days", "", "days, e.g. mon-fri or mon,wed (default every day)")
	hours := fs.String("hours", "", "local hours, e.g. 09:00-17:00 (22:00-02:00 spans midnight; default all day)")
	tz := fs.String("tz", "UTC", "IANA time zone of --hours")
	clear := fs.Bool("clear", false, "remove the window (deploy any time)")
	service, sig, err := serviceCommand(fs, &c, args)
	if err != nil {
		return err
	}
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "days" || f.Name == "hours" || f.Name == "tz" })
	switch {
	case *clear:
		if err := sig.ClearWindow(ctx, service); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "%s may be deployed any time\n", service)
		return nil
	case set:
		w, err := core.ParseWindow(*days, *hours, *tz)
		if err != nil {
			return err
		}
		if err := sig.SetWindow(ctx, service, w); err != nil {
			return err
		}
		_ = sig.AppendHistory(ctx, service, signal.HistoryEntry{By: whoami(), Event: "window", Detail: w.String()}, signal.HistoryKeep)
		fmt.Fprintf(env.Stdout, "%s may be deployed %s\n", service, w)
		return nil
	}
	w, err := sig.Window(ctx, service)
	if err != nil {
		return err
	}
	if w == nil {
		fmt.Fprintf(env.Stdout, "%s may be deployed any time\n", service)
		return nil
	}
	fmt.Fprintf(env.Stdout, "%s may be deployed %s (open now: %v)\n", service, w, w.Open(now(env)))
	return nil
}

// serviceCommand parses the arguments of a command that takes one SERVICE
// and talks to Consul (bind the consul flags to fs first).
func serviceCommand(fs *flag.FlagSet, c *consulFlags, args []string) (string, *signal.Client, error) {
	pos, err := interleave(fs, args)
	if err != nil {
		return "", nil, err
	}
	if len(pos) != 1 {
		fs.Usage()
		return "", nil, errUsage
	}
	if err := core.ValidName("service", pos[0]); err != nil {
		return "", nil, err
	}
	sig, err := c.client()
	return pos[0], sig, err
}
