package swap

import (
	"errors"
	"fmt"
	"hash"
	"os"
	"runtime/debug"
	"syscall"
)

// hashFile writes the first size bytes of f into h, reading them through a
// read-only shared mapping of the page cache instead of copying them out
// with read(2): sealing a 100 MB release read it back through a 1 MiB
// buffer, 0.29 CPU-s of kernel copying per 20-host deploy on the bench
// (docs/BENCHMARKS.md), to feed a hash that runs at 13.7 GB/s. Windows of
// mapWindow keep the resident set small; a file that cannot be mapped
// (an odd file system) is read the old way. It returns the bytes hashed.
func hashFile(h hash.Hash, f *os.File, size int64) (int64, error) {
	var n int64
	for n < size {
		w := min(size-n, mapWindow)
		b, err := syscall.Mmap(int(f.Fd()), n, int(w), syscall.PROT_READ, syscall.MAP_SHARED|syscall.MAP_POPULATE)
		if err != nil {
			if n == 0 {
				return copyLarge(h, f)
			}
			return n, fmt.Errorf("map %s at %d: %w", f.Name(), n, err)
		}
		err = hashMapped(h, b)
		_ = syscall.Munmap(b)
		if err != nil {
			return n, fmt.Errorf("%s at %d: %w", f.Name(), n, err)
		}
		n += w
	}
	return n, nil
}

// mapWindow is how much of a file is mapped at once (a multiple of the
// page size; a variable for tests). Mapped pages count in the process's
// resident set while mapped: 64 MiB windows put every agent's peak RSS
// 60 MiB up in the bench (seal time), 4 MiB leaves it where it was and
// costs the same CPU (BenchmarkHashCachedFile).
var mapWindow int64 = 4 << 20

// errMappedFault: a mapped file shrank under the hash (someone truncated
// it): reading past its new end faults instead of returning short.
var errMappedFault = errors.New("the file shrank while it was read")

// hashMapped writes b, a file mapping, into h; a fault while reading it
// (the file was truncated meanwhile: SIGBUS) is an error, not a crash.
func hashMapped(h hash.Hash, b []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(interface{ Addr() uintptr }); !ok {
				panic(r)
			}
			err = errMappedFault
		}
	}()
	h.Write(b)
	return nil
}
