package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/swarm"
)

// Fetch methods. "swarm" is Shoal; "origin" is the pre-swarm baseline the
// bench compares against: every host pulls the whole archive over HTTP from
// the build's origin, as a central pull system does.
const (
	FetchSwarm  = "swarm"
	FetchOrigin = "origin"
)

// Where fetched bytes are written (Config.FetchInto).
const (
	FetchIntoArchive = "archive"
	FetchIntoRelease = "release"
)

// originServer serves complete archives over HTTP for the origin fetch
// method, capped by the same upload rate as the swarm.
type originServer struct {
	a       *Agent
	limiter *rate.Limiter // nil: unlimited
	served  atomic.Int64
}

func newOriginServer(a *Agent) *originServer {
	return &originServer{a: a, limiter: a.swarm.UploadLimiter()}
}

// originURL tells the swarm where a build's archive can be pulled from its
// origin (for origin slices; see swarm/handout.go).
func (a *Agent) originURL(origin, service, build string) string {
	if m, ok := a.swarm.Member(origin); ok && m.State == "alive" {
		if base := swarm.PeerAPIURL(m); base != "" {
			return base + "/v1/archive/" + service + "/" + build
		}
	}
	return ""
}

// peerRequest sends a request to another member's peer API, signed with
// this host's credentials.
func (a *Agent) peerRequest(ctx context.Context, method, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, err
	}
	return a.swarm.PeerDo(req)
}

// peerGet GETs url from a member's peer API into out (JSON).
func (a *Agent) peerGet(ctx context.Context, url string, timeout time.Duration, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := a.peerRequest(ctx, http.MethodGet, url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode != http.StatusOK {
		var e apiError
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("GET %s: %s", url, e.Error)
		}
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.Unmarshal(b, out)
}

// ServeHTTP answers GET /v1/archive/{service}/{build}.
func (o *originServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	service, build := r.PathValue("service"), r.PathValue("build")
	if core.ValidName("service", service) != nil || core.ValidName("build", build) != nil {
		http.Error(w, "bad service or build name", http.StatusBadRequest)
		return
	}
	ok := o.a.trustedManifest(service, build) != nil // published and signed, never a draft or any other file
	for _, s := range o.a.swarm.Seeds() {
		if s.Service == service && s.Build == build && (s.Have != s.Total || s.Checking) {
			ok = false
		}
	}
	if !ok {
		http.Error(w, "this host has no complete copy of "+service+"/"+build, http.StatusNotFound)
		return
	}
	f, err := os.Open(o.a.swarm.ArchivePath(service, build))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	lw := &limitedWriter{ctx: r.Context(), w: w, l: o.limiter}
	http.ServeContent(lw, r, "", fi.ModTime(), f) // honours Range
	o.served.Add(lw.n)
	o.a.swarm.AddServed(service, build, lw.n)
}

// next hands a fetching host the next piece of a build to pull from here
// (see swarm/handout.go): 200 {"piece": i}, or 204 once all are handed out.
func (o *originServer) next(w http.ResponseWriter, r *http.Request) {
	service, build := r.PathValue("service"), r.PathValue("build")
	if o.a.trustedManifest(service, build) == nil {
		writeJSON(w, http.StatusNotFound, apiError{Error: "no published build " + service + "/" + build + " here"})
		return
	}
	i, ok, err := o.a.swarm.NextSlicePiece(service, build)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: err.Error()})
		return
	}
	if !ok {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"piece": i})
}

// limitedWriter paces a response through the host's upload limiter.
type limitedWriter struct {
	ctx context.Context
	w   http.ResponseWriter
	l   *rate.Limiter
	n   int64
}

func (lw *limitedWriter) Header() http.Header { return lw.w.Header() }
func (lw *limitedWriter) WriteHeader(c int)   { lw.w.WriteHeader(c) }
func (lw *limitedWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		end := len(p)
		if lw.l != nil {
			end = min(end, done+lw.l.Burst())
			if err := lw.l.WaitN(lw.ctx, end-done); err != nil {
				return done, err
			}
		}
		n, err := lw.w.Write(p[done:end])
		done += n
		lw.n += int64(n)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// fetchFromOrigin pulls m's archive over HTTP from the origin's API into
// the archive path, reporting progress through the service's status.
func (s *service) fetchFromOrigin(ctx context.Context, m *core.Manifest) error {
	s.log.Info().Str("build", m.Build).Int64("bytes", m.Size).Str("origin", m.Origin).Msg("fetching over HTTP from the origin")
	if m.Origin == s.a.cfg.Swarm.Node {
		s.update(func(st *ServiceStatus) { st.Fetch = nil; s.x = nil })
		return nil // this host published it: the archive is already here
	}
	url := s.a.originURL(m.Origin, m.Service, m.Build)
	if url == "" {
		return fmt.Errorf("%w: origin %s of %s is not a cluster member", errRetry, m.Origin, m.Build)
	}
	start := time.Now().UTC()
	s.mu.Lock()
	s.x = nil
	s.st.Fetch = &FetchStatus{Build: m.Build, Started: start, Progress: swarm.Progress{Total: m.Size}}
	base := s.st.BytesReceived
	s.mu.Unlock()
	resp, err := s.a.peerRequest(ctx, http.MethodGet, url)
	if err != nil {
		return fmt.Errorf("%w: GET archive from %s: %v", errRetry, m.Origin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: GET archive from %s: %s", errRetry, m.Origin, resp.Status)
	}
	path := s.a.swarm.ArchivePath(m.Service, m.Build)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".origin-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	var got int64
	buf := make([]byte, 256<<10)
	src := s.a.swarm.PaceDownload(ctx, resp.Body) // the host's cap, shared with the swarm
	last := time.Now()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := tmp.Write(buf[:n]); err != nil {
				tmp.Close()
				return err
			}
			got += int64(n)
			if time.Since(last) > 500*time.Millisecond || errors.Is(rerr, io.EOF) {
				last = time.Now()
				s.mu.Lock()
				s.st.Fetch.Have, s.st.Fetch.Received, s.st.Fetch.FromOrigin = got, got, got
				s.st.BytesReceived = base + got
				s.mu.Unlock()
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			tmp.Close()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w: reading archive from %s: %v", errRetry, m.Origin, rerr)
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if got != m.Size {
		return fmt.Errorf("%w: origin sent %d bytes, manifest says %d", errRetry, got, m.Size)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	now := time.Now().UTC()
	s.update(func(st *ServiceStatus) {
		st.Fetch.Have, st.Fetch.Received, st.Fetch.FromOrigin, st.Fetch.Complete = got, got, got, true
		st.Fetch.Finished = &now
		st.BytesReceived = base + got
	})
	s.log.Info().Str("build", m.Build).Int64("bytes", got).Dur("took", time.Since(start)).Msg("fetched from origin over HTTP")
	return nil
}
