package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
)

// WriteTable prints one row per run.
func WriteTable(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "method\tN\trun\tverified p50\tp90\tp99\tmax\tactive max\tT*\tmax/T*\tsignal p99\torigin sent\tpeers sent\tCPU s/agent\tmachine CPU s\tCPU s/GB\thost CPU s/GB\tRSS MiB max\tfailed\t")
	for _, r := range rs {
		if r.Error != "" && r.Verified.Max == 0 {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t\n", r.Method, r.N, r.Run, r.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.3f\t%.2f×S\t%.2f×S\t%.1f\t%.1f\t%.1f\t%.1f\t%.0f\t%d\t\n",
			r.Method, r.N, r.Run, r.Verified.P50, r.Verified.P90, r.Verified.P99, r.Verified.Max, r.Active.Max,
			r.Bound, r.Ratio, r.Signal.P99, r.OriginX, float64(r.PeerBytes)/float64(max(r.Size, 1)),
			r.CPU.P50, r.Machine.Total, r.CPUPerGB, r.HostCPUPerGB, r.RSSMiB.Max, r.Failed)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range rssByBuild(rs) {
		fmt.Fprintln(w, line)
	}
	return nil
}

// rssByBuild says, per method and N run more than once (runs are
// consecutive builds on one fleet), how the largest agent's peak RSS moved
// from build to build: memory that grows with every build deployed is a
// leak a long-lived daemon cannot have.
func rssByBuild(rs []Result) []string {
	type key struct {
		method string
		n      int
	}
	var order []key
	peaks, starts, started := map[key][]string{}, map[key][]string{}, map[key]bool{}
	first, last := map[key]float64{}, map[key]float64{}
	for _, r := range rs {
		k := key{r.Method, r.N}
		if r.RSSMiB.Max == 0 {
			continue
		}
		if _, ok := peaks[k]; !ok {
			order = append(order, k)
			first[k] = r.RSSMiB.Max
		}
		peaks[k] = append(peaks[k], fmt.Sprintf("%.0f", r.RSSMiB.Max))
		starts[k] = append(starts[k], fmt.Sprintf("%.0f", r.RSSStartMiB.Max))
		started[k] = started[k] || r.RSSStartMiB.Max > 0
		last[k] = r.RSSMiB.Max
	}
	var out []string
	for _, k := range order {
		if len(peaks[k]) < 2 {
			continue
		}
		line := fmt.Sprintf("%s N=%d: peak RSS per agent by build %s MiB (last/first %.2f",
			k.method, k.n, strings.Join(peaks[k], ", "), last[k]/first[k])
		if started[k] { // agents live across builds; aria2c is started per build
			line += "; resident when each began " + strings.Join(starts[k], ", ")
		}
		out = append(out, line+")")
	}
	return out
}

// AppendJSONLines appends one JSON object per run to path.
func AppendJSONLines(path string, rs []Result) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, r := range rs {
		if err := enc.Encode(r); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

type series struct {
	name   string
	color  string
	dashed bool
	pts    [][2]float64
}

// WritePlots writes scaling.svg (last-host verified time against N per
// method, with T*) and cdf.svg (host completion CDF at the largest N).
func WritePlots(dir string, rs []Result) error {
	colors := map[string]string{"p2p": "#1f77b4", "origin": "#d62728", "bittorrent": "#ff7f0e"}
	byMethod := map[string]map[int][]float64{}
	bound := map[int]float64{}
	maxN := 0
	for _, r := range rs {
		if byMethod[r.Method] == nil {
			byMethod[r.Method] = map[int][]float64{}
		}
		byMethod[r.Method][r.N] = append(byMethod[r.Method][r.N], r.Verified.Max)
		bound[r.N] = r.Bound
		maxN = max(maxN, r.N)
	}
	var ss []series
	for _, m := range sortedKeys(byMethod) {
		s := series{name: m + " (median of runs)", color: colors[m]}
		for _, n := range sortedKeys(byMethod[m]) {
			s.pts = append(s.pts, [2]float64{float64(n), Percentile(byMethod[m][n], 50)})
		}
		ss = append(ss, s)
	}
	b := series{name: "T* lower bound", color: "#2ca02c", dashed: true}
	for _, n := range sortedKeys(bound) {
		b.pts = append(b.pts, [2]float64{float64(n), bound[n]})
	}
	ss = append(ss, b)
	if err := os.WriteFile(filepath.Join(dir, "scaling.svg"), []byte(svgPlot("Time until the last host has a verified copy", "hosts (N)", "seconds", ss, true)), 0o644); err != nil {
		return err
	}
	var cdf []series
	for _, m := range sortedKeys(byMethod) {
		var xs []float64
		for _, r := range rs {
			if r.Method == m && r.N == maxN {
				xs = append(xs, r.HostVerified...)
			}
		}
		sort.Float64s(xs)
		s := series{name: m, color: colors[m]}
		for i, x := range xs {
			s.pts = append(s.pts, [2]float64{x, float64(i+1) / float64(len(xs))})
		}
		cdf = append(cdf, s)
	}
	return os.WriteFile(filepath.Join(dir, "cdf.svg"), []byte(svgPlot(fmt.Sprintf("Host completion CDF, N = %d", maxN), "seconds since the Consul write", "fraction of hosts verified", cdf, true)), 0o644)
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// svgPlot draws line series on linear axes starting at zero.
func svgPlot(title, xl, yl string, ss []series, markers bool) string {
	const W, H, L, R, T, B = 720.0, 440.0, 70.0, 190.0, 40.0, 50.0
	xmax, ymax := 0.0, 0.0
	for _, s := range ss {
		for _, p := range s.pts {
			xmax, ymax = math.Max(xmax, p[0]), math.Max(ymax, p[1])
		}
	}
	xmax, ymax = nice(xmax), nice(ymax)
	px := func(x float64) float64 { return L + x/xmax*(W-L-R) }
	py := func(y float64) float64 { return H - B - y/ymax*(H-T-B) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="22" font-size="15">%s</text>`+"\n", L, esc(title))
	for i := 0; i <= 5; i++ {
		x, y := xmax*float64(i)/5, ymax*float64(i)/5
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", L, py(y), W-R, py(y), L-6, py(y)+4, num(y))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px(x), T, px(x), H-B, px(x), H-B+16, num(x))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", (L+W-R)/2, H-10, esc(xl))
	fmt.Fprintf(&b, `<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">%s</text>`+"\n", (T+H-B)/2, (T+H-B)/2, esc(yl))
	for i, s := range ss {
		var pts []string
		for _, p := range s.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p[0]), py(p[1])))
		}
		dash := ""
		if s.dashed {
			dash = ` stroke-dasharray="6,4"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", s.color, dash, strings.Join(pts, " "))
		if markers && len(s.pts) < 30 {
			for _, p := range s.pts {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`, px(p[0]), py(p[1]), s.color)
			}
			b.WriteString("\n")
		}
		ly := T + 10 + float64(i)*20
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/><text x="%.1f" y="%.1f">%s</text>`+"\n",
			W-R+10, ly, W-R+35, ly, s.color, dash, W-R+40, ly+4, esc(s.name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func nice(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func num(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2g", v)
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// ReadJSONLines reads results written by AppendJSONLines.
func ReadJSONLines(path string) ([]Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Result
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var r Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, fmt.Errorf("bench: %s line %d: %w", path, i+1, err)
		}
		out = append(out, r)
	}
	return out, nil
}
