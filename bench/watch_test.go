package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/fleet"
)

// The bench reads completion from each host's state file, the file the
// agent writes at every transition: hosts of another build, unreadable
// files and hosts still fetching are not done.
func TestCountStatesReadsStateFiles(t *testing.T) {
	f := &fleet.Fleet{}
	write := func(s *agent.ServiceStatus, raw string) {
		dir := filepath.Join(t.TempDir(), "services", service)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b := []byte(raw)
		if s != nil {
			b, _ = json.Marshal(s)
		}
		if err := os.WriteFile(filepath.Join(dir, "state.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		f.Agents = append(f.Agents, &fleet.Agent{Spec: fleet.AgentSpec{DataDir: filepath.Dir(filepath.Dir(dir))}})
	}
	write(&agent.ServiceStatus{Desired: "b2", State: core.StateActive, Current: "b2"}, "")
	write(&agent.ServiceStatus{Desired: "b2", State: core.StateReady, Current: "b1"}, "")
	write(&agent.ServiceStatus{Desired: "b2", State: core.StateDraining, Current: "b1"}, "")
	write(&agent.ServiceStatus{Desired: "b2", State: core.StateFailed, Current: "b1"}, "")
	write(&agent.ServiceStatus{Desired: "b2", State: core.StateFetching, Current: "b1"}, "")
	write(&agent.ServiceStatus{Desired: "b2", State: core.StateActive, Current: "b1"}, "") // not switched yet
	write(&agent.ServiceStatus{Desired: "b1", State: core.StateActive, Current: "b1"}, "") // not signalled yet
	write(nil, "{half a file")
	f.Agents = append(f.Agents, &fleet.Agent{Spec: fleet.AgentSpec{DataDir: t.TempDir()}}) // no file yet
	got := countStates(f, "b2")
	if want := (states{verified: 3, active: 1, failed: 1}); got != want {
		t.Fatalf("countStates = %+v, want %+v", got, want)
	}
}
