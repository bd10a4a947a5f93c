package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anacrolix/torrent/metainfo"

	"github.com/shoal-deploy/shoal/swarm"
)

// The BitTorrent reference: what a user would pick instead of Shoal. A
// stock aria2c swarm with an opentracker tracker (Debian packages aria2,
// opentracker, mktorrent): the origin seeds, every host leeches and keeps
// seeding, under the same caps, in the same namespaces (or loopback, capped
// by aria2c's own limits), into the same kind of data dir, timed the same
// way (from the start of the leechers to each host's complete, verified
// copy), and every copy's SHA-256 checked.

// BitTorrentTools are the programs the reference needs.
var BitTorrentTools = []string{"aria2c", "opentracker", "mktorrent"}

// MissingBitTorrentTools lists the reference's programs not on $PATH.
func MissingBitTorrentTools() []string {
	var out []string
	for _, t := range BitTorrentTools {
		if _, err := exec.LookPath(t); err != nil {
			out = append(out, t)
		}
	}
	return out
}

// btHost is one aria2c process.
type btHost struct {
	dir  string
	cmd  *exec.Cmd
	done time.Duration // since t0; 0 while not complete
}

// runBitTorrent does every run of the reference at fleet size n.
func runBitTorrent(ctx context.Context, cfg Config, n int, work, payload string) ([]Result, error) {
	if miss := MissingBitTorrentTools(); len(miss) > 0 {
		r := Result{Time: time.Now().UTC(), Method: "bittorrent", Net: cfg.Net, N: n, Size: cfg.Size,
			Error: "skipped: " + strings.Join(miss, ", ") + " not installed (make bench-deps installs aria2, opentracker, mktorrent)"}
		cfg.progress("[bittorrent N=%d] %s", n, r.Error)
		return []Result{r}, nil
	}
	ip := func(i int) string { return fmt.Sprintf("127.0.61.%d", 2+i) }
	wrap := func(int) []string { return nil }
	trackerIP, trackerWrap := "127.0.61.1", []string(nil)
	var iface func(i int) (ns, dev string)
	if cfg.Net == "netns" {
		topo, err := NewTopology(ctx, n+1, cfg.Up, cfg.Down, cfg.MTU)
		if err != nil {
			return nil, err
		}
		defer topo.Close()
		ip, wrap = topo.HostIP, topo.HostWrap
		trackerIP, trackerWrap = topo.ConsulIP(), topo.ConsulWrap()
		iface = func(i int) (string, string) { return nsName("h" + strconv.Itoa(i)), "sb" + strconv.Itoa(i) + "a" }
	}
	sum, err := fileSHA256(payload)
	if err != nil {
		return nil, err
	}
	var out []Result
	for run := 1; run <= cfg.Runs; run++ {
		r, err := btRun(ctx, cfg, n, run, filepath.Join(work, fmt.Sprintf("bittorrent-%d-%d", n, run)), payload, sum, ip, wrap, trackerIP, trackerWrap, iface)
		out = append(out, r)
		if err != nil {
			return out, err
		}
		cfg.progress("[bittorrent N=%d run %d/%d] last host verified %.2fs (T* %.2fs, x%.2f), machine CPU %.1fs (%.1f s/GB), origin link sent %.2f x S",
			n, run, cfg.Runs, r.Verified.Max, r.Bound, r.Ratio, r.Machine.Total, r.CPUPerGB, r.OriginX)
	}
	return out, nil
}

func btRun(ctx context.Context, cfg Config, n, run int, dir, payload, sum string, ip func(int) string, wrap func(int) []string,
	trackerIP string, trackerWrap []string, iface func(int) (string, string)) (Result, error) {
	res := Result{Time: time.Now().UTC(), Method: "bittorrent", Net: cfg.Net, N: n, Run: run, Size: cfg.Size, Up: cfg.Up, Down: cfg.Down}
	if cfg.Net == "netns" {
		res.MTU = max(cfg.MTU, 1500)
	}
	if !cfg.Keep {
		defer os.RemoveAll(dir)
	}
	hosts := make([]*btHost, n+1)
	for i := range hosts {
		hosts[i] = &btHost{dir: filepath.Join(dir, "host-"+strconv.Itoa(i))}
		if err := os.MkdirAll(hosts[i].dir, 0o755); err != nil {
			return res, err
		}
	}
	if err := os.Link(payload, filepath.Join(hosts[0].dir, "payload.bin")); err != nil {
		return res, err
	}
	// The same piece length Shoal picks for this size and fleet.
	pl := swarm.PieceLength(cfg.Size, n+1)
	torrent := filepath.Join(dir, "build.torrent")
	announce := "http://" + net.JoinHostPort(trackerIP, "6969") + "/announce"
	if out, err := exec.CommandContext(ctx, "mktorrent", "-a", announce, "-l", strconv.Itoa(bits.Len64(uint64(pl))-1),
		"-o", torrent, filepath.Join(hosts[0].dir, "payload.bin")).CombinedOutput(); err != nil {
		return res, fmt.Errorf("bench: mktorrent: %v: %s", err, out)
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}()
	start := func(w []string, logf string, args ...string) (*exec.Cmd, error) {
		argv := append(append([]string{}, w...), args...)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		lf, err := os.Create(logf)
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = lf, lf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			lf.Close()
			return nil, fmt.Errorf("bench: start %s: %w", args[0], err)
		}
		lf.Close()
		procs = append(procs, cmd)
		return cmd, nil
	}
	// Debian's opentracker serves only whitelisted torrents.
	mi, err := metainfo.LoadFromFile(torrent)
	if err != nil {
		return res, fmt.Errorf("bench: read %s: %w", torrent, err)
	}
	white := filepath.Join(dir, "whitelist")
	if err := os.WriteFile(white, []byte(mi.HashInfoBytes().HexString()+"\n"), 0o644); err != nil {
		return res, err
	}
	// It chroots to -d and drops to nobody before reading the list: give
	// the list inside that root.
	if _, err := start(trackerWrap, filepath.Join(dir, "tracker.log"), "opentracker", "-i", trackerIP, "-p", "6969", "-P", "6969",
		"-d", dir, "-w", "/"+filepath.Base(white)); err != nil {
		return res, err
	}
	if err := waitTCP(ctx, net.JoinHostPort(trackerIP, "6969")); err != nil {
		return res, fmt.Errorf("bench: opentracker: %w", err)
	}
	// aria2c keeps its control file while it seeds: completion is told by
	// its download-complete hook, which stamps the time.
	hook := filepath.Join(dir, "complete.sh")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\ndate +%s.%N > \"$3.done\"\n"), 0o755); err != nil {
		return res, err
	}
	aria := func(i int, seed bool) []string {
		a := []string{"aria2c", "--on-bt-download-complete=" + hook, "--dir=" + hosts[i].dir, "--seed-ratio=0.0", "--seed-time=600", "--enable-dht=false", "--enable-dht6=false",
			"--bt-enable-lpd=false", "--enable-peer-exchange=false", "--listen-port=" + strconv.Itoa(6881+i), "--file-allocation=none",
			"--summary-interval=0", "--console-log-level=warn", "--bt-external-ip=" + ip(i), "--bt-tracker-interval=2",
			"--follow-torrent=false", "--allow-overwrite=true", "--auto-file-renaming=false"}
		if cfg.Net == "loopback" {
			if cfg.Up > 0 {
				a = append(a, "--max-overall-upload-limit="+strconv.FormatInt(cfg.Up, 10))
			}
			if cfg.Down > 0 {
				a = append(a, "--max-overall-download-limit="+strconv.FormatInt(cfg.Down, 10))
			}
		}
		if seed {
			a = append(a, "--bt-seed-unverified=true", "--check-integrity=false")
		}
		return append(a, torrent)
	}
	quiesce()
	if hosts[0].cmd, err = start(wrap(0), filepath.Join(dir, "origin.log"), aria(0, true)...); err != nil {
		return res, err
	}
	time.Sleep(time.Second) // the seeder announces first, as an origin that published before the deploy
	var tx0 int64
	if iface != nil {
		ns, dev := iface(0)
		tx0 = linkTX(ctx, ns, dev)
	}
	m0 := readMachineCPU()
	t0 := time.Now()
	for i := 1; i <= n; i++ {
		if hosts[i].cmd, err = start(wrap(i), filepath.Join(hosts[i].dir, "aria2c.log"), aria(i, false)...); err != nil {
			return res, err
		}
	}
	deadline := t0.Add(cfg.Timeout)
	left := n
	for left > 0 {
		if time.Now().After(deadline) {
			res.Error = fmt.Sprintf("timed out after %s with %d of %d hosts incomplete", cfg.Timeout, left, n)
			return res, fmt.Errorf("bench: bittorrent N=%d run %d: %s", n, run, res.Error)
		}
		for i := 1; i <= n; i++ {
			h := hosts[i]
			if h.done > 0 {
				continue
			}
			if at, ok := completedAt(filepath.Join(h.dir, "payload.bin")); ok {
				h.done = max(at.Sub(t0), time.Millisecond)
				left--
			} else if h.cmd.ProcessState != nil {
				return res, fmt.Errorf("bench: aria2c on host %d exited early; see %s", i, filepath.Join(h.dir, "aria2c.log"))
			}
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	m1 := readMachineCPU()
	if iface != nil {
		ns, dev := iface(0)
		res.OriginBytes = linkTX(ctx, ns, dev) - tx0
		res.OriginX = float64(res.OriginBytes) / float64(cfg.Size)
	}
	var verified, cpu, rss []float64
	for i, h := range hosts {
		c := procCPU(h.cmd.Process.Pid)
		cpu = append(cpu, c)
		rss = append(rss, procStatusMiB(h.cmd.Process.Pid, "VmHWM:"))
		if i > 0 {
			verified = append(verified, h.done.Seconds())
		}
	}
	for i := 1; i <= n; i++ {
		got, err := fileSHA256(filepath.Join(hosts[i].dir, "payload.bin"))
		if err != nil || got != sum {
			res.Failed++
			res.Error = fmt.Sprintf("host %d: sha256 %s, want %s (%v)", i, got, sum, err)
		}
	}
	res.Verified, res.Active, res.HostVerified = Summarize(verified), Summarize(verified), verified
	res.CPU, res.RSSMiB = Summarize(cpu), Summarize(rss)
	res.account(m1.sub(m0), cpu[1:])
	res.bound(cfg)
	return res, nil
}

// completedAt reads the time aria2c's download-complete hook stamped
// (it runs once every piece is verified).
func completedAt(path string) (time.Time, bool) {
	b, err := os.ReadFile(path + ".done")
	if err != nil {
		return time.Time{}, false
	}
	sec, frac, _ := strings.Cut(strings.TrimSpace(string(b)), ".")
	s, err1 := strconv.ParseInt(sec, 10, 64)
	ns, err2 := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
	if err1 != nil || err2 != nil {
		return time.Now(), true
	}
	return time.Unix(s, ns), true
}

func waitTCP(ctx context.Context, addr string) error {
	for i := 0; i < 100; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("nothing listens on %s", addr)
}

// linkTX reads the bytes a namespace's interface has sent (headers included).
func linkTX(ctx context.Context, ns, dev string) int64 {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "cat", "/sys/class/net/"+dev+"/statistics/tx_bytes").Output()
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	return v
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
