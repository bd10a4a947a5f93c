package swap

import (
	"os"
	"syscall"
)

// FaultEnv names the environment variable of the crash tests: when it
// holds the name of a step (see the fault calls), the process SIGKILLs
// itself right there, as a power cut or kill -9 would stop it. Unset in
// production; the e2e fault suite restarts the agent without it and
// checks what it finds.
const FaultEnv = "SHOAL_FAULT_KILL_AT"

var faultAt = os.Getenv(FaultEnv)

// fault kills the process if the fault suite asked for a crash at step.
func fault(step string) {
	if faultAt != "" && faultAt == step {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}

// Fault is fault for the steps other packages own (the agent's state writes).
func Fault(step string) { fault(step) }
