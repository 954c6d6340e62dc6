package hostcfg

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"
)

// fakeAddrs behaves like the kernel for the calls hostcfg makes: adding an
// existing address fails with EEXIST, deleting a missing one with
// EADDRNOTAVAIL, and an unknown device is an error.
type fakeAddrs struct {
	ifs     map[string][]netip.Prefix
	calls   []string
	listErr error
	failAdd netip.Prefix // Add of this prefix fails
}

func newFakeAddrs(lo ...string) *fakeAddrs {
	f := &fakeAddrs{ifs: map[string][]netip.Prefix{"lo": nil, "eth0": nil}}
	for _, p := range lo {
		f.ifs["lo"] = append(f.ifs["lo"], netip.MustParsePrefix(p))
	}
	return f
}

var errFakeAdd = errors.New("fake add failure")

func (f *fakeAddrs) List(ifname string) ([]netip.Prefix, error) {
	f.calls = append(f.calls, "list "+ifname)
	if f.listErr != nil {
		return nil, f.listErr
	}
	l, ok := f.ifs[ifname]
	if !ok {
		return nil, fmt.Errorf("link %s: %w", ifname, syscall.ENODEV)
	}
	return slices.Clone(l), nil
}

func (f *fakeAddrs) Add(ifname string, p netip.Prefix) error {
	f.calls = append(f.calls, fmt.Sprintf("add %s %s", ifname, p))
	l, ok := f.ifs[ifname]
	if !ok {
		return syscall.ENODEV
	}
	if p == f.failAdd {
		return errFakeAdd
	}
	if slices.Contains(l, p) {
		return syscall.EEXIST
	}
	f.ifs[ifname] = append(l, p)
	return nil
}

func (f *fakeAddrs) Del(ifname string, p netip.Prefix) error {
	f.calls = append(f.calls, fmt.Sprintf("del %s %s", ifname, p))
	l, ok := f.ifs[ifname]
	if !ok {
		return syscall.ENODEV
	}
	i := slices.Index(l, p)
	if i < 0 {
		return syscall.EADDRNOTAVAIL
	}
	f.ifs[ifname] = slices.Delete(l, i, i+1)
	return nil
}

// fakeSysctl is a map of existing keys; unknown keys do not exist, as in /proc.
type fakeSysctl struct {
	vals    map[string]string
	sets    []string
	failSet map[string]error
}

func (f *fakeSysctl) Get(key string) (string, error) {
	v, ok := f.vals[key]
	if !ok {
		return "", fmt.Errorf("sysctl %s: %w", key, os.ErrNotExist)
	}
	return v, nil
}

func (f *fakeSysctl) Set(key, value string) error {
	f.sets = append(f.sets, key+"="+value)
	if err := f.failSet[key]; err != nil {
		return err
	}
	if _, ok := f.vals[key]; !ok {
		return fmt.Errorf("sysctl %s: %w", key, os.ErrNotExist)
	}
	f.vals[key] = value
	return nil
}
