package signal

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/fleet"
)

// A Consul restarted empty (data lost, or restored from an old snapshot)
// starts its indexes low again. The watch must see the next release at
// once, not after its blocking query's wait time (set to 10 minutes here,
// so only that behaviour can make the test wait), and a release that
// happens to reuse the index of one already seen is still a new release.
func TestWatchAcrossConsulDataLoss(t *testing.T) {
	bin, _ := filepath.Abs("../bin/consul")
	if v := os.Getenv("SHOAL_CONSUL_BIN"); v != "" {
		bin = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cons, err := fleet.StartConsul(ctx, bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Stop()
	c, err := New(Config{Address: cons.Addr, WaitTime: core.Duration(10 * time.Minute), MinInterval: core.Duration(time.Millisecond),
		MaxBackoff: core.Duration(500 * time.Millisecond)}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	kv := func() *api.KV {
		cl, err := api.NewClient(&api.Config{Address: cons.Addr})
		if err != nil {
			t.Fatal(err)
		}
		return cl.KV()
	}
	put := func(key, value string) uint64 {
		t.Helper()
		k := kv()
		for i := 0; ; i++ {
			if _, err := k.Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err == nil {
				break
			} else if i > 100 {
				t.Fatalf("put %s: %v", key, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		p, _, err := k.Get(key, nil)
		if err != nil || p == nil {
			t.Fatalf("get %s: %v", key, err)
		}
		return p.ModifyIndex
	}
	got := make(chan *core.Release, 10)
	go func() { _ = c.Watch(ctx, "web", func(r *core.Release) { got <- r }) }()
	expect := func(build string) *core.Release {
		t.Helper()
		select {
		case r := <-got:
			if r == nil && build == "" {
				return nil
			}
			if r == nil || r.Build != build {
				t.Fatalf("watch saw %+v, want %q", r, build)
			}
			return r
		case <-time.After(time.Minute):
			t.Fatalf("the watch did not see %s within a minute (its wait time is 10)", build)
			return nil
		}
	}
	for i := 0; i < 40; i++ { // push the index up, as a long-lived Consul would be
		put("filler", time.Now().String())
	}
	put("shoal/web/release", `{"service":"web","build":"v1","seq":1}`)
	old := expect("v1")

	// Data lost; the next release lands on exactly the index of the one
	// seen last (a watch comparing indexes alone skipped it).
	if err := cons.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	expect("") // the key is gone: said once, as nil
	for put("filler", time.Now().String()) < old.ModifyIndex-1 {
	}
	if idx := put("shoal/web/release", `{"service":"web","build":"v2","seq":1}`); idx != old.ModifyIndex {
		t.Logf("could not land on index %d exactly (got %d); checking only that v2 is seen", old.ModifyIndex, idx)
	}
	v2 := expect("v2")

	// Data lost again; the next release's index is far below the last
	// one seen (a blocking query with the old index sat out its wait time).
	if err := cons.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	expect("")
	idx := put("shoal/web/release", `{"service":"web","build":"v3","seq":1}`)
	if idx >= v2.ModifyIndex {
		t.Fatalf("the restarted Consul's index %d is not below the old %d; the test proves nothing", idx, v2.ModifyIndex)
	}
	expect("v3")
}
