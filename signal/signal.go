// Package signal is Shoal's link to Consul: it publishes build manifests,
// writes the release key that is a deploy, and watches that key with
// hand-rolled blocking queries so every agent learns of a deploy within
// moments.
//
// Key layout (the prefix defaults to "shoal"):
//
//	shoal/<service>/builds/<build>   JSON core.Manifest, written once by `shoal publish`
//	shoal/<service>/release          JSON core.Release, the build every host should run
//
// Every write is check-and-set: a manifest is only created, never
// overwritten, and a release is replaced only if nobody changed it since it
// was read, so two deploy commanders never silently clobber each other.
//
// The Consul client honours the usual environment: CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT,
// CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME. Explicit config wins.
package signal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
)

// Sentinel errors; check with errors.Is.
var (
	// ErrNotFound: the key does not exist (no such build, or never deployed).
	ErrNotFound = errors.New("not found in Consul")
	// ErrConflict: a check-and-set write lost a race with another writer.
	ErrConflict = errors.New("changed concurrently in Consul")
	// ErrBuildExists: a different build was already published under that name.
	ErrBuildExists = errors.New("build already published with different content")
	// ErrNoPrevious: rollback asked for, but the release records no previous build.
	ErrNoPrevious = errors.New("no previous build to roll back to")
)

// Config says how to reach Consul and how to watch it.
type Config struct {
	// Address is Consul's HTTP address (host:port or URL). Empty: CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Address string `json:"address,omitempty"`
	// Token is the ACL token. Empty: CONSUL_HTTP_TOKEN.
	Token string `json:"token,omitempty"`
	// Prefix is the KV prefix under which Shoal keeps its keys. Default "shoal".
	Prefix string `json:"prefix,omitempty"`
	// WaitTime is how long one blocking query may wait on the server. Default 5m.
	WaitTime core.Duration `json:"wait_time,omitempty"`
	// MinInterval is the least time between two blocking queries, so a
	// flapping key cannot make every agent hammer Consul. Default 50ms.
	MinInterval core.Duration `json:"min_interval,omitempty"`
	// MaxBackoff caps the wait after errors (doubling with jitter from 250ms). Default 30s.
	MaxBackoff core.Duration `json:"max_backoff,omitempty"`
}

func (c *Config) applyDefaults() {
	if c.Prefix == "" {
		c.Prefix = "shoal"
	}
	if c.WaitTime == 0 {
		c.WaitTime = core.Duration(5 * time.Minute)
	}
	if c.MinInterval == 0 {
		c.MinInterval = core.Duration(50 * time.Millisecond)
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = core.Duration(30 * time.Second)
	}
}

// Validate reports config errors.
func (c Config) Validate() error {
	if strings.ContainsAny(c.Prefix, " ") || strings.HasPrefix(c.Prefix, "/") || strings.HasSuffix(c.Prefix, "/") {
		return fmt.Errorf("signal: prefix %q: no spaces and no leading or trailing '/'", c.Prefix)
	}
	if c.WaitTime < 0 || c.MinInterval < 0 || c.MaxBackoff < 0 {
		return errors.New("signal: durations must not be negative")
	}
	return nil
}

// Client reads and writes Shoal's keys in Consul.
type Client struct {
	cfg  Config
	kv   *api.KV
	cl   *api.Client
	log  zerolog.Logger
	addr string
}

// New makes a client. It does not contact Consul.
func New(cfg Config, log zerolog.Logger) (*Client, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ac := api.DefaultConfig() // reads CONSUL_HTTP_* env
	if cfg.Address != "" {
		ac.Address = cfg.Address
		if strings.HasPrefix(cfg.Address, "https://") {
			ac.Scheme = "https"
			ac.Address = strings.TrimPrefix(cfg.Address, "https://")
		} else {
			ac.Address = strings.TrimPrefix(cfg.Address, "http://")
		}
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
	}
	cl, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("signal: consul client for %s: %w", ac.Address, err)
	}
	return &Client{cfg: cfg, kv: cl.KV(), cl: cl, log: log, addr: ac.Address}, nil
}

// Address is the Consul address in use (for messages).
func (c *Client) Address() string { return c.addr }

// ManifestKey and ReleaseKey give the documented key names.
func (c *Client) ManifestKey(service, build string) string {
	return c.cfg.Prefix + "/" + service + "/builds/" + build
}

// ReleaseKey is the key whose change is a deploy.
func (c *Client) ReleaseKey(service string) string { return c.cfg.Prefix + "/" + service + "/release" }

func (c *Client) unreachable(op string, err error) error {
	return fmt.Errorf("signal: %s: consul at %s: %w (is Consul running? set --consul or CONSUL_HTTP_ADDR)", op, c.addr, err)
}

// PublishManifest stores a new build's manifest. Publishing the same
// content again is a no-op; different content under an existing name is
// ErrBuildExists (publish under a new build name instead).
func (c *Client) PublishManifest(ctx context.Context, m *core.Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	b, err := core.MarshalManifest(m)
	if err != nil {
		return err
	}
	key := c.ManifestKey(m.Service, m.Build)
	ok, _, err := c.kv.CAS(&api.KVPair{Key: key, Value: b, ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return c.unreachable("publish "+key, err)
	}
	if ok {
		return nil
	}
	old, err := c.Manifest(ctx, m.Service, m.Build)
	if err != nil {
		return fmt.Errorf("signal: publish %s: key exists but cannot be read: %w", key, err)
	}
	if old.SHA256 == m.SHA256 && old.InfoHash == m.InfoHash {
		return nil
	}
	return fmt.Errorf("signal: publish %s: %w (existing sha256 %s…, new %s…); pick a new build name", key, ErrBuildExists, old.SHA256[:12], m.SHA256[:12])
}

// Manifest reads one build's manifest.
func (c *Client) Manifest(ctx context.Context, service, build string) (*core.Manifest, error) {
	key := c.ManifestKey(service, build)
	p, _, err := c.kv.Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, c.unreachable("read "+key, err)
	}
	if p == nil {
		return nil, fmt.Errorf("signal: manifest %s: %w (run `shoal publish --service %s --build %s DIR` first)", key, ErrNotFound, service, build)
	}
	m, err := core.UnmarshalManifest(p.Value)
	if err != nil {
		return nil, fmt.Errorf("signal: manifest %s: %w", key, err)
	}
	return m, nil
}

// Builds lists the published build names of a service.
func (c *Client) Builds(ctx context.Context, service string) ([]string, error) {
	prefix := c.cfg.Prefix + "/" + service + "/builds/"
	keys, _, err := c.kv.Keys(prefix, "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, c.unreachable("list "+prefix, err)
	}
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, strings.TrimPrefix(k, prefix))
	}
	return out, nil
}

// Release reads the desired release of a service.
func (c *Client) Release(ctx context.Context, service string) (*core.Release, error) {
	key := c.ReleaseKey(service)
	p, _, err := c.kv.Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, c.unreachable("read "+key, err)
	}
	if p == nil {
		return nil, fmt.Errorf("signal: release %s: %w (never deployed)", key, ErrNotFound)
	}
	return decodeRelease(p)
}

func decodeRelease(p *api.KVPair) (*core.Release, error) {
	r, err := core.UnmarshalRelease(p.Value)
	if err != nil {
		return nil, fmt.Errorf("signal: release %s: %w", p.Key, err)
	}
	r.ModifyIndex = p.ModifyIndex
	return r, nil
}

// Deploy makes build the desired release of service. The manifest must
// exist. The write is check-and-set against the release read just before;
// a concurrent deploy makes it fail with ErrConflict rather than clobber.
func (c *Client) Deploy(ctx context.Context, service, build, by, reason string) (*core.Release, error) {
	return c.deploy(ctx, service, build, by, reason, nil)
}

func (c *Client) deploy(ctx context.Context, service, build, by, reason string, ro *core.Rollout) (*core.Release, error) {
	if _, err := c.Manifest(ctx, service, build); err != nil {
		return nil, err
	}
	if err := c.checkUnlocked(ctx, service); err != nil {
		return nil, err
	}
	return c.swapRelease(ctx, service, func(cur *core.Release) (*core.Release, error) {
		next := &core.Release{Service: service, Build: build, By: by, Reason: reason, Rollout: ro}
		if cur != nil {
			next.Seq = cur.Seq + 1
			next.Previous = cur.Build
			if cur.Build == build {
				next.Previous = cur.Previous
			}
		} else {
			next.Seq = 1
		}
		return next, nil
	})
}

// Rollback makes the release's previous build the desired one again. The
// hosts still have it on disk, so no bytes move.
func (c *Client) Rollback(ctx context.Context, service, by, reason string) (*core.Release, error) {
	return c.swapRelease(ctx, service, func(cur *core.Release) (*core.Release, error) {
		if cur == nil {
			return nil, fmt.Errorf("signal: rollback %s: %w (never deployed)", service, ErrNotFound)
		}
		if cur.Previous == "" {
			return nil, fmt.Errorf("signal: rollback %s: %w (release %s is the first)", service, ErrNoPrevious, cur.Build)
		}
		return &core.Release{Service: service, Build: cur.Previous, Previous: cur.Build, Seq: cur.Seq + 1,
			By: by, Reason: reason, Rollback: true}, nil
	})
}

func (c *Client) swapRelease(ctx context.Context, service string, next func(*core.Release) (*core.Release, error)) (*core.Release, error) {
	key := c.ReleaseKey(service)
	p, _, err := c.kv.Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, c.unreachable("read "+key, err)
	}
	var cur *core.Release
	var idx uint64
	kept := ""
	if p != nil {
		idx = p.ModifyIndex
		if cur, err = decodeRelease(p); err != nil {
			// One bad value must not block every later deploy: keep it
			// for the record and write a fresh release over it.
			kept = fmt.Sprintf("%s/%s/unreadable/%d", c.cfg.Prefix, service, p.ModifyIndex)
			if _, perr := c.kv.Put(&api.KVPair{Key: kept, Value: p.Value}, (&api.WriteOptions{}).WithContext(ctx)); perr != nil {
				return nil, c.unreachable("write "+kept, perr)
			}
			c.log.Warn().Err(err).Str("kept_at", kept).Msg("replacing an unreadable release record")
		}
	}
	r, err := next(cur)
	if err != nil {
		if kept != "" {
			return nil, fmt.Errorf("signal: %s holds an unreadable release record (kept at %s): %w; deploy a build to replace it", key, kept, err)
		}
		return nil, err
	}
	if kept != "" {
		r.Reason = strings.TrimSpace(r.Reason + " (replaced an unreadable release record, kept at " + kept + ")")
	}
	r.At = time.Now().UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	ok, _, err := c.kv.CAS(&api.KVPair{Key: key, Value: b, ModifyIndex: idx}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, c.unreachable("write "+key, err)
	}
	if !ok {
		return nil, fmt.Errorf("signal: write %s: %w; re-run after checking `shoal status %s`", key, ErrConflict, service)
	}
	return r, nil
}

// Watch calls fn with the service's release whenever it changes (and once
// at start if it exists), and with nil once if the key disappears after
// one was seen. It blocks until ctx is done and returns nil then. fn runs
// on the watch goroutine; keep it short.
//
// The loop follows Consul's blocking-query rules: it never blocks on index
// 0, resets the index when it goes backwards (Consul restored or a new
// cluster), waits at least MinInterval between queries, and backs off
// exponentially with jitter while Consul is unreachable.
func (c *Client) Watch(ctx context.Context, service string, fn func(*core.Release)) error {
	return c.WatchReporting(ctx, service, fn, nil)
}

// WatchReporting is Watch that also tells bad, if not nil, about a value
// of the release key that does not decode (once per value).
func (c *Client) WatchReporting(ctx context.Context, service string, fn func(*core.Release), bad func(error)) error {
	key := c.ReleaseKey(service)
	var index, seen uint64
	var seenValue []byte
	backoff := time.Duration(0)
	var last time.Time
	for {
		if wait := c.cfg.MinInterval.D() - time.Since(last); wait > 0 {
			if !sleep(ctx, wait) {
				return nil
			}
		}
		last = time.Now()
		q := &api.QueryOptions{WaitIndex: index, WaitTime: c.cfg.WaitTime.D()}
		p, meta, err := c.kv.Get(key, q.WithContext(ctx))
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// After an outage the Consul that answers may be a new one,
			// restored or started empty, whose index is far below ours:
			// a blocking query with our index would then sit out its whole
			// wait time (5 minutes) before seeing a deploy. Start over with
			// a plain read.
			index = 0
			backoff = nextBackoff(backoff, c.cfg.MaxBackoff.D())
			c.log.Warn().Err(err).Str("key", key).Dur("retry_in", backoff).Msg("consul watch failed; retrying")
			if !sleep(ctx, backoff) {
				return nil
			}
			continue
		}
		backoff = 0
		switch {
		case meta.LastIndex < index:
			index = 0 // went backwards: start over with a plain read
		case meta.LastIndex == 0:
			index = 1 // never block on 0
		default:
			index = meta.LastIndex
		}
		if p == nil {
			if seen != 0 {
				// The key is gone (Consul lost its data, or someone deleted
				// it): say so once; it is no reason to remove anything.
				c.log.Warn().Str("key", key).Msg("the release key is gone from Consul; keeping the live release")
				seen, seenValue = 0, nil
				fn(nil)
			}
			continue
		}
		// A release is new when its index or its content differs: after a
		// Consul data loss a new release can reuse an index already seen.
		if p.ModifyIndex == seen && bytes.Equal(p.Value, seenValue) {
			continue
		}
		seen, seenValue = p.ModifyIndex, p.Value
		r, err := decodeRelease(p)
		if err != nil {
			c.log.Error().Err(err).Str("key", key).Msg("ignoring unreadable release; fix it with `shoal deploy`")
			if bad != nil {
				bad(err)
			}
			continue
		}
		fn(r)
	}
}

func nextBackoff(cur, max time.Duration) time.Duration {
	if cur == 0 {
		cur = 250 * time.Millisecond
	} else {
		cur *= 2
	}
	if cur > max {
		cur = max
	}
	// full jitter in [cur/2, cur)
	return cur/2 + time.Duration(rand.Int64N(int64(cur/2)+1))
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
