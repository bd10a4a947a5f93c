package trust

import (
	"net/http/httptest"
	"testing"
	"time"
)

// Peer API credentials are attacker-controlled headers: checking them
// never panics, and nothing but a MAC made with the key passes.
func FuzzPeerAuthCheck(f *testing.F) {
	key := []byte("0123456789abcdef0123456789abcdef")
	good := httptest.NewRequest("GET", "/v1/archive/web/v1", nil)
	NewPeerAuth([][]byte{key}, "host-1").Sign(good)
	f.Add("host-1", good.Header.Get(HeaderDate), good.Header.Get(HeaderAuth), "/v1/archive/web/v1")
	f.Add("", "", "", "/")
	f.Add("host-1", "-99999999999999999999", "zz", "/v1/peer/status")
	checker := NewPeerAuth([][]byte{key}, "host-2")
	f.Fuzz(func(t *testing.T, node, date, mac, path string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.URL.Path = path
		r.Header.Set(HeaderNode, node)
		r.Header.Set(HeaderDate, date)
		r.Header.Set(HeaderAuth, mac)
		got, err := checker.Check(r, time.Now())
		if err != nil {
			return
		}
		if want := checker.mac(checker.keys[0], r, node, date); mac != want || got != node {
			t.Fatalf("accepted node %q with mac %q (want %q)", node, mac, want)
		}
	})
}

func FuzzParseKeys(f *testing.F) {
	k, _ := GenerateSigningKey()
	f.Add(k.String())
	f.Add(k.Public().String())
	f.Add("shoal-ed25519:" + "AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		if p, err := ParsePublicKey(s); err == nil && len(p.ID()) != 16 {
			t.Fatal("bad key id")
		}
		_, _ = ParseSigningKey(s)
		_, _ = ParseGossipKey(s)
	})
}
