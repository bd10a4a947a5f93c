// Package core holds the domain types every other Shoal package shares:
// service and build names, the build manifest published to Consul, the
// release record that says which build a service should run, and the
// per-host deploy states. It imports nothing of Shoal's.
package core

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Sentinel errors shared across packages. Check them with errors.Is.
var (
	// ErrInvalidName: a service or build name has characters outside [A-Za-z0-9._-].
	ErrInvalidName = errors.New("invalid name")
	// ErrInvalidManifest: a manifest is missing a field or contradicts itself.
	ErrInvalidManifest = errors.New("invalid manifest")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidName reports whether s is usable as a service or build name. Names
// become directory names and Consul key segments, so they are kept to a
// safe alphabet: letters, digits, '.', '_' and '-', at most 64 characters,
// not starting with punctuation.
func ValidName(kind, s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %s %q: use 1-64 of [A-Za-z0-9._-], starting with a letter or digit", ErrInvalidName, kind, s)
	}
	return nil
}

// Manifest describes one published build. It is stored as JSON at
// shoal/<service>/builds/<build> and never changes once written.
type Manifest struct {
	Service string `json:"service"`
	Build   string `json:"build"`
	// Size is the archive length in bytes.
	Size int64 `json:"size"`
	// SHA256 is the hex SHA-256 of the whole archive; hosts check it after
	// the transfer and before unpacking.
	SHA256 string `json:"sha256"`
	// InfoHash is the hex BitTorrent v1 info hash of the archive's torrent.
	InfoHash string `json:"info_hash"`
	// PieceLength is the torrent piece size in bytes.
	PieceLength int64 `json:"piece_length"`
	// MetaInfo is the bencoded torrent metainfo (base64 in JSON).
	MetaInfo []byte `json:"metainfo"`
	// Origin is the node that published the build and seeds it first.
	Origin string `json:"origin"`
	// Files is the number of entries in the archive; unpacking refuses more.
	Files int `json:"files"`
	// UnpackedSize is the total bytes of the regular files in the archive;
	// unpacking refuses more, and hosts check free space against it.
	UnpackedSize int64     `json:"unpacked_size"`
	PublishedAt  time.Time `json:"published_at"`
	// KeyID names the key that signed the manifest; Signature is its
	// ed25519 signature over every other field (see package trust).
	KeyID     string `json:"key_id,omitempty"`
	Signature []byte `json:"signature,omitempty"`
}

// Validate checks that the manifest is complete.
func (m *Manifest) Validate() error {
	if err := ValidName("service", m.Service); err != nil {
		return err
	}
	if err := ValidName("build", m.Build); err != nil {
		return err
	}
	switch {
	case m.Size <= 0:
		return fmt.Errorf("%w: %s/%s: size %d", ErrInvalidManifest, m.Service, m.Build, m.Size)
	case len(m.SHA256) != 64:
		return fmt.Errorf("%w: %s/%s: sha256 %q is not 64 hex digits", ErrInvalidManifest, m.Service, m.Build, m.SHA256)
	case len(m.InfoHash) != 40:
		return fmt.Errorf("%w: %s/%s: info hash %q is not 40 hex digits", ErrInvalidManifest, m.Service, m.Build, m.InfoHash)
	case len(m.MetaInfo) == 0:
		return fmt.Errorf("%w: %s/%s: no metainfo", ErrInvalidManifest, m.Service, m.Build)
	case m.PieceLength <= 0 || m.PieceLength > 64<<20:
		return fmt.Errorf("%w: %s/%s: piece length %d", ErrInvalidManifest, m.Service, m.Build, m.PieceLength)
	case m.Files < 0 || m.UnpackedSize < 0:
		return fmt.Errorf("%w: %s/%s: negative file count or unpacked size", ErrInvalidManifest, m.Service, m.Build)
	}
	if _, err := hex.DecodeString(m.SHA256); err != nil {
		return fmt.Errorf("%w: %s/%s: sha256 is not hex", ErrInvalidManifest, m.Service, m.Build)
	}
	if _, err := hex.DecodeString(m.InfoHash); err != nil {
		return fmt.Errorf("%w: %s/%s: info hash is not hex", ErrInvalidManifest, m.Service, m.Build)
	}
	return nil
}

// Release is the desired state of a service, stored as JSON at
// shoal/<service>/release. Writing it is a deploy.
type Release struct {
	Service string `json:"service"`
	// Build is the build every host should run.
	Build string `json:"build"`
	// Previous is the build that ran before; `shoal rollback` goes back to it.
	Previous string `json:"previous,omitempty"`
	// Seq increases by one on every deploy or rollback.
	Seq int64 `json:"seq"`
	// By and Reason say who changed it and why (free text).
	By     string    `json:"by,omitempty"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
	// Rollback is true when this release was written by `shoal rollback`.
	Rollback bool `json:"rollback,omitempty"`
	// Rollout, while set, rolls Build out in stages (see rollout.go):
	// hosts it has not reached yet keep running Previous, with Build
	// fetched and unpacked beside it.
	Rollout *Rollout `json:"rollout,omitempty"`
	// ModifyIndex is Consul's modify index of the key (not stored in the value).
	ModifyIndex uint64 `json:"-"`
}

// State is where one host is in deploying one service.
type State string

// The per-host, per-service deploy states.
const (
	StateIdle      State = "idle"      // nothing asked of this host yet
	StateFetching  State = "fetching"  // pulling the archive from the swarm
	StateVerifying State = "verifying" // checking SHA-256 and unpacking into cold
	StateReady     State = "ready"     // unpacked in releases/<build>, not live
	StateDraining  State = "draining"  // drain hook running
	StateActive    State = "active"    // current -> desired build, healthy
	StateFailed    State = "failed"    // the last attempt failed; LastError says why; live release untouched or restored
)

// MarshalManifest and UnmarshalManifest fix the wire form in one place.
func MarshalManifest(m *Manifest) ([]byte, error) { return json.Marshal(m) }

// UnmarshalManifest decodes and validates a manifest.
func UnmarshalManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// ErrInvalidRelease: a release record does not decode or names an invalid build.
var ErrInvalidRelease = errors.New("invalid release record")

// UnmarshalRelease decodes a release record (a Consul value, so hostile
// until proven otherwise) and checks its names.
func UnmarshalRelease(b []byte) (*Release, error) {
	var r Release
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: not a Shoal release record: %v", ErrInvalidRelease, err)
	}
	if err := ValidName("build", r.Build); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRelease, err)
	}
	if r.Previous != "" {
		if err := ValidName("previous build", r.Previous); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidRelease, err)
		}
	}
	if r.Rollout != nil {
		if err := r.Rollout.Validate(); err != nil {
			return nil, err
		}
	}
	return &r, nil
}

// Duration is a time.Duration that reads and writes as "1.5s" in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON accepts "1.5s" style strings.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"5s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
