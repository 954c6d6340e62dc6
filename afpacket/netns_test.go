package afpacket

import (
	"net"
	"testing"

	"github.com/l2lb/l2lb/internal/nstest"
	"github.com/vishvananda/netlink"
)

// vethEnv is a namespace with lo up and a veth pair va <-> vb, both up (nstest.NewVeth).
type vethEnv struct {
	ns   *nstest.NS
	a, b net.Interface
	lo   net.Interface
}

func newVethEnv(t testing.TB) *vethEnv {
	t.Helper()
	v := nstest.NewVeth(t, "afp", 0)
	return &vethEnv{ns: v.NS, a: v.A, b: v.B, lo: v.Lo}
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
