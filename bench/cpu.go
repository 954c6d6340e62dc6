package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrProcStat means a /proc stat file could not be parsed.
var ErrProcStat = errors.New("bench: malformed /proc stat")

// ProcessCPU returns the CPU time pid's threads have used so far, read from
// the process's CPU-time clock (clock_getcpuclockid(3): the clock id is
// MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) from include/linux/posix-timers.h,
// i.e. ^pid<<3 | 2). That clock is the scheduler's sum_exec_runtime in
// nanoseconds; /proc/PID/stat's utime and stime are only sampled at each
// 4 ms tick (CONFIG_TICK_CPU_ACCOUNTING), which misattributes a workload that
// runs in short bursts. Neither excludes softirq work the kernel runs on
// the process's own stack (this kernel has no CONFIG_IRQ_TIME_ACCOUNTING).
func ProcessCPU(pid int) (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^uint32(pid)<<3|2), &ts); err != nil {
		return 0, fmt.Errorf("bench: CPU clock of pid %d: %w", pid, err)
	}
	return time.Duration(ts.Nano()), nil
}

// clockTick is USER_HZ, the unit of the times in /proc/stat. proc(5) says to
// read it with sysconf(_SC_CLK_TCK); Linux has fixed it at 100 for user
// space on every architecture since 2.6 (include/asm-generic/param.h), and
// reading sysconf would need cgo.
const clockTick = 10 * time.Millisecond

// ParseSystemCPU returns the busy and total CPU time summed over all CPUs
// from the first ("cpu ") line of /proc/stat. Busy is user, nice, system,
// irq and softirq; idle and iowait are not busy, and steal is time the
// hypervisor gave to someone else, so it is neither busy here nor work this
// machine did. Guest time is already included in user (proc(5)), so the
// guest columns are not added again.
func ParseSystemCPU(b []byte) (busy, total time.Duration, err error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("%w: first line %q", ErrProcStat, line)
	}
	// user nice system idle iowait irq softirq steal [guest guest_nice]
	var v [8]uint64
	for i := range v {
		n, err := strconv.ParseUint(f[1+i], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%w: %q", ErrProcStat, f[1+i])
		}
		v[i] = n
	}
	var sum uint64
	for _, n := range v {
		sum += n
	}
	b0 := v[0] + v[1] + v[2] + v[5] + v[6]
	return time.Duration(b0) * clockTick, time.Duration(sum) * clockTick, nil
}

// SystemCPU reads ParseSystemCPU from /proc/stat.
func SystemCPU() (busy, total time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	return ParseSystemCPU(b)
}

// ParseSwitches returns the voluntary plus nonvoluntary context switches in the text of a
// /proc/PID/task/TID/status file (proc(5): voluntary_ctxt_switches, nonvoluntary_ctxt_switches).
func ParseSwitches(b []byte) (uint64, error) {
	var sum uint64
	found := 0
	for line := range bytes.Lines(b) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || (string(k) != "voluntary_ctxt_switches" && string(k) != "nonvoluntary_ctxt_switches") {
			continue
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: %s: %q", ErrProcStat, k, bytes.TrimSpace(v))
		}
		sum += n
		found++
	}
	if found != 2 {
		return 0, fmt.Errorf("%w: no context switch counts", ErrProcStat)
	}
	return sum, nil
}

// ProcessSwitches returns the context switches pid's threads have made so far, summed over
// /proc/PID/task. Every wait of a fast-path worker in poll(2) and every sleep of the Go runtime's
// sysmon thread is one, so at a fixed rate their number per frame shows how well wake-ups are
// shared (issue 14: sysmon's 20 µs polling was most of them until workers yielded).
// A thread that exits between the directory read and its status read is skipped.
func ProcessSwitches(pid int) (uint64, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("bench: threads of pid %d: %w", pid, err)
	}
	var sum uint64
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/status")
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			continue
		}
		if err != nil {
			return 0, err
		}
		n, err := ParseSwitches(b)
		if err != nil {
			return 0, fmt.Errorf("%s/%s: %w", dir, t.Name(), err)
		}
		sum += n
	}
	return sum, nil
}

// The machine is quiet when its CPUs were busy for less than quietShare of
// a quietWindow. A bench started right after a full test run (whose
// namespaces the kernel may still be removing: netns cleanup runs later
// from a workqueue, net/core/net_namespace.c) measured direct delivery at
// three times its usual system CPU per frame and so printed a negative
// forwarding cost for the kernel router.
const (
	quietShare  = 0.10
	quietWindow = 250 * time.Millisecond
	quietWait   = 10 * time.Second
)

// waitQuiet samples the machine's busy share over consecutive windows of
// window until one is below quietShare, for at most limit. It returns the
// last window's busy share and whether the machine was quiet by then;
// sample reads the cumulative busy and total CPU time (SystemCPU) and sleep
// waits for the window or fails when ctx ends.
func waitQuiet(ctx context.Context, sample func() (busy, total time.Duration, err error),
	sleep func(context.Context, time.Duration) error, window, limit time.Duration) (share float64, quiet bool, err error) {
	b0, t0, err := sample()
	if err != nil {
		return 0, false, err
	}
	for waited := time.Duration(0); waited < limit; waited += window {
		if err := sleep(ctx, window); err != nil {
			return share, false, err
		}
		b1, t1, err := sample()
		if err != nil {
			return share, false, err
		}
		if t1 > t0 {
			share = float64(b1-b0) / float64(t1-t0)
			if share < quietShare {
				return share, true, nil
			}
		}
		b0, t0 = b1, t1
	}
	return share, false, nil
}
