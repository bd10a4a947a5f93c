// Package trust is Shoal's trust model in one place, so it can be audited
// in one read: who may publish a build (ed25519 signing keys and the list
// of trusted public keys every agent holds), who is a fleet member (the
// gossip key, which also keys the HMAC that authenticates requests between
// agents), and who may drive an agent (the control API token). The threat
// table in docs/SECURITY.md names the check here that stops each attacker.
//
// Formats, all one line of text:
//
//	signing key     shoal-sign-ed25519:<base64 32-byte seed>     (keep secret, mode 0600)
//	public key      shoal-ed25519:<base64 32-byte public key>    (config: trusted_keys)
//	gossip key      <base64 32 bytes>                            (memberlist's AES-256 key)
//	api token       any string of 16+ printable bytes
//
// A key id is the first 8 bytes of the SHA-256 of the public key, in hex;
// status and errors name keys by it.
package trust

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/shoal-deploy/shoal/core"
)

// Sentinel errors; check with errors.Is.
var (
	// ErrUnsigned: a manifest carries no signature.
	ErrUnsigned = errors.New("build is not signed")
	// ErrUntrustedKey: the signing key is not in this agent's trusted keys.
	ErrUntrustedKey = errors.New("build is signed by a key this agent does not trust")
	// ErrBadSignature: the signature does not match the manifest (tampered, or signed by another key).
	ErrBadSignature = errors.New("build signature does not verify")
	// ErrBadKey: a key or token does not parse.
	ErrBadKey = errors.New("bad key")
)

const (
	privPrefix = "shoal-sign-ed25519:"
	pubPrefix  = "shoal-ed25519:"
)

// SigningKey signs manifests. Only the people (or CI) who publish hold one.
type SigningKey struct{ priv ed25519.PrivateKey }

// PublicKey verifies manifests; agents list the ones they trust.
type PublicKey struct{ pub ed25519.PublicKey }

// GenerateSigningKey makes a new ed25519 key pair.
func GenerateSigningKey() (SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SigningKey{}, fmt.Errorf("trust: generate key: %w", err)
	}
	return SigningKey{priv}, nil
}

// String is the key's file form (secret).
func (k SigningKey) String() string {
	return privPrefix + base64.StdEncoding.EncodeToString(k.priv.Seed())
}

// Public is the key's public half.
func (k SigningKey) Public() PublicKey { return PublicKey{k.priv.Public().(ed25519.PublicKey)} }

// String is the public key's config form.
func (p PublicKey) String() string { return pubPrefix + base64.StdEncoding.EncodeToString(p.pub) }

// ID names the key in status lines and errors.
func (p PublicKey) ID() string {
	sum := sha256.Sum256(p.pub)
	return hex.EncodeToString(sum[:8])
}

// ParseSigningKey reads a signing key's file form.
func ParseSigningKey(s string) (SigningKey, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, privPrefix) {
		return SigningKey{}, fmt.Errorf("trust: %w: a signing key starts with %q (make one with `shoal keygen`)", ErrBadKey, privPrefix)
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, privPrefix))
	if err != nil || len(seed) != ed25519.SeedSize {
		return SigningKey{}, fmt.Errorf("trust: %w: signing key is not %d base64 bytes", ErrBadKey, ed25519.SeedSize)
	}
	return SigningKey{ed25519.NewKeyFromSeed(seed)}, nil
}

// ParsePublicKey reads a public key's config form.
func ParsePublicKey(s string) (PublicKey, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, pubPrefix) {
		return PublicKey{}, fmt.Errorf("trust: %w: public key %q does not start with %q (the .pub file `shoal keygen` wrote)", ErrBadKey, clip(s), pubPrefix)
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, pubPrefix))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return PublicKey{}, fmt.Errorf("trust: %w: public key %q is not %d base64 bytes", ErrBadKey, clip(s), ed25519.PublicKeySize)
	}
	return PublicKey{ed25519.PublicKey(b)}, nil
}

func clip(s string) string {
	if len(s) > 24 {
		return s[:24] + "…"
	}
	return s
}

// ReadValue returns v itself, or the trimmed content of the file v names
// when v starts with '@' or is an absolute path to a file (see below). Config values
// for keys and tokens take either form.
func ReadValue(v string) (string, error) {
	path := ""
	switch {
	case strings.HasPrefix(v, "@"):
		path = v[1:]
	case filepath.IsAbs(v):
		// A base64 key or token may start with '/' (one generated gossip
		// key in 64 does), and such a value was read as a path and
		// refused: an absolute value is a path when that file exists or
		// the value cannot be base64 (it holds a '.', say),
		// so a missing key file is still reported as one.
		if _, err := os.Stat(v); err == nil || strings.ContainsFunc(v, notBase64) {
			path = v
		}
	}
	if path == "" {
		return strings.TrimSpace(v), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("trust: read %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// notBase64 is true for a rune no base64 alphabet (standard or URL) has.
func notBase64(r rune) bool {
	return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("+/=-_", r))
}

// signedFields is what a signature covers: every manifest field but the
// signature itself, the metainfo by its SHA-256. Field names and order are
// fixed here; JSON escaping keeps them unambiguous whatever a name holds.
type signedFields struct {
	Domain       string `json:"domain"`
	Service      string `json:"service"`
	Build        string `json:"build"`
	Size         int64  `json:"size"`
	SHA256       string `json:"sha256"`
	InfoHash     string `json:"info_hash"`
	PieceLength  int64  `json:"piece_length"`
	MetaInfo     string `json:"metainfo_sha256"`
	Origin       string `json:"origin"`
	Files        int    `json:"files"`
	UnpackedSize int64  `json:"unpacked_size"`
	PublishedAt  int64  `json:"published_at_unix_nano"`
	KeyID        string `json:"key_id"`
}

func signedBytes(m *core.Manifest) []byte {
	mi := sha256.Sum256(m.MetaInfo)
	b, _ := json.Marshal(signedFields{Domain: "shoal manifest v1", Service: m.Service, Build: m.Build, Size: m.Size,
		SHA256: strings.ToLower(m.SHA256), InfoHash: strings.ToLower(m.InfoHash), PieceLength: m.PieceLength,
		MetaInfo: hex.EncodeToString(mi[:]), Origin: m.Origin, Files: m.Files, UnpackedSize: m.UnpackedSize,
		PublishedAt: m.PublishedAt.UnixNano(), KeyID: m.KeyID})
	return b
}

// Sign signs m in place (sets KeyID and Signature).
func (k SigningKey) Sign(m *core.Manifest) {
	m.KeyID = k.Public().ID()
	m.Signature = ed25519.Sign(k.priv, signedBytes(m))
}

// Keyring is the set of public keys an agent trusts. Several keys let a
// fleet rotate: trust the new key everywhere, sign with it, then drop the old.
type Keyring struct{ keys map[string]PublicKey }

// NewKeyring parses public keys (each a value or a file, see ReadValue).
func NewKeyring(values []string) (*Keyring, error) {
	kr := &Keyring{keys: map[string]PublicKey{}}
	for _, v := range values {
		s, err := ReadValue(v)
		if err != nil {
			return nil, err
		}
		p, err := ParsePublicKey(s)
		if err != nil {
			return nil, err
		}
		kr.keys[p.ID()] = p
	}
	return kr, nil
}

// Len is how many keys are trusted.
func (kr *Keyring) Len() int { return len(kr.keys) }

// IDs lists the trusted key ids.
func (kr *Keyring) IDs() []string {
	out := make([]string, 0, len(kr.keys))
	for id := range kr.keys {
		out = append(out, id)
	}
	return out
}

// Verify checks m's signature against the trusted keys. The error names
// the build and the key id, and says what to do.
func (kr *Keyring) Verify(m *core.Manifest) error {
	what := m.Service + "/" + m.Build
	if len(m.Signature) == 0 {
		return fmt.Errorf("trust: %s: %w; publish it with a signing key (`shoal publish --key`)", what, ErrUnsigned)
	}
	p, ok := kr.keys[m.KeyID]
	if !ok {
		return fmt.Errorf("trust: %s: %w (key %s); add its public key to trusted_keys if it is yours", what, ErrUntrustedKey, orDash(m.KeyID))
	}
	if !ed25519.Verify(p.pub, signedBytes(m), m.Signature) {
		return fmt.Errorf("trust: %s: %w with key %s: the manifest was changed after signing; republish under a new build name", what, ErrBadSignature, m.KeyID)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// GenerateGossipKey makes a new 32-byte gossip key in its text form.
func GenerateGossipKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("trust: generate gossip key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// GenerateToken makes a control API token: 24 random bytes, URL-safe base64.
func GenerateToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("trust: generate token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// ParseGossipKey reads a gossip key (base64 of 16, 24 or 32 bytes, as memberlist takes).
func ParseGossipKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || (len(b) != 16 && len(b) != 24 && len(b) != 32) {
		return nil, fmt.Errorf("trust: %w: gossip key must be base64 of 16, 24 or 32 bytes (make one with `shoal keygen --gossip`)", ErrBadKey)
	}
	return b, nil
}

// ParseGossipKeys reads one or more gossip keys separated by commas or
// whitespace; the first is the one in use, the others are still accepted
// (rotation: see docs/SECURITY.md).
func ParseGossipKeys(s string) ([][]byte, error) {
	var keys [][]byte
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' || r == '\r' }) {
		k, err := ParseGossipKey(f)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("trust: %w: no gossip key", ErrBadKey)
	}
	return keys, nil
}

// TokenEqual compares a presented token with the expected one in
// constant time. An empty expected token never matches.
func TokenEqual(got, want string) bool {
	if want == "" {
		return false
	}
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// WriteSecret writes a secret to path with mode 0600, refusing to overwrite.
func WriteSecret(path, value string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("trust: write %s: %w", path, err)
	}
	_, err = f.WriteString(value + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("trust: write %s: %w", path, err)
	}
	return nil
}
