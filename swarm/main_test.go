package swarm

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	ExecWithClassicFileIO() // the file I/O the agent runs, not the engine's default
	os.Exit(m.Run())
}
