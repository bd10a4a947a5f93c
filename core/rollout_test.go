package core

import (
	"fmt"
	"testing"
	"time"
)

// Percentage stages: a host's place is stable, a stage's set only grows
// with the percentage, and over many hosts the share is about right.
func TestStagePercentagesGrowAndAreStable(t *testing.T) {
	const n = 2000
	prev := map[string]bool{}
	for _, pct := range []string{"1%", "10%", "25%", "50%", "75%", "100%"} {
		cur := map[string]bool{}
		for i := 0; i < n; i++ {
			node := fmt.Sprintf("host-%d", i)
			if StageSelects(pct, "web", node, nil) {
				cur[node] = true
			}
			if StageSelects(pct, "web", node, nil) != cur[node] {
				t.Fatal("not stable")
			}
		}
		for node := range prev {
			if !cur[node] {
				t.Errorf("%s left the set going to %s", node, pct)
			}
		}
		var want float64
		fmt.Sscanf(pct, "%g%%", &want)
		if got := float64(len(cur)) / n * 100; got < want-3 || got > want+3 {
			t.Errorf("%s selects %.1f%% of %d hosts", pct, got, n)
		}
		prev = cur
	}
	// Another service orders the hosts differently.
	same := 0
	for i := 0; i < n; i++ {
		node := fmt.Sprintf("host-%d", i)
		if StageSelects("10%", "web", node, nil) && StageSelects("10%", "api", node, nil) {
			same++
		}
	}
	if same > n/20 {
		t.Errorf("web and api pick the same 10%% (%d of %d hosts in both)", same, n)
	}
}

func TestRolloutSelectsEarlierStagesToo(t *testing.T) {
	ro := &Rollout{ID: "x", Stages: []string{"canary", "zone=b", "all"}}
	canary, zoneB, other := []string{"canary"}, []string{"zone=b"}, []string{"zone=a"}
	check := func(stage int, tags []string, want bool) {
		t.Helper()
		ro.Stage = stage
		if got := ro.Selected("web", "h", tags); got != want {
			t.Errorf("stage %d, tags %v: selected %v, want %v", stage, tags, got, want)
		}
	}
	check(0, canary, true)
	check(0, zoneB, false)
	check(1, canary, true)
	check(1, zoneB, true)
	check(1, other, false)
	check(2, other, true)
	if (*Rollout)(nil).Selected("web", "h", nil) != true {
		t.Error("no rollout must select everyone")
	}
	if got := ro.StageOf("web", "h", zoneB); got != 1 {
		t.Errorf("StageOf zone=b = %d", got)
	}
	for _, bad := range []*Rollout{{Stages: nil}, {Stages: []string{"0%"}}, {Stages: []string{"a b"}}, {Stages: []string{"all"}, Stage: 1}} {
		if bad.Validate() == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

func TestWindow(t *testing.T) {
	w, err := ParseWindow("mon-fri", "09:00-17:00", "Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for s, want := range map[string]bool{
		"2026-11-30T08:30:00Z": true,  // Monday 09:30 in Berlin
		"2026-11-30T07:30:00Z": false, // 08:30
		"2026-11-30T16:00:00Z": false, // 17:00: the end is outside
		"2026-11-28T10:00:00Z": false, // Saturday
	} {
		if got := w.Open(at(s)); got != want {
			t.Errorf("%s: open %v, want %v (%s)", s, got, want, w)
		}
	}
	night, err := ParseWindow("fri", "22:00-02:00", "UTC")
	if err != nil {
		t.Fatal(err)
	}
	for s, want := range map[string]bool{"2026-11-27T23:00:00Z": true, "2026-11-28T01:00:00Z": true, "2026-11-28T03:00:00Z": false, "2026-11-27T01:00:00Z": false} {
		if got := night.Open(at(s)); got != want {
			t.Errorf("%s: open %v, want %v (%s)", s, got, want, night)
		}
	}
	for _, bad := range [][3]string{{"funday", "", ""}, {"mon", "9-5", ""}, {"mon", "09:00-17:00", "Mars/Olympus"}} {
		if _, err := ParseWindow(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("ParseWindow%v accepted", bad)
		}
	}
}

// A release record is a Consul value anyone with write access can set:
// a rollout that names no stage, a stage past the end (which the
// commander would index) or a stage with spaces is refused as a whole.
func TestUnmarshalReleaseRefusesBadRollouts(t *testing.T) {
	for _, v := range []string{
		`{"build":"v2","previous":"v1","rollout":{"id":"r","stages":[],"stage":0}}`,
		`{"build":"v2","previous":"v1","rollout":{"id":"r","stages":["canary"],"stage":5}}`,
		`{"build":"v2","previous":"v1","rollout":{"id":"r","stages":["canary"],"stage":-1}}`,
		`{"build":"v2","previous":"v1","rollout":{"id":"r","stages":["a b","all"],"stage":0}}`,
		`{"build":"v2","previous":"v1","rollout":{"id":"r","stages":["250%"],"stage":0}}`,
	} {
		if r, err := UnmarshalRelease([]byte(v)); err == nil {
			t.Errorf("accepted %s as %+v", v, r.Rollout)
		}
	}
	r, err := UnmarshalRelease([]byte(`{"build":"v2","previous":"v1","rollout":{"id":"r","stages":["canary","all"],"stage":1}}`))
	if err != nil || r.Rollout.Where() != "stage 2/2 (all)" {
		t.Errorf("a good rollout: %v %v", r, err)
	}
}
