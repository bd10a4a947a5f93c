package swap

import (
	"os"
	"syscall"
	"time"
)

// FaultEnv names the environment variable of the crash tests: when it
// holds the name of a step (see the fault calls), the process SIGKILLs
// itself right there, as a power cut or kill -9 would stop it. Unset in
// production; the e2e fault suite restarts the agent without it and
// checks what it finds.
const FaultEnv = "SHOAL_FAULT_KILL_AT"

// PauseEnv names a step at which the process sleeps PauseFor instead, so
// a test can change the world there (fill the disk before an unpack).
const PauseEnv = "SHOAL_FAULT_PAUSE_AT"

// PauseFor is how long a pause at PauseEnv's step lasts.
const PauseFor = 5 * time.Second

var faultAt, pauseAt = os.Getenv(FaultEnv), os.Getenv(PauseEnv)

// fault kills the process if the fault suite asked for a crash at step,
// or sleeps if it asked for a pause there.
func fault(step string) {
	if faultAt != "" && faultAt == step {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
	if pauseAt != "" && pauseAt == step {
		time.Sleep(PauseFor)
	}
}

// Fault is fault for the steps other packages own (the agent's state writes).
func Fault(step string) { fault(step) }
