package cli

import (
	"context"
	"fmt"
	"os"
	"os/user"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
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
	fs := newFlags(env, "deploy", "SERVICE BUILD",
		"Make BUILD the desired release of SERVICE: one check-and-set write of the release key in\n"+
			"Consul. Every agent running SERVICE pulls it from its peers, verifies it, drains and switches.\n"+
			"The build must have been published. Follow with `shoal status SERVICE`.")
	var c consulFlags
	c.bind(fs)
	reason := fs.String("reason", "", "why (recorded in the release)")
	asJSON := fs.Bool("json", false, "print the release record as JSON")
	pos, err := interleave(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fs.Usage()
		return errUsage
	}
	if err := core.ValidName("service", pos[0]); err != nil {
		return err
	}
	if err := core.ValidName("build", pos[1]); err != nil {
		return err
	}
	sig, err := c.client()
	if err != nil {
		return err
	}
	r, err := sig.Deploy(ctx, pos[0], pos[1], whoami(), *reason)
	if err != nil {
		return err
	}
	return printRelease(env, r, *asJSON, "deployed")
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
	pos, err := interleave(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	sig, err := c.client()
	if err != nil {
		return err
	}
	r, err := sig.Rollback(ctx, pos[0], whoami(), *reason)
	if err != nil {
		return err
	}
	return printRelease(env, r, *asJSON, "rolled back")
}

func runBuilds(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "builds", "SERVICE", "List the published builds of SERVICE and which one is released.")
	var c consulFlags
	c.bind(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := interleave(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	sig, err := c.client()
	if err != nil {
		return err
	}
	builds, err := sig.Builds(ctx, pos[0])
	if err != nil {
		return err
	}
	rel, _ := sig.Release(ctx, pos[0])
	if *asJSON {
		return printJSON(env.Stdout, map[string]any{"service": pos[0], "builds": builds, "release": rel})
	}
	for _, b := range builds {
		mark := "  "
		if rel != nil && rel.Build == b {
			mark = "* "
		}
		fmt.Fprintln(env.Stdout, mark+b)
	}
	if len(builds) == 0 {
		fmt.Fprintf(env.Stdout, "no builds published for %s\n", pos[0])
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
