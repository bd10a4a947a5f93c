// Command shoal is Shoal's single binary: the agent daemon and the
// operator commands. All logic lives in package cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/shoal-deploy/shoal/cli"
)

func main() {
	// anacrolix/torrent picks mmap file I/O at init unless told otherwise,
	// and mmap grows RSS by every archive it touches. The choice is read
	// from the environment before main runs, so set it and re-exec once.
	if _, ok := os.LookupEnv("TORRENT_STORAGE_DEFAULT_FILE_IO"); !ok {
		if exe, err := os.Executable(); err == nil {
			env := append(os.Environ(), "TORRENT_STORAGE_DEFAULT_FILE_IO=classic")
			_ = syscall.Exec(exe, os.Args, env) // returns only on failure; carry on with mmap then
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}, os.Args[1:])
	stop()
	os.Exit(code)
}
