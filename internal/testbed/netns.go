package testbed

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns add` bind-mounts named namespaces
// (ip-netns(8)).
const netnsDir = "/run/netns"

// Do runs fn on a goroutine locked to an OS thread that has been switched
// into the host's network namespace, and waits for it. Sockets created by fn
// belong to that namespace for their whole life, so they may be used from any
// goroutine after Do returns. fn must not start goroutines that expect to be
// in the namespace.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		errc <- h.doLocked(fn)
	}()
	return <-errc
}

func (h *Host) doLocked(fn func() error) (err error) {
	runtime.LockOSThread()
	target, err := netns.GetFromName(h.NS)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("testbed: open namespace %s: %w", h.NS, err)
	}
	defer target.Close()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("testbed: current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("testbed: enter namespace %s: %w", h.NS, err)
	}
	defer func() {
		// Only a thread that is back in its original namespace may return
		// to the scheduler's pool. If restoring fails the goroutine exits
		// still locked, and the Go runtime then terminates the thread
		// (runtime.LockOSThread documentation).
		if rerr := netns.Set(orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("testbed: leave namespace %s: %w", h.NS, rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("testbed: panic inside namespace %s: %v", h.NS, p)
		}
	}()
	return fn()
}

// Command returns a command that runs `ip netns exec NS name args...`, i.e.
// the program inside the host's namespace. Close kills it (and anything else
// still running in the bed's namespaces) if it is still alive. The child gets
// its own process group, so a terminal's Ctrl-C reaches only the caller, who
// then cleans up through Close, and SIGKILL if the caller dies.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// sysctlPath maps a dotted sysctl key to its /proc/sys path. Keys containing
// interface names with dots are not supported (none are used here).
func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// Sysctl reads a sysctl as seen inside the host's namespace. /proc/sys/net
// resolves against the network namespace of the thread that opens it, which
// is why the file is opened inside Do.
func (h *Host) Sysctl(key string) (string, error) {
	var v string
	err := h.Do(func() error {
		b, err := os.ReadFile(sysctlPath(key))
		if err != nil {
			return fmt.Errorf("testbed: %s: read %s: %w", h.NS, key, err)
		}
		v = strings.Join(strings.Fields(string(b)), " ")
		return nil
	})
	return v, err
}

// SetSysctl writes a sysctl inside the host's namespace and reads it back.
func (h *Host) SetSysctl(key, value string) error {
	err := h.Do(func() error {
		if err := os.WriteFile(sysctlPath(key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("testbed: %s: write %s=%s: %w", h.NS, key, value, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	got, err := h.Sysctl(key)
	if err != nil {
		return err
	}
	if want := strings.Join(strings.Fields(value), " "); got != want {
		return fmt.Errorf("%w: %s: %s is %q, want %q", ErrSysctl, h.NS, key, got, want)
	}
	return nil
}

// leftover matches the namespaces New creates and captures the creator's pid.
var leftover = regexp.MustCompile(`^` + regexp.QuoteMeta(NamePrefix) + `([0-9]+)-[0-9a-f]{4}-[a-z0-9]+$`)

// Sweep removes namespaces left behind by interrupted runs: those named
// l2lb-<pid>-* whose pid no longer exists. Processes still running inside
// them are killed first. Namespaces of live processes are left alone.
func Sweep() error {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("testbed: sweep: %w", err)
	}
	var errs []error
	for _, e := range entries {
		m := leftover.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		if err := killNamespaceProcs(e.Name()); err != nil {
			errs = append(errs, err)
		}
		if err := deleteNamespace(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// processAlive reports whether pid runs. A zombie (killed, not yet reaped
// by its parent) counts as dead: it holds no namespace and runs no code.
func processAlive(pid int) bool {
	// EPERM means it exists but belongs to someone else.
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist)
	}
	// proc(5): "pid (comm) state ..."; comm may contain spaces and
	// parentheses, so the state follows the last ')'.
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// killNamespaceProcs sends SIGKILL to every process whose network namespace
// is the named one (what `ip netns pids` lists), except this process: one of
// its threads may be inside the namespace for a Do call.
func killNamespaceProcs(name string) error {
	var target unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsDir, name), &target); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("testbed: stat namespace %s: %w", name, err)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("testbed: list processes: %w", err)
	}
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", p.Name(), "ns", "net"), &st) != nil {
			continue // exited meanwhile, or a kernel thread
		}
		if st.Dev == target.Dev && st.Ino == target.Ino {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
	return nil
}

// deleteNamespace does what `ip netns del` does: detach the bind mount and
// remove the file. The namespace itself disappears with its last user. It
// tolerates a half-created entry (file without mount) and a missing one.
func deleteNamespace(name string) error {
	p := filepath.Join(netnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("testbed: unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("testbed: remove %s: %w", p, err)
	}
	return nil
}
