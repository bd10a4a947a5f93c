package swap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/shoal-deploy/shoal/core"
)

// Hooks are the commands and checks that surround a switch. Commands run
// with `sh -c` in the service root, with these variables set:
// SHOAL_SERVICE, SHOAL_BUILD (the build being made live), SHOAL_PREVIOUS,
// SHOAL_RELEASE_DIR, SHOAL_CURRENT (path of the current symlink) and
// SHOAL_PHASE (drain, activate or health). An empty command is skipped.
type Hooks struct {
	// Drain tells the app to stop taking work and returns once in-flight
	// work is done. A failure aborts the deploy before anything switches.
	Drain string `json:"drain,omitempty"`
	// Activate makes the app pick up `current` (reload or restart).
	Activate string `json:"activate,omitempty"`
	// HealthCmd is a command that exits 0 when the app is healthy.
	HealthCmd string `json:"health_cmd,omitempty"`
	// HealthURL is polled with GET; any 2xx is healthy.
	HealthURL string `json:"health_url,omitempty"`
	// HookTimeout bounds each drain and activate command. Default 30s.
	HookTimeout core.Duration `json:"hook_timeout,omitempty"`
	// HealthRetries is how many health attempts before giving up. Default 5.
	HealthRetries int `json:"health_retries,omitempty"`
	// HealthInterval is the wait between health attempts. Default 1s.
	HealthInterval core.Duration `json:"health_interval,omitempty"`
	// HealthTimeout bounds one health attempt. Default 5s.
	HealthTimeout core.Duration `json:"health_timeout,omitempty"`
}

func (h *Hooks) applyDefaults() {
	if h.HookTimeout == 0 {
		h.HookTimeout = core.Duration(30 * time.Second)
	}
	if h.HealthRetries == 0 {
		h.HealthRetries = 5
	}
	if h.HealthInterval == 0 {
		h.HealthInterval = core.Duration(time.Second)
	}
	if h.HealthTimeout == 0 {
		h.HealthTimeout = core.Duration(5 * time.Second)
	}
}

// Phase names a step of Activate, reported through the progress callback.
type Phase string

// Activation phases, in order.
const (
	PhaseDrain    Phase = "drain"
	PhaseSwitch   Phase = "switch"
	PhaseActivate Phase = "activate"
	PhaseHealth   Phase = "health"
	PhaseRevert   Phase = "revert"
)

// Activate makes an installed build live: drain → switch → activate →
// health. If drain fails, nothing is switched (the activate hook runs for
// the still-live release, to undo the drain) and ErrDrainFailed is
// returned. If activate or health fails, `current` is switched back to
// what it was, activate runs again for it, and ErrHealthFailed is
// returned. onPhase, if not nil, is told each phase as it starts.
func (s *Store) Activate(ctx context.Context, service, build string, h Hooks, onPhase func(Phase)) error {
	h.applyDefaults()
	if onPhase == nil {
		onPhase = func(Phase) {}
	}
	if !s.Has(build) {
		return fmt.Errorf("swap: activate %s: %w", build, ErrNotInstalled)
	}
	old := s.Current()
	if old == build {
		return nil
	}
	// Durably, before anything the app sees: a crash from here on is
	// finished by Recover at the next start.
	if err := s.writeJournal(journal{Build: build, Previous: old}); err != nil {
		return err
	}
	fault("before-drain")
	env := s.hookEnv(service, build, old)
	onPhase(PhaseDrain)
	if err := s.run(ctx, h.Drain, h.HookTimeout.D(), env(PhaseDrain, build)); err != nil {
		if old != "" {
			// Undo the drain even when the agent is shutting down (ctx
			// cancelled): an app left drained serves nothing.
			if uerr := s.run(context.WithoutCancel(ctx), h.Activate, h.HookTimeout.D(), env(PhaseActivate, old)); uerr != nil {
				s.log.Error().Err(uerr).Str("build", old).Msg("re-activating the live release after a failed drain also failed")
			}
		}
		s.clearJournal()
		return fmt.Errorf("swap: %w for %s: %v; %s is still live, nothing switched", ErrDrainFailed, build, err, orNone(old))
	}
	fault("after-drain")
	onPhase(PhaseSwitch)
	if err := s.Switch(build); err != nil {
		return err // the journal stays: the next start re-activates what is live
	}
	fault("after-switch")
	onPhase(PhaseActivate)
	failure := s.run(ctx, h.Activate, h.HookTimeout.D(), env(PhaseActivate, build))
	fault("after-activate")
	if failure == nil {
		onPhase(PhaseHealth)
		failure = s.health(ctx, h, env(PhaseHealth, build))
	}
	fault("after-health")
	if failure == nil {
		s.clearJournal()
		return nil
	}
	if old == "" {
		s.clearJournal()
		return fmt.Errorf("swap: %w for %s: %v; there is no previous release to go back to", ErrHealthFailed, build, failure)
	}
	err := s.switchBack(ctx, build, old, h, env, onPhase, failure)
	s.clearJournal()
	return err
}

// hookEnv gives the hook environment for a switch from old to build:
// SHOAL_PREVIOUS is old for build, and build for old (switching back).
func (s *Store) hookEnv(service, build, old string) func(Phase, string) []string {
	return func(phase Phase, b string) []string {
		prev := old
		if b == old {
			prev = build
		}
		return []string{"SHOAL_SERVICE=" + service, "SHOAL_BUILD=" + b, "SHOAL_PREVIOUS=" + prev,
			"SHOAL_RELEASE_DIR=" + s.ReleaseDir(b), "SHOAL_CURRENT=" + s.CurrentPath(), "SHOAL_PHASE=" + string(phase)}
	}
}

// switchBack points `current` at old again after build failed, and
// re-activates old (even during shutdown).
func (s *Store) switchBack(ctx context.Context, build, old string, h Hooks, env func(Phase, string) []string, onPhase func(Phase), failure error) error {
	onPhase(PhaseRevert)
	if err := s.Switch(old); err != nil {
		return fmt.Errorf("swap: %w for %s: %v; switching back to %s ALSO failed: %v", ErrHealthFailed, build, failure, old, err)
	}
	if err := s.run(context.WithoutCancel(ctx), h.Activate, h.HookTimeout.D(), env(PhaseActivate, old)); err != nil {
		s.log.Error().Err(err).Str("build", old).Msg("activate hook failed while switching back")
	}
	return fmt.Errorf("swap: %w for %s: %v; switched back to %s", ErrHealthFailed, build, failure, old)
}

func orNone(b string) string {
	if b == "" {
		return "no release"
	}
	return b
}

func (s *Store) health(ctx context.Context, h Hooks, env []string) error {
	if h.HealthCmd == "" && h.HealthURL == "" {
		return nil
	}
	var last error
	for i := 0; i < h.HealthRetries; i++ {
		if i > 0 && !sleepCtx(ctx, h.HealthInterval.D()) {
			return ctx.Err()
		}
		if h.HealthCmd != "" {
			last = s.run(ctx, h.HealthCmd, h.HealthTimeout.D(), env)
		}
		if last == nil && h.HealthURL != "" {
			last = getOK(ctx, h.HealthURL, h.HealthTimeout.D())
		}
		if last == nil {
			return nil
		}
		s.log.Debug().Err(last).Int("attempt", i+1).Msg("health check not passing yet")
	}
	return fmt.Errorf("after %d attempts: %w", h.HealthRetries, last)
}

func getOK(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func (s *Store) run(ctx context.Context, command string, timeout time.Duration, env []string) error {
	if command == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Dir = s.root
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("hook %q timed out after %s", command, timeout)
	}
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 300 {
			msg = "…" + msg[len(msg)-300:]
		}
		return fmt.Errorf("hook %q: %v: %s", command, err, msg)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
