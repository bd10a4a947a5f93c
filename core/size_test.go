package core

import "testing"

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

func TestParseFree(t *testing.T) {
	for in, want := range map[string]int64{"5%": 50, "0%": 0, "100%": 1000, "2KB": 2000} {
		if got, err := ParseFree(in, 1000); err != nil || got != want {
			t.Errorf("ParseFree(%q, 1000) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"150%", "-1%", "x%", "lots"} {
		if _, err := ParseFree(in, 1000); err == nil {
			t.Errorf("ParseFree(%q) accepted", in)
		}
	}
}
