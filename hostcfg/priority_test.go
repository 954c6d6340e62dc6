package hostcfg

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/l2lb/l2lb/internal/e2e"
)

// TestThreadNiceValidate checks the range ThreadNice accepts.
func TestThreadNiceValidate(t *testing.T) {
	for _, n := range []int{-20, -10, -1} {
		if err := ThreadNice(n).Validate(); err != nil {
			t.Errorf("nice %d refused: %v", n, err)
		}
	}
	for _, n := range []int{-21, 0, 5, 19} {
		if err := ThreadNice(n).Validate(); !errors.Is(err, ErrBadNice) {
			t.Errorf("nice %d: err %v, want ErrBadNice", n, err)
		}
	}
	if _, err := ThreadNice(3).Raise(); !errors.Is(err, ErrBadNice) {
		t.Errorf("Raise to nice 3: err %v, want ErrBadNice", err)
	}
}

// TestThreadNiceRaise raises the test goroutine's thread and checks that the raise reaches that
// thread only, and that restore puts the value back. It needs CAP_SYS_NICE (root).
func TestThreadNiceRaise(t *testing.T) {
	if os.Geteuid() != 0 {
		e2e.Prereq(t, "raising a thread's priority needs CAP_SYS_NICE; run as root")
	}
	// Our own lock keeps the goroutine on the thread across restore's unlock (locks nest), so
	// the value read after restore is that thread's.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := ThreadNiceOf()
	if err != nil {
		t.Fatal(err)
	}
	target := ThreadNice(-7)
	if before <= int(target) {
		t.Fatalf("the test runs at nice %d already; want a process above %d", before, int(target))
	}
	restore, err := target.Raise()
	if err != nil {
		t.Fatalf("Raise: %v", err)
	}
	if got, _ := ThreadNiceOf(); got != int(target) {
		t.Fatalf("thread's nice %d after Raise, want %d", got, int(target))
	}
	// Another thread of the process keeps its value.
	other := make(chan int)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		n, _ := ThreadNiceOf()
		other <- n
	}()
	if n := <-other; n != before {
		t.Fatalf("another thread reads nice %d while one is raised, want %d", n, before)
	}
	if err := restore(); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got, _ := ThreadNiceOf(); got != before {
		t.Fatalf("thread's nice %d after restore, want %d", got, before)
	}
}
