package core

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// Staged rollouts.
//
// A release with a Rollout is being rolled out in stages: every host
// fetches and unpacks Build at once (the swarm is fastest when everyone
// trades), but only the hosts selected by the stages up to and including
// Stage switch to it; the others keep running Previous with Build ready
// on disk, and switch without a transfer when a later stage selects them.
// The release record is the whole truth: an agent that restarts, or a
// commander that resumes, reads it and does the right thing.

// Rollout is the staged part of a release.
type Rollout struct {
	// ID names this rollout (history entries carry it).
	ID string `json:"id"`
	// Stages select hosts: a tag ("canary", "zone=us-east-1a"), a
	// percentage of the fleet ("10%"), or "all". Hosts selected by an
	// earlier stage stay selected.
	Stages []string `json:"stages"`
	// Stage is the index of the current stage.
	Stage int `json:"stage"`
	// Params are the commander's settings, so `shoal deploy --resume`
	// carries on with the same ones.
	Params RolloutParams `json:"params"`
}

// RolloutParams are how a commander drives a rollout.
type RolloutParams struct {
	Bake      Duration `json:"bake"`
	Interval  Duration `json:"interval"`
	MaxFailed string   `json:"max_failed,omitempty"` // a count or a percentage of the stage
	Check     string   `json:"check,omitempty"`      // a shell command; exit 0 = healthy
	Metric    string   `json:"metric,omitempty"`     // a URL returning a number
	MetricMax *float64 `json:"metric_max,omitempty"`
	ZScore    float64  `json:"zscore,omitempty"` // 0: no anomaly test
	Baseline  int      `json:"baseline,omitempty"`
	// Mean and Std are the metric's before the rollout (for --resume).
	Mean   float64 `json:"mean,omitempty"`
	Std    float64 `json:"std,omitempty"`
	Learnt bool    `json:"learnt,omitempty"`
	Paused bool    `json:"paused,omitempty"`
	// Step waits for a hand after each stage bakes: the commander records
	// the baked stage in Waiting (its index + 1) and exits; `shoal deploy
	// --resume` promotes.
	Step    bool `json:"step,omitempty"`
	Waiting int  `json:"waiting,omitempty"`
}

// ValidStage checks one stage selector.
func ValidStage(s string) error {
	switch {
	case s == "all":
		return nil
	case strings.HasSuffix(s, "%"):
		v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
		if err != nil || v <= 0 || v > 100 {
			return fmt.Errorf("stage %q: a percentage must be in (0%%, 100%%]", s)
		}
		return nil
	case s == "" || strings.ContainsAny(s, ", \t\n"):
		return fmt.Errorf("stage %q: want a tag, a percentage or all", s)
	}
	return nil
}

// HostScore places a host of a service in [0, 1), from a hash of both:
// the same hosts lead every rollout of a service, a percentage stage's
// set only grows with the percentage, and a host that joins lands where
// its score puts it, without knowing the rest of the fleet.
func HostScore(service, node string) float64 {
	h := sha256.Sum256([]byte(service + "\x00" + node))
	return float64(binary.BigEndian.Uint64(h[:8])>>11) / (1 << 53)
}

// StageSelects reports whether stage selects a host with this name and tags.
func StageSelects(stage, service, node string, tags []string) bool {
	if stage == "all" {
		return true
	}
	if p, ok := strings.CutSuffix(stage, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		return err == nil && HostScore(service, node) < v/100
	}
	for _, t := range tags {
		if t == stage {
			return true
		}
	}
	return false
}

// Selected reports whether the rollout has reached the host: one of the
// stages up to the current one selects it. A nil rollout selects everyone.
func (r *Rollout) Selected(service, node string, tags []string) bool {
	if r == nil {
		return true
	}
	for i := 0; i <= r.Stage && i < len(r.Stages); i++ {
		if StageSelects(r.Stages[i], service, node, tags) {
			return true
		}
	}
	return false
}

// StageOf is the index of the first stage that selects the host, or -1.
func (r *Rollout) StageOf(service, node string, tags []string) int {
	for i, s := range r.Stages {
		if StageSelects(s, service, node, tags) {
			return i
		}
	}
	return -1
}

// StageName is the current stage's selector.
func (r *Rollout) StageName() string { return r.Stages[r.Stage] }

// Where says where the rollout is: "stage 2/4 (50%)".
func (r *Rollout) Where() string {
	return fmt.Sprintf("stage %d/%d (%s)", r.Stage+1, len(r.Stages), r.StageName())
}

// Validate checks a rollout.
func (r *Rollout) Validate() error {
	if len(r.Stages) == 0 {
		return fmt.Errorf("%w: a rollout needs at least one stage", ErrInvalidRelease)
	}
	for _, s := range r.Stages {
		if err := ValidStage(s); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidRelease, err)
		}
	}
	if r.Stage < 0 || r.Stage >= len(r.Stages) {
		return fmt.Errorf("%w: stage %d of %d", ErrInvalidRelease, r.Stage, len(r.Stages))
	}
	return nil
}
