package nstest

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/vishvananda/netlink"
)

// Veth is a namespace of its own (New) with IPv6 off, lo up and a veth pair va <-> vb, both up.
type Veth struct {
	*NS
	// A and B are va and vb; Lo is the namespace's lo.
	A, B, Lo net.Interface
}

// NewVeth builds a Veth whose veth pair has queues receive and transmit queues (0: the
// kernel's default). It waits until both ends are operationally up: frames sent before
// linkwatch activates the qdisc are dropped silently by noop_qdisc. Like New, it skips outside
// CI and fails under CI=true when the namespace cannot be built.
func NewVeth(t testing.TB, prefix string, queues int) *Veth {
	t.Helper()
	v := &Veth{NS: New(t, prefix)}
	err := v.Run(func() error {
		// No IPv6 in the namespace: router and neighbour solicitations would add frames that
		// exact-count tests do not expect. These are the new namespace's own sysctls.
		for _, p := range []string{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"} {
			if err := os.WriteFile(p, []byte("1"), 0o644); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "va", NumRxQueues: queues, NumTxQueues: queues},
			PeerName: "vb"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		for _, n := range []string{"lo", "va", "vb"} {
			l, err := netlink.LinkByName(n)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("up %s: %w", n, err)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for _, n := range []string{"va", "vb"} {
			for {
				l, err := netlink.LinkByName(n)
				if err != nil {
					return err
				}
				if l.Attrs().OperState == netlink.OperUp {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("%s operstate %v after 5s", n, l.Attrs().OperState)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		for n, dst := range map[string]*net.Interface{"lo": &v.Lo, "va": &v.A, "vb": &v.B} {
			ifi, err := net.InterfaceByName(n)
			if err != nil {
				return err
			}
			*dst = *ifi
		}
		return nil
	})
	if err != nil {
		e2e.Prereq(t, "cannot build the veth testbed: %v", err)
	}
	return v
}
