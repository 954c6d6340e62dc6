// Package nstest gives a test its own network namespace: uniquely named, entered on a locked
// thread for the code that must run inside it, and deleted when the test ends, failed or not.
// Tests that need root skip outside CI and fail under CI=true (e2e.Prereq).
package nstest

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/vishvananda/netns"
)

// NS is a named network namespace owned by one test.
type NS struct {
	// Name is the namespace's name under /run/netns (`ip netns list` shows it).
	Name string
	// Handle is an open handle on the namespace.
	Handle netns.NsHandle
}

// New creates a namespace named l2lb-<prefix>-<pid>-<random> and deletes it when t ends. It
// needs root; without it, or when the kernel refuses, the test skips (fails under CI=true).
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		e2e.Prereq(t, "needs root to create network namespaces")
	}
	name := fmt.Sprintf("l2lb-%s-%d-%08x", prefix, os.Getpid(), rand.Uint32())
	// netns.NewNamed also moves the calling thread into the new namespace; the thread is
	// locked around it and moved back, so no other goroutine runs in the wrong namespace.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		e2e.Prereq(t, "cannot read the current netns: %v", err)
	}
	h, nerr := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("cannot return to the original netns: %v", serr) // the thread dies locked
	}
	orig.Close()
	runtime.UnlockOSThread()
	if nerr != nil {
		// A failed bind mount leaves NewNamed's empty mount point behind; a name that already
		// existed is not ours to remove.
		if !errors.Is(nerr, fs.ErrExist) {
			_ = os.Remove(filepath.Join("/run/netns", name))
		}
		e2e.Prereq(t, "cannot create netns %s: %v", name, nerr)
	}
	ns := &NS{Name: name, Handle: h}
	t.Cleanup(func() {
		_ = h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return ns
}

// Run calls fn on a thread inside the namespace and returns its error. Sockets fn creates stay
// in the namespace; goroutines fn starts run wherever the scheduler puts them. If the thread
// cannot return to the original namespace it exits locked, so the Go runtime discards it.
func (ns *NS) Run(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("nstest: current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns.Handle); err != nil {
			errc <- fmt.Errorf("nstest: enter %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("nstest: leave %s: %w", ns.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
