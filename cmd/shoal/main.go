// Command shoal is Shoal's single binary: the agent daemon and the
// operator commands. All logic lives in package cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/shoal-deploy/shoal/cli"
	"github.com/shoal-deploy/shoal/swarm"
)

func main() {
	swarm.ExecWithClassicFileIO() // before anything else: the engine reads it at init
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}, os.Args[1:])
	stop()
	os.Exit(code)
}
