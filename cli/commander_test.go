package cli

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
)

// The anomaly test: a steady noisy series stays inside its band, a jump
// leaves it; a flat baseline does not turn every wobble into an anomaly.
func TestMetricGateZScore(t *testing.T) {
	noise := []float64{0.98, 1.03, 1.01, 0.97, 1.02, 0.99, 1.04, 0.96, 1.00, 1.01, 0.98, 1.02}
	g := &metricGate{z: 3}
	g.learn(noise)
	for _, v := range append(noise, 1.05, 0.95) {
		if why := g.judge(v); why != "" {
			t.Errorf("steady value %g tripped: %s", v, why)
		}
	}
	for _, v := range []float64{1.5, 2, 0.5} {
		if g.judge(v) == "" {
			t.Errorf("jump to %g passed (mean %g, std %g)", v, g.mean, g.std)
		}
	}
	flat := &metricGate{z: 3}
	flat.learn([]float64{5, 5, 5, 5})
	if why := flat.judge(5.1); why != "" {
		t.Errorf("a 2%% wobble over a flat baseline tripped: %s", why)
	}
	if flat.judge(6) == "" {
		t.Error("a 20% jump over a flat baseline passed")
	}
	max := 0.5
	fixed := &metricGate{max: &max}
	if fixed.judge(0.4) != "" || fixed.judge(0.6) == "" {
		t.Error("the fixed maximum is not applied")
	}
}

func TestMaxFailed(t *testing.T) {
	for _, tc := range []struct {
		spec  string
		hosts int
		want  int
		ok    bool
	}{{"0", 10, 0, true}, {"2", 10, 2, true}, {"10%", 25, 2, true}, {"", 5, 0, true}, {"x", 1, 0, false}, {"150%", 1, 0, false}} {
		got, err := maxFailed(tc.spec, tc.hosts)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("maxFailed(%q, %d) = %d, %v", tc.spec, tc.hosts, got, err)
		}
	}
}

// During a rollout a held host is done when it runs the previous build
// with the new one prefetched, at the release's current stage.
func TestHandledDuringRollout(t *testing.T) {
	rel := &core.Release{Build: "v2", Previous: "v1", Seq: 5, Rollout: &core.Rollout{ID: "r", Stages: []string{"canary", "all"}, Stage: 0}}
	row := func(s agent.ServiceStatus) HostRow { return HostRow{Node: "h", Service: &s} }
	cases := []struct {
		name string
		s    agent.ServiceStatus
		want bool
	}{
		{"canary active on v2", agent.ServiceStatus{Seq: 5, Stage: 0, Desired: "v2", State: core.StateActive, Current: "v2"}, true},
		{"held, prefetched", agent.ServiceStatus{Seq: 5, Stage: 0, Held: true, Desired: "v1", State: core.StateActive, Current: "v1", Prefetched: "v2"}, true},
		{"held, still fetching", agent.ServiceStatus{Seq: 5, Stage: 0, Held: true, Desired: "v1", State: core.StateFetching, Current: "v1"}, false},
		{"held, active but not prefetched", agent.ServiceStatus{Seq: 5, Stage: 0, Held: true, Desired: "v1", State: core.StateActive, Current: "v1"}, false},
		{"an older stage", agent.ServiceStatus{Seq: 5, Stage: -1, Desired: "v2", State: core.StateActive, Current: "v2"}, false},
		{"failed on v2", agent.ServiceStatus{Seq: 5, Stage: 0, Desired: "v2", State: core.StateFailed, Current: "v1"}, true},
	}
	for _, tc := range cases {
		if got := handled(row(tc.s), rel); got != tc.want {
			t.Errorf("%s: handled = %v, want %v", tc.name, got, tc.want)
		}
	}
	tl := tally([]HostRow{row(cases[0].s), row(cases[1].s), row(cases[2].s)}, rel)
	if tl.settled || tl.activeInStage != 1 || tl.prefetched != 1 || tl.pending != 1 {
		t.Errorf("tally: %+v", tl)
	}
}

// The metric gate against a small HTTP endpoint serving a deterministic
// series: a steady noisy stretch passes, the jump trips the anomaly test;
// a Prometheus instant-vector answer reads the same.
func TestMetricGateOverHTTP(t *testing.T) {
	series := []float64{10.1, 9.8, 10.3, 9.9, 10.0, 10.2, 9.7, 10.1, 9.9, 10.0, // baseline
		10.2, 9.8, 10.1, // rollout, steady
		16.0} // the jump
	i := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := series[min(i, len(series)-1)]
		i++
		if i%2 == 0 {
			fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"%g"]}]}}`, v)
			return
		}
		fmt.Fprintf(w, "%g\n", v)
	}))
	defer srv.Close()
	g := newMetricGate(srv.URL, nil, 4)
	ctx := context.Background()
	var base []float64
	for k := 0; k < 10; k++ {
		v, err := g.sample(ctx)
		if err != nil {
			t.Fatal(err)
		}
		base = append(base, v)
	}
	g.learn(base)
	for k := 0; k < 3; k++ {
		v, _ := g.sample(ctx)
		if why := g.judge(v); why != "" {
			t.Errorf("steady sample %g tripped: %s", v, why)
		}
	}
	v, _ := g.sample(ctx)
	if why := g.judge(v); !strings.Contains(why, "z-score") {
		t.Errorf("the jump to %g passed the anomaly test (%q)", v, why)
	}
}
