package bench

import (
	"math"
	"sort"
)

// Percentile returns the p-th percentile (0-100) of xs by linear
// interpolation between closest ranks; NaN for no data.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if p <= 0 {
		return s[0]
	}
	if p >= 100 {
		return s[len(s)-1]
	}
	r := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(r))
	hi := int(math.Ceil(r))
	return s[lo] + (s[hi]-s[lo])*(r-float64(lo))
}

// Summary is the usual percentiles of a sample.
type Summary struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Summarize computes p50, p90, p99 and max.
func Summarize(xs []float64) Summary {
	return Summary{P50: Percentile(xs, 50), P90: Percentile(xs, 90), P99: Percentile(xs, 99), Max: Percentile(xs, 100)}
}

// Bound is the fluid lower bound on the time to get a file of size bytes
// from one origin to n peers (Kumar & Ross, 2006):
//
//	T* = max(S/u_origin, S/d_min, n·S/(u_origin + Σ u_i))
//
// Rates are bytes per second; peerUp holds each peer's upload rate.
// A zero rate is treated as unlimited for that term.
func Bound(size, originUp, minDown float64, peerUp []float64) float64 {
	t := 0.0
	if originUp > 0 {
		t = math.Max(t, size/originUp)
	}
	if minDown > 0 {
		t = math.Max(t, size/minDown)
	}
	total := originUp
	for _, u := range peerUp {
		total += u
	}
	if total > 0 && originUp > 0 {
		t = math.Max(t, float64(len(peerUp))*size/total)
	}
	return t
}
