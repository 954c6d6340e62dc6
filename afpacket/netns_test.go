package afpacket

import (
	"fmt"
	"github.com/l2lb/l2lb/internal/e2e"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNS is a named network namespace owned by one test.
type testNS struct {
	name string
	h    netns.NsHandle
}

// newNS creates a uniquely named namespace and removes it at cleanup.
func newNS(t testing.TB) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		e2e.Prereq(t, "needs root to create network namespaces")
	}
	name := fmt.Sprintf("l2lb-afp-%d-%08x", os.Getpid(), rand.Uint32())
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		e2e.Prereq(t, "cannot read the current netns: %v", err)
	}
	defer orig.Close()
	h, nerr := netns.NewNamed(name) // also moves this thread into it
	if serr := netns.Set(orig); serr != nil {
		// Leave the thread locked: it is in the wrong namespace and dies
		// with this goroutine.
		t.Fatalf("cannot return to the original netns: %v", serr)
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		e2e.Prereq(t, "cannot create netns %s: %v", name, nerr)
	}
	ns := &testNS{name: name, h: h}
	t.Cleanup(func() {
		_ = h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return ns
}

// run calls fn on an OS thread that is inside the namespace; sockets
// created by fn belong to the namespace.
func (ns *testNS) run(t testing.TB, fn func() error) error {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns.h); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		t.Fatalf("cannot return to the original netns: %v", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// vethEnv is a namespace with lo up and a veth pair va <-> vb, both up.
type vethEnv struct {
	ns   *testNS
	a, b net.Interface
	lo   net.Interface
}

func newVethEnv(t testing.TB) *vethEnv {
	t.Helper()
	ns := newNS(t)
	env := &vethEnv{ns: ns}
	err := ns.run(t, func() error {
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

// open opens a Socket inside the namespace and closes it at cleanup.
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

func (e *vethEnv) open(t testing.TB, cfg Config) *Socket {
	t.Helper()
	var s *Socket
	if err := e.ns.run(t, func() (err error) { s, err = Open(cfg); return err }); err != nil {
		t.Fatalf("Open(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// promiscuity returns the interface's promiscuity counter (IFLA_PROMISCUITY).
func (e *vethEnv) promiscuity(t testing.TB, name string) int {
	t.Helper()
	var p int
	if err := e.ns.run(t, func() error {
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
