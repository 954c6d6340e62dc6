package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrProcStat means a /proc stat file could not be parsed.
var ErrProcStat = errors.New("bench: malformed /proc stat")

// clockTick is USER_HZ, the unit of the times in /proc/PID/stat and
// /proc/stat. proc(5) says to read it with sysconf(_SC_CLK_TCK); Linux has
// fixed it at 100 for user space on every architecture since 2.6
// (include/asm-generic/param.h), and reading sysconf would need cgo.
const clockTick = 10 * time.Millisecond

// ParseProcStat returns the user and system CPU time in a /proc/PID/stat
// line. Per proc(5) utime and stime are fields 14 and 15, counted from 1,
// and the second field, comm, is in parentheses and may itself contain
// spaces and parentheses, so fields are counted from the last ')'.
func ParseProcStat(b []byte) (user, sys time.Duration, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("%w: no ')' in %q", ErrProcStat, b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field k is f[k-3].
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("%w: %d fields after comm", ErrProcStat, len(f))
	}
	u, err1 := strconv.ParseUint(f[14-3], 10, 64)
	s, err2 := strconv.ParseUint(f[15-3], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%w: utime %q stime %q", ErrProcStat, f[14-3], f[15-3])
	}
	return time.Duration(u) * clockTick, time.Duration(s) * clockTick, nil
}

// ProcessCPU returns the user plus system CPU time pid has used so far.
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	u, s, err := ParseProcStat(b)
	return u + s, err
}

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
