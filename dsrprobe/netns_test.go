package dsrprobe

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// requireNetns fails (CI=true) or skips when the test cannot build network
// namespaces.
func requireNetns(t *testing.T) {
	t.Helper()
	var missing string
	if os.Geteuid() != 0 {
		missing = "root privileges"
	} else if _, err := exec.LookPath("ip"); err != nil {
		missing = "iproute2's ip command"
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s are unavailable; namespace tests cannot run", missing)
	}
	t.Skipf("needs %s to create network namespaces", missing)
}

// Probe addresses of the tests: unused in the testbed's numbering (clients
// .1-9 and .101-109, frontends from .11, the VIP .200, the router .254).
var (
	testSource4 = netip.MustParseAddr("192.0.2.250")
	testSource6 = netip.MustParseAddr("2001:db8::250")
	// testVMAC is a locally administered MAC in l2lb's virtual-MAC format.
	testVMAC = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0x00, 0x07}
)

const (
	servicePort = 7000
	udpPort     = 7001
	closedPort  = 7002
	idle        = 5 * time.Second
)

type probeBed struct {
	bed      *testbed.Bed
	balancer *testbed.Host
	a, b     *testbed.Host
	st       *Stack
}

// newProbeBed builds three frontends with the VIPs on lo (f1 is the
// balancer, f2 and f3 the frontends dialled through), starts name servers
// on the VIPs of f2 and f3, and the probe stack on f1's eth0.
func newProbeBed(t *testing.T) *probeBed {
	t.Helper()
	requireNetns(t)
	bed, err := testbed.New(testbed.Options{Frontends: 3, Clients: 1, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := bed.Close(); err != nil {
			t.Errorf("close bed: %v", err)
		}
	})
	pb := &probeBed{bed: bed, balancer: bed.Frontends[0], a: bed.Frontends[1], b: bed.Frontends[2]}
	for _, h := range []*testbed.Host{pb.a, pb.b} {
		for _, v := range []netip.Addr{bed.VIPs[0], bed.VIPs6[0]} {
			if _, err := h.ServeName(v, []uint16{servicePort}, []uint16{udpPort}); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg := Config{Interface: pb.balancer.Ifname, MAC: testVMAC, Source4: testSource4, Source6: testSource6}
	if err := pb.balancer.Do(func() error {
		var err error
		pb.st, err = Listen(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pb.st.Close(); err != nil {
			t.Errorf("close stack: %v", err)
		}
	})
	return pb
}

func (pb *probeBed) vip(v6 bool, port uint16) string {
	if v6 {
		return netip.AddrPortFrom(pb.bed.VIPs6[0], port).String()
	}
	return netip.AddrPortFrom(pb.bed.VIPs[0], port).String()
}

func dialT(t *testing.T, d Dialer, network, addr string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), idle)
	defer cancel()
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	return c
}

// udpAsk sends size random bytes and checks the name server's answer
// "<name> <sha256>".
func udpAsk(t *testing.T, c net.Conn, size int) string {
	t.Helper()
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	sum := sha256.Sum256(payload)
	want := " " + hex.EncodeToString(sum[:])
	buf := make([]byte, 512)
	// A datagram (or its answer) can be lost like any other; retry a
	// few times rather than fail on one loss.
	for try := 0; try < 5; try++ {
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("udp write: %v", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			t.Fatalf("udp read: %v", err)
		}
		name, ok := strings.CutSuffix(string(buf[:n]), want)
		if !ok {
			t.Fatalf("udp answer %q does not end in the payload's sha256", buf[:n])
		}
		return name
	}
	t.Fatalf("no UDP answer after 5 tries")
	return ""
}

// TestDSRProbe is the end-to-end test of the package: both families, both
// transports, through each frontend's MAC, with the VIP also on the
// balancer's own lo.
func TestDSRProbe(t *testing.T) {
	pb := newProbeBed(t)
	for _, v6 := range []bool{false, true} {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		t.Run(fam, func(t *testing.T) {
			t.Run("TCPEachFrontend", func(t *testing.T) {
				// Twice each, interleaved, concurrently: every answer
				// comes from the frontend whose MAC was dialled.
				var wg sync.WaitGroup
				for i := 0; i < 2; i++ {
					for _, h := range []*testbed.Host{pb.a, pb.b} {
						wg.Add(1)
						go func() {
							defer wg.Done()
							ctx, cancel := context.WithTimeout(t.Context(), idle)
							defer cancel()
							c, err := pb.st.Dialer(h.MAC).DialContext(ctx, "tcp", pb.vip(v6, servicePort))
							if err != nil {
								t.Errorf("dial via %s: %v (stats %+v)", h.Name, err, pb.st.Stats())
								return
							}
							defer c.Close()
							name, err := testbed.AskNameOver(c, idle)
							if err != nil {
								t.Errorf("NAME via %s: %v", h.Name, err)
							} else if name != h.Name {
								t.Errorf("dialled through %s's MAC, answered by %s", h.Name, name)
							}
						}()
					}
				}
				wg.Wait()
			})
			t.Run("UDPEachFrontend", func(t *testing.T) {
				for _, h := range []*testbed.Host{pb.a, pb.b} {
					c := dialT(t, pb.st.Dialer(h.MAC), "udp", pb.vip(v6, udpPort))
					if name := udpAsk(t, c, 32); name != h.Name {
						t.Errorf("UDP through %s's MAC answered by %s", h.Name, name)
					}
					// Larger than the MTU: the request is fragmented, and
					// every fragment must reach the same frontend.
					if name := udpAsk(t, c, 4000); name != h.Name {
						t.Errorf("fragmented UDP through %s's MAC answered by %s", h.Name, name)
					}
					c.Close()
				}
			})
			t.Run("Transfer1MB", func(t *testing.T) {
				d := pb.st.Dialer(pb.b.MAC)
				c := dialT(t, d, "tcp", pb.vip(v6, servicePort))
				if err := testbed.DownloadOver(c, 1<<20, idle); err != nil {
					t.Errorf("download: %v", err)
				}
				c.Close()
				c = dialT(t, d, "tcp", pb.vip(v6, servicePort))
				if err := testbed.UploadOver(c, 1<<20, idle); err != nil {
					t.Errorf("upload: %v", err)
				}
				c.Close()
			})
			t.Run("Refused", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), idle)
				defer cancel()
				start := time.Now()
				_, err := pb.st.Dialer(pb.a.MAC).DialContext(ctx, "tcp", pb.vip(v6, closedPort))
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("dial to a port without listener: %v, want ECONNREFUSED", err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("refusal took %v", d)
				}
			})
			t.Run("NobodyHasTheMAC", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				defer cancel()
				nobody := net.HardwareAddr{0x02, 0, 0, 0, 0x99, 0x99}
				_, err := pb.st.Dialer(nobody).DialContext(ctx, "tcp", pb.vip(v6, servicePort))
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("dial through a MAC nobody has: %v, want context.DeadlineExceeded", err)
				}
			})
		})
	}

	// The frontends learnt the probe sources from our ARP and NDP answers.
	for _, h := range []*testbed.Host{pb.a, pb.b} {
		for _, src := range []netip.Addr{testSource4, testSource6} {
			out, err := h.RunIP("neigh", "show", src.String())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(out), "lladdr "+testVMAC.String()) {
				t.Errorf("%s: neighbour entry for %v is %q, want lladdr %v", h.Name, src, out, testVMAC)
			}
		}
	}
	st := pb.st.Stats()
	t.Logf("stats: %+v", st)
	if st.ARPAnswered == 0 || st.NDPAnswered == 0 {
		t.Errorf("ARP answered %d, NDP answered %d; want both > 0", st.ARPAnswered, st.NDPAnswered)
	}
	if st.DropMalformed != 0 || st.DropWriteError != 0 {
		t.Errorf("malformed %d, write errors %d; want 0", st.DropMalformed, st.DropWriteError)
	}
	// The balancer's kernel never saw the probe traffic as its own: frames
	// to the virtual MAC are PACKET_OTHERHOST there, so it sent no reset.
	if a, b := pb.a.Served(), pb.b.Served(); a.Names == 0 || b.Names == 0 || a.Datagrams == 0 || b.Datagrams == 0 {
		t.Errorf("served: %s %+v, %s %+v", pb.a.Name, a, pb.b.Name, b)
	}
}

// TestCloseEndsEverything checks that Close resets open connections (a read
// blocked on one returns), makes later dials fail with ErrClosed and stops
// a dial in progress.
func TestCloseEndsEverything(t *testing.T) {
	pb := newProbeBed(t)
	// A connection the server keeps open: the name server waits for a
	// request line.
	c := dialT(t, pb.st.Dialer(pb.a.MAC), "tcp", pb.vip(false, servicePort))
	defer c.Close()
	readErr := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		readErr <- err
	}()
	dialErr := make(chan error, 1)
	go func() {
		nobody := net.HardwareAddr{0x02, 0, 0, 0, 0x99, 0x98}
		_, err := pb.st.Dialer(nobody).DialContext(context.Background(), "tcp", pb.vip(false, servicePort))
		dialErr <- err
	}()
	time.Sleep(100 * time.Millisecond) // let both block
	if err := pb.st.Close(); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan error{"read": readErr, "dial": dialErr} {
		select {
		case err := <-ch:
			if err == nil {
				t.Errorf("%s returned no error after Close", name)
			}
			if name == "dial" && !errors.Is(err, ErrClosed) {
				t.Errorf("dial in progress: %v, want ErrClosed", err)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("%s still blocked 2 s after Close", name)
		}
	}
	// The abort reached the frontend: its end of the connection is gone
	// (reset), not left waiting for a request.
	deadline := time.Now().Add(2 * time.Second)
	for {
		out, err := pb.a.Command("ss", "-Htn", "dst", testSource4.String()).Output()
		if err != nil {
			t.Fatalf("ss in %s: %v", pb.a.Name, err)
		}
		if len(strings.TrimSpace(string(out))) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still has connections to the probe source after Close:\n%s", pb.a.Name, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := pb.st.Dialer(pb.a.MAC).DialContext(context.Background(), "udp", pb.vip(false, udpPort)); !errors.Is(err, ErrClosed) {
		t.Errorf("dial after Close: %v, want ErrClosed", err)
	}
	if err := pb.st.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
