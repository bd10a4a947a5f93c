package swap

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// Hashing a file through mappings gives what reading it gives, across
// window boundaries and for sizes that are not a multiple of a page.
func TestHashFileMatchesRead(t *testing.T) {
	defer func(w int64) { mapWindow = w }(mapWindow)
	mapWindow = 1 << 20
	for _, size := range []int64{1, 4095, 4096, 1<<20 - 1, 1 << 20, 3<<20 + 777} {
		p := filepath.Join(t.TempDir(), "f")
		b := make([]byte, size)
		rand.Read(b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		h := xxhash.New()
		n, err := hashFile(h, f, size)
		f.Close()
		if err != nil || n != size {
			t.Fatalf("size %d: hashed %d bytes, %v", size, n, err)
		}
		if got, want := h.Sum64(), xxhash.Sum64(b); got != want {
			t.Errorf("size %d: mapped digest %x, read digest %x", size, got, want)
		}
	}
}

// A file truncated while its mapping is hashed is an error, not a crash
// (reading a mapping past the file's new end raises SIGBUS).
func TestHashMappedFileTruncatedUnderfoot(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := syscall.Mmap(int(f.Fd()), 0, 1<<20, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(b)
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if err := hashMapped(sha256.New(), b); !errors.Is(err, errMappedFault) {
		t.Fatalf("hashing a mapping of a truncated file: %v, want errMappedFault", err)
	}
}

// How much CPU hashing a cached file costs read out (copyLarge) and
// mapped (hashFile): go test -run '^$' -bench HashCachedFile ./swap/
func BenchmarkHashCachedFile(b *testing.B) {
	p := filepath.Join(b.TempDir(), "f")
	data := make([]byte, 100<<20)
	rand.Read(data)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		b.Fatal(err)
	}
	for _, way := range []string{"read", "mapped"} {
		b.Run(way, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			var before, after syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			for b.Loop() {
				f, err := os.Open(p)
				if err != nil {
					b.Fatal(err)
				}
				h := xxhash.New()
				if way == "read" {
					_, err = copyLarge(h, f)
				} else {
					_, err = hashFile(h, f, int64(len(data)))
				}
				f.Close()
				if err != nil {
					b.Fatal(err)
				}
			}
			syscall.Getrusage(syscall.RUSAGE_SELF, &after)
			cpu := func(r syscall.Rusage) float64 {
				return float64(r.Utime.Nano()+r.Stime.Nano()) / 1e6
			}
			b.ReportMetric((cpu(after)-cpu(before))/float64(b.N), "cpu-ms/op")
		})
	}
}
