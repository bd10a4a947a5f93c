package signal

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/fleet"
)

var consulAddr string

func TestMain(m *testing.M) { os.Exit(fleet.RunWithConsul(m, &consulAddr)) }

func client(t *testing.T) *Client {
	t.Helper()
	c, err := New(Config{Address: consulAddr, Prefix: "t-" + strings.ReplaceAll(t.Name(), "/", "-"), MinInterval: core.Duration(time.Millisecond)}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func manifest(build, sha string) *core.Manifest {
	return &core.Manifest{Service: "web", Build: build, Size: 1, SHA256: strings.Repeat(sha, 64),
		InfoHash: strings.Repeat("c", 40), PieceLength: 1, MetaInfo: []byte("x"), Origin: "h1"}
}

func TestPublishIsCreateOnly(t *testing.T) {
	c, ctx := client(t), context.Background()
	if err := c.PublishManifest(ctx, manifest("v1", "a")); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishManifest(ctx, manifest("v1", "a")); err != nil {
		t.Errorf("republishing identical content: %v, want nil", err)
	}
	if err := c.PublishManifest(ctx, manifest("v1", "b")); !errors.Is(err, ErrBuildExists) {
		t.Errorf("publishing different content under v1: %v, want ErrBuildExists", err)
	}
	m, err := c.Manifest(ctx, "web", "v1")
	if err != nil || m.SHA256 != strings.Repeat("a", 64) {
		t.Errorf("manifest after conflict = %v, %v; want the first one", m, err)
	}
}

func TestDeployRollbackRecords(t *testing.T) {
	c, ctx := client(t), context.Background()
	if _, err := c.Deploy(ctx, "web", "v1", "me", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("deploy of an unpublished build: %v, want ErrNotFound", err)
	}
	if _, err := c.Rollback(ctx, "web", "me", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("rollback before any deploy: %v, want ErrNotFound", err)
	}
	for _, b := range []string{"v1", "v2"} {
		if err := c.PublishManifest(ctx, manifest(b, "a")); err != nil {
			t.Fatal(err)
		}
	}
	r1, err := c.Deploy(ctx, "web", "v1", "me", "first")
	if err != nil || r1.Seq != 1 || r1.Previous != "" {
		t.Fatalf("deploy v1 = %+v, %v", r1, err)
	}
	if _, err := c.Rollback(ctx, "web", "me", ""); !errors.Is(err, ErrNoPrevious) {
		t.Errorf("rollback of the first release: %v, want ErrNoPrevious", err)
	}
	r2, err := c.Deploy(ctx, "web", "v2", "me", "")
	if err != nil || r2.Seq != 2 || r2.Previous != "v1" {
		t.Fatalf("deploy v2 = %+v, %v", r2, err)
	}
	rb, err := c.Rollback(ctx, "web", "me", "errors spiked")
	if err != nil || rb.Build != "v1" || rb.Previous != "v2" || !rb.Rollback || rb.Seq != 3 {
		t.Fatalf("rollback = %+v, %v", rb, err)
	}
	got, err := c.Release(ctx, "web")
	if err != nil || got.Build != "v1" || got.Reason != "errors spiked" || got.ModifyIndex == 0 {
		t.Errorf("release = %+v, %v", got, err)
	}
}

func TestConcurrentWriterIsAConflict(t *testing.T) {
	c, ctx := client(t), context.Background()
	for _, b := range []string{"v1", "v2"} {
		if err := c.PublishManifest(ctx, manifest(b, "a")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Deploy(ctx, "web", "v1", "a", ""); err != nil {
		t.Fatal(err)
	}
	// Another commander deploys between our read and our write.
	_, err := c.swapRelease(ctx, "web", func(cur *core.Release) (*core.Release, error) {
		if _, err := c.Deploy(ctx, "web", "v2", "b", ""); err != nil {
			t.Fatal(err)
		}
		return &core.Release{Service: "web", Build: "v1", Seq: cur.Seq + 1}, nil
	})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("got %v, want ErrConflict", err)
	}
	if r, _ := c.Release(ctx, "web"); r.Build != "v2" {
		t.Errorf("release = %s, want the other writer's v2 kept", r.Build)
	}
}

func TestWatchSeesEveryChange(t *testing.T) {
	c := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, b := range []string{"v1", "v2", "v3"} {
		if err := c.PublishManifest(ctx, manifest(b, "a")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Deploy(ctx, "web", "v1", "me", ""); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	got := make(chan struct{}, 10)
	done := make(chan error)
	go func() {
		done <- c.Watch(ctx, "web", func(r *core.Release) {
			mu.Lock()
			seen = append(seen, r.Build)
			mu.Unlock()
			got <- struct{}{}
		})
	}()
	wait := func(what string) {
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("watch did not report %s", what)
		}
	}
	wait("the existing release")
	// An unrelated key under the prefix must not fire the callback.
	kv := c.kv
	if _, err := kv.Put(&api.KVPair{Key: c.cfg.Prefix + "/web/other", Value: []byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"v2", "v3"} {
		if _, err := c.Deploy(ctx, "web", b, "me", ""); err != nil {
			t.Fatal(err)
		}
		wait(b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch returned %v after cancel, want nil", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(seen, ",") != "v1,v2,v3" {
		t.Errorf("watch saw %v, want v1,v2,v3 once each", seen)
	}
}

func TestUnreachableConsulSaysWhatToDo(t *testing.T) {
	c, err := New(Config{Address: "127.0.0.1:1"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Release(context.Background(), "web")
	if err == nil || !strings.Contains(err.Error(), "CONSUL_HTTP_ADDR") {
		t.Errorf("got %v, want a hint about CONSUL_HTTP_ADDR", err)
	}
}

func TestBackoffGrowsWithJitterAndCaps(t *testing.T) {
	var d time.Duration
	for i := 0; i < 20; i++ {
		next := nextBackoff(d, 5*time.Second)
		if next <= 0 || next > 5*time.Second {
			t.Fatalf("step %d: backoff %v out of (0, 5s]", i, next)
		}
		d = max(d*2, 250*time.Millisecond)
		d = min(d, 5*time.Second)
	}
}

func TestEnvironmentIsHonoured(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", consulAddr)
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	c, err := New(Config{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if c.Address() != consulAddr {
		t.Errorf("address %q, want CONSUL_HTTP_ADDR %q", c.Address(), consulAddr)
	}
}

// A junk value in the release key (written by hand, or by a broken tool)
// is replaced by the next deploy, kept for the record, and named; a
// rollback, which needs the record, says what to do instead.
func TestDeployReplacesUnreadableRelease(t *testing.T) {
	c, ctx := client(t), context.Background()
	if err := c.PublishManifest(ctx, manifest("v4", "d")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.kv.Put(&api.KVPair{Key: c.ReleaseKey("web"), Value: []byte(`{"build":"../../etc"}`)}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rollback(ctx, "web", "me", ""); err == nil || !strings.Contains(err.Error(), "deploy a build to replace it") {
		t.Errorf("rollback over junk: %v", err)
	}
	r, err := c.Deploy(ctx, "web", "v4", "me", "fix")
	if err != nil {
		t.Fatalf("deploy over an unreadable release: %v", err)
	}
	if r.Build != "v4" || !strings.Contains(r.Reason, "replaced an unreadable release record") {
		t.Errorf("release %+v", r)
	}
	got, err := c.Release(ctx, "web")
	if err != nil || got.Build != "v4" {
		t.Fatalf("release after deploy: %+v, %v", got, err)
	}
	keys, _, _ := c.kv.Keys(c.cfg.Prefix+"/web/unreadable/", "", nil)
	if len(keys) == 0 {
		t.Fatal("the unreadable value was not kept")
	}
	p, _, _ := c.kv.Get(keys[0], nil)
	if p == nil || string(p.Value) != `{"build":"../../etc"}` {
		t.Errorf("kept value %v", p)
	}
}
