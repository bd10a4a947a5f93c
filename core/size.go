package core

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize reads "100MB", "64MiB", "1.5G", "4096" (bytes). K/M/G are
// powers of 1000; Ki/Mi/Gi powers of 1024.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "/s"), "B"))
	mult := 1.0
	for _, u := range []struct {
		suf string
		m   float64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"K", 1e3}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}} {
		if strings.HasSuffix(t, u.suf) {
			t, mult = strings.TrimSuffix(t, u.suf), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional unit such as 100MB, 64MiB, 1G", s)
	}
	return int64(v * mult), nil
}

// ParseFree reads a free-space amount: a size (see ParseSize) or a
// percentage of the file system ("5%"), which total turns into bytes.
func ParseFree(s string, total int64) (int64, error) {
	if p, ok := strings.CutSuffix(strings.TrimSpace(s), "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v < 0 || v > 100 {
			return 0, fmt.Errorf("free space %q: want a percentage between 0%% and 100%%, or a size such as 2GB", s)
		}
		return int64(v / 100 * float64(total)), nil
	}
	return ParseSize(s)
}
