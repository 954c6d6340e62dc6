package afpacket

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/nstest"
	"github.com/vishvananda/netlink"
)

// vethEnv is a namespace with lo up and a veth pair va <-> vb, both up.
type vethEnv struct {
	ns   *nstest.NS
	a, b net.Interface
	lo   net.Interface
}

func newVethEnv(t testing.TB) *vethEnv {
	t.Helper()
	ns := nstest.New(t, "afp")
	env := &vethEnv{ns: ns}
	err := ns.Run(func() error {
		// No IPv6 in the namespace: router/neighbour solicitations would
		// add frames the exact-count tests do not expect. These are the
		// new namespace's own sysctls.
		for _, p := range []string{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"} {
			if _, err := os.Stat(p); err == nil {
				if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
					return err
				}
			}
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "va"}, PeerName: "vb"}
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
		// Frames sent before linkwatch activates the qdisc (operstate
		// UP) are silently dropped by noop_qdisc, so wait for it.
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
		for n, dst := range map[string]*net.Interface{"lo": &env.lo, "va": &env.a, "vb": &env.b} {
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
	return env
}

// sendBurst sends n numbered 200-byte test frames with virtio_net_hdr from a
// to b in one SendBatch, on a transmit socket of its own.
func (e *vethEnv) sendBurst(t testing.TB, n int) {
	t.Helper()
	tx := e.open(t, Config{Ifindex: e.a.Index, VnetHdr: true})
	batch := make([][]byte, n)
	for i := range batch {
		batch[i] = withVnet(testFrame(e.b.HardwareAddr, e.a.HardwareAddr, uint64(i), 200))
	}
	if sent, err := tx.SendBatch(batch); err != nil || sent != n {
		t.Fatalf("SendBatch: %d, %v", sent, err)
	}
}

// open opens a Socket inside the namespace and closes it at cleanup.
func (e *vethEnv) open(t testing.TB, cfg Config) *Socket {
	t.Helper()
	var s *Socket
	if err := e.ns.Run(func() (err error) { s, err = Open(cfg); return err }); err != nil {
		t.Fatalf("Open(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// promiscuity returns the interface's promiscuity counter (IFLA_PROMISCUITY).
func (e *vethEnv) promiscuity(t testing.TB, name string) int {
	t.Helper()
	var p int
	if err := e.ns.Run(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		p = l.Attrs().Promisc
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return p
}
