package dsrprobe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/bpf"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// fakeConn is a net.PacketConn carrying Ethernet frames: in feeds ReadFrom,
// WriteTo records to out.
type fakeConn struct {
	in   chan []byte
	out  chan []byte
	done chan struct{}
	once sync.Once
}

func newFakeConn() *fakeConn {
	return &fakeConn{in: make(chan []byte, 16), out: make(chan []byte, 256), done: make(chan struct{})}
}

func (c *fakeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case f := <-c.in:
		return copy(b, f), nil, nil
	case <-c.done:
		return 0, nil, net.ErrClosed
	}
}

func (c *fakeConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	select {
	case c.out <- append([]byte(nil), b...):
	default: // a test that does not read its output
	}
	return len(b), nil
}

func (c *fakeConn) Close() error                     { c.once.Do(func() { close(c.done) }); return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return nil }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

var (
	frontMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}
	peerMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x22}
	testIfi   = &net.Interface{Index: 1, MTU: 1500, Name: "fake0", HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}}
	testVIP4  = netip.MustParseAddr("192.0.2.200")
	testVIP6  = netip.MustParseAddr("2001:db8::200")
	peerAddr4 = netip.MustParseAddr("192.0.2.11")
	peerAddr6 = netip.MustParseAddr("2001:db8::11")
)

func fakeStack(t testing.TB, vnet bool) (*Stack, *fakeConn) {
	t.Helper()
	fc := newFakeConn()
	st, err := newStack(fc, testIfi, Config{MAC: testVMAC, Source4: testSource4, Source6: testSource6}, vnet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, fc
}

func next(t *testing.T, fc *fakeConn) []byte {
	t.Helper()
	select {
	case f := <-fc.out:
		return f
	case <-time.After(2 * time.Second):
		t.Fatal("no frame written")
		return nil
	}
}

func none(t *testing.T, fc *fakeConn) {
	t.Helper()
	select {
	case f := <-fc.out:
		t.Fatalf("unexpected frame written: % x", f)
	case <-time.After(50 * time.Millisecond):
	}
}

func arpRequest(target netip.Addr) []byte {
	f := make([]byte, ethHdrLen+header.ARPSize)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(peerMAC), DstAddr: "\xff\xff\xff\xff\xff\xff", Type: header.ARPProtocolNumber})
	a := header.ARP(f[ethHdrLen:])
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPRequest)
	copy(a.HardwareAddressSender(), peerMAC)
	s4 := peerAddr4.As4()
	copy(a.ProtocolAddressSender(), s4[:])
	t4 := target.As4()
	copy(a.ProtocolAddressTarget(), t4[:])
	return f
}

// neighborSolicit builds an NS for target from src (unspecified for DAD),
// with a source link-layer address option unless src is unspecified.
func neighborSolicit(src, target netip.Addr, hopLimit uint8) []byte {
	dst := header.SolicitedNodeAddr(tcpip.AddrFrom16(target.As16()))
	var opts header.NDPOptionsSerializer
	if !src.IsUnspecified() {
		opts = header.NDPOptionsSerializer{header.NDPSourceLinkLayerAddressOption(tcpip.LinkAddress(peerMAC))}
	}
	icmpLen := header.ICMPv6NeighborSolicitMinimumSize + opts.Length()
	f := make([]byte, ethHdrLen+header.IPv6MinimumSize+icmpLen)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(peerMAC), DstAddr: header.EthernetAddressFromMulticastIPv6Address(dst), Type: header.IPv6ProtocolNumber})
	s := tcpip.AddrFrom16(src.As16())
	header.IPv6(f[ethHdrLen:]).Encode(&header.IPv6Fields{PayloadLength: uint16(icmpLen), TransportProtocol: header.ICMPv6ProtocolNumber, HopLimit: hopLimit, SrcAddr: s, DstAddr: dst})
	icmp := header.ICMPv6(f[ethHdrLen+header.IPv6MinimumSize:])
	icmp.SetType(header.ICMPv6NeighborSolicit)
	ns := header.NDPNeighborSolicit(icmp.MessageBody())
	ns.SetTargetAddress(tcpip.AddrFrom16(target.As16()))
	ns.Options().Serialize(opts)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: s, Dst: dst}))
	return f
}

func TestARPAnswer(t *testing.T) {
	st, fc := fakeStack(t, false)
	fc.in <- arpRequest(netip.MustParseAddr("192.0.2.99")) // not ours
	none(t, fc)
	fc.in <- arpRequest(testSource4)
	f := next(t, fc)
	eth := header.Ethernet(f)
	if !bytes.Equal([]byte(eth.DestinationAddress()), peerMAC) || !bytes.Equal([]byte(eth.SourceAddress()), testVMAC) || eth.Type() != header.ARPProtocolNumber {
		t.Fatalf("reply Ethernet header %v -> %v type %#x", eth.SourceAddress(), eth.DestinationAddress(), eth.Type())
	}
	a := header.ARP(f[ethHdrLen:])
	s4, p4 := testSource4.As4(), peerAddr4.As4()
	if !a.IsValid() || a.Op() != header.ARPReply || !bytes.Equal(a.HardwareAddressSender(), testVMAC) ||
		!bytes.Equal(a.ProtocolAddressSender(), s4[:]) || !bytes.Equal(a.HardwareAddressTarget(), peerMAC) ||
		!bytes.Equal(a.ProtocolAddressTarget(), p4[:]) {
		t.Fatalf("bad ARP reply % x", f)
	}
	waitStats(t, st, func(s Stats) bool { return s.ARPAnswered == 1 && s.DropNotForUs == 1 })
}

func TestNDPAnswer(t *testing.T) {
	st, fc := fakeStack(t, true)
	withVnet := func(f []byte) []byte { return append(make([]byte, vnetHdrLen), f...) }
	check := func(f []byte, wantDst tcpip.Address, wantMAC net.HardwareAddr, solicited bool) {
		t.Helper()
		if !bytes.Equal(f[:vnetHdrLen], make([]byte, vnetHdrLen)) {
			t.Fatalf("virtio_net_hdr % x, want zeros", f[:vnetHdrLen])
		}
		f = f[vnetHdrLen:]
		if !bytes.Equal([]byte(header.Ethernet(f).DestinationAddress()), wantMAC) {
			t.Fatalf("NA to MAC %v, want %v", header.Ethernet(f).DestinationAddress(), wantMAC)
		}
		ip := header.IPv6(f[ethHdrLen:])
		src := tcpip.AddrFrom16(testSource6.As16())
		if !ip.IsValid(len(ip)) || ip.SourceAddress() != src || ip.DestinationAddress() != wantDst || ip.HopLimit() != 255 {
			t.Fatalf("NA IPv6 header %v -> %v hop %d", ip.SourceAddress(), ip.DestinationAddress(), ip.HopLimit())
		}
		icmp := header.ICMPv6(ip.Payload())
		if icmp.Type() != header.ICMPv6NeighborAdvert || header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: src, Dst: wantDst}) != icmp.Checksum() {
			t.Fatalf("bad NA type or checksum: % x", icmp)
		}
		na := header.NDPNeighborAdvert(icmp.MessageBody())
		if na.TargetAddress() != src || na.SolicitedFlag() != solicited || !na.OverrideFlag() || na.RouterFlag() {
			t.Fatalf("NA target %v S=%v O=%v R=%v", na.TargetAddress(), na.SolicitedFlag(), na.OverrideFlag(), na.RouterFlag())
		}
		it, err := na.Options().Iter(true)
		if err != nil {
			t.Fatal(err)
		}
		o, done, err := it.Next()
		if err != nil || done {
			t.Fatalf("no NA option: %v", err)
		}
		if tl, ok := o.(header.NDPTargetLinkLayerAddressOption); !ok || !bytes.Equal([]byte(tl.EthernetAddress()), testVMAC) {
			t.Fatalf("NA option %v, want target link-layer address %v", o, testVMAC)
		}
	}
	fc.in <- withVnet(neighborSolicit(peerAddr6, testSource6, 64)) // hop limit must be 255
	fc.in <- withVnet(neighborSolicit(peerAddr6, netip.MustParseAddr("2001:db8::99"), 255))
	none(t, fc)
	fc.in <- withVnet(neighborSolicit(peerAddr6, testSource6, 255))
	check(next(t, fc), tcpip.AddrFrom16(peerAddr6.As16()), peerMAC, true)
	// Duplicate address detection for our address: defend it to all-nodes.
	fc.in <- withVnet(neighborSolicit(netip.IPv6Unspecified(), testSource6, 255))
	check(next(t, fc), header.IPv6AllNodesMulticastAddress, net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, false)
	waitStats(t, st, func(s Stats) bool { return s.NDPAnswered == 2 && s.DropMalformed == 1 && s.DropNotForUs == 1 })
}

// waitStats waits up to 2 s for the stack's counters to satisfy ok. The stack counts a reply
// once its write returned, which may be just after the reply reached the fake link: full
// CI=true go test -race ./... runs read ARPAnswered 0 and NDPAnswered 1 right after the reply.
func waitStats(t *testing.T, st *Stack, ok func(Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	s := st.Stats()
	for !ok(s) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		s = st.Stats()
	}
	if !ok(s) {
		t.Errorf("stats %+v", s)
	}
}

// TestDialFrames checks the frames a dial writes: Ethernet destination the
// chosen frontend, source the configured MAC, IP from the probe source to
// the VIP.
func TestDialFrames(t *testing.T) {
	st, fc := fakeStack(t, false)
	for _, vip := range []netip.Addr{testVIP4, testVIP6} {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		_, err := st.Dialer(frontMAC).DialContext(ctx, "tcp", netip.AddrPortFrom(vip, 25).String())
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial without answer: %v, want deadline exceeded", err)
		}
		var opErr *net.OpError
		if !errors.As(err, &opErr) || opErr.Op != "dial" {
			t.Errorf("error %T is not a *net.OpError", err)
		}
		syn := next(t, fc)
		checkIPFrame(t, syn, frontMAC, vip, uint8(header.TCPProtocolNumber))
		// Drain retransmissions and the reset of the abandoned dial.
		for len(fc.out) > 0 {
			<-fc.out
		}
		c, err := st.Dialer(peerMAC).DialContext(context.Background(), "udp", netip.AddrPortFrom(vip, 5060).String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("OPTIONS")); err != nil {
			t.Fatal(err)
		}
		checkIPFrame(t, next(t, fc), peerMAC, vip, uint8(header.UDPProtocolNumber))
		// A datagram above the MTU leaves in fragments, all to the
		// same frontend.
		if _, err := c.Write(make([]byte, 3000)); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			checkIPFrame(t, next(t, fc), peerMAC, vip, 0)
		}
		c.Close()
		st.portsMu.Lock()
		n := len(st.ports)
		st.portsMu.Unlock()
		if n != 0 {
			t.Errorf("%d UDP ports still mapped after Close", n)
		}
	}
	if s := st.Stats(); s.DropNoPeer != 0 {
		t.Errorf("stats %+v", s)
	}
}

// checkIPFrame checks addresses; proto 0 accepts a fragment of any protocol.
func checkIPFrame(t *testing.T, f []byte, dstMAC net.HardwareAddr, vip netip.Addr, proto uint8) {
	t.Helper()
	eth := header.Ethernet(f)
	if !bytes.Equal([]byte(eth.DestinationAddress()), dstMAC) || !bytes.Equal([]byte(eth.SourceAddress()), testVMAC) {
		t.Fatalf("frame %v -> %v, want %v -> %v", eth.SourceAddress(), eth.DestinationAddress(), testVMAC, dstMAC)
	}
	if vip.Is4() {
		ip := header.IPv4(f[ethHdrLen:])
		if eth.Type() != header.IPv4ProtocolNumber || !ip.IsValid(len(ip)) || !ip.IsChecksumValid() ||
			ip.SourceAddress() != tcpip.AddrFrom4(testSource4.As4()) || ip.DestinationAddress() != tcpip.AddrFrom4(vip.As4()) ||
			(proto != 0 && ip.Protocol() != proto) {
			t.Fatalf("bad IPv4 frame % x", f[:min(len(f), 40)])
		}
		return
	}
	ip := header.IPv6(f[ethHdrLen:])
	if eth.Type() != header.IPv6ProtocolNumber || !ip.IsValid(len(ip)) ||
		ip.SourceAddress() != tcpip.AddrFrom16(testSource6.As16()) || ip.DestinationAddress() != tcpip.AddrFrom16(vip.As16()) ||
		(proto != 0 && ip.NextHeader() != proto) {
		t.Fatalf("bad IPv6 frame % x", f[:min(len(f), 60)])
	}
}

func TestDialErrors(t *testing.T) {
	fc := newFakeConn()
	st4, err := New(fc, testIfi, Config{MAC: testVMAC, Source4: testSource4})
	if err != nil {
		t.Fatal(err)
	}
	defer st4.Close()
	ctx := context.Background()
	cases := []struct {
		d        Dialer
		net, adr string
		want     error
	}{
		{Dialer{}, "tcp", "192.0.2.200:25", ErrClosed},
		{st4.Dialer(net.HardwareAddr{1, 2, 3}), "tcp", "192.0.2.200:25", ErrBadMAC},
		{st4.Dialer(net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1}), "tcp", "192.0.2.200:25", ErrBadMAC},
		{st4.Dialer(frontMAC), "sctp", "192.0.2.200:25", ErrBadNetwork},
		{st4.Dialer(frontMAC), "tcp6", "192.0.2.200:25", ErrBadNetwork},
		{st4.Dialer(frontMAC), "udp4", "[2001:db8::200]:25", ErrBadNetwork},
		{st4.Dialer(frontMAC), "tcp", "[2001:db8::200]:25", ErrNoSource},
		{st4.Dialer(frontMAC), "tcp", "mail.example:25", ErrBadAddress},
		{st4.Dialer(frontMAC), "tcp", "192.0.2.200:0", ErrBadAddress},
		{st4.Dialer(frontMAC), "tcp", "[fe80::1%eth0]:25", ErrBadAddress},
	}
	for _, c := range cases {
		if _, err := c.d.DialContext(ctx, c.net, c.adr); !errors.Is(err, c.want) {
			t.Errorf("dial %s %s: %v, want %v", c.net, c.adr, err, c.want)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st4.Dialer(frontMAC).DialContext(cancelled, "tcp4", "192.0.2.200:25"); !errors.Is(err, context.Canceled) {
		t.Errorf("dial with cancelled context: %v", err)
	}
	if err := st4.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := st4.Dialer(frontMAC).DialContext(ctx, "udp", "192.0.2.200:25"); !errors.Is(err, ErrClosed) {
		t.Errorf("dial after Close: %v", err)
	}
	if got := st4.mapErr(&tcpip.ErrConnectionRefused{}); !errors.Is(got, ErrClosed) {
		t.Errorf("mapErr after close = %v", got)
	}
}

func TestMapErr(t *testing.T) {
	st, _ := fakeStack(t, false)
	for _, c := range []struct {
		in   tcpip.Error
		want error
	}{
		{&tcpip.ErrConnectionRefused{}, syscall.ECONNREFUSED},
		{&tcpip.ErrConnectionReset{}, syscall.ECONNRESET},
		{&tcpip.ErrTimeout{}, syscall.ETIMEDOUT},
		{&tcpip.ErrHostUnreachable{}, syscall.EHOSTUNREACH},
		{&tcpip.ErrBadBuffer{}, ErrStack},
	} {
		if got := st.mapErr(c.in); !errors.Is(got, c.want) {
			t.Errorf("mapErr(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	good := Config{MAC: testVMAC, Source4: testSource4, Source6: testSource6}
	bad := map[string]func(*Config, *net.Interface){
		"short MAC":      func(c *Config, _ *net.Interface) { c.MAC = c.MAC[:5] },
		"multicast MAC":  func(c *Config, _ *net.Interface) { c.MAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1} },
		"no source":      func(c *Config, _ *net.Interface) { c.Source4, c.Source6 = netip.Addr{}, netip.Addr{} },
		"v6 as Source4":  func(c *Config, _ *net.Interface) { c.Source4 = testSource6 },
		"v4 as Source6":  func(c *Config, _ *net.Interface) { c.Source6 = testSource4 },
		"link-local":     func(c *Config, _ *net.Interface) { c.Source6 = netip.MustParseAddr("fe80::1") },
		"broadcast":      func(c *Config, _ *net.Interface) { c.Source4 = netip.MustParseAddr("255.255.255.255") },
		"tiny MTU":       func(_ *Config, i *net.Interface) { i.MTU = 60 },
		"MTU below 1280": func(_ *Config, i *net.Interface) { i.MTU = 1000 },
		"unspecified 4":  func(c *Config, _ *net.Interface) { c.Source4 = netip.IPv4Unspecified() },
		"multicast 6":    func(c *Config, _ *net.Interface) { c.Source6 = netip.MustParseAddr("ff02::1") },
		"4-in-6 Source6": func(c *Config, _ *net.Interface) { c.Source6 = netip.MustParseAddr("::ffff:192.0.2.1") },
	}
	for name, mut := range bad {
		cfg, ifi := good, *testIfi
		mut(&cfg, &ifi)
		if _, err := New(newFakeConn(), &ifi, cfg); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: New = %v, want ErrBadConfig", name, err)
		}
	}
	if _, err := New(nil, testIfi, good); !errors.Is(err, ErrBadConfig) {
		t.Errorf("nil conn: %v", err)
	}
	if _, err := New(newFakeConn(), nil, good); !errors.Is(err, ErrBadConfig) {
		t.Errorf("nil interface: %v", err)
	}
	if _, err := Listen(Config{Interface: "no-such-if0", MAC: testVMAC, Source4: testSource4}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("Listen on a missing interface: %v", err)
	}
	// IPv4 only works with a small MTU.
	ifi := *testIfi
	ifi.MTU = 576
	st, err := New(newFakeConn(), &ifi, Config{MAC: testVMAC, Source4: testSource4})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
}

// TestFilter runs the BPF program on frames it must accept and reject.
func TestFilter(t *testing.T) {
	raw, err := filter(testVMAC, testSource4, testSource6)
	if err != nil {
		t.Fatal(err)
	}
	insns, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("cannot disassemble filter")
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatal(err)
	}
	ipFrame := func(dstMAC net.HardwareAddr, dst netip.Addr) []byte {
		if dst.Is4() {
			f := make([]byte, ethHdrLen+header.IPv4MinimumSize+header.TCPMinimumSize)
			header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(peerMAC), DstAddr: tcpip.LinkAddress(dstMAC), Type: header.IPv4ProtocolNumber})
			header.IPv4(f[ethHdrLen:]).Encode(&header.IPv4Fields{TotalLength: uint16(len(f) - ethHdrLen), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: tcpip.AddrFrom4(peerAddr4.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
			return f
		}
		f := make([]byte, ethHdrLen+header.IPv6MinimumSize+header.TCPMinimumSize)
		header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(peerMAC), DstAddr: tcpip.LinkAddress(dstMAC), Type: header.IPv6ProtocolNumber})
		header.IPv6(f[ethHdrLen:]).Encode(&header.IPv6Fields{PayloadLength: header.TCPMinimumSize, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: tcpip.AddrFrom16(peerAddr6.As16()), DstAddr: tcpip.AddrFrom16(dst.As16())})
		return f
	}
	arpReply := arpRequest(testSource4)
	header.ARP(arpReply[ethHdrLen:]).SetOp(header.ARPReply)
	cases := []struct {
		name  string
		frame []byte
		want  bool
	}{
		{"ARP request for source", arpRequest(testSource4), true},
		{"ARP request for VIP", arpRequest(testVIP4), false},
		{"ARP reply", arpReply, false},
		{"IPv4 to source at vMAC", ipFrame(testVMAC, testSource4), true},
		{"IPv4 to source at other MAC", ipFrame(peerMAC, testSource4), false},
		{"IPv4 to VIP at vMAC", ipFrame(testVMAC, testVIP4), false},
		{"NS for source", neighborSolicit(peerAddr6, testSource6, 255), true},
		{"NS for VIP", neighborSolicit(peerAddr6, testVIP6, 255), false},
		{"IPv6 to source at vMAC", ipFrame(testVMAC, testSource6), true},
		{"IPv6 to source at other MAC", ipFrame(peerMAC, testSource6), false},
		{"IPv6 to VIP at vMAC", ipFrame(testVMAC, testVIP6), false},
		{"runt", []byte{1, 2, 3}, false},
	}
	for _, c := range cases {
		n, err := vm.Run(c.frame)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := n > 0; got != c.want {
			t.Errorf("%s: accepted=%v, want %v", c.name, got, c.want)
		}
	}
}

// TestCompleteChecksum compares completeChecksum on a CHECKSUM_PARTIAL
// segment (pseudo-header sum in the field) with the full checksum.
func TestCompleteChecksum(t *testing.T) {
	payload := []byte("EHLO probe.example\r\n!") // odd length
	f := make([]byte, ethHdrLen+header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	ip := header.IPv4(f[ethHdrLen:])
	src, dst := tcpip.AddrFrom4(peerAddr4.As4()), tcpip.AddrFrom4(testSource4.As4())
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(f) - ethHdrLen), TTL: 64, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: src, DstAddr: dst})
	u := header.UDP(ip.Payload())
	u.Encode(&header.UDPFields{SrcPort: 25, DstPort: 40000, Length: uint16(len(u))})
	copy(u.Payload(), payload)
	ulen := uint16(len(u))
	pseudo := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, ulen)
	u.SetChecksum(^u.CalculateChecksum(checksum.Combine(pseudo, checksum.Checksum(payload, 0))))
	want := u.Checksum()
	u.SetChecksum(pseudo) // what the sender leaves for offload
	start := ethHdrLen + header.IPv4MinimumSize
	if !completeChecksum(f, start, start+6) {
		t.Fatal("completeChecksum refused a valid packet")
	}
	if got := u.Checksum(); got != want {
		t.Fatalf("checksum %#04x, want %#04x", got, want)
	}
	if !u.IsChecksumValid(src, dst, checksum.Checksum(u.Payload(), 0)) {
		t.Fatal("completed checksum does not verify")
	}
	for _, bad := range [][2]int{{0, 6}, {start, len(f)}, {start + 8, start + 6}} {
		if completeChecksum(f, bad[0], bad[1]) {
			t.Errorf("completeChecksum accepted start %d field %d", bad[0], bad[1])
		}
	}
}

// FuzzHandleFrame feeds arbitrary frames, with and without a
// virtio_net_hdr, through the whole receive path (ARP, NDP, checksum
// completion and the gVisor stack); it must never panic.
func FuzzHandleFrame(f *testing.F) {
	f.Add(false, arpRequest(testSource4))
	f.Add(false, neighborSolicit(peerAddr6, testSource6, 255))
	f.Add(false, neighborSolicit(netip.IPv6Unspecified(), testSource6, 255))
	syn := make([]byte, ethHdrLen+header.IPv4MinimumSize+header.TCPMinimumSize)
	header.Ethernet(syn).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(peerMAC), DstAddr: tcpip.LinkAddress(testVMAC), Type: header.IPv4ProtocolNumber})
	header.IPv4(syn[ethHdrLen:]).Encode(&header.IPv4Fields{TotalLength: uint16(len(syn) - ethHdrLen), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: tcpip.AddrFrom4(testVIP4.As4()), DstAddr: tcpip.AddrFrom4(testSource4.As4())})
	header.IPv4(syn[ethHdrLen:]).SetChecksum(^header.IPv4(syn[ethHdrLen:]).CalculateChecksum())
	header.TCP(syn[ethHdrLen+header.IPv4MinimumSize:]).Encode(&header.TCPFields{SrcPort: 25, DstPort: 40000, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn | header.TCPFlagAck, WindowSize: 1000})
	f.Add(false, syn)
	vsyn := make([]byte, vnetHdrLen, vnetHdrLen+len(syn))
	vsyn[0] = vnetFlagNeedsCsum
	binary.NativeEndian.PutUint16(vsyn[6:], ethHdrLen+header.IPv4MinimumSize)
	binary.NativeEndian.PutUint16(vsyn[8:], 16)
	f.Add(true, append(vsyn, syn...))
	f.Add(true, []byte{1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	stacks := map[bool]*Stack{}
	for _, vnet := range []bool{false, true} {
		st, _ := fakeStack(f, vnet)
		stacks[vnet] = st
	}
	f.Fuzz(func(t *testing.T, vnet bool, frame []byte) {
		stacks[vnet].handleFrame(append([]byte(nil), frame...))
	})
}

// BenchmarkHandleFrameARP measures the receive path of an ARP request,
// reply included (fake connection).
func BenchmarkHandleFrameARP(b *testing.B) {
	st, fc := fakeStack(b, false)
	go func() {
		for {
			select {
			case <-fc.out:
			case <-fc.done:
				return
			}
		}
	}()
	req := arpRequest(testSource4)
	b.ReportAllocs()
	for b.Loop() {
		st.handleFrame(req)
	}
}

// BenchmarkCompleteChecksum measures checksum completion of a full-size
// frame, done for every frame a veth peer sends.
func BenchmarkCompleteChecksum(b *testing.B) {
	f := make([]byte, ethHdrLen+1500)
	b.SetBytes(int64(len(f)))
	b.ReportAllocs()
	for b.Loop() {
		completeChecksum(f, ethHdrLen+header.IPv4MinimumSize, ethHdrLen+header.IPv4MinimumSize+16)
	}
}

// BenchmarkUDPWrite measures one probe datagram through gVisor and the link
// endpoint to the (fake) socket: the transmit path.
func BenchmarkUDPWrite(b *testing.B) {
	st, fc := fakeStack(b, true)
	go func() {
		for {
			select {
			case <-fc.out:
			case <-fc.done:
				return
			}
		}
	}()
	c, err := st.Dialer(frontMAC).DialContext(context.Background(), "udp", "192.0.2.200:5060")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 512)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
}
