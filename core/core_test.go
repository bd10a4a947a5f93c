package core

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"web", true}, {"v1.2.3", true}, {"build_2026-11-26", true}, {"A", true},
		{"", false}, {".hidden", false}, {"-x", false}, {"a/b", false}, {"..", false},
		{"has space", false}, {strings.Repeat("a", 65), false}, {strings.Repeat("a", 64), true},
	} {
		err := ValidName("build", tc.name)
		if got := err == nil; got != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidName(%q) error %v is not ErrInvalidName", tc.name, err)
		}
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := &Manifest{Service: "web", Build: "v1", Size: 10, SHA256: strings.Repeat("a", 64),
		InfoHash: strings.Repeat("b", 40), PieceLength: 1 << 18, MetaInfo: []byte("d4:infoe"), Origin: "h1"}
	b, err := MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalManifest(b)
	if err != nil {
		t.Fatalf("UnmarshalManifest: %v", err)
	}
	if got.InfoHash != m.InfoHash || string(got.MetaInfo) != string(m.MetaInfo) {
		t.Errorf("round trip: got %+v, want %+v", got, m)
	}
	for name, mut := range map[string]func(*Manifest){
		"size":     func(m *Manifest) { m.Size = 0 },
		"sha":      func(m *Manifest) { m.SHA256 = "abc" },
		"infohash": func(m *Manifest) { m.InfoHash = "" },
		"metainfo": func(m *Manifest) { m.MetaInfo = nil },
		"build":    func(m *Manifest) { m.Build = "../x" },
	} {
		c := *m
		mut(&c)
		b, _ := json.Marshal(&c)
		if _, err := UnmarshalManifest(b); err == nil {
			t.Errorf("%s: bad manifest accepted", name)
		}
	}
	if _, err := UnmarshalManifest([]byte("{")); !errors.Is(err, ErrInvalidManifest) {
		t.Errorf("garbage: got %v, want ErrInvalidManifest", err)
	}
}

func TestDurationJSON(t *testing.T) {
	var d Duration
	if err := json.Unmarshal([]byte(`"1.5s"`), &d); err != nil || d.D() != 1500*time.Millisecond {
		t.Errorf("got %v, %v; want 1.5s", d.D(), err)
	}
	if err := json.Unmarshal([]byte(`15`), &d); err == nil {
		t.Error("a bare number was accepted as a duration")
	}
	b, _ := json.Marshal(Duration(2 * time.Minute))
	if string(b) != `"2m0s"` {
		t.Errorf("marshal = %s, want \"2m0s\"", b)
	}
}
