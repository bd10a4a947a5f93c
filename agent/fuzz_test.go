package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/shoal-deploy/shoal/core"
)

// Control API bodies: decoding any bytes never panics; what decodes is
// then only ever used through the name checks (a publish request with a
// bad name or a relative directory is refused before any file is read).
func FuzzDecodeRequests(f *testing.F) {
	f.Add(`{"service":"web","build":"v1","dir":"/srv/build"}`)
	f.Add(`{"service":"../etc","build":"v1","dir":"etc"}`)
	f.Add(`{"service":"web","build":"v1","dir":"/etc","extra":1}`)
	f.Add(`{"manifest":null}`)
	f.Add(strings.Repeat("[", 10000))
	a := &Agent{cfg: Config{PublishRoots: []string{"/nonexistent-root"}}}
	f.Fuzz(func(t *testing.T, body string) {
		var req PublishRequest
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/v1/publish", strings.NewReader(body))
		if decodeJSON(w, r, &req) {
			if core.ValidName("service", req.Service) == nil && core.ValidName("build", req.Build) == nil {
				if _, err := a.publishDir(req.Dir); err == nil {
					t.Fatalf("directory %q accepted outside publish_roots", req.Dir)
				}
			}
		} else if w.Code != http.StatusBadRequest {
			t.Fatalf("bad body answered %d", w.Code)
		}
		var m core.Manifest
		_ = decodeJSON(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)), &m)
	})
}
