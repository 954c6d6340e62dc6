package afxdp

import (
	"runtime"
	"testing"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
)

// TestRxQueues checks that RxQueues reads the queues a veth uses, not the most it was created
// with: a veth made without a queue count has one per possible CPU but uses one, and lowering
// a 2-queue veth's count (ethtool -L) lowers it; lo has no channel operations and gives the
// fallback.
func TestRxQueues(t *testing.T) {
	for _, tc := range []struct {
		create, lower, want int
	}{{0, 0, 1}, {1, 0, 1}, {2, 0, 2}, {2, 1, 1}} {
		e := newVethNS(t, tc.create)
		err := e.Run(func() error {
			if tc.lower > 0 {
				et, err := ethtool.NewEthtool()
				if err != nil {
					return err
				}
				defer et.Close()
				n := uint32(tc.lower)
				for _, ifname := range []string{"va", "vb"} {
					if _, err := et.SetChannels(ifname, ethtool.Channels{RxCount: n, TxCount: n}); err != nil {
						return err
					}
				}
			}
			l, err := netlink.LinkByName("va")
			if err != nil {
				return err
			}
			got, err := RxQueues("va", l.Attrs().NumRxQueues)
			if err != nil {
				return err
			}
			if got != tc.want {
				t.Errorf("veth created with %d queues, lowered to %d (netlink: %d, CPUs %d): RxQueues %d, want %d",
					tc.create, tc.lower, l.Attrs().NumRxQueues, runtime.NumCPU(), got, tc.want)
			}
			if got, err := RxQueues("lo", 3); err != nil || got != 3 {
				t.Errorf("lo: %d, %v; want the fallback 3", got, err)
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
