package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
)

func runPublish(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "publish", "--service NAME --build ID DIR",
		"Pack DIR (file modes, empty directories and symlinks kept) into one archive, hash it,\n"+
			"write its manifest to Consul and seed it from the local agent, which becomes the origin.\n"+
			"Nothing is deployed yet: run `shoal deploy SERVICE BUILD` next.")
	service := fs.String("service", "", "service name (required)")
	build := fs.String("build", "", "build id, e.g. a version or commit (required; never reused)")
	api := fs.String("api", apiDefault(env), "address of the local agent's API ($SHOAL_API)")
	asJSON := fs.Bool("json", false, "print the manifest as JSON")
	pos, err := interleave(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *service == "" || *build == "" {
		fs.Usage()
		return errUsage
	}
	if err := core.ValidName("service", *service); err != nil {
		return err
	}
	if err := core.ValidName("build", *build); err != nil {
		return err
	}
	dir, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	start := time.Now()
	var m core.Manifest
	err = newAPI(*api, 0).Do(ctx, "POST", "/v1/publish", agent.PublishRequest{Service: *service, Build: *build, Dir: dir}, &m)
	if err != nil {
		return err
	}
	if *asJSON {
		m.MetaInfo = nil
		return printJSON(env.Stdout, m)
	}
	fmt.Fprintf(env.Stdout, "published %s/%s from %s in %s\n  %d entries, %s (%d pieces of %s)\n  sha256 %s\n  seeding from %s\nnext: shoal deploy %s %s\n",
		m.Service, m.Build, dir, time.Since(start).Round(time.Millisecond), m.Files, HumanBytes(m.Size),
		(m.Size+m.PieceLength-1)/m.PieceLength, HumanBytes(m.PieceLength), m.SHA256, m.Origin, m.Service, m.Build)
	return nil
}
