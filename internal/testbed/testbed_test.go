package testbed

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// requireNetns fails (CI=true) or skips when the test cannot create network
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
		t.Fatalf("CI=true but %s are unavailable; network namespace tests cannot run", missing)
	}
	t.Skipf("needs %s to create network namespaces", missing)
}

func TestOptionsValidation(t *testing.T) {
	bad := []Options{
		{Frontends: -1},
		{Frontends: MaxFrontends + 1},
		{Clients: MaxClients + 1},
		{VIPs: []netip.Addr{netip.MustParseAddr("198.51.100.7")}}, // outside Subnet
		{VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.11")}},   // f1's address
		{VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.101")}},  // c1's extra address
		{VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.255")}},  // broadcast
		{VIPs: []netip.Addr{netip.MustParseAddr("2001:db8::1")}},  // IPv6
		{VIPs: []netip.Addr{DefaultVIP, DefaultVIP}},              // duplicate
		{Timeout: -time.Second},
	}
	for _, o := range bad {
		if err := o.normalize(); !errors.Is(err, ErrBadOptions) {
			t.Errorf("normalize(%+v) = %v, want ErrBadOptions", o, err)
		}
	}
	var o Options
	if err := o.normalize(); err != nil {
		t.Fatalf("zero Options: %v", err)
	}
	if o.Frontends != 3 || o.Clients != 2 || len(o.VIPs) != 1 || o.VIPs[0] != DefaultVIP {
		t.Errorf("defaults = %+v", o)
	}
}

func TestFrontendPorts(t *testing.T) {
	// The seed's step 7 layout for the default three frontends.
	want := [][2]uint16{{50000, 54000}, {55000, 59000}, {60000, 64000}}
	for i, w := range want {
		if got := frontendPorts(i+1, 3); got != w {
			t.Errorf("frontendPorts(%d, 3) = %v, want %v", i+1, got, w)
		}
	}
	for n := 1; n <= MaxFrontends; n++ {
		prevHi := 0
		for i := 1; i <= n; i++ {
			r := frontendPorts(i, n)
			if int(r[0]) <= prevHi || r[1] < r[0] || int(r[1])-int(r[0]) < 500 {
				t.Errorf("n=%d: frontend %d range %v overlaps or is too small (previous ends at %d)", n, i, r, prevHi)
			}
			prevHi = int(r[1])
		}
	}
}

// pipeHost returns a host usable for protocol tests without namespaces.
func pipeHost(name string) *Host {
	return &Host{Name: name, bed: &Bed{opts: Options{Timeout: 2 * time.Second}}}
}

func servePipe(t *testing.T, h *Host) net.Conn {
	t.Helper()
	cli, srv := net.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- h.serveConn(srv)
		srv.Close()
	}()
	t.Cleanup(func() {
		cli.Close()
		<-done
	})
	return cli
}

func TestProtocol(t *testing.T) {
	h := pipeHost("f7")
	if name, err := AskNameOver(servePipe(t, h), time.Second); err != nil || name != "f7" {
		t.Errorf("AskNameOver = %q, %v; want f7", name, err)
	}
	for _, n := range []int64{0, 1, 100_000} {
		if err := DownloadOver(servePipe(t, h), n, time.Second); err != nil {
			t.Errorf("DownloadOver(%d): %v", n, err)
		}
		if err := UploadOver(servePipe(t, h), n, time.Second); err != nil {
			t.Errorf("UploadOver(%d): %v", n, err)
		}
	}
	if s := h.Served(); s.Names != 1 || s.Downloads != 3 || s.Uploads != 3 {
		t.Errorf("Served() = %+v, want 1 name, 3 downloads, 3 uploads", s)
	}
}

func TestProtocolRejectsBadRequests(t *testing.T) {
	h := pipeHost("f1")
	for _, req := range []string{"HELLO\n", "DOWNLOAD -1\n", "DOWNLOAD x\n", fmt.Sprintf("UPLOAD %d\n", MaxTransfer+1), strings.Repeat("A", maxLine+1) + "\n"} {
		cli, srv := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- h.serveConn(srv); srv.Close() }()
		go func() { io.WriteString(cli, req) }()
		if err := <-done; !errors.Is(err, ErrProtocol) {
			t.Errorf("request %.20q: serveConn = %v, want ErrProtocol", req, err)
		}
		cli.Close()
	}
}

// fakeServer answers any request with body and closes.
func fakeServer(t *testing.T, body []byte) net.Conn {
	cli, srv := net.Pipe()
	go func() {
		defer srv.Close()
		buf := make([]byte, maxLine)
		srv.Read(buf)
		srv.Write(body)
	}()
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestClientsDetectCorruption(t *testing.T) {
	const n = 5000
	good, _ := io.ReadAll(Stream(n))
	flipped := bytes.Clone(good)
	flipped[n/2] ^= 1
	cases := map[string][]byte{
		"flipped byte": flipped,
		"short":        good[:n-1],
		"long":         append(bytes.Clone(good), 'x'),
	}
	for name, body := range cases {
		if err := DownloadOver(fakeServer(t, body), n, time.Second); !errors.Is(err, ErrMismatch) {
			t.Errorf("download, %s: err = %v, want ErrMismatch", name, err)
		}
	}
	// A server that sends a well-formed but wrong checksum.
	cli, srv := net.Pipe()
	go func() {
		defer srv.Close()
		io.CopyN(io.Discard, srv, int64(len("UPLOAD 10\n"))+10)
		io.WriteString(srv, strings.Repeat("0", 64)+"\n")
	}()
	defer cli.Close()
	if err := UploadOver(cli, 10, time.Second); !errors.Is(err, ErrMismatch) {
		t.Errorf("upload with wrong checksum: err = %v, want ErrMismatch", err)
	}
	if _, err := AskNameOver(fakeServer(t, []byte("two words\n")), time.Second); !errors.Is(err, ErrProtocol) {
		t.Errorf("name with a space: err = %v, want ErrProtocol", err)
	}
}

func TestStreamDeterministic(t *testing.T) {
	a, _ := io.ReadAll(Stream(1000))
	b, _ := io.ReadAll(Stream(1000))
	c, _ := io.ReadAll(Stream(1001))
	if len(a) != 1000 || !bytes.Equal(a, b) {
		t.Fatalf("Stream(1000) not deterministic or wrong length %d", len(a))
	}
	if bytes.Equal(a, c[:1000]) {
		t.Errorf("Stream(1000) and Stream(1001) share a prefix; the seed must depend on n")
	}
}

// ourNamespaces lists /run/netns entries created by this process.
func ourNamespaces(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	prefix := fmt.Sprintf("%s%d-", NamePrefix, os.Getpid())
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

func hostSysctl(t *testing.T, keys []string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, k := range keys {
		out, err := exec.Command("sysctl", "-n", k).Output()
		if err != nil {
			t.Fatalf("host sysctl %s: %v", k, err)
		}
		m[k] = strings.Join(strings.Fields(string(out)), " ")
	}
	return m
}

func TestBed(t *testing.T) {
	requireNetns(t)
	if _, err := exec.LookPath("sysctl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but sysctl(8) (Debian package procps) is missing: it cross-checks namespace sysctls")
		}
		t.Skip("needs sysctl(8) to cross-check namespace sysctls")
	}
	hostKeys := []string{
		"net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce",
		"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.lo.rp_filter", "net.ipv4.ip_local_port_range",
	}
	before := hostSysctl(t, hostKeys)

	start := time.Now()
	b, err := New(Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	t.Logf("bed built in %v", time.Since(start))
	vip := b.VIPs[0]

	t.Run("topology", func(t *testing.T) {
		if len(b.Clients) != 2 || len(b.Frontends) != 3 || b.Switch == nil {
			t.Fatalf("got %d clients, %d frontends, switch %v", len(b.Clients), len(b.Frontends), b.Switch)
		}
		names := ourNamespaces(t)
		macs := map[string]string{}
		for _, h := range b.Hosts() {
			if !leftover.MatchString(h.NS) || !strings.HasPrefix(h.NS, b.Prefix+"-") || !strings.HasSuffix(h.NS, "-"+h.Name) {
				t.Errorf("namespace name %q does not follow l2lb-<pid>-<hex>-<role>", h.NS)
			}
			if !slices.Contains(names, h.NS) {
				t.Errorf("%s: namespace missing from %s", h.NS, netnsDir)
			}
			if len(h.MAC) != 6 || h.Ifindex == 0 {
				t.Errorf("%s: MAC %v ifindex %d", h.Name, h.MAC, h.Ifindex)
			}
			if other, dup := macs[h.MAC.String()]; dup {
				t.Errorf("%s and %s share MAC %v", h.Name, other, h.MAC)
			}
			macs[h.MAC.String()] = h.Name
			if b.HostByMAC(h.MAC) != h || b.Host(h.Name) != h {
				t.Errorf("lookup of %s by name or MAC failed", h.Name)
			}
		}
		// Each host's eth0 has MTU 1500 and the switch port is a bridge port.
		for _, h := range append(slices.Clone(b.Clients), b.Frontends...) {
			out, err := h.RunIP("-j", "link", "show", "eth0")
			if err != nil {
				t.Fatal(err)
			}
			var links []struct{ MTU int }
			if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 || links[0].MTU != MTU {
				t.Errorf("%s eth0: %s (err %v), want MTU %d", h.Name, out, err, MTU)
			}
			out, err = b.Switch.RunIP("-j", "link", "show", h.Name)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(out, []byte(`"master":"br0"`)) {
				t.Errorf("switch port %s not enslaved to br0: %s", h.Name, out)
			}
		}
	})

	t.Run("sysctls", func(t *testing.T) {
		for _, f := range b.Frontends {
			want := map[string]string{
				"net.ipv4.conf.all.arp_ignore":    "1",
				"net.ipv4.conf.eth0.arp_ignore":   "1",
				"net.ipv4.conf.all.arp_announce":  "2",
				"net.ipv4.conf.eth0.arp_announce": "2",
				"net.ipv4.conf.all.rp_filter":     "2",
				"net.ipv4.conf.lo.rp_filter":      "2",
				"net.ipv4.conf.eth0.rp_filter":    "2",
				"net.ipv4.ip_local_port_range":    fmt.Sprintf("%d %d", f.PortRange[0], f.PortRange[1]),
			}
			for k, v := range want {
				// Cross-check with sysctl(8) run through ip netns exec,
				// independent of the package's own /proc writer.
				out, err := f.Command("sysctl", "-n", k).Output()
				if err != nil {
					t.Fatalf("%s: sysctl -n %s: %v", f.Name, k, err)
				}
				if got := strings.Join(strings.Fields(string(out)), " "); got != v {
					t.Errorf("%s: %s = %q, want %q", f.Name, k, got, v)
				}
			}
		}
		if got := b.Frontends[1].PortRange; got != [2]uint16{55000, 59000} {
			t.Errorf("f2 PortRange = %v, want the seed's 55000-59000", got)
		}
		if after := hostSysctl(t, hostKeys); !maps2equal(before, after) {
			t.Errorf("host sysctls changed: before %v, after %v", before, after)
		}
	})

	t.Run("vip on lo", func(t *testing.T) {
		want := fmt.Sprintf(`"local":"%s","prefixlen":32`, vip)
		for _, h := range append(slices.Clone(b.Clients), b.Frontends...) {
			out, err := h.RunIP("-j", "addr", "show", "dev", "lo")
			if err != nil {
				t.Fatal(err)
			}
			has := bytes.Contains(out, []byte(want))
			if isFrontend := h.Name[0] == 'f'; has != isFrontend {
				t.Errorf("%s: VIP %v/32 on lo = %v, want %v: %s", h.Name, vip, has, isFrontend, out)
			}
		}
	})

	// Name servers on the real addresses (and on the VIP, which clients
	// cannot reach without a balancer).
	const tcpPort, udpPort = 8000, 5060
	for _, f := range b.Frontends {
		for _, a := range []netip.Addr{f.Addr, vip} {
			stop, err := f.ServeName(a, []uint16{tcpPort}, []uint16{udpPort})
			if err != nil {
				t.Fatalf("ServeName: %v", err)
			}
			t.Cleanup(stop)
		}
	}

	t.Run("reach frontends", func(t *testing.T) {
		const size = 300_000
		before := map[string]Served{}
		for _, f := range b.Frontends {
			before[f.Name] = f.Served()
		}
		for _, c := range b.Clients {
			for _, la := range append([]netip.Addr{c.Addr}, c.Extra...) {
				for _, f := range b.Frontends {
					tcp := netip.AddrPortFrom(f.Addr, tcpPort)
					udp := netip.AddrPortFrom(f.Addr, udpPort)
					if name, err := c.AskName(la, tcp); err != nil || name != f.Name {
						t.Errorf("%s from %v: AskName(%v) = %q, %v; want %q", c.Name, la, tcp, name, err, f.Name)
					}
					if local, err := c.Download(la, tcp, size); err != nil || local.Addr() != la {
						t.Errorf("%s from %v: Download(%v) local %v: %v", c.Name, la, tcp, local, err)
					}
					if _, err := c.Upload(la, tcp, size); err != nil {
						t.Errorf("%s from %v: Upload(%v): %v", c.Name, la, tcp, err)
					}
					for _, n := range []int{100, 3000} { // 3000 bytes are IP-fragmented at MTU 1500
						if name, err := c.UDPAsk(la, udp, n); err != nil || name != f.Name {
							t.Errorf("%s from %v: UDPAsk(%v, %d) = %q, %v; want %q", c.Name, la, udp, n, name, err, f.Name)
						}
					}
				}
			}
		}
		per := uint64(2 * len(b.Clients))
		for _, f := range b.Frontends {
			got, was := f.Served(), before[f.Name]
			want := Served{Names: was.Names + per, Downloads: was.Downloads + per, Uploads: was.Uploads + per, Datagrams: was.Datagrams + 2*per}
			if got != want {
				t.Errorf("%s served %+v, want %+v", f.Name, got, want)
			}
		}
	})

	t.Run("arp", func(t *testing.T) {
		c1, c2, f1 := b.Clients[0], b.Clients[1], b.Frontends[0]
		if mac, err := c1.ARPResolve(f1.Addr); err != nil || mac.String() != f1.MAC.String() {
			t.Errorf("ARPResolve(f1 %v) = %v, %v; want %v", f1.Addr, mac, err, f1.MAC)
		}
		if mac, err := c1.ARPResolve(c2.Extra[0]); err != nil || mac.String() != c2.MAC.String() {
			t.Errorf("ARPResolve(c2 extra %v) = %v, %v; want %v", c2.Extra[0], mac, err, c2.MAC)
		}
		// Seed step 3: no frontend answers ARP for the VIP on its lo.
		start := time.Now()
		mac, err := c1.ARPResolve(vip)
		took := time.Since(start)
		if !errors.Is(err, ErrTimeout) {
			t.Errorf("ARPResolve(VIP %v) = %v, %v; want ErrTimeout (some frontend answers ARP for the VIP)", vip, mac, err)
		}
		if took < DefaultARPTimeout-50*time.Millisecond || took > DefaultARPTimeout+time.Second {
			t.Errorf("ARPResolve(VIP) took %v, want about %v", took, DefaultARPTimeout)
		}
	})

	t.Run("capture", func(t *testing.T) {
		c1, f1, f2 := b.Clients[0], b.Frontends[0], b.Frontends[1]
		if err := c1.FlushNeigh(); err != nil {
			t.Fatal(err)
		}
		capt, err := c1.Capture("eth0")
		if err != nil {
			t.Fatal(err)
		}
		// A normal connection to f2.
		conn, err := c1.DialTCP(netip.AddrPortFrom(c1.Addr, 0), netip.AddrPortFrom(f2.Addr, tcpPort), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if name, err := AskNameOver(conn, time.Second); err != nil || name != "f2" {
			t.Errorf("AskNameOver = %q, %v", name, err)
		}
		local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
		conn.Close()
		// A SYN injected through RawConn: f1 answers with a SYN-ACK and
		// c1's kernel, having no such socket, answers that with a RST.
		raw, err := c1.RawConn()
		if err != nil {
			t.Fatal(err)
		}
		// Two attempts on the same 4-tuple with different ISNs must be
		// told apart as two handshakes.
		rawSrc := netip.AddrPortFrom(c1.Extra[0], 40123)
		for _, isn := range []uint32{1000, 900000} {
			if _, err := raw.WriteTo(synFrame(t, c1.MAC, f1.MAC, rawSrc, netip.AddrPortFrom(f1.Addr, tcpPort), isn), &packet.Addr{HardwareAddr: f1.MAC}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		raw.Close()
		time.Sleep(100 * time.Millisecond)
		st := capt.Stop()
		if err := capt.Err(); err != nil {
			t.Errorf("capture error: %v", err)
		}
		if st.Dropped != 0 {
			t.Errorf("capture dropped %d frames", st.Dropped)
		}
		fs := st.Flows[Flow{Local: local, Remote: netip.AddrPortFrom(f2.Addr, tcpPort)}]
		if fs == nil || fs.SYNsSent != 1 || fs.SYNACKs != 1 || fs.RSTsSent+fs.RSTsReceived != 0 ||
			len(fs.SYNACKMACs) != 1 || fs.SYNACKMACs[0].String() != f2.MAC.String() {
			t.Errorf("flow %v->f2: %+v, want 1 SYN, 1 SYN-ACK from %v, no RST (all flows: %v)", local, fs, f2.MAC, st.Flows)
		}
		if hs := st.HandshakesOf(Flow{Local: local, Remote: netip.AddrPortFrom(f2.Addr, tcpPort)}); len(hs) != 1 || hs[0].SYNs != 1 || hs[0].SYNACKs != 1 {
			t.Errorf("handshakes of %v->f2: %v, want one with 1 SYN and 1 SYN-ACK", local, hs)
		}
		rawFlow := Flow{Local: rawSrc, Remote: netip.AddrPortFrom(f1.Addr, tcpPort)}
		rs := st.Flows[rawFlow]
		if rs == nil || rs.SYNsSent != 2 || rs.SYNACKs != 2 || rs.RSTsSent != 2 || rs.SYNACKMACs[0].String() != f1.MAC.String() {
			t.Errorf("injected flow %v->f1: %+v, want 2 SYNs, 2 SYN-ACKs from %v, 2 RSTs sent", rawSrc, rs, f1.MAC)
		}
		// The trace shows what each reset answered: the kernel resets the SYN-ACKs of SYNs it
		// did not send.
		if rs != nil {
			resets := 0
			for i, s := range rs.Trace {
				if s.Flags != "R" {
					continue
				}
				resets++
				if !s.Sent || !strings.HasPrefix(s.String(), "> [R] seq ") || i == 0 ||
					rs.Trace[i-1].Flags != "S." || rs.Trace[i-1].Sent || rs.Trace[i-1].From != [6]byte(f1.MAC) {
					t.Errorf("injected flow's trace %v: reset %d does not follow a SYN-ACK from f1", rs.Trace, resets)
				}
			}
			if resets != 2 || len(rs.Trace) != 6 {
				t.Errorf("injected flow's trace %v, want 6 segments with 2 resets", rs.Trace)
			}
		}
		for _, isn := range []uint32{1000, 900000} {
			hs := st.Handshakes[Handshake{rawFlow, isn}]
			if hs == nil || hs.SYNs != 1 || hs.SYNACKs != 1 || hs.SYNACKMACs[0].String() != f1.MAC.String() {
				t.Errorf("injected handshake ISN %d: %+v, want 1 SYN and 1 SYN-ACK from f1", isn, hs)
			}
		}
		if n := len(st.HandshakesOf(rawFlow)); n != 2 {
			t.Errorf("injected flow has %d handshakes, want 2", n)
		}
		if st.RSTs() != 2 {
			t.Errorf("RSTs() = %d, want 2", st.RSTs())
		}
		replies := st.ARPRepliesFor(f2.Addr)
		if len(replies) == 0 || replies[0].MAC.String() != f2.MAC.String() || replies[0].EthSrc.String() != f2.MAC.String() {
			t.Errorf("ARP replies for f2 = %+v, want f2's MAC %v (neighbour cache was flushed)", replies, f2.MAC)
		}
		if got := st.ARPRepliesFor(vip); len(got) != 0 {
			t.Errorf("ARP replies for VIP %v = %+v, want none", vip, got)
		}
	})

	// A process started through Command; Close must kill it.
	sleeper := b.Frontends[2].Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()
	t.Run("command in namespace", func(t *testing.T) {
		var nsSt, procSt unix.Stat_t
		if err := unix.Stat(filepath.Join(netnsDir, b.Frontends[2].NS), &nsSt); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			// ip netns exec switches namespace, then execs sleep.
			err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", sleeper.Process.Pid), &procSt)
			if err == nil && procSt.Ino == nsSt.Ino && procSt.Dev == nsSt.Dev {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("process %d never entered %s", sleeper.Process.Pid, b.Frontends[2].NS)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("close", func(t *testing.T) {
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		select {
		case err := <-waited:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Errorf("sleep ended with %v, want killed by SIGKILL", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("process started with Command still running after Close")
		}
		if left := ourNamespaces(t); len(left) != 0 {
			t.Errorf("namespaces left after Close: %v", left)
		}
		out, err := exec.Command("ip", "netns", "list").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(out, []byte(b.Prefix)) {
			t.Errorf("ip netns list still shows %s:\n%s", b.Prefix, out)
		}
		if err := b.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := b.Clients[0].AskName(netip.Addr{}, netip.AddrPortFrom(b.Frontends[0].Addr, tcpPort)); err == nil {
			t.Errorf("AskName after Close succeeded")
		}
	})
}

func maps2equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// synFrame builds an Ethernet/IPv4/TCP SYN.
func synFrame(t *testing.T, src, dst net.HardwareAddr, from, to netip.AddrPort, isn uint32) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: from.Addr().AsSlice(), DstIP: to.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(from.Port()), DstPort: layers.TCPPort(to.Port()), SYN: true, Seq: isn, Window: 64240}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestNewCleansUpOnFailure(t *testing.T) {
	requireNetns(t)
	if left := ourNamespaces(t); len(left) != 0 {
		t.Fatalf("namespaces of this process exist before the test: %v", left)
	}
	injected := errors.New("injected failure")
	testHookAfterHost = func(role string) error {
		if role == "f1" {
			return injected
		}
		return nil
	}
	defer func() { testHookAfterHost = nil }()
	b, err := New(Options{Logf: t.Logf})
	if !errors.Is(err, injected) || b != nil {
		t.Fatalf("New = %v, %v; want the injected failure", b, err)
	}
	if left := ourNamespaces(t); len(left) != 0 {
		t.Errorf("failed New left namespaces behind: %v", left)
	}
}

func TestSweep(t *testing.T) {
	requireNetns(t)
	// A pid that existed and is gone: a child that already exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	// A pid that is alive for the test's duration.
	alive := exec.Command("sleep", "30")
	if err := alive.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { alive.Process.Kill(); alive.Wait() }()
	var rnd [2]byte
	rand.Read(rnd[:])
	tag := hex.EncodeToString(rnd[:])
	deadNS := fmt.Sprintf("%s%d-%s-sw", NamePrefix, dead.ProcessState.Pid(), tag)
	aliveNS := fmt.Sprintf("%s%d-%s-sw", NamePrefix, alive.Process.Pid, tag)
	for _, ns := range []string{deadNS, aliveNS} {
		t.Cleanup(func() { deleteNamespace(ns) })
		if err := runIP("netns", "add", ns); err != nil {
			t.Fatal(err)
		}
	}
	// A process left running inside the dead run's namespace.
	h := &Host{NS: deadNS}
	orphan := h.Command("sleep", "60")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- orphan.Wait() }()
	time.Sleep(100 * time.Millisecond) // let ip netns exec enter the namespace

	if err := Sweep(); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, deadNS)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Sweep left %s (creator pid gone): stat err %v", deadNS, err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, aliveNS)); err != nil {
		t.Errorf("Sweep removed %s whose creator is alive: %v", aliveNS, err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		orphan.Process.Kill()
		t.Errorf("Sweep did not kill the process inside %s", deadNS)
	}
}

func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{"NAME\n", "DOWNLOAD 10\n", "UPLOAD 0\n", "UPLOAD 1073741825\n", "NAME", "DOWNLOAD  -1\n", "\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cmd, n, err := readRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		line, _, ok := bytes.Cut(in, []byte("\n"))
		if !ok || len(line) > maxLine {
			t.Fatalf("accepted %q without a newline within %d bytes", in, maxLine)
		}
		switch cmd {
		case "NAME":
			if n != 0 {
				t.Fatalf("NAME with size %d", n)
			}
		case "DOWNLOAD", "UPLOAD":
			if n < 0 || n > MaxTransfer {
				t.Fatalf("%s size %d out of range", cmd, n)
			}
			if !bytes.Contains(line, []byte(cmd)) {
				t.Fatalf("%q parsed as %s", line, cmd)
			}
		default:
			t.Fatalf("unknown command %q accepted from %q", cmd, in)
		}
	})
}

func TestProcessAlive(t *testing.T) {
	if !processAlive(os.Getpid()) {
		t.Errorf("processAlive(self) = false")
	}
	// A child that has exited but is not yet reaped is a zombie: dead.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start true(1): %v", err)
	}
	pid := cmd.Process.Pid
	var st unix.Stat_t
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("exited child %d still counted alive", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if unix.Stat(fmt.Sprintf("/proc/%d", pid), &st) != nil {
		t.Logf("child already gone before the zombie check")
	}
	cmd.Wait()
	if processAlive(pid) {
		t.Errorf("reaped child %d counted alive", pid)
	}
}
