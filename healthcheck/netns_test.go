package healthcheck

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/l2lb/l2lb/internal/realservers"
)

// require fails under CI=true and skips elsewhere when the tests cannot
// create network namespaces or a needed program is missing.
func require(t *testing.T, ok bool, why string) {
	t.Helper()
	realservers.Require(t, ok, why)
}

// testNS is a private network namespace with only lo (127.0.0.1, ::1) up,
// removed when the test ends. Servers run inside it; nothing touches the
// host's interfaces.
type testNS struct {
	name string
}

func newNS(t *testing.T) *testNS {
	t.Helper()
	require(t, os.Geteuid() == 0, "network namespaces need root")
	_, err := exec.LookPath("ip")
	require(t, err == nil, "ip (iproute2) is not installed")
	n := &testNS{name: "l2lbhc-" + strings.ToLower(rand.Text()[:10])}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", n.name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	return n
}

// do runs fn on an OS thread switched into the namespace; sockets created by
// fn stay in it for their whole life (network_namespaces(7)).
func (n *testNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(n.name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = fn()
		if rerr := netns.Set(orig); rerr != nil {
			// Leave the thread locked: the runtime then discards it.
			errc <- fmt.Errorf("restore namespace: %w", rerr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// DialContext makes testNS a Dialer whose sockets live in the namespace,
// standing in for the balancer's per-frontend dialer.
func (n *testNS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

func (n *testNS) listen(t *testing.T, network, address string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := n.do(func() (err error) { ln, err = net.Listen(network, address); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func (n *testNS) listenUDP(t *testing.T, address string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	if err := n.do(func() (err error) { pc, err = net.ListenPacket("udp", address); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// Command runs name in the namespace (`ip netns exec`, which execs it in place), so
// realservers can start daemons there.
func (n *testNS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}
