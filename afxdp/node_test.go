package afxdp_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/afxdp"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/dataplane/node"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/vipset"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	vmac      = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0, 0x07}
	vip       = netip.MustParseAddr("192.0.2.100")
	frontend  = netip.MustParseAddr("192.0.2.12")
	clientIP  = netip.MustParseAddr("198.51.100.7")
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
)

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestNodeRunsOnAFXDP runs the real fast path (node.Run with a dataplane.Engine) on the
// sockets of node.OpenXDP in a namespace: an ARP request for the VIP (broadcast, read from the
// control socket) is answered with the virtual MAC, and UDP datagrams to the virtual MAC
// (redirected into the AF_XDP socket) are forwarded to the frontend's MAC, unchanged but for
// the MACs. Closing the sockets detaches the XDP program.
func TestNodeRunsOnAFXDP(t *testing.T) { testNodeOnAFXDP(t, node.XDPConfig{}) }

// TestNodeRunsOnAFXDPTCPToKernel is TestNodeRunsOnAFXDP with TCP left to the kernel: UDP
// datagrams are forwarded from the AF_XDP socket, TCP segments from the AF_PACKET rings that
// see only frames to the virtual MAC (they receive TCP only, so ARP is answered once).
func TestNodeRunsOnAFXDPTCPToKernel(t *testing.T) {
	testNodeOnAFXDP(t, node.XDPConfig{TCPToKernel: true})
}

func testNodeOnAFXDP(t *testing.T, x node.XDPConfig) {
	e := afxdp.NewTestNS(t, 1)
	addIPv4(t, e)
	vb, err := netInterface(e, "vb")
	if err != nil {
		t.Fatal(err)
	}
	va, err := netInterface(e, "va")
	if err != nil {
		t.Fatal(err)
	}
	eng := dataplane.New(conntrack.Config{MaxEntries: 1 << 12, Timeouts: conntrack.DefaultTimeouts()})
	// The frontend lives behind vb: its MAC is vb's, set directly (no ARP resolution here).
	if err := eng.SetMAC(frontend, vb.HardwareAddr); err != nil {
		t.Fatal(err)
	}
	if err := eng.Configure(dataplane.Config{VirtualMAC: vmac, InterfaceMAC: va.HardwareAddr,
		VIPs: vipset.New(vip), Members: []dataplane.Member{{Addr: frontend, Weight: 100}}}); err != nil {
		t.Fatal(err)
	}
	var s node.Sockets
	if err := e.Run(func() (err error) {
		s, err = node.OpenXDPWith(node.OpenConfig{Interface: "va", Workers: 2, VirtualMAC: vmac, FanoutGroup: 7}, x)
		return err
	}); err != nil {
		if errors.Is(err, afxdp.ErrUnavailable) {
			e2e.Prereq(t, "AF_XDP unavailable: %v", err)
		}
		t.Fatal(err)
	}
	// veth has one queue: one AF_XDP socket, and with TCP to the kernel a ring per worker.
	wantSockets := 1
	if x.TCPToKernel {
		wantSockets = 3
	}
	if len(s.Workers) != wantSockets || s.Lo == nil || s.ARP == nil {
		t.Fatalf("sockets: %d workers, lo %v, ARP %v; want %d, lo and ARP", len(s.Workers), s.Lo, s.ARP, wantSockets)
	}
	var rings []*afpacket.Socket
	for _, w := range s.Workers[1:] {
		rings = append(rings, w.(*afpacket.Socket))
	}
	s.ARP.Close() // the frontend's MAC is set by hand
	s.ARP = nil
	if !xdpAttached(t, e) {
		t.Fatal("no XDP program on va after OpenXDP")
	}
	n := node.New(node.Config{Engine: eng, Workers: len(s.Workers)})
	n.SetActive(true)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- n.Run(ctx, s) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
		if xdpAttached(t, e) {
			t.Error("XDP program still attached after Run closed the sockets")
		}
	}()

	var raw int
	if err := e.Run(func() (err error) { raw, err = afxdp.RawSocket(vb.Index); return err }); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(raw)
	unix.SetsockoptTimeval(raw, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000})

	arpReq := serialize(t, &layers.Ethernet{SrcMAC: clientMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: clientMAC, SourceProtAddress: clientIP.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: vip.AsSlice()})
	udp := func(sport uint16) []byte {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: clientIP.AsSlice(), DstIP: vip.AsSlice()}
		u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: 5060}
		u.SetNetworkLayerForChecksum(ip)
		return serialize(t, &layers.Ethernet{SrcMAC: clientMAC, DstMAC: vmac, EthernetType: layers.EthernetTypeIPv4}, ip, u,
			gopacket.Payload("hello over AF_XDP"))
	}
	tcp := func(sport uint16) []byte {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: clientIP.AsSlice(), DstIP: vip.AsSlice()}
		s := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: 25, SYN: true, Seq: 1, Window: 64240}
		s.SetNetworkLayerForChecksum(ip)
		return serialize(t, &layers.Ethernet{SrcMAC: clientMAC, DstMAC: vmac, EthernetType: layers.EthernetTypeIPv4}, ip, s)
	}
	sent := map[uint16][]byte{}
	var arpOK bool
	arpSent, arpReplies, tcpSent := 0, 0, 0
	forwarded := map[uint16]bool{}
	buf := make([]byte, 4096)
	deadline := time.Now().Add(5 * time.Second)
	for (!arpOK || len(forwarded) < 6) && time.Now().Before(deadline) {
		// Resend until answered: Run starts its workers asynchronously.
		if !arpOK {
			unix.Write(raw, arpReq)
			arpSent++
		}
		for sp := uint16(40000); sp < 40003; sp++ {
			if !forwarded[sp] {
				sent[sp] = udp(sp)
				unix.Write(raw, sent[sp])
			}
		}
		for sp := uint16(41000); sp < 41003; sp++ {
			if !forwarded[sp] {
				sent[sp] = tcp(sp)
				unix.Write(raw, sent[sp])
				tcpSent++
			}
		}
		for {
			m, err := unix.Read(raw, buf)
			if err != nil {
				break
			}
			p := gopacket.NewPacket(buf[:m], layers.LayerTypeEthernet, gopacket.Default)
			eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			if eth == nil {
				continue
			}
			if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok && a.Operation == layers.ARPReply &&
				bytes.Equal(a.SourceProtAddress, vip.AsSlice()) {
				if !bytes.Equal(a.SourceHwAddress, vmac) || !bytes.Equal(eth.SrcMAC, vmac) {
					t.Errorf("ARP reply with %v (Ethernet source %v), want the virtual MAC", net.HardwareAddr(a.SourceHwAddress), eth.SrcMAC)
				}
				arpOK = true
				if bytes.Equal(a.DstHwAddress, clientMAC) { // not a gratuitous announcement
					arpReplies++
				}
			}
			if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && bytes.Equal(eth.DstMAC, vb.HardwareAddr) {
				sp := uint16(u.SrcPort)
				want, ok := sent[sp]
				if !ok {
					continue
				}
				if !bytes.Equal(eth.SrcMAC, va.HardwareAddr) || !bytes.Equal(buf[12:m], want[12:]) {
					t.Errorf("forwarded frame %x, want %x with MACs %v <- %v", buf[:m], want, vb.HardwareAddr, va.HardwareAddr)
				}
				forwarded[sp] = true
			}
			if s, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && bytes.Equal(eth.DstMAC, vb.HardwareAddr) {
				sp := uint16(s.SrcPort)
				if want, ok := sent[sp]; ok {
					if !bytes.Equal(eth.SrcMAC, va.HardwareAddr) || !bytes.Equal(buf[12:m], want[12:]) {
						t.Errorf("forwarded segment %x, want %x with MACs %v <- %v", buf[:m], want, vb.HardwareAddr, va.HardwareAddr)
					}
					forwarded[sp] = true
				}
			}
		}
	}
	if !arpOK {
		t.Error("no ARP reply for the VIP")
	}
	if arpReplies > arpSent {
		t.Errorf("%d ARP replies to %d requests: answered twice", arpReplies, arpSent)
	}
	if len(forwarded) != 6 {
		t.Errorf("forwarded %d of 3 datagrams and 3 segments: %v", len(forwarded), forwarded)
	}
	// The rings' filter and the program's steering: the rings received TCP only.
	var ringFrames uint64
	for _, r := range rings {
		st, err := r.Stats()
		if err != nil {
			t.Fatal(err)
		}
		ringFrames += st.Packets
	}
	if x.TCPToKernel && (ringFrames < 3 || ringFrames > uint64(tcpSent)) {
		t.Errorf("rings received %d frames for %d TCP segments sent, want 3 to %d", ringFrames, tcpSent, tcpSent)
	}
	st := n.Stats()
	t.Logf("stats: %+v; rings received %d frames, %d TCP segments sent", st, ringFrames, tcpSent)
}

// TestOpenXDPNeedsAWorkerPerQueue checks that OpenXDP refuses an interface with more receive
// queues than workers (frames of a queue without a socket would be lost) and opens one socket
// per queue otherwise.
func TestOpenXDPNeedsAWorkerPerQueue(t *testing.T) {
	e := afxdp.NewTestNS(t, 2)
	addIPv4(t, e)
	err := e.Run(func() error {
		s, err := node.OpenXDP(node.OpenConfig{Interface: "va", Workers: 1, VirtualMAC: vmac})
		if err == nil {
			s.Close()
		}
		return err
	})
	if !errors.Is(err, node.ErrQueues) {
		t.Fatalf("OpenXDP with 2 queues, 1 worker: %v, want ErrQueues", err)
	}
	if xdpAttached(t, e) {
		t.Fatal("a failed OpenXDP left its program attached")
	}
	err = e.Run(func() error {
		s, err := node.OpenXDP(node.OpenConfig{Interface: "va", Workers: 2, VirtualMAC: vmac})
		if err != nil {
			return err
		}
		defer s.Close()
		if len(s.Workers) != 2 {
			return errors.New("not one socket per queue")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if xdpAttached(t, e) {
		t.Fatal("program attached after Close")
	}
	if err := e.Run(func() error {
		_, err := node.OpenXDP(node.OpenConfig{Interface: "nosuch0", VirtualMAC: vmac})
		return err
	}); !errors.Is(err, node.ErrNoInterface) {
		t.Fatalf("missing interface: %v", err)
	}
}

// TestOpenXDPRefusesSuperFrames checks that OpenXDPWith refuses generic XDP with TCP on AF_XDP
// where frames larger than a UMEM frame arrive, which the kernel would drop (bulk TCP would
// stall): on a veth, whose peer passes GSO frames through, and on a bridge while its
// rx-gro is on; with rx-gro off, and on the veth with TCP left to the kernel, it opens. A
// refusal leaves no program attached.
func TestOpenXDPRefusesSuperFrames(t *testing.T) {
	e := afxdp.NewTestNS(t, 1)
	addIPv4(t, e)
	open := func(ifname string, x node.XDPConfig) (node.SocketsInfo, error) {
		var info node.SocketsInfo
		err := e.Run(func() error {
			s, err := node.OpenXDPWith(node.OpenConfig{Interface: ifname, VirtualMAC: vmac}, x)
			if err != nil {
				return err
			}
			info = s.Info
			s.Close()
			return nil
		})
		if errors.Is(err, afxdp.ErrUnavailable) {
			e2e.Prereq(t, "AF_XDP unavailable: %v", err)
		}
		return info, err
	}
	generic := node.XDPConfig{Mode: afxdp.ModeGeneric}
	_, err := open("va", generic)
	if !errors.Is(err, node.ErrSuperFrames) || !strings.Contains(err.Error(), "veth") {
		t.Fatalf("generic XDP, TCP on AF_XDP, on a veth: %v, want ErrSuperFrames naming the veth", err)
	}
	if xdpAttached(t, e) {
		t.Fatal("a refused OpenXDPWith left its program attached")
	}
	if info, err := open("va", node.XDPConfig{Mode: afxdp.ModeGeneric, TCPToKernel: true}); err != nil || info.XDPMode != "generic" {
		t.Fatalf("generic XDP, TCP to the kernel, on a veth: %+v, %v; want it open in generic mode", info, err)
	}

	if err := e.Run(func() error {
		// A bridge, not a dummy (not built into every kernel) or a macvlan (its GRO follows
		// the veth under it): any non-veth interface with GRO will do, since the program is
		// only attached here.
		d := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "d0"}}
		if err := netlink.LinkAdd(d); err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("203.0.113.1/24")
		if err := netlink.AddrAdd(d, a); err != nil {
			return err
		}
		return netlink.LinkSetUp(d)
	}); err != nil {
		t.Fatal(err)
	}
	setGRO := func(on bool) {
		t.Helper()
		if err := e.Run(func() error {
			et, err := ethtool.NewEthtool()
			if err != nil {
				return err
			}
			defer et.Close()
			return et.Change("d0", map[string]bool{"rx-gro": on})
		}); err != nil {
			t.Fatalf("ethtool -K d0 gro %v: %v", on, err)
		}
	}
	setGRO(true)
	_, err = open("d0", generic)
	if !errors.Is(err, node.ErrSuperFrames) || !strings.Contains(err.Error(), "rx-gro") || !strings.Contains(err.Error(), "ethtool -K d0 gro off") {
		t.Fatalf("generic XDP, TCP on AF_XDP, rx-gro on: %v, want ErrSuperFrames naming rx-gro and its ethtool -K", err)
	}
	t.Logf("refused: %v", err)
	setGRO(false)
	info, err := open("d0", generic)
	if err != nil || info.XDPMode != "generic" || info.TCP != "xsk" {
		t.Fatalf("generic XDP, TCP on AF_XDP, rx-gro off: %+v, %v; want it open", info, err)
	}
}

// addIPv4 gives va an address: node's ARP client (github.com/mdlayher/arp) needs one.
func addIPv4(t *testing.T, e *afxdp.TestNS) {
	t.Helper()
	if err := e.Run(func() error {
		l, err := netlink.LinkByName("va")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("192.0.2.1/24")
		return netlink.AddrAdd(l, a)
	}); err != nil {
		t.Fatal(err)
	}
}

func netInterface(e *afxdp.TestNS, name string) (ifi *net.Interface, err error) {
	err = e.Run(func() (err error) { ifi, err = net.InterfaceByName(name); return err })
	return ifi, err
}

func xdpAttached(t *testing.T, e *afxdp.TestNS) bool {
	t.Helper()
	var on bool
	if err := e.Run(func() error {
		l, err := netlink.LinkByName("va")
		if err != nil {
			return err
		}
		on = l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return on
}
