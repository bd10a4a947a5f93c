package cli

import (
	"context"
	"fmt"

	"github.com/shoal-deploy/shoal/trust"
)

func runKeygen(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "keygen", "[--gossip | --token] [--out PATH]",
		"Make the secrets a fleet runs on.\n"+
			"  (default)  an ed25519 signing key pair: PATH.key (secret, mode 0600; for `shoal publish --key`)\n"+
			"             and PATH.pub (for every agent's --trusted-key / trusted_keys)\n"+
			"  --gossip   a 32-byte gossip key for every agent's --gossip-key (encrypts gossip,\n"+
			"             authenticates the peer API)\n"+
			"  --token    a control API token for --api-token / SHOAL_API_TOKEN\n"+
			"Secrets are written with mode 0600 and never overwrite a file. Without --out they are printed.")
	gossip := fs.Bool("gossip", false, "make a gossip key")
	token := fs.Bool("token", false, "make a control API token")
	out := fs.String("out", "", "where to write (the signing key pair: PATH.key and PATH.pub)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 || (*gossip && *token) {
		fs.Usage()
		return errUsage
	}
	secret := func(v, what string) error {
		if *out == "" {
			fmt.Fprintln(env.Stdout, v)
			return nil
		}
		if err := trust.WriteSecret(*out, v); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "wrote %s to %s (mode 0600)\n", what, *out)
		return nil
	}
	switch {
	case *gossip:
		k, err := trust.GenerateGossipKey()
		if err != nil {
			return err
		}
		return secret(k, "a gossip key")
	case *token:
		tok, err := trust.GenerateToken()
		if err != nil {
			return err
		}
		return secret(tok, "a control API token")
	}
	k, err := trust.GenerateSigningKey()
	if err != nil {
		return err
	}
	pub := k.Public()
	if *out == "" {
		fmt.Fprintf(env.Stdout, "%s\n%s\n", k, pub)
		return nil
	}
	if err := trust.WriteSecret(*out+".key", k.String()); err != nil {
		return err
	}
	if err := trust.WriteSecret(*out+".pub", pub.String()); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "wrote signing key %s.key (secret, mode 0600) and public key %s.pub (key id %s)\n"+
		"publishers: shoal publish --key @%s.key …   agents: --trusted-key @%s.pub\n", *out, *out, pub.ID(), *out, *out)
	return nil
}
