package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// Topology is a shaped virtual network: one namespace holding a bridge,
// one namespace for Consul, one per host, each host joined to the bridge by
// a veth pair whose two ends are shaped by tc (tbf) — the host end's egress
// is the host's upload, the bridge end's egress its download. Addresses
// come from the benchmarking range 198.18.0.0/15 and nothing routes beyond
// these namespaces. A veth from the root namespace (198.18.0.1) lets the
// harness reach the agents' APIs. Close removes every namespace it made.
type Topology struct {
	sysctls  map[string]string // values to restore on Close
	mtu      int
	hosts    int
	up, down int64
	made     []string // namespaces created, for Close
	rootLink bool
}

const nsPrefix = "shoalb-"

func nsName(s string) string { return nsPrefix + s }

// NewTopology builds the network for hosts hosts (root required), every
// link with the given MTU (0: 1500).
func NewTopology(ctx context.Context, hosts int, up, down int64, mtu int) (t *Topology, err error) {
	if mtu == 0 {
		mtu = 1500
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench: --net netns needs root (network namespaces and tc); use --net loopback otherwise")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("bench: --net netns needs %s (Debian package iproute2): %w", tool, err)
		}
	}
	if hosts > 250*200 {
		return nil, fmt.Errorf("bench: %d hosts is too many", hosts)
	}
	CleanupStale(ctx)
	t = &Topology{hosts: hosts, up: up, down: down, mtu: mtu, sysctls: map[string]string{}}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	// The kernel's neighbour (ARP) table is shared by every namespace and
	// holds 1024 entries by default: 40 hosts that all talk to each other
	// overflow it and links fail at random. Raise it while we run.
	need := (hosts + 2) * (hosts + 2) * 2
	for i, name := range []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"} {
		if err := t.raiseSysctl("/proc/sys/net/ipv4/neigh/default/"+name, need*(i+1)/3+1024); err != nil {
			return t, err
		}
	}
	br := nsName("br")
	if err := t.addNS(ctx, br); err != nil {
		return t, err
	}
	if err := run(ctx, "ip", "-n", br, "link", "add", "br0", "type", "bridge"); err != nil {
		return t, err
	}
	if err := run(ctx, "ip", "-n", br, "link", "set", "br0", "up"); err != nil {
		return t, err
	}
	// The harness's own door into the network.
	if err := run(ctx, "ip", "-n", br, "link", "set", "br0", "mtu", strconv.Itoa(mtu)); err != nil {
		return t, err
	}
	if err := run(ctx, "ip", "link", "add", "shoalb-root", "mtu", strconv.Itoa(mtu), "type", "veth", "peer", "name", "shoalb-rootb", "mtu", strconv.Itoa(mtu)); err != nil {
		return t, err
	}
	t.rootLink = true
	for _, c := range [][]string{
		{"ip", "link", "set", "shoalb-rootb", "netns", br},
		{"ip", "-n", br, "link", "set", "shoalb-rootb", "master", "br0"},
		{"ip", "-n", br, "link", "set", "shoalb-rootb", "up"},
		{"ip", "addr", "add", "198.18.0.1/15", "dev", "shoalb-root"},
		{"ip", "link", "set", "shoalb-root", "up"},
	} {
		if err := run(ctx, c[0], c[1:]...); err != nil {
			return t, err
		}
	}
	if err := t.attach(ctx, nsName("consul"), "c", t.ConsulIP(), 0, 0); err != nil {
		return t, err
	}
	for i := 0; i < hosts; i++ {
		if err := t.attach(ctx, nsName("h"+strconv.Itoa(i)), strconv.Itoa(i), t.HostIP(i), up, down); err != nil {
			return t, err
		}
	}
	return t, nil
}

// ConsulIP is Consul's address.
func (t *Topology) ConsulIP() string { return "198.18.0.2" }

// ConsulWrap runs a command in Consul's namespace.
func (t *Topology) ConsulWrap() []string { return []string{"ip", "netns", "exec", nsName("consul")} }

// HostIP is host i's address.
func (t *Topology) HostIP(i int) string { return fmt.Sprintf("198.18.%d.%d", 1+i/250, 2+i%250) }

// HostWrap runs a command in host i's namespace.
func (t *Topology) HostWrap(i int) []string {
	return []string{"ip", "netns", "exec", nsName("h" + strconv.Itoa(i))}
}

func (t *Topology) addNS(ctx context.Context, ns string) error {
	if err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return err
	}
	t.made = append(t.made, ns)
	return run(ctx, "ip", "-n", ns, "link", "set", "lo", "up")
}

// attach makes namespace ns with address ip on a veth to the bridge, shaped to up/down bytes/s.
func (t *Topology) attach(ctx context.Context, ns, tag, ip string, up, down int64) error {
	br := nsName("br")
	a, b := "sb"+tag+"a", "sb"+tag+"b"
	if err := t.addNS(ctx, ns); err != nil {
		return err
	}
	cmds := [][]string{
		{"ip", "link", "add", a, "mtu", strconv.Itoa(t.mtu), "type", "veth", "peer", "name", b, "mtu", strconv.Itoa(t.mtu)},
		{"ip", "link", "set", a, "netns", ns},
		{"ip", "link", "set", b, "netns", br},
		{"ip", "-n", ns, "addr", "add", ip + "/15", "dev", a},
		{"ip", "-n", ns, "link", "set", a, "up"},
		{"ip", "-n", br, "link", "set", b, "master", "br0"},
		{"ip", "-n", br, "link", "set", b, "up"},
	}
	if up > 0 {
		cmds = append(cmds, append([]string{"ip", "netns", "exec", ns}, tbf(a, up)...))
	}
	if down > 0 {
		cmds = append(cmds, append([]string{"ip", "netns", "exec", br}, tbf(b, down)...))
	}
	for _, c := range cmds {
		if err := run(ctx, c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// tbf shapes dev's egress to rate bytes/s.
func tbf(dev string, rate int64) []string {
	burst := max(rate/50, 64<<10)
	return []string{"tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", strconv.FormatInt(rate*8, 10) + "bit",
		"burst", strconv.FormatInt(burst, 10), "latency", "100ms"}
}

// raiseSysctl sets path to at least v, remembering the old value.
func (t *Topology) raiseSysctl(path string, v int) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("bench: read %s: %w", path, err)
	}
	old := strings.TrimSpace(string(b))
	if n, _ := strconv.Atoi(old); n >= v {
		return nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(v)), 0o644); err != nil {
		return fmt.Errorf("bench: raise %s to %d: %w", path, v, err)
	}
	t.sysctls[path] = old
	return nil
}

// Close deletes every namespace (and with them every veth) it made and
// restores the sysctls it raised.
func (t *Topology) Close() {
	ctx := context.Background()
	for i := len(t.made) - 1; i >= 0; i-- {
		_ = run(ctx, "ip", "netns", "del", t.made[i])
	}
	if t.rootLink {
		_ = run(ctx, "ip", "link", "del", "shoalb-root")
	}
	t.made = nil
	// Restore the neighbour-table thresholds that were raised.
	for _, name := range []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"} {
		path := "/proc/sys/net/ipv4/neigh/default/" + name
		if old, ok := t.sysctls[path]; ok {
			_ = os.WriteFile(path, []byte(old), 0o644)
			delete(t.sysctls, path)
		}
	}
}

// CleanupStale removes namespaces and links a killed bench left behind.
func CleanupStale(ctx context.Context) int {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], nsPrefix) {
			if run(ctx, "ip", "netns", "del", f[0]) == nil {
				n++
			}
		}
	}
	_ = exec.CommandContext(ctx, "ip", "link", "del", "shoalb-root").Run()
	return n
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("bench: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
