package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/swarm"
)

// The local HTTP API. Every response is JSON except /metrics.
//
//	GET  /v1/status              this host: every service's state, builds, progress, peers
//	GET  /v1/health              200 while the agent runs
//	GET  /v1/members             the cluster as gossip sees it
//	GET  /v1/fleet               every member's /v1/status, gathered through this agent
//	POST /v1/publish             {"service","build","dir"}: pack, hash, publish, seed
//	GET  /v1/archive/{s}/{b}     the archive (Range honoured): origin slices, and the bench baseline
//	POST /v1/archive/{s}/{b}/next  on the origin: the next piece to pull ({"piece":i}; 204 when all are out)
//	GET  /metrics                Prometheus text format
func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.fullStatus())
	})
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "node": a.cfg.Swarm.Node, "version": Version})
	})
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.swarm.Members())
	})
	mux.HandleFunc("GET /v1/fleet", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.fleet(r.Context()))
	})
	mux.HandleFunc("POST /v1/publish", func(w http.ResponseWriter, r *http.Request) {
		var req PublishRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{Error: "bad publish request: " + err.Error()})
			return
		}
		m, err := a.Publish(r.Context(), req)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, apiError{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, m)
	})
	mux.Handle("GET /v1/archive/{service}/{build}", a.origin)
	mux.HandleFunc("POST /v1/archive/{service}/{build}/next", a.origin.next)
	mux.HandleFunc("GET /metrics", a.metrics)
	if a.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

type apiError struct {
	Error string `json:"error"`
}

// HostStatus is Status plus the builds this host shares.
type HostStatus struct {
	Status
	Seeds []swarm.Seed `json:"seeds"`
	// HTTPServed counts archive bytes served over HTTP (origin fetch method).
	HTTPServed int64 `json:"http_served"`
	// FetchMethod is swarm or origin.
	FetchMethod string `json:"fetch_method"`
}

func (a *Agent) fullStatus() HostStatus {
	return HostStatus{Status: a.Status(), Seeds: a.swarm.Seeds(), HTTPServed: a.origin.served.Load(), FetchMethod: a.cfg.Fetch}
}

// FleetHost is one member's status, or why it could not be read.
type FleetHost struct {
	Member swarm.Member `json:"member"`
	Status *HostStatus  `json:"status,omitempty"`
	Error  string       `json:"error,omitempty"`
}

// fleet asks every alive member's API for its status, in parallel.
func (a *Agent) fleet(ctx context.Context) []FleetHost {
	members := a.swarm.Members()
	out := make([]FleetHost, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		out[i].Member = m
		if m.Name == a.cfg.Swarm.Node {
			st := a.fullStatus()
			out[i].Status = &st
			continue
		}
		if m.API == "" || m.State != "alive" {
			out[i].Error = "member is " + m.State
			continue
		}
		wg.Add(1)
		go func(i int, m swarm.Member) {
			defer wg.Done()
			st, err := NewClient(m.API, 3*time.Second).Status(ctx)
			if err != nil {
				out[i].Error = err.Error()
				return
			}
			out[i].Status = &st
		}(i, m)
	}
	wg.Wait()
	return out
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

var allStates = []core.State{core.StateIdle, core.StateFetching, core.StateVerifying, core.StateReady,
	core.StateDraining, core.StateActive, core.StateFailed}

func (a *Agent) metrics(w http.ResponseWriter, r *http.Request) {
	st := a.fullStatus()
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# HELP shoal_members Cluster members this agent sees.")
	p("# TYPE shoal_members gauge")
	p("shoal_members %d", st.Members)
	p("# HELP shoal_service_state 1 for the state each service is in.")
	p("# TYPE shoal_service_state gauge")
	for _, s := range st.Services {
		for _, state := range allStates {
			v := 0
			if s.State == state {
				v = 1
			}
			p("shoal_service_state{service=%q,state=%q} %d", s.Service, state, v)
		}
	}
	p("# HELP shoal_service_info Live and desired build of each service.")
	p("# TYPE shoal_service_info gauge")
	for _, s := range st.Services {
		p("shoal_service_info{service=%q,current=%q,desired=%q,previous=%q} 1", s.Service, s.Current, s.Desired, s.Previous)
	}
	p("# HELP shoal_fetch_bytes_total Piece bytes received by this host, all builds.")
	p("# TYPE shoal_fetch_bytes_total counter")
	for _, s := range st.Services {
		p("shoal_fetch_bytes_total{service=%q} %d", s.Service, s.BytesReceived)
	}
	p("# HELP shoal_fetch_progress_bytes Verified bytes of the last fetch, by source for received bytes.")
	p("# TYPE shoal_fetch_progress_bytes gauge")
	for _, s := range st.Services {
		if f := s.Fetch; f != nil {
			p("shoal_fetch_progress_bytes{service=%q,build=%q,kind=\"have\"} %d", s.Service, f.Build, f.Have)
			p("shoal_fetch_progress_bytes{service=%q,build=%q,kind=\"total\"} %d", s.Service, f.Build, f.Total)
			p("shoal_fetch_progress_bytes{service=%q,build=%q,kind=\"from_origin\"} %d", s.Service, f.Build, f.FromOrigin)
			p("shoal_fetch_progress_bytes{service=%q,build=%q,kind=\"from_peers\"} %d", s.Service, f.Build, f.FromPeers)
		}
	}
	p("# HELP shoal_upload_bytes_total Piece bytes this host served to peers, by build.")
	p("# TYPE shoal_upload_bytes_total counter")
	seeds := append([]swarm.Seed(nil), st.Seeds...)
	sort.Slice(seeds, func(i, j int) bool { return seeds[i].Build < seeds[j].Build })
	for _, s := range seeds {
		p("shoal_upload_bytes_total{service=%q,build=%q} %d", s.Service, s.Build, s.Uploaded)
	}
	p("# HELP shoal_state_transitions Recent state transitions kept in history.")
	p("# TYPE shoal_state_transitions gauge")
	for _, s := range st.Services {
		p("shoal_state_transitions{service=%q} %d", s.Service, len(s.History))
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = io.WriteString(w, b.String())
}
