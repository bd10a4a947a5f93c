package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/signal"
	"github.com/shoal-deploy/shoal/swap"
	"github.com/shoal-deploy/shoal/swarm"
	"github.com/shoal-deploy/shoal/trust"
)

// ServiceStatus is one service on one host, as GET /v1/status reports it.
type ServiceStatus struct {
	Service    string     `json:"service"`
	State      core.State `json:"state"`
	StateSince time.Time  `json:"state_since"`
	// Phase is the step within draining: drain, switch, activate, health, revert.
	Phase string `json:"phase,omitempty"`
	// Desired is the build this host should run; Seq the release number.
	// During a staged rollout that has not reached this host (Held),
	// Desired is the previous build and Prefetched names the new one once
	// it is fetched and unpacked here; Stage is the rollout stage of the
	// release record handled (-1: none).
	Desired    string   `json:"desired,omitempty"`
	Seq        int64    `json:"seq,omitempty"`
	Stage      int      `json:"stage"`
	Held       bool     `json:"held,omitempty"`
	Prefetched string   `json:"prefetched,omitempty"`
	Current    string   `json:"current,omitempty"`
	Previous   string   `json:"previous,omitempty"`
	Installed  []string `json:"installed,omitempty"`
	// Fetch is the last transfer this service ran; nil if the last
	// deploy needed none (the build was already on disk, as in a rollback).
	Fetch *FetchStatus `json:"fetch,omitempty"`
	// BytesReceived counts every piece byte this service ever fetched on this host.
	BytesReceived int64        `json:"bytes_received"`
	LastError     string       `json:"last_error,omitempty"`
	LastErrorAt   *time.Time   `json:"last_error_at,omitempty"`
	History       []Transition `json:"history,omitempty"`
	// Note is about the signal, not this host: e.g. the release key is
	// gone from Consul, and the live release is kept.
	Note string `json:"note,omitempty"`
	// HandledIndex is the Consul ModifyIndex of the last release fully
	// handled; HandledRelease identifies it by index, sequence, build and
	// time (an index alone repeats after Consul loses its data).
	HandledIndex   uint64 `json:"handled_index"`
	HandledRelease string `json:"handled_release,omitempty"`
	// Applying: the host has taken up release Seq and is still acting on
	// it; until it stops, State, Current and LastError may be the previous
	// release's (a host that failed #4 reads "failed" for a moment after
	// it took up #5), so no one may count it as having handled Seq.
	Applying bool `json:"applying,omitempty"`
}

// FetchStatus is one build transfer.
type FetchStatus struct {
	Build string `json:"build"`
	swarm.Progress
	// DownRate and UpRate are bytes/s over the last second.
	DownRate float64    `json:"down_rate"`
	UpRate   float64    `json:"up_rate"`
	Started  time.Time  `json:"started"`
	Finished *time.Time `json:"finished,omitempty"`
	// Stall names why the fetch stopped progressing (swarm.Stall*), until it progresses again.
	Stall string `json:"stall,omitempty"`
}

// Transition is one state change, kept for `shoal status` and the logs.
type Transition struct {
	From core.State `json:"from"`
	To   core.State `json:"to"`
	At   time.Time  `json:"at"`
	// Seconds spent in From.
	Seconds float64 `json:"seconds"`
	Build   string  `json:"build,omitempty"`
	Note    string  `json:"note,omitempty"`
}

const historyLen = 20

// service is one service's deploy state machine. run is its only writer.
type service struct {
	a     *Agent
	name  string
	cfg   ServiceConfig
	store *swap.Store
	log   zerolog.Logger
	wake  chan struct{}

	mu sync.RWMutex    // guards st and x: written by run, read by snapshot
	st ServiceStatus   // the state
	x  *swarm.Transfer // the last fetch's transfer, for live progress

	latestMu    sync.Mutex    // guards latest and cancelFetch
	latest      *core.Release // newest release seen by the watch
	cancelFetch func()        // aborts the fetch in progress when a newer build is asked for
	fetching    string        // the build being fetched
}

func newService(a *Agent, name string, cfg ServiceConfig, st *swap.Store) *service {
	s := &service{a: a, name: name, cfg: cfg, store: st, wake: make(chan struct{}, 1),
		log: a.log.With().Str("service", name).Logger()}
	s.st = ServiceStatus{Service: name, State: core.StateIdle, StateSince: time.Now().UTC()}
	if b, err := os.ReadFile(s.statePath()); err == nil {
		if err := json.Unmarshal(b, &s.st); err != nil {
			s.log.Warn().Err(err).Str("file", s.statePath()).Msg("ignoring unreadable state file")
		}
	}
	s.st.Service = name
	s.st.Current, s.st.Previous, s.st.Installed = st.Current(), st.Previous(), st.Installed()
	switch {
	case s.st.Applying, s.st.State == core.StateFetching, s.st.State == core.StateVerifying,
		s.st.State == core.StateReady, s.st.State == core.StateDraining:
		// interrupted mid-deploy: the release will be handled again (and
		// Applying set again when it is taken up; left set, a host with no
		// release to take up would never count as settled)
		s.st.HandledIndex, s.st.HandledRelease, s.st.Applying = 0, "", false
	}
	return s
}

func (s *service) statePath() string { return filepath.Join(s.store.Root(), "state.json") }

func (s *service) snapshot() ServiceStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := s.st
	st.History = append([]Transition(nil), s.st.History...)
	if s.st.Fetch != nil {
		f := *s.st.Fetch
		if s.x != nil {
			p := s.x.Progress()
			f.Uploaded = p.Uploaded // keeps growing while this host seeds
			f.Peers = p.Peers
		}
		st.Fetch = &f
	}
	return st
}

// update mutates the state under the lock and persists it.
func (s *service) update(f func(st *ServiceStatus)) {
	s.mu.Lock()
	f(&s.st)
	b, _ := json.MarshalIndent(s.st, "", "  ")
	s.mu.Unlock()
	// Not fsynced: if a power loss drops the last transitions, the agent
	// re-handles the release it finds in Consul, which is idempotent.
	if err := writeFileAtomic(s.statePath(), b, false); err != nil {
		s.log.Error().Err(err).Msg("cannot persist state")
	}
}

// to moves the machine to state `to`, logging one line with the time spent in the old state.
func (s *service) to(to core.State, build, note string) {
	now := time.Now().UTC()
	var from core.State
	var took time.Duration
	s.update(func(st *ServiceStatus) {
		from, took = st.State, now.Sub(st.StateSince)
		st.History = append(st.History, Transition{From: from, To: to, At: now, Seconds: took.Seconds(), Build: build, Note: note})
		if len(st.History) > historyLen {
			st.History = st.History[len(st.History)-historyLen:]
		}
		st.State, st.StateSince, st.Phase = to, now, ""
		st.Current, st.Previous, st.Installed = s.store.Current(), s.store.Previous(), s.store.Installed()
	})
	ev := s.log.Info()
	if to == core.StateFailed {
		ev = s.log.Error()
	}
	ev.Str("build", build).Str("from", string(from)).Str("to", string(to)).Dur("took", took).Str("note", note).Msg("state")
}

func (s *service) fail(build string, err error) {
	now := time.Now().UTC()
	s.update(func(st *ServiceStatus) { st.LastError, st.LastErrorAt = err.Error(), &now })
	s.to(core.StateFailed, build, err.Error())
}

// onRelease is the watch callback: remember the newest release, abort a
// fetch of a build nobody wants any more, and wake the machine.
func (s *service) onRelease(r *core.Release) {
	if r == nil {
		note := "the release key is gone from Consul (data lost, restored or deleted?); keeping the live release " + orNone(s.store.Current()) + " until the next deploy"
		s.update(func(st *ServiceStatus) { st.Note = note })
		return
	}
	s.update(func(st *ServiceStatus) { st.Note = "" })
	s.latestMu.Lock()
	s.latest = r
	if s.cancelFetch != nil && s.fetching != r.Build {
		s.cancelFetch()
	}
	s.latestMu.Unlock()
	s.log.Info().Str("build", r.Build).Int64("seq", r.Seq).Bool("rollback", r.Rollback).Str("by", r.By).Msg("release signalled")
	s.poke()
}

// onBadRelease shows an unreadable release value in status (the live
// release stays; `shoal deploy` replaces the value).
func (s *service) onBadRelease(err error) {
	note := fmt.Sprintf("ignoring an unreadable release in Consul (%v); keeping %s; `shoal deploy` replaces it", err, orNone(s.store.Current()))
	s.update(func(st *ServiceStatus) { st.Note = note })
}

func (s *service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pruneEvery is how often the retention policy runs between deploys.
const pruneEvery = 5 * time.Minute

func (s *service) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = s.a.sig.WatchReporting(ctx, s.name, s.onRelease, s.onBadRelease) }()
	defer wg.Wait()
	s.recover(ctx)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	tidy := time.NewTicker(pruneEvery)
	defer tidy.Stop()
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-retry.C:
		case <-tidy.C:
			s.prune() // grace periods run out, disks fill up between deploys
			continue
		}
		s.latestMu.Lock()
		r := s.latest
		s.latestMu.Unlock()
		s.mu.RLock()
		handled := s.st.HandledRelease
		s.mu.RUnlock()
		if r == nil || releaseID(r) == handled {
			continue
		}
		err := s.apply(ctx, r)
		if ctx.Err() == nil {
			s.update(func(st *ServiceStatus) { st.Applying = false })
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errSuperseded):
			backoff = 0
			s.poke()
		case errors.Is(err, errRetry):
			backoff = min(max(2*backoff, time.Second), 30*time.Second)
			s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("deploy step failed; will retry")
			retry.Reset(backoff)
		default:
			backoff = 0
			s.update(func(st *ServiceStatus) { st.HandledIndex, st.HandledRelease = r.ModifyIndex, releaseID(r) })
		}
	}
}

// releaseID tells releases apart by more than Consul's ModifyIndex, which
// starts low again on a Consul restored or restarted empty.
func releaseID(r *core.Release) string {
	return fmt.Sprintf("%d/%d/%s/%d", r.ModifyIndex, r.Seq, r.Build, r.At.UnixNano())
}

var (
	errSuperseded = errors.New("superseded by a newer release")
	errRetry      = errors.New("transient")
)

// apply drives the host toward release r. Errors wrapped in errRetry are
// retried; errSuperseded means a newer release arrived; anything else (or
// nil) ends the handling of r.
func (s *service) apply(ctx context.Context, r *core.Release) error {
	stage, desired := -1, r.Build
	// A staged rollout that has not reached this host: it runs the
	// previous build (a host new to the fleet gets it first) and has the
	// new one fetched and unpacked beside it, to switch with no transfer
	// when its stage comes.
	held := r.Rollout != nil && r.Previous != "" && !r.Rollout.Selected(s.name, s.a.cfg.Swarm.Node, s.a.cfg.Tags)
	if r.Rollout != nil {
		stage = r.Rollout.Stage
	}
	if held {
		desired = r.Previous
	}
	s.update(func(st *ServiceStatus) {
		st.Desired, st.Seq, st.Stage, st.Held, st.Prefetched = desired, r.Seq, stage, held, ""
		st.Applying = true // cleared by the loop when apply returns
	})
	if err := s.deploy(ctx, r, desired, false); err != nil || !held {
		return err
	}
	return s.deploy(ctx, r, r.Build, true)
}

// deploy makes build live, or with prefetch only fetches and unpacks it
// beside the live release (Prefetched says so once done).
func (s *service) deploy(ctx context.Context, r *core.Release, build string, prefetch bool) error {
	// The manifest first, even for a build on disk (a rollback): its
	// signature is checked, and the release directory must have been
	// unpacked from the archive it names, not merely carry its name.
	m, err := s.manifest(ctx, build)
	if err != nil {
		if errors.Is(err, signal.ErrNotFound) || errors.Is(err, core.ErrInvalidManifest) {
			s.fail(build, err)
			return err
		}
		if isTrustError(err) {
			where := "before fetching a byte"
			if s.store.Has(build) {
				where = "though it is on disk"
			}
			s.fail(build, fmt.Errorf("refused %s %s: %w; the live release (%s) is untouched", build, where, err, orNone(s.store.Current())))
			return err
		}
		return fmt.Errorf("%w: %v", errRetry, err)
	}
	if s.store.Current() == build && !prefetch {
		if !s.store.Matches(build, m.SHA256) {
			err := fmt.Errorf("the live releases/%s was unpacked from another archive than the published %s (sha256 %s…): %w; publish under a new build name",
				build, build, m.SHA256[:12], swap.ErrStaleRelease)
			s.fail(build, err)
			return err
		}
		if err := s.store.Intact(build); err != nil {
			// Checked once per process: after a restart (a power loss
			// among the reasons) the live tree is hashed against what
			// was unpacked.
			s.fail(build, fmt.Errorf("the live release is damaged on disk: %w; deploy another build, or roll back", err))
			return err
		}
		s.update(func(st *ServiceStatus) { st.LastError, st.LastErrorAt = "", nil })
		if s.snapshot().State != core.StateActive {
			s.to(core.StateActive, build, "already live")
		}
		return nil
	}
	fetched := false
	// A release on disk goes live only if its files are still what was
	// unpacked (hashed once per process: a power loss may have dropped
	// writes); a damaged one is installed again, its archive re-fetched
	// as far as it is damaged too.
	stale := !s.store.Matches(build, m.SHA256)
	var damaged error
	if !stale {
		damaged = s.store.Intact(build)
	}
	if stale || damaged != nil {
		if st := s.snapshot(); st.State != core.StateFetching || st.Desired != build {
			s.to(core.StateFetching, build, map[bool]string{true: "prefetch"}[prefetch])
		}
		if err := s.checkSpace(m); err != nil {
			// Failed (status says so), but tried again with backoff: the
			// deploy goes on by itself once space is freed.
			s.fail(build, fmt.Errorf("refused %s before fetching: %w; the live release (%s) is untouched; retrying", build, err, orNone(s.store.Current())))
			return fmt.Errorf("%w: %v", errRetry, err)
		}
		fetch := s.fetch
		if s.a.cfg.Fetch == FetchOrigin {
			fetch = s.fetchFromOrigin
		} else if s.a.cfg.FetchInto == FetchIntoRelease && s.store.Has(build) && build != s.store.Current() &&
			allocated(s.a.swarm.ArchivePath(s.name, build)) == 0 {
			// Fetched into its release, a damaged or stale release is the
			// build's only copy here: it goes (as the install would remove
			// it), and the build is fetched afresh into a cold directory.
			// (A host with the build's archive, the origin for one,
			// installs again from the archive, as the install below does.)
			if damaged != nil {
				s.log.Error().Err(damaged).Str("build", build).Msg("installed release is damaged; installing it again from a new fetch")
			} else {
				s.log.Warn().Str("build", build).Msg("installed release does not match the published archive; installing it again from a new fetch")
			}
			if err := s.a.swarm.Drop(m); err != nil {
				return fmt.Errorf("%w: %v", errRetry, err)
			}
			if err := s.store.Reinstalling(build); err != nil {
				return fmt.Errorf("%w: %v", errRetry, err)
			}
		}
		if err := fetch(ctx, m); err != nil {
			return err
		}
		s.to(core.StateVerifying, build, "")
		checkedBy := "the archive's SHA-256" // how the bytes were checked, for the ready transition
		install := func() error {
			var st swap.Stats
			var err error
			if x := s.a.swarm.Transfer(s.name, build); x != nil && x.Tree() != "" && s.a.cfg.Fetch == FetchSwarm {
				// Fetched into the cold release: only the framing is left to apply.
				// Checked: every piece passed SHA-256 against the signed
				// list, so the install does not hash the build whole again.
				checked := x.Checked()
				if checked {
					checkedBy = "each piece's SHA-256"
				}
				if st, err = s.store.InstallTree(ctx, build, x.Tree(), x.Archive(), x.Layout(), m.SHA256, checked, s.limits(m)); err == nil {
					x.Installed(s.store.ReleaseDir(build))
				}
			} else {
				st, err = s.store.Install(ctx, build, s.a.swarm.ArchivePath(s.name, build), m.SHA256, s.limits(m))
			}
			if st.SpecialBitsDropped > 0 {
				s.log.Warn().Str("build", build).Int("entries", st.SpecialBitsDropped).Msg("dropped setuid/setgid/sticky bits (set allow_setuid for this service to keep them)")
			}
			return err
		}
		err := install()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, swap.ErrVerifyFailed) && s.a.cfg.Fetch == FetchSwarm {
				// The archive on disk is not what the pieces' hashes said
				// when they arrived (a disk fault, or someone wrote to it):
				// re-hash, and fetch the pieces that fail again. Pieces
				// found bad just before (an origin checks each piece as it
				// hands it out, and repairs the bad ones) are no longer
				// complete, so the re-hash does not count them: the build
				// not being complete is the same reason to try again. (An
				// origin whose copy went bad right after publish failed its
				// own install: e2e/TestCorruptOriginHeals, 2 CI runs.)
				bad, rerr := s.a.swarm.Reverify(ctx, s.name, build)
				if rerr == nil && (bad > 0 || !s.a.swarm.Complete(s.name, build)) {
					msg := fmt.Sprintf("verify %s: %d pieces of the archive on disk failed their hash; fetching them again", build, bad)
					if bad == 0 {
						msg = fmt.Sprintf("verify %s: pieces of the archive on disk found bad are being fetched or repaired again", build)
					}
					now := time.Now().UTC()
					s.update(func(st *ServiceStatus) { st.LastError, st.LastErrorAt = msg, &now })
					return fmt.Errorf("%w: %s", errRetry, msg)
				}
				if rerr == nil {
					// Every piece hashes good now, yet the archive did not:
					// it was repaired while the install read it (an origin
					// repairs the pieces its hand-out finds bad, and that
					// raced its own install in CI). Once more; a second
					// failure with every piece good is a real mismatch.
					err = install()
				}
			}
		}
		if err != nil {
			step := "verify"
			if !errors.Is(err, swap.ErrVerifyFailed) {
				step = "install"
			}
			s.fail(build, fmt.Errorf("%s %s on %s: %w; the live release (%s) is untouched", step, build, s.a.cfg.Swarm.Node, err, orNone(s.store.Current())))
			return err
		}
		s.to(core.StateReady, build, "checked by "+checkedBy)
		fetched = true
	}
	if prefetch {
		s.update(func(st *ServiceStatus) { st.Prefetched, st.LastError, st.LastErrorAt = build, "", nil })
		if cur := s.store.Current(); cur != "" && s.snapshot().State != core.StateActive {
			s.to(core.StateActive, cur, "prefetched "+build)
		}
		return nil
	}
	if !fetched {
		s.update(func(st *ServiceStatus) { st.Fetch = nil; s.x = nil })
	}
	s.to(core.StateDraining, build, "")
	err = s.store.Activate(ctx, s.name, build, s.cfg.Hooks, s.onPhase(build))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.fail(build, err)
		return err
	}
	swap.Fault("before-active-state")
	s.update(func(st *ServiceStatus) { st.LastError, st.LastErrorAt = "", nil })
	note := ""
	if r.Rollback {
		note = "rollback"
	}
	s.to(core.StateActive, build, note)
	s.prune()
	return nil
}

// onPhase reports activation phases in status and the log.
func (s *service) onPhase(build string) func(swap.Phase) {
	return func(p swap.Phase) {
		s.update(func(st *ServiceStatus) { st.Phase = string(p) })
		s.log.Info().Str("build", build).Str("phase", string(p)).Msg("activation phase")
	}
}

// recover finishes an activation that a crash or kill cut short (see
// swap.Store.Recover) before the machine handles any release: whatever is
// live gets its activate hook and health check again.
func (s *service) recover(ctx context.Context) {
	build, ok := s.store.Interrupted()
	if !ok {
		return
	}
	s.to(core.StateDraining, build, "finishing an activation a restart interrupted")
	err := s.store.Recover(ctx, s.name, s.cfg.Hooks, s.onPhase(build))
	switch {
	case ctx.Err() != nil:
	case err != nil:
		s.fail(build, fmt.Errorf("after a restart: %w", err))
	default:
		s.to(core.StateActive, s.store.Current(), "activation finished after a restart")
	}
}

func orNone(b string) string {
	if b == "" {
		return "none"
	}
	return b
}

// manifest reads a build's manifest and checks its signature. Consul is
// the authority; the local copy (kept for re-seeding after a restart) is
// used only while Consul cannot be reached, and is checked the same way.
func (s *service) manifest(ctx context.Context, build string) (*core.Manifest, error) {
	m, err := s.a.sig.Manifest(ctx, s.name, build)
	if err != nil {
		if errors.Is(err, signal.ErrNotFound) || errors.Is(err, core.ErrInvalidManifest) {
			return nil, err
		}
		b, rerr := os.ReadFile(s.a.manifestPath(s.name, build))
		if rerr != nil {
			return nil, err
		}
		lm, lerr := core.UnmarshalManifest(b)
		if lerr != nil {
			return nil, err
		}
		s.log.Warn().Err(err).Str("build", build).Msg("consul unreachable; using the local copy of the manifest")
		m = lm
	}
	if m.Service != s.name || m.Build != build {
		return nil, fmt.Errorf("%w: manifest for %s/%s names %s/%s", core.ErrInvalidManifest, s.name, build, m.Service, m.Build)
	}
	if err := s.a.checkTrust(m); err != nil {
		return nil, err
	}
	if err := s.a.saveManifest(m); err != nil {
		return nil, err
	}
	return m, nil
}

func isTrustError(err error) bool {
	return errors.Is(err, trust.ErrUnsigned) || errors.Is(err, trust.ErrUntrustedKey) || errors.Is(err, trust.ErrBadSignature)
}

// limits bounds what m's archive may unpack to on this host: what the
// signed manifest declares, within the agent's ceilings.
func (s *service) limits(m *core.Manifest) swap.Limits {
	lim := swap.Limits{MaxBytes: s.a.cfg.MaxUnpackedBytes, MaxEntries: s.a.cfg.MaxEntries, AllowSpecialBits: s.cfg.AllowSetuid}
	if len(m.Signature) > 0 || m.UnpackedSize > 0 || m.Files > 0 { // an old unsigned dev-mode manifest declares nothing
		lim.MaxBytes, lim.MaxEntries = min(lim.MaxBytes, m.UnpackedSize), min(lim.MaxEntries, m.Files)
	}
	return lim
}

// checkSpace refuses a build the data dir cannot hold: the rest of its
// archive plus its unpacked tree.
func (s *service) checkSpace(m *core.Manifest) error {
	archive := s.a.swarm.ArchivePath(m.Service, m.Build)
	need := m.UnpackedSize + m.Size - allocated(archive)
	if s.a.swarm.IntoTree(m) { // each byte written once, no unpack
		need = m.Size - allocated(archive) - allocated(s.a.swarm.FramingPath(m.Service, m.Build))
	}
	if low, _, free, err := s.watermarks(); err == nil && free-need < low {
		// Old builds make way for the new one, down to the low watermark.
		if dropped := s.makeRoom(need + low - free); len(dropped) > 0 {
			s.log.Info().Strs("evicted", dropped).Str("build", m.Build).Msg("made room for a build")
		}
	}
	return swap.CheckFree(s.a.cfg.DataDir, need, fmt.Sprintf("%s/%s (%d byte archive, %d bytes unpacked)", m.Service, m.Build, m.Size, m.UnpackedSize))
}

// allocated is the disk space a file already takes (0 if absent).
func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return min(st.Blocks*512, fi.Size())
	}
	return fi.Size()
}

// fetch pulls m's archive from the swarm, reporting progress every second.
// A newer release for another build aborts it with errSuperseded; the
// pieces verified so far stay on disk.
func (s *service) fetch(ctx context.Context, m *core.Manifest) error {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.latestMu.Lock()
	s.cancelFetch, s.fetching = cancel, m.Build
	s.latestMu.Unlock()
	defer func() {
		s.latestMu.Lock()
		s.cancelFetch, s.fetching = nil, ""
		s.latestMu.Unlock()
	}()
	s.log.Info().Str("build", m.Build).Int64("bytes", m.Size).Str("origin", m.Origin).Msg("fetching from the swarm")
	x, err := s.a.swarm.Add(fctx, m)
	if err != nil {
		if fctx.Err() != nil && ctx.Err() == nil {
			return errSuperseded
		}
		if errors.Is(err, swarm.ErrBadMetaInfo) {
			s.fail(m.Build, err)
			return err
		}
		return fmt.Errorf("%w: %v", errRetry, err)
	}
	start := time.Now().UTC()
	// The transfer may be older than this fetch (a retry, a build asked
	// for again): count only what arrives from now on.
	before := x.Progress().Received
	s.mu.Lock()
	s.x = x
	s.st.Fetch = &FetchStatus{Build: m.Build, Started: start}
	base := s.st.BytesReceived - before
	s.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- x.Wait(fctx) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last swarm.Progress
	lastAt, lastGain, lastSave := time.Now(), time.Now(), time.Now()
	sample := func(final bool) swarm.Progress {
		p := x.Progress()
		now := time.Now()
		dt := now.Sub(lastAt).Seconds()
		s.mu.Lock()
		f := s.st.Fetch
		f.Progress = p
		if dt > 0 && !final {
			f.DownRate = float64(p.Received-last.Received) / dt
			f.UpRate = float64(p.Uploaded-last.Uploaded) / dt
		}
		if final {
			t := now.UTC()
			f.Finished, f.DownRate, f.UpRate = &t, 0, 0
		}
		s.st.BytesReceived = base + p.Received
		s.mu.Unlock()
		if p.Have > last.Have {
			lastGain = now
			f.Stall = ""
		}
		last, lastAt = p, now
		return p
	}
	for {
		select {
		case err := <-done:
			p := sample(true)
			s.update(func(*ServiceStatus) {})
			if err == nil {
				s.log.Info().Str("build", m.Build).Int64("bytes", p.Total).Int64("resumed", p.Resumed).
					Int64("from_origin", p.FromOrigin).Int64("from_peers", p.FromPeers).
					Dur("took", time.Since(start)).Msg("fetched")
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if fctx.Err() != nil {
				// Stop downloading what nobody wants any more (the engine
				// went on fetching it to the end); the pieces verified so
				// far stay, should it be asked for again.
				x.Pause()
				s.log.Info().Str("build", m.Build).Msg("fetch abandoned: a newer release was signalled")
				return errSuperseded
			}
			return fmt.Errorf("%w: %v", errRetry, err)
		case <-tick.C:
			p := sample(false)
			if time.Since(lastSave) >= 5*time.Second {
				// bytes_received survives a restart mid-fetch (it was only
				// written at the end, so a restarted host undercounted)
				s.update(func(*ServiceStatus) {})
				lastSave = time.Now()
			}
			if werr := x.WriteError(); werr != nil {
				free, _ := swap.FreeBytes(s.a.cfg.DataDir)
				err := fmt.Errorf("fetch of %s stopped: cannot write to %s: %v (%d of %d bytes fetched, %d bytes free); free space and it resumes",
					m.Build, s.a.cfg.DataDir, werr, p.Have, p.Total, free)
				now := time.Now().UTC()
				s.update(func(st *ServiceStatus) {
					st.LastError, st.LastErrorAt = err.Error(), &now
					if st.Fetch != nil {
						st.Fetch.Stall = swarm.StallWriteError
					}
				})
				return fmt.Errorf("%w: %v", errRetry, err)
			}
			if stall := s.a.cfg.FetchStall.D(); time.Since(lastGain) > stall {
				now := time.Now().UTC()
				cause, why := x.Diagnose()
				msg := fmt.Sprintf("fetch of %s made no progress for %s (%d/%d bytes): %s",
					m.Build, stall, p.Have, p.Total, why)
				s.update(func(st *ServiceStatus) {
					st.LastError, st.LastErrorAt = msg, &now
					if st.Fetch != nil {
						st.Fetch.Stall = cause
					}
				})
				s.log.Warn().Str("build", m.Build).Msg(msg)
				lastGain = time.Now()
			}
		}
	}
}

// prune applies the retention policy: releases beyond keep_releases go
// (never current or previous); builds fetched or begun here but never
// installed go once older than build_grace (an origin keeps what it
// published as long, and at least keep_releases of them); then, below the
// low disk watermark, more goes, oldest first, until the high one is free.
// Each goes with its torrent, archive and manifest copy. It runs after
// every activation and every few minutes, on the service's goroutine.
func (s *service) prune() {
	for _, b := range s.store.Prunable(s.cfg.KeepReleases) {
		// Its torrent first: a build fetched into its release is seeded
		// from the release until then.
		s.forget(b)
		if err := s.store.Remove(b); err != nil {
			s.log.Warn().Err(err).Str("build", b).Msg("prune failed")
			continue
		}
		s.log.Info().Str("build", b).Msg("pruned old release")
	}
	grace := s.a.cfg.BuildGrace.D()
	published := 0
	for _, c := range s.uninstalled() {
		if c.mine {
			published++
		}
		if time.Since(c.at) < grace || (c.mine && published <= s.cfg.KeepReleases) {
			continue
		}
		s.forget(c.build)
		s.log.Info().Str("build", c.build).Dur("grace", grace).Msg("dropped a build fetched or published here but never installed")
	}
	if low, high, free, err := s.watermarks(); err == nil && free < low {
		s.makeRoom(high - free)
	}
	s.update(func(st *ServiceStatus) { st.Installed = s.store.Installed() })
}

// candidate is a build on this host that is not installed.
type candidate struct {
	build string
	at    time.Time // when its manifest copy was written here
	mine  bool      // this host published it
}

// uninstalled lists this service's builds that have an archive or manifest
// here but no release, newest first, leaving out the one asked for now.
func (s *service) uninstalled() []candidate {
	keep := map[string]bool{s.store.Current(): true, s.store.Previous(): true}
	for _, b := range s.store.Installed() {
		keep[b] = true
	}
	s.latestMu.Lock()
	if s.latest != nil {
		keep[s.latest.Build] = true
	}
	s.latestMu.Unlock()
	var out []candidate
	for _, m := range s.a.knownManifests() {
		if m.Service != s.name || keep[m.Build] {
			continue
		}
		at := m.PublishedAt
		if fi, err := os.Stat(s.a.manifestPath(m.Service, m.Build)); err == nil {
			at = fi.ModTime()
		}
		out = append(out, candidate{build: m.Build, at: at, mine: m.Origin == s.a.cfg.Swarm.Node})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].at.After(out[j].at) })
	return out
}

// watermarks reads the disk watermarks (bytes) and the free space now.
func (s *service) watermarks() (low, high, free int64, err error) {
	free, total, err := swap.Space(s.a.cfg.DataDir)
	if err != nil {
		return 0, 0, 0, err
	}
	if low, err = core.ParseFree(s.a.cfg.DiskLow, total); err != nil {
		return 0, 0, 0, err
	}
	if high, err = core.ParseFree(s.a.cfg.DiskHigh, total); err != nil {
		return 0, 0, 0, err
	}
	return low, max(high, low), free, nil
}

// makeRoom frees at least need bytes if it can, oldest first: builds
// fetched here but never installed (not ones this host published: it may
// be their only copy), then releases other than current and previous.
// It returns the names it dropped.
func (s *service) makeRoom(need int64) []string {
	start, err := swap.FreeBytes(s.a.cfg.DataDir)
	if err != nil {
		return nil
	}
	var victims []string
	cands := s.uninstalled()
	for i := len(cands) - 1; i >= 0; i-- {
		if !cands[i].mine {
			victims = append(victims, cands[i].build)
		}
	}
	victims = append(victims, s.store.Evictable()...)
	var dropped []string
	for _, b := range victims {
		if free, err := swap.FreeBytes(s.a.cfg.DataDir); err != nil || free-start >= need {
			break
		}
		s.forget(b) // its torrent first, as in prune
		if s.store.Has(b) {
			if err := s.store.Remove(b); err != nil {
				s.log.Warn().Err(err).Str("build", b).Msg("cannot evict release")
				continue
			}
		}
		dropped = append(dropped, b)
		s.log.Warn().Str("build", b).Int64("need_bytes", need).Msg("evicted to free disk space")
	}
	return dropped
}

// forget stops sharing a build and removes its archive and manifest copy.
func (s *service) forget(build string) {
	path := s.a.manifestPath(s.name, build)
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if m, err := core.UnmarshalManifest(b); err == nil {
		if err := s.a.swarm.Drop(m); err != nil {
			s.log.Warn().Err(err).Str("build", build).Msg("cannot drop archive")
			return
		}
	}
	os.RemoveAll(s.store.FetchDir(build)) // a build fetched into a tree, never installed
	s.a.forgetTrusted(s.name, build)
	os.Remove(s.a.sourcePath(s.name, build))
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		s.log.Warn().Err(err).Str("build", build).Msg("cannot remove manifest copy")
	}
}
