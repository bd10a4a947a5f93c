package signal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/shoal-deploy/shoal/core"
)

// The deploy commander's state in Consul, beside the release key:
//
//	<prefix>/<service>/commander    the commander's lock (a Consul session); its value says who and since when
//	<prefix>/<service>/lock         a service lock: deploys refused, rollbacks allowed
//	<prefix>/<service>/history/<t>  one entry per event, bounded
//
// The rollout itself (stages, current stage, the commander's settings)
// lives in the release record, so a resumed commander and a restarted
// agent read the same truth.

var (
	// ErrLocked: the service is locked against deploys.
	ErrLocked = errors.New("service is locked against deploys")
	// ErrCommanderBusy: another commander drives this service.
	ErrCommanderBusy = errors.New("another commander drives this service")
	// ErrRolloutChanged: the release moved under a commander (a rollback,
	// a deploy, or another commander).
	ErrRolloutChanged = errors.New("the release changed under the commander")
)

func (c *Client) key(service, name string) string { return c.cfg.Prefix + "/" + service + "/" + name }

// Holder says who holds a lock.
type Holder struct {
	By     string    `json:"by"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since"`
}

// CommanderLock is a held commander lock.
type CommanderLock struct {
	lock *api.Lock
	// Lost is closed if the lock is lost (Consul unreachable past the
	// session's TTL, or the session destroyed).
	Lost <-chan struct{}
}

// Release gives the lock up.
func (l *CommanderLock) Release() { _ = l.lock.Unlock(); _ = l.lock.Destroy() }

// LockCommander takes the commander lock of service, or fails at once
// with ErrCommanderBusy naming its holder. A commander that dies loses the
// lock when its session's TTL runs out (Consul takes 10-20 s), and the rollout holds where
// it is until `shoal deploy --resume`.
func (c *Client) LockCommander(ctx context.Context, service, by string) (*CommanderLock, error) {
	v, _ := json.Marshal(Holder{By: by, Since: time.Now().UTC()})
	l, err := c.cl.LockOpts(&api.LockOptions{Key: c.key(service, "commander"), Value: v, SessionName: "shoal commander " + service,
		SessionTTL: "10s", LockDelay: time.Second, LockTryOnce: true, LockWaitTime: time.Second, MonitorRetries: 3})
	if err != nil {
		return nil, c.unreachable("lock "+service, err)
	}
	lost, err := l.Lock(ctx.Done())
	if err != nil {
		return nil, c.unreachable("lock "+service, err)
	}
	if lost == nil {
		h := Holder{By: "unknown"}
		if p, _, err := c.kv.Get(c.key(service, "commander"), nil); err == nil && p != nil {
			_ = json.Unmarshal(p.Value, &h)
		}
		return nil, fmt.Errorf("signal: %w: %s is driven by %s since %s; wait for it, or if it died, `shoal deploy --resume %s` once its lock expires (10-20 s after it died)",
			ErrCommanderBusy, service, h.By, h.Since.Format(time.RFC3339), service)
	}
	return &CommanderLock{lock: l, Lost: lost}, nil
}

// Lock locks service against deploys (rollbacks stay allowed).
func (c *Client) Lock(ctx context.Context, service, by, reason string) error {
	v, _ := json.Marshal(Holder{By: by, Reason: reason, Since: time.Now().UTC()})
	if _, err := c.kv.Put(&api.KVPair{Key: c.key(service, "lock"), Value: v}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return c.unreachable("lock "+service, err)
	}
	return nil
}

// Unlock lifts the service lock.
func (c *Client) Unlock(ctx context.Context, service string) error {
	if _, err := c.kv.Delete(c.key(service, "lock"), (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return c.unreachable("unlock "+service, err)
	}
	return nil
}

// Locked returns the service lock's holder, or nil.
func (c *Client) Locked(ctx context.Context, service string) (*Holder, error) {
	p, _, err := c.kv.Get(c.key(service, "lock"), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, c.unreachable("read the lock of "+service, err)
	}
	if p == nil {
		return nil, nil
	}
	h := &Holder{By: "unknown"}
	_ = json.Unmarshal(p.Value, h)
	return h, nil
}

func (c *Client) checkUnlocked(ctx context.Context, service string) error {
	h, err := c.Locked(ctx, service)
	if err != nil || h == nil {
		return err
	}
	return fmt.Errorf("signal: %w: %s locked by %s since %s (%q); `shoal unlock %s` first (rollbacks stay allowed)",
		ErrLocked, service, h.By, h.Since.Format(time.RFC3339), h.Reason, service)
}

// StartRollout makes build the release of service, rolled out in stages
// from ro's first stage (see core.Rollout).
func (c *Client) StartRollout(ctx context.Context, service, build, by, reason string, ro *core.Rollout) (*core.Release, error) {
	ro.Stage = 0
	if err := ro.Validate(); err != nil {
		return nil, err
	}
	return c.deploy(ctx, service, build, by, reason, ro)
}

// Promote moves the rollout id to stage (the next one). It fails with
// ErrRolloutChanged if the release is no longer that rollout one stage
// before.
func (c *Client) Promote(ctx context.Context, service, id string, stage int) (*core.Release, error) {
	return c.swapRelease(ctx, service, func(cur *core.Release) (*core.Release, error) {
		if cur == nil || cur.Rollout == nil || cur.Rollout.ID != id || cur.Rollout.Stage != stage-1 || stage >= len(cur.Rollout.Stages) {
			return nil, fmt.Errorf("signal: promote %s to stage %d: %w", service, stage, ErrRolloutChanged)
		}
		next := *cur
		ro := *cur.Rollout
		ro.Stage = stage
		next.Rollout = &ro
		return &next, nil
	})
}

// SetPaused records whether rollout id is paused (a commander resumed
// later keeps it so until told otherwise).
func (c *Client) SetPaused(ctx context.Context, service, id string, paused bool) (*core.Release, error) {
	return c.UpdateParams(ctx, service, id, func(p *core.RolloutParams) { p.Paused = paused })
}

// UpdateParams changes the commander's settings recorded in rollout id.
func (c *Client) UpdateParams(ctx context.Context, service, id string, change func(*core.RolloutParams)) (*core.Release, error) {
	return c.swapRelease(ctx, service, func(cur *core.Release) (*core.Release, error) {
		if cur == nil || cur.Rollout == nil || cur.Rollout.ID != id {
			return nil, fmt.Errorf("signal: update the rollout of %s: %w", service, ErrRolloutChanged)
		}
		next := *cur
		ro := *cur.Rollout
		change(&ro.Params)
		next.Rollout = &ro
		return &next, nil
	})
}

// FinishRollout ends rollout id: the release stays, without stages.
func (c *Client) FinishRollout(ctx context.Context, service, id string) (*core.Release, error) {
	return c.swapRelease(ctx, service, func(cur *core.Release) (*core.Release, error) {
		if cur == nil || cur.Rollout == nil || cur.Rollout.ID != id {
			return nil, fmt.Errorf("signal: finish %s: %w", service, ErrRolloutChanged)
		}
		next := *cur
		next.Rollout = nil
		return &next, nil
	})
}

// HistoryEntry is one event of a service's deploy history.
type HistoryEntry struct {
	At      time.Time          `json:"at"`
	By      string             `json:"by,omitempty"`
	Event   string             `json:"event"` // deploy, rollout, promote, gate-failed, rollback, completed, aborted, lock, unlock, paused, resumed
	Build   string             `json:"build,omitempty"`
	Seq     int64              `json:"seq,omitempty"`
	Rollout string             `json:"rollout,omitempty"`
	Stage   string             `json:"stage,omitempty"`
	Gate    string             `json:"gate,omitempty"`
	Value   string             `json:"value,omitempty"`
	Limit   string             `json:"limit,omitempty"`
	Outcome string             `json:"outcome,omitempty"`
	Detail  string             `json:"detail,omitempty"`
	Values  map[string]float64 `json:"values,omitempty"`
}

// HistoryKeep is how many entries a service's history keeps by default.
const HistoryKeep = 200

// AppendHistory records e (At set if zero) and drops the oldest entries
// beyond keep.
func (c *Client) AppendHistory(ctx context.Context, service string, e HistoryEntry, keep int) error {
	if e.At.IsZero() {
		e.At = time.Now().UTC()
	}
	b, _ := json.Marshal(e)
	prefix := c.key(service, "history/")
	if _, err := c.kv.Put(&api.KVPair{Key: fmt.Sprintf("%s%020d", prefix, e.At.UnixNano()), Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return c.unreachable("append to the history of "+service, err)
	}
	keys, _, err := c.kv.Keys(prefix, "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || keep <= 0 || len(keys) <= keep {
		return nil
	}
	sort.Strings(keys)
	for _, k := range keys[:len(keys)-keep] {
		_, _ = c.kv.Delete(k, (&api.WriteOptions{}).WithContext(ctx))
	}
	return nil
}

// History lists a service's history, oldest first.
func (c *Client) History(ctx context.Context, service string) ([]HistoryEntry, error) {
	ps, _, err := c.kv.List(c.key(service, "history/"), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, c.unreachable("read the history of "+service, err)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Key < ps[j].Key })
	out := make([]HistoryEntry, 0, len(ps))
	for _, p := range ps {
		var e HistoryEntry
		if err := json.Unmarshal(p.Value, &e); err != nil {
			e = HistoryEntry{Event: "unreadable", Detail: strings.TrimPrefix(p.Key, c.key(service, "history/"))}
		}
		out = append(out, e)
	}
	return out, nil
}

// SetWindow sets the deploy window of service.
func (c *Client) SetWindow(ctx context.Context, service string, w core.Window) error {
	b, _ := json.Marshal(w)
	if _, err := c.kv.Put(&api.KVPair{Key: c.key(service, "window"), Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return c.unreachable("set the window of "+service, err)
	}
	return nil
}

// ClearWindow removes the deploy window of service (deploys any time).
func (c *Client) ClearWindow(ctx context.Context, service string) error {
	if _, err := c.kv.Delete(c.key(service, "window"), (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return c.unreachable("clear the window of "+service, err)
	}
	return nil
}

// Window returns the deploy window of service, or nil (any time).
func (c *Client) Window(ctx context.Context, service string) (*core.Window, error) {
	p, _, err := c.kv.Get(c.key(service, "window"), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, c.unreachable("read the window of "+service, err)
	}
	if p == nil {
		return nil, nil
	}
	var w core.Window
	if err := json.Unmarshal(p.Value, &w); err != nil {
		return nil, fmt.Errorf("signal: the window of %s is unreadable (%v); set it again with `shoal window`", service, err)
	}
	return &w, nil
}
