package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MachineCPU is CPU time the whole machine spent, in seconds, split as
// /proc/stat splits it (softirq is where the kernel moves packets).
type MachineCPU struct {
	User    float64 `json:"user"`
	System  float64 `json:"system"`
	Softirq float64 `json:"softirq"`
	Total   float64 `json:"total"` // busy: everything but idle and iowait
}

func (a MachineCPU) sub(b MachineCPU) MachineCPU {
	return MachineCPU{User: a.User - b.User, System: a.System - b.System, Softirq: a.Softirq - b.Softirq, Total: a.Total - b.Total}
}

// readMachineCPU reads the "cpu" line of /proc/stat.
func readMachineCPU() MachineCPU {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return MachineCPU{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return MachineCPU{}
	}
	v := make([]float64, len(f)-1)
	for i := range v {
		x, _ := strconv.ParseFloat(f[i+1], 64)
		v[i] = x / 100 // USER_HZ
	}
	// user nice system idle iowait irq softirq steal ...
	m := MachineCPU{User: v[0] + v[1], System: v[2] + v[5], Softirq: v[6]}
	for i, x := range v {
		if i != 3 && i != 4 && i < 8 {
			m.Total += x
		}
	}
	return m
}

// procCPU is one process's user+system CPU seconds.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) <= 12 {
		return 0
	}
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / 100
}

// account fills the CPU-per-byte figures: machine CPU for the run, per GB
// delivered (N copies of the build), and the median fetching host's CPU
// per GB it received.
func (r *Result) account(machine MachineCPU, hostCPU []float64) {
	r.Machine = machine
	gb := float64(r.Size) / 1e9
	if delivered := gb * float64(r.N); delivered > 0 {
		r.CPUPerGB = machine.Total / delivered
	}
	if gb > 0 && len(hostCPU) > 0 {
		r.HostCPUPerGB = Percentile(hostCPU, 50) / gb
	}
}
