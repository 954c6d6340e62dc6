package hostcfg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrBadKey reports a sysctl key that is not a well-formed key under net.
var ErrBadKey = errors.New("bad sysctl key")

// Sysctl reads and writes kernel parameters named like sysctl(8) does
// ("net.ipv4.conf.all.arp_ignore"). It is an interface so that the doctor can
// be tested and dry-run without touching the kernel.
type Sysctl interface {
	// Get returns the value with surrounding blanks removed; multi-value
	// entries keep their inner separators ("32768\t60999").
	Get(key string) (string, error)
	// Set writes value.
	Set(key, value string) error
}

// procSysctl implements Sysctl on a /proc/sys tree.
type procSysctl struct {
	root string
}

// ProcSysctl returns the real Sysctl, which reads and writes /proc/sys/net.
// Only keys under "net." are accepted: l2lb has no business with others.
//
// Which network namespace it sees: the kernel resolves /proc/sys/net entries
// against the network namespace of the task (OS thread) that opens them, and an
// open file keeps that namespace. Each Get and Set opens, uses and closes the
// file in one call on one goroutine, so it acts on the namespace of the calling
// thread; a caller targeting another namespace must run it on a goroutine
// locked with runtime.LockOSThread to a thread that has joined it (the
// namespace test of this package checks exactly that).
func ProcSysctl() Sysctl { return procSysctl{root: "/proc/sys"} }

// keyPath maps a sysctl key to a path below root. As in sysctl(8), '.'
// separates components and '/' inside a component stands for a '.' in the
// name, so that "net.ipv4.conf.eth0/100.rp_filter" reaches the VLAN device
// eth0.100.
func keyPath(root, key string) (string, error) {
	parts := strings.Split(key, ".")
	if len(parts) < 2 || parts[0] != "net" {
		return "", fmt.Errorf("%w: %q is not under net", ErrBadKey, key)
	}
	for i, p := range parts {
		p = strings.ReplaceAll(p, "/", ".")
		if p == "" || p == "." || p == ".." || strings.ContainsAny(p, "\x00 \t\n") {
			return "", fmt.Errorf("%w: %q", ErrBadKey, key)
		}
		parts[i] = p
	}
	return filepath.Join(append([]string{root}, parts...)...), nil
}

// KeyFor returns the sysctl key of a per-interface IPv4 setting,
// net.ipv4.conf.DEV.NAME, with dots in DEV written as '/' the way sysctl(8)
// expects them.
func KeyFor(dev, name string) string {
	return "net.ipv4.conf." + strings.ReplaceAll(dev, ".", "/") + "." + name
}

// KeyFor6 returns the sysctl key of a per-interface IPv6 setting,
// net.ipv6.conf.DEV.NAME, written like KeyFor.
func KeyFor6(dev, name string) string {
	return "net.ipv6.conf." + strings.ReplaceAll(dev, ".", "/") + "." + name
}

func (s procSysctl) Get(key string) (string, error) {
	path, err := keyPath(s.root, key)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (s procSysctl) Set(key, value string) error {
	path, err := keyPath(s.root, key)
	if err != nil {
		return err
	}
	// No O_CREATE or O_TRUNC: the entry must already exist, as it does in
	// /proc/sys; a missing one means a wrong key or interface name.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", key, err)
	}
	_, werr := f.WriteString(value + "\n")
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, werr)
	}
	if cerr != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, cerr)
	}
	return nil
}

// drySysctl reads through the real Sysctl but only reports writes.
type drySysctl struct {
	s   Sysctl
	log func(string)
}

// DryRunSysctl wraps s so that Get still reads the real value while Set only
// reports the equivalent command ("sysctl -w net.ipv4.conf.all.arp_ignore=1")
// through log and succeeds. A nil log discards the messages.
func DryRunSysctl(s Sysctl, log func(string)) Sysctl {
	if log == nil {
		log = func(string) {}
	}
	return drySysctl{s: s, log: log}
}

func (d drySysctl) Get(key string) (string, error) { return d.s.Get(key) }

func (d drySysctl) Set(key, value string) error {
	d.log("would run: " + sysctlCommand(key, value))
	return nil
}

// sysctlCommand renders the sysctl(8) command that sets key to value, quoting
// values with blanks such as port ranges.
func sysctlCommand(key, value string) string {
	if strings.ContainsAny(value, " \t") {
		return fmt.Sprintf("sysctl -w %s=%q", key, value)
	}
	return fmt.Sprintf("sysctl -w %s=%s", key, value)
}
