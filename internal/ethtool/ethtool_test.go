package ethtool_test

import (
	"errors"
	"testing"

	"github.com/l2lb/l2lb/internal/ethtool"
	"github.com/l2lb/l2lb/internal/nstest"
	"github.com/vishvananda/netlink"
)

// TestVethChannels checks Get and Set against a real veth made with two queues: Get reads
// the maxima and the counts in use, Set changes the counts in use on both ends (the bench sets
// its veth's count to the AF_XDP worker count) and refuses counts beyond the maxima; lo has no
// channel operations.
func TestVethChannels(t *testing.T) {
	ns := nstest.New(t, "ethtool")
	err := ns.Run(func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ea", NumRxQueues: 2, NumTxQueues: 2}, PeerName: "eb"}); err != nil {
			return err
		}
		c, err := ethtool.Get("ea")
		if err != nil {
			return err
		}
		if c.MaxRx != 2 || c.MaxTx != 2 || c.Rx != 2 || c.Tx != 2 || c.RxQueues() != 2 {
			t.Errorf("veth with 2 queues: %+v", c)
		}
		for _, n := range []string{"ea", "eb"} {
			if err := ethtool.Set(n, ethtool.Channels{Rx: 1, Tx: 1}); err != nil {
				return err
			}
		}
		if c, err = ethtool.Get("ea"); err != nil {
			return err
		}
		if c.Rx != 1 || c.Tx != 1 || c.MaxRx != 2 {
			t.Errorf("after Set rx 1 tx 1: %+v", c)
		}
		if err := ethtool.Set("ea", ethtool.Channels{Rx: 3, Tx: 3}); err == nil {
			t.Error("Set beyond the maximum: no error")
		}
		if _, err := ethtool.Get("lo"); !errors.Is(err, ethtool.ErrNotSupported) {
			t.Errorf("lo: %v, want ErrNotSupported", err)
		}
		if _, err := ethtool.Get("no-such-if0"); err == nil {
			t.Error("missing interface: no error")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
