package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/trust"
)

func TestHumanBytes(t *testing.T) {
	for in, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 64 << 20: "64.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := HumanBytes(in); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", in, got, want)
		}
	}
}

func row(state core.State, cur, desired string, seq int64) HostRow {
	return HostRow{Node: "h", Service: &agent.ServiceStatus{State: state, Current: cur, Desired: desired, Seq: seq, HandledIndex: uint64(seq)}}
}

func applying(r HostRow) HostRow { r.Service.Applying = true; return r }

func TestSettled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rows   []HostRow
		done   bool
		failed int
	}{
		{"none", nil, false, 0},
		{"all active", []HostRow{row(core.StateActive, "v2", "v2", 5), row(core.StateActive, "v2", "v2", 5)}, true, 0},
		{"one fetching", []HostRow{row(core.StateActive, "v2", "v2", 5), row(core.StateFetching, "v1", "v2", 5)}, false, 0},
		{"active on old", []HostRow{row(core.StateActive, "v1", "v2", 5)}, false, 0},
		{"one failed", []HostRow{row(core.StateActive, "v2", "v2", 5), row(core.StateFailed, "v1", "v2", 5)}, true, 1},
		{"unreachable", []HostRow{{Node: "h", Error: "down"}}, false, 0},
		// a host that has not seen release #5 yet still reports #4 as
		// desired, active on it: not done (it used to count as settled)
		{"not seen yet", []HostRow{row(core.StateActive, "v2", "v2", 5), row(core.StateActive, "v1", "v1", 4)}, false, 0},
		{"failed on the previous release", []HostRow{row(core.StateActive, "v2", "v2", 5), row(core.StateFailed, "v1", "v1", 4)}, false, 0},
		// a host that has just taken up #5 reads #5's sequence and build
		// with the state it ended #4 in: not done until it has acted on #5
		{"taken up, still failed from before", []HostRow{row(core.StateActive, "v2", "v2", 5), applying(row(core.StateFailed, "v1", "v2", 5))}, false, 0},
		{"taken up, still active from before", []HostRow{row(core.StateActive, "v2", "v2", 5), applying(row(core.StateActive, "v2", "v2", 5))}, false, 0},
		// a host the catalog expects and whose check fails does not block,
		// and is reported (exit 2); one merely not heard from yet blocks
		{"one down", []HostRow{row(core.StateActive, "v2", "v2", 5), {Node: "h3", Down: true}}, true, 0},
		{"one not heard from", []HostRow{row(core.StateActive, "v2", "v2", 5), {Node: "h3", Error: "not in gossip"}}, false, 0},
	} {
		done, failed, _ := settled(tc.rows, &core.Release{Build: "v2", Seq: 5})
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
	if code, _, errs := run("agent", "--node", "a", "--data-dir", "/srv/shoal", "--bind", "127.0.0.2", "--insecure-dev", "--max-procs", "-1"); code != 1 || !strings.Contains(errs, "max_procs (--max-procs) is -1") {
		t.Errorf("agent --max-procs -1: exit %d, stderr %q", code, errs)
	}
	// 0 now means "follow the fleet"; a negative set is still refused.
	if code, _, errs := run("model", "--peer-set", "-1", "--hosts", "20"); code != 1 || !strings.Contains(errs, "a --peer-set of 0 (follow the fleet) or more") {
		t.Errorf("model --peer-set -1: exit %d, stderr %q", code, errs)
	}
}

// keygen writes a key pair that parses, never overwrites, and keeps the
// secret half private; the status table marks dev-mode hosts and banned peers.
func TestKeygenAndStatusMarks(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "release")
	if code, stdout, errs := run("keygen", "--out", out); code != 0 || !strings.Contains(stdout, "key id") {
		t.Fatalf("keygen: exit %d %q %q", code, stdout, errs)
	}
	fi, err := os.Stat(out + ".key")
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("signing key file: %v %v", fi, err)
	}
	b, _ := os.ReadFile(out + ".key")
	k, err := trust.ParseSigningKey(string(b))
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := os.ReadFile(out + ".pub")
	if p, err := trust.ParsePublicKey(string(pb)); err != nil || p.ID() != k.Public().ID() {
		t.Errorf("public key does not match: %v", err)
	}
	if code, _, errs := run("keygen", "--out", out); code != 1 || !strings.Contains(errs, "exists") {
		t.Errorf("keygen over an existing key: exit %d %q", code, errs)
	}
	if code, stdout, _ := run("keygen", "--gossip"); code != 0 {
		t.Errorf("keygen --gossip: exit %d", code)
	} else if _, err := trust.ParseGossipKey(stdout); err != nil {
		t.Errorf("keygen --gossip printed %q: %v", stdout, err)
	}
	var buf bytes.Buffer
	rows := []HostRow{{Node: "h1", Insecure: true, Banned: []string{"host-2 (10.0.0.2)"},
		Service: &agent.ServiceStatus{Service: "web", State: core.StateActive}}}
	if err := printRows(&buf, rows, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[INSECURE-DEV]", "banned for corrupt pieces: host-2 (10.0.0.2)"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, buf.String())
		}
	}
}
