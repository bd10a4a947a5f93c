package swarm

import (
	"os"
	"syscall"
)

// fileIOEnv is where anacrolix/torrent v1.61 reads its file I/O mode, once,
// at package init; there is no option for it.
const fileIOEnv = "TORRENT_STORAGE_DEFAULT_FILE_IO"

// ExecWithClassicFileIO re-executes this process with the engine's
// classic (pread/pwrite) file I/O unless the environment already chooses
// one. The engine's default, mmap, grows RSS by every archive it touches.
// Call it first thing in main — and in TestMain, so tests run the file
// I/O the agent runs (they ran mmap, whose flushes and reads differ).
// It returns only if the re-exec failed; the process then carries on
// with mmap.
func ExecWithClassicFileIO() {
	if _, ok := os.LookupEnv(fileIOEnv); ok {
		return
	}
	if exe, err := os.Executable(); err == nil {
		_ = syscall.Exec(exe, os.Args, append(os.Environ(), fileIOEnv+"=classic"))
	}
}
