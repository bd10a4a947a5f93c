package swap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// The activation journal: Activate writes it durably before the drain and
// removes it once the outcome is settled (healthy, or switched back and
// the old release re-activated). A journal found at start means a crash
// cut an activation short somewhere between drain and health, and Recover
// finishes it: whatever is live gets its activate hook and health check
// again. Without it, a restarted agent found `current` already on the new
// build and called it live without ever activating or checking it.
type journal struct {
	Build    string `json:"build"`
	Previous string `json:"previous,omitempty"`
}

func (s *Store) journalPath() string { return filepath.Join(s.root, "activating.json") }

func (s *Store) writeJournal(j journal) error {
	b, _ := json.Marshal(j)
	if err := writeDurable(s.journalPath(), b); err != nil {
		return fmt.Errorf("swap: activation journal: %w", err)
	}
	return nil
}

func (s *Store) clearJournal() {
	if err := os.Remove(s.journalPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Error().Err(err).Msg("cannot remove the activation journal; the next start will re-run activate and health for the live release")
		return
	}
	_ = syncDir(s.root)
}

func (s *Store) readJournal() (journal, bool) {
	var j journal
	b, err := os.ReadFile(s.journalPath())
	if err != nil {
		return j, false
	}
	if json.Unmarshal(b, &j) != nil {
		j = journal{} // torn or foreign: still an interrupted activation of something
	}
	return j, true
}

// Interrupted reports whether a crash cut an activation short, and of which build.
func (s *Store) Interrupted() (string, bool) {
	j, ok := s.readJournal()
	return j.Build, ok
}

// Recover finishes an activation a crash cut short. Whatever is live now
// gets its activate hook (a drain may have run, or the new release may
// never have been activated) and its health check. If the live release is
// the new build and it is unhealthy, `current` goes back to the previous
// one and that is re-activated, as Activate does. The error is what
// Activate would have returned; nil means the live release is healthy.
func (s *Store) Recover(ctx context.Context, service string, h Hooks, onPhase func(Phase)) error {
	j, ok := s.readJournal()
	if !ok {
		return nil
	}
	h.applyDefaults()
	if onPhase == nil {
		onPhase = func(Phase) {}
	}
	cur := s.Current()
	if cur == "" {
		s.clearJournal()
		return nil
	}
	env := s.hookEnv(service, j.Build, j.Previous)
	onPhase(PhaseActivate)
	failure := s.run(ctx, h.Activate, h.HookTimeout.D(), env(PhaseActivate, cur))
	if failure == nil {
		onPhase(PhaseHealth)
		failure = s.health(ctx, h, env(PhaseHealth, cur))
	}
	if ctx.Err() != nil {
		return ctx.Err() // the journal stays: the next start tries again
	}
	if failure == nil {
		s.clearJournal()
		return nil
	}
	if cur == j.Build && j.Previous != "" && s.Has(j.Previous) {
		err := s.switchBack(ctx, j.Build, j.Previous, h, env, onPhase, failure)
		s.clearJournal()
		return err
	}
	s.clearJournal()
	return fmt.Errorf("swap: %w for %s after a restart: %v; nothing to switch back to", ErrHealthFailed, cur, failure)
}
