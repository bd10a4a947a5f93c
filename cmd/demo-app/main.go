// Command demo-app is the tiny sample app `make demo` runs on every host.
// It serves the release that the host's `current` symlink points at, so it
// always says which build is live, and it can be drained and resumed the
// way Shoal's hooks expect of a real app.
//
//	demo-app --listen 127.0.0.2:8080 --root DIR   serve DIR/current
//	demo-app --call drain|resume|get --listen ADDR   act as its own client
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on (or to call)")
	root := flag.String("root", "", "service root holding the `current` symlink")
	call := flag.String("call", "", "instead of serving: drain, resume or get")
	flag.Parse()
	if *call != "" {
		os.Exit(client(*listen, *call))
	}
	var draining atomic.Bool
	cur := func() string { return filepath.Join(*root, "current") }
	build := func() string {
		b, err := os.ReadFile(filepath.Join(cur(), "VERSION"))
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		http.ServeFile(w, r, filepath.Join(cur(), "index.html"))
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if build() == "" {
			http.Error(w, "no release live", http.StatusServiceUnavailable)
			return
		}
		if _, err := os.Stat(filepath.Join(cur(), "BROKEN")); err == nil {
			http.Error(w, "build "+build()+" is broken (it ships a BROKEN file)", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok", build())
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		draining.Store(true)
		time.Sleep(100 * time.Millisecond) // let in-flight requests finish
		fmt.Fprintln(w, "drained")
	})
	mux.HandleFunc("POST /resume", func(w http.ResponseWriter, r *http.Request) {
		draining.Store(false)
		fmt.Fprintln(w, "serving", build())
	})
	if err := http.ListenAndServe(*listen, mux); err != nil {
		fmt.Fprintln(os.Stderr, "demo-app:", err)
		os.Exit(1)
	}
}

func client(addr, call string) int {
	c := &http.Client{Timeout: 5 * time.Second}
	var resp *http.Response
	var err error
	switch call {
	case "drain", "resume":
		resp, err = c.Post("http://"+addr+"/"+call, "text/plain", nil)
	case "get":
		resp, err = c.Get("http://" + addr + "/")
	default:
		fmt.Fprintf(os.Stderr, "demo-app: unknown --call %q (drain, resume, get)\n", call)
		return 2
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-app:", err)
		return 1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Print(string(b))
	if resp.StatusCode/100 != 2 {
		return 1
	}
	return 0
}
