package bench

import (
	"reflect"
	"testing"
)

// The model never beats the fluid bound, every host completes, the peer
// set bounds connections whatever N, and a seed gives the same figures.
func TestModel(t *testing.T) {
	cfg := ModelConfig{Hosts: []int{8, 200}, Size: 20 << 20, Up: 10e6, PeerSet: 4, Seed: 7}
	rs := Model(cfg)
	for _, r := range rs {
		if r.P50x < 1 || r.MaxX < r.P99x || r.P99x < r.P50x {
			t.Errorf("N=%d: completion %.2f/%.2f/%.2f × bound: below the bound or out of order", r.N, r.P50x, r.P99x, r.MaxX)
		}
		if r.MaxX > 3 {
			t.Errorf("N=%d: the last host took %.2f × the bound; a connected random graph should not", r.N, r.MaxX)
		}
		if r.DegreeMean < float64(cfg.PeerSet) || r.DegreeMean > 2*float64(cfg.PeerSet) {
			t.Errorf("N=%d: %.1f connections per host with a peer set of %d; want between 1× and 2× it", r.N, r.DegreeMean, cfg.PeerSet)
		}
		if r.OriginX < 1 {
			t.Errorf("N=%d: the origin sent %.2f × S: every piece must leave it once", r.N, r.OriginX)
		}
		if r.GossipMissed > r.N/100 {
			t.Errorf("N=%d: gossip missed %d members", r.N, r.GossipMissed)
		}
	}
	if rs[1].HavesPerHost > 2*rs[0].HavesPerHost*float64(rs[1].Pieces)/float64(rs[0].Pieces) {
		t.Errorf("HAVEs per host grew with N beyond the pieces: %.0f at N=8, %.0f at N=200", rs[0].HavesPerHost, rs[1].HavesPerHost)
	}
	if again := Model(cfg); !reflect.DeepEqual(rs, again) {
		t.Error("the same seed gave different figures")
	}
}

// With no peer set given, the model uses the agent's default for each
// fleet size, so its figures describe the fleet as shipped.
func TestModelFollowsTheAgentsPeerSet(t *testing.T) {
	rs := Model(ModelConfig{Hosts: []int{20, 200}, Size: 20 << 20, Up: 10e6, Seed: 7})
	for i, want := range []int{5, 7} {
		r := rs[i]
		if r.PeerSet != want {
			t.Errorf("N=%d: peer set %d; want the agent's default %d", r.N, r.PeerSet, want)
		}
		if r.DegreeMean < float64(want) || r.DegreeMean > 2*float64(want) {
			t.Errorf("N=%d: %.1f connections per host with a peer set of %d; want between 1× and 2× it", r.N, r.DegreeMean, want)
		}
	}
}
