package cli

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"100MB", 100e6, true}, {"64MiB", 64 << 20, true}, {"10MB/s", 10e6, true}, {"1.5G", 1.5e9, true},
		{"4096", 4096, true}, {"2Ki", 2048, true}, {"ten", 0, false}, {"-1MB", 0, false},
	} {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for in, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 64 << 20: "64.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := HumanBytes(in); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", in, got, want)
		}
	}
}

func row(state core.State, cur, desired string, handled uint64) HostRow {
	return HostRow{Node: "h", Service: &agent.ServiceStatus{State: state, Current: cur, Desired: desired, HandledIndex: handled}}
}

func TestSettled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rows   []HostRow
		done   bool
		failed int
	}{
		{"none", nil, false, 0},
		{"all active", []HostRow{row(core.StateActive, "v2", "v2", 5), row(core.StateActive, "v2", "v2", 5)}, true, 0},
		{"one fetching", []HostRow{row(core.StateActive, "v2", "v2", 5), row(core.StateFetching, "v1", "v2", 4)}, false, 0},
		{"active on old", []HostRow{row(core.StateActive, "v1", "v2", 4)}, false, 0},
		{"one failed", []HostRow{row(core.StateActive, "v2", "v2", 5), row(core.StateFailed, "v1", "v2", 5)}, true, 1},
		{"unreachable", []HostRow{{Node: "h", Error: "down"}}, false, 0},
	} {
		done, failed := settled(tc.rows)
		if done != tc.done || failed != tc.failed {
			t.Errorf("%s: settled = %v, %d; want %v, %d", tc.name, done, failed, tc.done, tc.failed)
		}
	}
}

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Run(context.Background(), Env{Stdout: &out, Stderr: &errb, Getenv: os.Getenv}, args)
	return code, out.String(), errb.String()
}

func TestCommandsHaveHelpAndFailClearly(t *testing.T) {
	for _, c := range commands() {
		code, out, _ := run(c.name, "--help")
		if code != 0 || !strings.Contains(out, "Usage: shoal "+c.name) {
			t.Errorf("%s --help: exit %d, output %q", c.name, code, out)
		}
	}
	if code, _, errs := run("frobnicate"); code != 2 || !strings.Contains(errs, "unknown command") {
		t.Errorf("unknown command: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := run("deploy", "web", "../etc", "--consul", "127.0.0.1:1"); code != 1 || !strings.Contains(errs, "invalid name") {
		t.Errorf("bad build name: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := run("status", "--api", "127.0.0.1:1"); code != 1 || !strings.Contains(errs, "is `shoal agent` running?") {
		t.Errorf("no agent: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := run("agent", "--node", "a"); code != 1 || !strings.Contains(errs, "data dir is required") {
		t.Errorf("agent without data dir: exit %d, stderr %q", code, errs)
	}
}
