package agent

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/swarm"
	"github.com/shoal-deploy/shoal/trust"
)

// Two HTTP APIs, two audiences. Every response is JSON except /metrics.
//
// The control API is for the CLI and operators on this host. It listens
// on loopback or a unix socket by default; anywhere else it needs a token
// (Authorization: Bearer), checked on every route but /v1/health.
// Browsers are kept out: a request with an Origin header is refused, and a
// POST must say Content-Type: application/json (no form can).
//
//	GET  /v1/status              this host: every service's state, builds, progress, peers
//	GET  /v1/health              200 while the agent runs
//	GET  /v1/members             the cluster as gossip sees it
//	GET  /v1/fleet               every member's status, gathered through the peer API
//	POST /v1/publish             {"service","build","dir"}: pack, hash, seed; returns a draft manifest
//	POST /v1/publish/commit      the draft, signed: publish it to Consul
//	GET  /metrics                Prometheus text format
//	     /debug/pprof/           Go's profiler, with --pprof
//
// The peer API is for the other members only (swarm.AuthenticatePeer: a
// MAC keyed by the gossip key, from the member's own gossip IP). It serves
// builds with a trusted manifest, and nothing else.
//
//	GET  /v1/archive/{s}/{b}       the archive (Range honoured): origin slices, and the bench baseline
//	POST /v1/archive/{s}/{b}/next  on the origin: the next piece to pull ({"piece":i}; 204 when all are out)
//	GET  /v1/peer/status           this host's status, for a member's /v1/fleet
func (a *Agent) controlRoutes() http.Handler {
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
		if !decodeJSON(w, r, &req) {
			return
		}
		resp, err := a.Publish(r.Context(), req)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, apiError{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("POST /v1/publish/commit", func(w http.ResponseWriter, r *http.Request) {
		var m core.Manifest
		if !decodeJSON(w, r, &m) {
			return
		}
		out, err := a.Commit(r.Context(), &m)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, apiError{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.Handle("GET /metrics", a.metricsHandler())
	if a.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return a.controlGuard(mux)
}

// controlGuard admits control API requests: no browsers, JSON POSTs only,
// and the token when one is set.
func (a *Agent) controlGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") != "" {
			writeJSON(w, http.StatusForbidden, apiError{Error: "the control API does not answer browsers"})
			return
		}
		if r.Method == http.MethodPost && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			writeJSON(w, http.StatusUnsupportedMediaType, apiError{Error: "POST bodies must be Content-Type: application/json"})
			return
		}
		if a.token != "" && r.URL.Path != "/v1/health" {
			got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !trust.TokenEqual(got, a.token) {
				writeJSON(w, http.StatusUnauthorized, apiError{Error: "this agent's control API needs its token: set SHOAL_API_TOKEN (or --api-token) to the agent's api_token"})
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (a *Agent) peerRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /v1/archive/{service}/{build}", a.origin)
	mux.HandleFunc("POST /v1/archive/{service}/{build}/next", a.origin.next)
	mux.HandleFunc("GET /v1/peer/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.fullStatus())
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := a.swarm.AuthenticatePeer(r); err != nil {
			a.log.Warn().Err(err).Str("remote", r.RemoteAddr).Str("path", r.URL.Path).Msg("peer api request refused")
			writeJSON(w, http.StatusForbidden, apiError{Error: err.Error()})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// decodeJSON reads a strict JSON body of at most 1 MiB into v, answering
// 400 itself on failure.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "bad request body: " + err.Error()})
		return false
	}
	return true
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
	// FetchInto is where fetched bytes go: release or archive.
	FetchInto string `json:"fetch_into"`
	// TrustedKeys are the ids of the keys whose builds this host runs.
	TrustedKeys []string `json:"trusted_keys"`
	// Insecure is set in dev mode: unsigned builds, unencrypted gossip.
	Insecure bool `json:"insecure_dev,omitempty"`
	// BannedPeers sent pieces that failed their hash check; the engine no longer talks to them.
	BannedPeers []string `json:"banned_peers,omitempty"`
	// BadPieces counts, per sender, pieces received here that failed their hash.
	BadPieces []swarm.PeerCount `json:"bad_pieces,omitempty"`
	// Counters of the swarm's work since start (messages received by
	// type, requests sent, connections, peer offers), to see what grows
	// with the fleet.
	Counters map[string]int64 `json:"counters,omitempty"`
}

func (a *Agent) fullStatus() HostStatus {
	return HostStatus{Status: a.Status(), Seeds: a.swarm.Seeds(), HTTPServed: a.origin.served.Load(), FetchMethod: a.cfg.Fetch, FetchInto: a.cfg.FetchInto,
		TrustedKeys: a.keys.IDs(), Insecure: a.cfg.InsecureDev, BannedPeers: a.swarm.BannedPeers(), BadPieces: a.swarm.BadPieces(), Counters: a.swarm.Counters()}
}

// FleetHost is one member's status, or why it could not be read.
type FleetHost struct {
	Member swarm.Member `json:"member"`
	Status *HostStatus  `json:"status,omitempty"`
	Error  string       `json:"error,omitempty"`
}

// fleet asks every alive member's peer API for its status, in parallel,
// on the member's gossip IP (never an address a member merely advertises).
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
		url := swarm.PeerAPIURL(m)
		if url == "" || m.State != "alive" {
			out[i].Error = "member is " + m.State
			continue
		}
		wg.Add(1)
		go func(i int, m swarm.Member) {
			defer wg.Done()
			var st HostStatus
			err := a.peerGet(ctx, url+"/v1/peer/status", 3*time.Second, &st)
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
