package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/trust"
)

func runPublish(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "publish", "--service NAME --build ID [--key KEY] DIR",
		"Pack DIR (file modes, empty directories and symlinks kept) into one archive on the local agent,\n"+
			"which hashes it and becomes the origin; sign the manifest with your key here (the agent never\n"+
			"sees it); the agent checks the signature, writes the manifest to Consul and seeds the build.\n"+
			"Agents run only builds signed by a key they trust. Nothing is deployed yet: run\n"+
			"`shoal deploy SERVICE BUILD` next.")
	service := fs.String("service", "", "service name (required)")
	build := fs.String("build", "", "build id, e.g. a version or commit (required; never reused)")
	api := fs.String("api", apiDefault(env), "address of the local agent's control API ($SHOAL_API)")
	key := fs.String("key", env.Getenv("SHOAL_SIGNING_KEY"), "signing key from `shoal keygen`: the key or @FILE ($SHOAL_SIGNING_KEY)")
	asJSON := fs.Bool("json", false, "print the manifest as JSON")
	allowEmpty := fs.Bool("allow-empty", false, "publish an empty directory (refused otherwise)")
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
	var signer *trust.SigningKey
	if *key != "" {
		v, err := trust.ReadValue(*key)
		if err != nil {
			return err
		}
		k, err := trust.ParseSigningKey(v)
		if err != nil {
			return err
		}
		signer = &k
	} else {
		fmt.Fprintln(env.Stderr, "warning: no signing key (--key or $SHOAL_SIGNING_KEY): publishing unsigned, which only agents in --insecure-dev mode accept")
	}
	dir, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	c, err := newAPI(env, *api, 0)
	if err != nil {
		return err
	}
	start := time.Now()
	m, already, err := c.Publish(ctx, agent.PublishRequest{Service: *service, Build: *build, Dir: dir, AllowEmpty: *allowEmpty}, signer)
	if err != nil {
		return err
	}
	verb := "published"
	if already {
		verb = "already published (same content)"
	}
	if *asJSON {
		m.MetaInfo = nil
		return printJSON(env.Stdout, m)
	}
	signed := "UNSIGNED (dev mode only)"
	if len(m.Signature) > 0 {
		signed = "signed by key " + m.KeyID
	}
	fmt.Fprintf(env.Stdout, "%s %s/%s from %s in %s\n  %d entries, %s unpacked, archive %s (%d pieces of %s)\n  sha256 %s\n  %s; seeding from %s\nnext: shoal deploy %s %s\n",
		verb, m.Service, m.Build, dir, time.Since(start).Round(time.Millisecond), m.Files, HumanBytes(m.UnpackedSize), HumanBytes(m.Size),
		(m.Size+m.PieceLength-1)/m.PieceLength, HumanBytes(m.PieceLength), m.SHA256, signed, m.Origin, m.Service, m.Build)
	return nil
}
