package core

import (
	"bytes"
	"strings"
	"testing"
)

// Manifests and release records come from Consul: whatever bytes arrive,
// decoding must not panic, and what it accepts must be valid and survive
// a round trip unchanged.
func FuzzUnmarshalManifest(f *testing.F) {
	good, _ := MarshalManifest(&Manifest{Service: "web", Build: "v1", Size: 10, SHA256: strings.Repeat("a", 64),
		InfoHash: strings.Repeat("b", 40), PieceLength: 1 << 18, MetaInfo: []byte("d4:infoe"), Origin: "h1",
		Files: 2, UnpackedSize: 5, KeyID: "0011223344556677", Signature: []byte{1, 2, 3}})
	for _, s := range [][]byte{good, []byte(`{}`), []byte(`null`), []byte(`{"service":"../x"}`),
		[]byte(`{"service":"web","build":"v1","size":-1}`), bytes.Replace(good, []byte(`"size":10`), []byte(`"size":1e99`), 1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := UnmarshalManifest(b)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted an invalid manifest: %v", err)
		}
		again, err := MarshalManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := UnmarshalManifest(again)
		if err != nil {
			t.Fatalf("re-decoding an accepted manifest: %v", err)
		}
		if a, _ := MarshalManifest(m2); !bytes.Equal(a, again) {
			t.Fatalf("round trip changed the manifest:\n%s\n%s", again, a)
		}
	})
}

func FuzzUnmarshalRelease(f *testing.F) {
	for _, s := range []string{`{"service":"web","build":"v2","previous":"v1","seq":3,"at":"2026-11-28T00:00:00Z"}`,
		`{"build":"../../etc"}`, `{"build":"v1","previous":"/etc"}`, `[]`, `{"build":"v1","seq":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := UnmarshalRelease(b)
		if err != nil {
			return
		}
		if ValidName("build", r.Build) != nil || (r.Previous != "" && ValidName("build", r.Previous) != nil) {
			t.Fatalf("accepted a release naming an invalid build: %+v", r)
		}
	})
}
