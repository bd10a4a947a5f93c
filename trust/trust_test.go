package trust

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-deploy/shoal/core"
)

func manifest() *core.Manifest {
	return &core.Manifest{Service: "web", Build: "v1", Size: 1000, SHA256: strings.Repeat("a", 64),
		InfoHash: strings.Repeat("b", 40), PieceLength: 1 << 18, MetaInfo: []byte("d4:infoe"), Origin: "h1",
		Files: 3, UnpackedSize: 900, PublishedAt: time.Unix(1700000000, 123).UTC()}
}

func TestKeysRoundTrip(t *testing.T) {
	k, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParseSigningKey(k.String())
	if err != nil || k2.Public().ID() != k.Public().ID() {
		t.Fatalf("signing key did not round-trip: %v", err)
	}
	p, err := ParsePublicKey(k.Public().String())
	if err != nil || p.ID() != k.Public().ID() || len(p.ID()) != 16 {
		t.Fatalf("public key did not round-trip: %v (id %q)", err, p.ID())
	}
	for _, bad := range []string{"", "shoal-ed25519:", "shoal-ed25519:!!!", k.String(), "ssh-ed25519 AAAA"} {
		if _, err := ParsePublicKey(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParsePublicKey(%q) = %v, want ErrBadKey", bad, err)
		}
	}
	if _, err := ParseSigningKey(k.Public().String()); !errors.Is(err, ErrBadKey) {
		t.Errorf("a public key parsed as a signing key: %v", err)
	}
}

// Every signed field matters: changing any one of them after signing
// makes verification fail; so do no signature and an untrusted key.
func TestVerify(t *testing.T) {
	k, _ := GenerateSigningKey()
	other, _ := GenerateSigningKey()
	kr, err := NewKeyring([]string{k.Public().String()})
	if err != nil {
		t.Fatal(err)
	}
	m := manifest()
	k.Sign(m)
	if err := kr.Verify(m); err != nil {
		t.Fatalf("good signature refused: %v", err)
	}
	tamper := map[string]func(*core.Manifest){
		"service": func(m *core.Manifest) { m.Service = "api" }, "build": func(m *core.Manifest) { m.Build = "v2" },
		"size": func(m *core.Manifest) { m.Size++ }, "sha256": func(m *core.Manifest) { m.SHA256 = strings.Repeat("c", 64) },
		"info hash": func(m *core.Manifest) { m.InfoHash = strings.Repeat("d", 40) }, "piece length": func(m *core.Manifest) { m.PieceLength *= 2 },
		"metainfo": func(m *core.Manifest) { m.MetaInfo = []byte("d4:infoi1ee") }, "origin": func(m *core.Manifest) { m.Origin = "evil" },
		"files": func(m *core.Manifest) { m.Files++ }, "unpacked size": func(m *core.Manifest) { m.UnpackedSize *= 100 },
		"time":      func(m *core.Manifest) { m.PublishedAt = m.PublishedAt.Add(time.Nanosecond) },
		"signature": func(m *core.Manifest) { m.Signature[0] ^= 1 },
	}
	for name, f := range tamper {
		c := *m
		c.Signature = append([]byte(nil), m.Signature...)
		f(&c)
		if err := kr.Verify(&c); !errors.Is(err, ErrBadSignature) {
			t.Errorf("tampered %s: %v, want ErrBadSignature", name, err)
		}
	}
	c := *m
	c.KeyID = other.Public().ID()
	if err := kr.Verify(&c); !errors.Is(err, ErrUntrustedKey) || !strings.Contains(err.Error(), c.KeyID) {
		t.Errorf("claimed other key: %v, want ErrUntrustedKey naming it", err)
	}
	o := manifest()
	other.Sign(o)
	if err := kr.Verify(o); !errors.Is(err, ErrUntrustedKey) {
		t.Errorf("untrusted key: %v", err)
	}
	if err := kr.Verify(manifest()); !errors.Is(err, ErrUnsigned) {
		t.Errorf("unsigned: %v", err)
	}
	// rotation: trust both, either verifies
	kr2, _ := NewKeyring([]string{k.Public().String(), other.Public().String()})
	if kr2.Verify(m) != nil || kr2.Verify(o) != nil {
		t.Error("a keyring of two keys refused one of them")
	}
}

func TestPeerAuth(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	a := NewPeerAuth([][]byte{key}, "host-1")
	b := NewPeerAuth([][]byte{key}, "host-2")
	wrong := NewPeerAuth([][]byte{[]byte("fedcba9876543210fedcba9876543210")}, "host-1")
	req := func(signer *PeerAuth, rng string) *http.Request {
		r := httptest.NewRequest("GET", "/v1/archive/web/v1", nil)
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		if signer != nil {
			signer.Sign(r)
		}
		return r
	}
	now := time.Now()
	if node, err := b.Check(req(a, "bytes=0-9"), now); err != nil || node != "host-1" {
		t.Fatalf("good request: %q, %v", node, err)
	}
	if _, err := b.Check(req(nil, ""), now); !errors.Is(err, ErrPeerAuth) {
		t.Errorf("unsigned request: %v", err)
	}
	if _, err := b.Check(req(wrong, ""), now); !errors.Is(err, ErrPeerAuth) {
		t.Errorf("other gossip key: %v", err)
	}
	r := req(a, "bytes=0-9")
	r.Header.Set("Range", "bytes=0-99999")
	if _, err := b.Check(r, now); !errors.Is(err, ErrPeerAuth) {
		t.Errorf("range changed after signing: %v", err)
	}
	r = req(a, "")
	r.Header.Set(HeaderNode, "host-3")
	if _, err := b.Check(r, now); !errors.Is(err, ErrPeerAuth) {
		t.Errorf("node renamed after signing: %v", err)
	}
	if _, err := b.Check(req(a, ""), now.Add(MaxClockSkew+time.Minute)); !errors.Is(err, ErrPeerAuth) {
		t.Errorf("stale request: %v", err)
	}
	// Rotation: a host that has the new key first still accepts the old
	// one, and a host with only the old key accepts the old signer.
	newKey := []byte("new-key-new-key-new-key-new-key!")
	rotated := NewPeerAuth([][]byte{newKey, key}, "host-3")
	if _, err := rotated.Check(req(a, ""), now); err != nil {
		t.Errorf("rotated host refused the old key: %v", err)
	}
	if _, err := b.Check(req(rotated, ""), now); !errors.Is(err, ErrPeerAuth) {
		t.Errorf("a host without the new key accepted it: %v", err)
	}
}

func TestParseGossipKeys(t *testing.T) {
	k1, _ := GenerateGossipKey()
	k2, _ := GenerateGossipKey()
	keys, err := ParseGossipKeys(k1 + ",\n " + k2 + "\n")
	if err != nil || len(keys) != 2 {
		t.Fatalf("two keys: %d, %v", len(keys), err)
	}
	if _, err := ParseGossipKeys(" , "); !errors.Is(err, ErrBadKey) {
		t.Errorf("no key: %v", err)
	}
	if _, err := ParseGossipKeys(k1 + ",nope"); !errors.Is(err, ErrBadKey) {
		t.Errorf("one bad key: %v", err)
	}
}

func TestTokenEqual(t *testing.T) {
	if !TokenEqual("secret-token-123", "secret-token-123") || TokenEqual("x", "secret-token-123") || TokenEqual("", "") {
		t.Error("TokenEqual wrong")
	}
}

// A key or token whose base64 starts with '/' is a value, not a path (the
// agent refused one generated gossip key in 64); a path to a missing file
// is still reported as a file that cannot be read.
func TestReadValueSlashKey(t *testing.T) {
	const key = "/Q7Qe1Cvvf/pcMAeVvoBY9LF3na1/IseH0sCxhwoyeY="
	if v, err := ReadValue(key); err != nil || v != key {
		t.Errorf("ReadValue(%q) = %q, %v; want the value itself", key, v, err)
	}
	if _, err := ParseGossipKeys(key); err != nil {
		t.Errorf("a gossip key starting with '/': %v", err)
	}
	if _, err := ReadValue("/etc/shoal-missing/gossip.key"); err == nil || !strings.Contains(err.Error(), "gossip.key") {
		t.Errorf("a missing key file: %v, want a read error naming it", err)
	}
	f := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(f, []byte(" "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, err := ReadValue(f); err != nil || v != key {
		t.Errorf("ReadValue(existing file) = %q, %v", v, err)
	}
}
