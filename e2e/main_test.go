// Package e2e runs Shoal the way an operator does: it builds the real
// `shoal` binary from this tree, starts a real Consul dev agent (bin/consul,
// built by `make consul`) and several `shoal agent` processes on their own
// loopback addresses, and drives them with the real CLI.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/cli"
	"github.com/shoal-deploy/shoal/fleet"
)

var shoalBin, consulBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shoal-e2e-bin-")
	if err != nil {
		panic(err)
	}
	shoalBin = filepath.Join(dir, "shoal")
	build := exec.Command("go", "build", "-o", shoalBin, "./cmd/shoal")
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building shoal: %v\n%s", err, out)
		os.Exit(1)
	}
	consulBin = os.Getenv("SHOAL_CONSUL_BIN")
	if consulBin == "" {
		consulBin, _ = filepath.Abs("../bin/consul")
	}
	if _, err := os.Stat(consulBin); err != nil {
		fmt.Fprintf(os.Stderr, "no consul binary at %s: run `make consul` (or set SHOAL_CONSUL_BIN)\n", consulBin)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startFleet starts Consul and n agents on 127.0.<netOctet>.2… and stops them when t ends.
func startFleet(t *testing.T, n, netOctet int, args func(i int) []string) *fleet.Fleet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, err := fleet.Start(ctx, fleet.Options{ShoalBin: shoalBin, ConsulBin: consulBin, N: n,
		Net: fmt.Sprintf("127.0.%d", netOctet), Dir: t.TempDir(), Args: args})
	if err != nil {
		t.Fatalf("start fleet: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, a := range f.Agents {
				b, _ := os.ReadFile(a.Log)
				t.Logf("--- log of %s (tail) ---\n%s", a.Spec.Node, tailLines(string(b), 30))
			}
		}
		f.Stop()
	})
	waitMembers(t, f, n)
	return f
}

// apiGet returns the body of a GET of path on a's control API.
func apiGet(t *testing.T, f *fleet.Fleet, a *fleet.Agent, path string) string {
	t.Helper()
	var b bytes.Buffer
	c := agent.NewClient(a.API, 30*time.Second).WithToken(f.Secrets.Token())
	if err := c.Download(context.Background(), path, &b); err != nil {
		t.Fatalf("%s: GET %s: %v", a.Spec.Node, path, err)
	}
	return b.String()
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func shoal(t *testing.T, f *fleet.Fleet, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := f.Shoal(ctx, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// status returns every host's view of service, by node name, via `shoal status --json`.
func status(t *testing.T, f *fleet.Fleet, service string) map[string]*agent.ServiceStatus {
	t.Helper()
	var rows []cli.HostRow
	if err := json.Unmarshal([]byte(shoal(t, f, "status", service, "--json")), &rows); err != nil {
		t.Fatalf("status json: %v", err)
	}
	out := map[string]*agent.ServiceStatus{}
	for _, r := range rows {
		if r.Service == nil {
			t.Fatalf("host %s unreachable: %s", r.Node, r.Error)
		}
		out[r.Node] = r.Service
	}
	return out
}

func waitMembers(t *testing.T, f *fleet.Fleet, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var rows []cli.HostRow
		out, err := f.Shoal(context.Background(), "status", "--json")
		if err == nil && json.Unmarshal([]byte(out), &rows) == nil {
			reach := 0
			for _, r := range rows {
				if r.Error == "" {
					reach++
				}
			}
			if reach == n && len(rows) == n {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("fleet of %d did not converge", n)
}

// waitSettled waits (with `shoal status --wait`) until every host is active
// on the desired build or failed, and returns the statuses.
func waitSettled(t *testing.T, f *fleet.Fleet, service string) (map[string]*agent.ServiceStatus, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, err := f.Shoal(ctx, "status", service, "--wait", "--json", "--timeout", "4m")
	return status(t, f, service), err
}

// makeTree writes a build tree with random content of about size bytes,
// executable files, an empty dir and symlinks.
func makeTree(t *testing.T, dir string, size int, tag string) {
	t.Helper()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "static", "empty"), 0o750))
	blob := make([]byte, size)
	_, _ = rand.Read(blob)
	must(os.WriteFile(filepath.Join(dir, "static", "blob.bin"), blob, 0o644))
	must(os.WriteFile(filepath.Join(dir, "bin", "app"), []byte("#!/bin/sh\necho "+tag+"\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "VERSION"), []byte(tag+"\n"), 0o444))
	must(os.Symlink("bin/app", filepath.Join(dir, "run")))
	must(os.Symlink("../VERSION", filepath.Join(dir, "static", "version")))
}

// sameTree fails unless got mirrors want: names, types, modes, contents, link targets.
func sameTree(t *testing.T, want, got string) {
	t.Helper()
	type ent struct {
		mode fs.FileMode
		data string
	}
	read := func(root string) map[string]ent {
		m := map[string]ent{}
		root, err := filepath.EvalSymlinks(root) // `current` is a symlink
		if err != nil {
			t.Fatal(err)
		}
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if rel == "." {
				return nil
			}
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			e := ent{mode: fi.Mode()}
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				e.data, _ = os.Readlink(p)
			case fi.Mode().IsRegular():
				b, _ := os.ReadFile(p)
				e.data = string(b)
			}
			m[rel] = e
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	w, g := read(want), read(got)
	if len(w) != len(g) {
		t.Errorf("%s has %d entries, want %d", got, len(g), len(w))
	}
	for k, we := range w {
		ge, ok := g[k]
		switch {
		case !ok:
			t.Errorf("%s: missing %s", got, k)
		case ge.mode != we.mode:
			t.Errorf("%s/%s: mode %v, want %v", got, k, ge.mode, we.mode)
		case ge.data != we.data:
			t.Errorf("%s/%s: content differs (%d bytes, want %d)", got, k, len(ge.data), len(we.data))
		}
	}
}

// publishBuild makes a tree of about size bytes and publishes it as
// web/<build>; it returns the tree.
func publishBuild(t *testing.T, f *fleet.Fleet, build string, size int) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), build)
	makeTree(t, src, size, build)
	shoal(t, f, "publish", "--service", "web", "--build", build, src)
	return src
}
