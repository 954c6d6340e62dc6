package afxdp

import (
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestRxQueues checks that RxQueues reads the queues a veth uses, not the most it was created
// with: a veth made without a queue count has one per possible CPU but uses one.
func TestRxQueues(t *testing.T) {
	for _, tc := range []struct {
		create, want int
	}{{0, 1}, {1, 1}, {2, 2}} {
		e := newVethNS(t, tc.create)
		err := e.Run(func() error {
			l, err := netlink.LinkByName("va")
			if err != nil {
				return err
			}
			got, err := RxQueues("va", l.Attrs().NumRxQueues)
			if err != nil {
				return err
			}
			if got != tc.want {
				t.Errorf("veth created with %d queues (netlink: %d, CPUs %d): RxQueues %d, want %d",
					tc.create, l.Attrs().NumRxQueues, runtime.NumCPU(), got, tc.want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := RxQueues("no-such-if0", 1); err == nil {
		t.Error("RxQueues of a missing interface: no error")
	}
}
