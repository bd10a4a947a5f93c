// Command ceiling measures what the bench's network can carry without
// Shoal: it builds the same namespaces, veths and tc shaping as
// `shoal bench --net netns`, has every host stream TCP to a few others
// as fast as the links allow, and reports the aggregate payload rate and
// how busy the CPUs were. docs/BENCHMARKS.md compares it with the swarm.
//
//	go run ./bench/ceiling --hosts 40 --peers 4 --rate 10MB
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shoal-deploy/shoal/bench"
)

func main() {
	if len(os.Args) > 3 && os.Args[1] == "sink" {
		d, _ := time.ParseDuration(os.Args[3])
		sink(os.Args[2], d)
		return
	}
	if len(os.Args) > 3 && os.Args[1] == "source" {
		d, _ := time.ParseDuration(os.Args[3])
		source(strings.Split(os.Args[2], ","), d)
		return
	}
	hosts := flag.Int("hosts", 40, "hosts (namespaces)")
	peers := flag.Int("peers", 4, "TCP streams each host sends, to the next hosts in turn")
	rate := flag.Float64("rate", 10e6, "bytes/s up and down per host (tc tbf)")
	mtu := flag.Int("mtu", 1500, "link MTU")
	secs := flag.Duration("for", 10*time.Second, "how long to measure")
	flag.Parse()
	if err := run(*hosts, *peers, int64(*rate), *mtu, *secs); err != nil {
		fmt.Fprintln(os.Stderr, "ceiling:", err)
		os.Exit(1)
	}
}

func run(hosts, peers int, rate int64, mtu int, d time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t, err := bench.NewTopology(ctx, hosts, rate, rate, mtu)
	if err != nil {
		return err
	}
	defer t.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	start := func(i int, args ...string) (*exec.Cmd, *strings.Builder, error) {
		a := append(t.HostWrap(i), append([]string{self}, args...)...)
		c := exec.CommandContext(ctx, a[0], a[1:]...)
		out := &strings.Builder{}
		c.Stdout, c.Stderr = out, os.Stderr
		if err := c.Start(); err != nil {
			return nil, nil, err
		}
		procs = append(procs, c)
		return c, out, nil
	}
	type sinkProc struct {
		c   *exec.Cmd
		out *strings.Builder
	}
	var sinks []sinkProc
	for i := 0; i < hosts; i++ {
		c, out, err := start(i, "sink", t.HostIP(i)+":9000", d.String())
		if err != nil {
			return err
		}
		sinks = append(sinks, sinkProc{c, out})
	}
	time.Sleep(500 * time.Millisecond)
	for i := 0; i < hosts; i++ {
		var dst []string
		for k := 1; k <= peers; k++ {
			dst = append(dst, t.HostIP((i+k)%hosts)+":9000")
		}
		if _, _, err := start(i, "source", strings.Join(dst, ","), (d + 2*time.Second).String()); err != nil {
			return err
		}
	}
	time.Sleep(d / 5) // skip TCP's start, as the sinks do
	b0, t0 := cpuTicks()
	time.Sleep(d * 3 / 5)
	b1, t1 := cpuTicks()
	var total float64
	for _, s := range sinks {
		if err := s.c.Wait(); err != nil {
			return fmt.Errorf("sink: %w", err)
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(s.out.String()), 64)
		if err != nil {
			return fmt.Errorf("sink output %q: %w", s.out.String(), err)
		}
		total += v
	}
	got := total
	fmt.Printf("hosts %d, %d streams each, %.0f MB/s links, MTU %d: %.1f MB/s aggregate TCP payload (links allow %.0f), CPU %.0f%% busy\n",
		hosts, peers, float64(rate)/1e6, mtu, got/1e6, float64(rate)*float64(hosts)/1e6, 100*float64(b1-b0)/float64(t1-t0))
	return nil
}

// sink accepts connections, discards what they send, and prints the bytes/s
// it received over the middle three fifths of d (from its first connection).
func sink(addr string, d time.Duration) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sink:", err)
		os.Exit(1)
	}
	var n atomic.Int64
	first := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if i == 0 {
				close(first)
			}
			go func() {
				buf := make([]byte, 256<<10)
				for {
					m, err := c.Read(buf)
					n.Add(int64(m))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	<-first
	time.Sleep(d / 5)
	a := n.Load()
	time.Sleep(d * 3 / 5)
	fmt.Println(float64(n.Load()-a) / (d * 3 / 5).Seconds())
}

// source streams to every address for d.
func source(addrs []string, d time.Duration) {
	end := time.Now().Add(d)
	for _, a := range addrs {
		go func() {
			buf := make([]byte, 256<<10)
			for time.Now().Before(end) {
				c, err := net.Dial("tcp", a)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				for time.Now().Before(end) {
					if _, err := c.Write(buf); err != nil {
						break
					}
				}
				c.Close()
			}
		}()
	}
	time.Sleep(time.Until(end))
}

// cpuTicks reads the busy and total jiffies of all CPUs.
func cpuTicks() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 1
	}
	fields := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:]
	for i, f := range fields {
		v, _ := strconv.ParseInt(f, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}
