package ops

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// flowKey is a client's side of a flow to the VIP.
type flowKey struct {
	proto layers.IPProtocol
	src   netip.AddrPort
}

// tap counts the frames a client sends to the VIP, per flow: the sender's
// side of the count the balancer keeps per member.
type tap struct {
	h    *testbed.Host
	conn *packet.Conn
	done chan struct{}
	once sync.Once

	mu      sync.Mutex
	frames  map[flowKey]int
	bytes   map[flowKey]uint64 // frame lengths from the Ethernet header on
	err     error
	dropped uint32
}

// startTap opens an ETH_P_ALL packet socket on h's eth0, which sees the
// frames h sends as well as those it receives (packet(7)); only frames
// from h's MAC to the VIP are counted.
func startTap(t *testing.T, h *testbed.Host) *tap {
	t.Helper()
	tp := &tap{h: h, done: make(chan struct{}), frames: map[flowKey]int{}, bytes: map[flowKey]uint64{}}
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Ifname)
		if err != nil {
			return err
		}
		tp.conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		if err != nil {
			return err
		}
		rc, err := tp.conn.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		rc.Control(func(fd uintptr) {
			// SO_RCVBUFFORCE (socket(7)): a burst must not overflow the
			// default buffer while frames are decoded.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		})
		return serr
	})
	if err != nil {
		if tp.conn != nil {
			tp.conn.Close()
		}
		t.Fatalf("tap on %s: %v", h.Name, err)
	}
	go tp.run()
	t.Cleanup(func() { tp.stop() })
	return tp
}

func (tp *tap) run() {
	defer close(tp.done)
	buf := make([]byte, 1<<16+64)
	var (
		eth layers.Ethernet
		ip  layers.IPv4
		tcp layers.TCP
		udp layers.UDP
	)
	df := gopacket.NilDecodeFeedback
	for {
		n, _, err := tp.conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				tp.mu.Lock()
				tp.err = err
				tp.mu.Unlock()
			}
			return
		}
		if eth.DecodeFromBytes(buf[:n], df) != nil || !bytes.Equal(eth.SrcMAC, tp.h.MAC) ||
			eth.EthernetType != layers.EthernetTypeIPv4 || ip.DecodeFromBytes(eth.Payload, df) != nil {
			continue
		}
		dst, _ := netip.AddrFromSlice(ip.DstIP.To4())
		src, _ := netip.AddrFromSlice(ip.SrcIP.To4())
		if !isVIP(dst) || ip.FragOffset != 0 {
			continue
		}
		k := flowKey{proto: ip.Protocol}
		switch ip.Protocol {
		case layers.IPProtocolTCP:
			if tcp.DecodeFromBytes(ip.Payload, df) != nil {
				continue
			}
			k.src = netip.AddrPortFrom(src, uint16(tcp.SrcPort))
		case layers.IPProtocolUDP:
			if udp.DecodeFromBytes(ip.Payload, df) != nil {
				continue
			}
			k.src = netip.AddrPortFrom(src, uint16(udp.SrcPort))
		default:
			continue
		}
		tp.mu.Lock()
		tp.frames[k]++
		tp.bytes[k] += uint64(n)
		tp.mu.Unlock()
	}
}

// isVIP reports whether a is one of the bed's VIPs.
func isVIP(a netip.Addr) bool {
	for _, v := range suite.Bed.VIPs {
		if v == a {
			return true
		}
	}
	return false
}

// stop ends the tap after reading what is still queued and returns the
// per-flow counts.
func (tp *tap) stop() map[flowKey]int {
	tp.once.Do(func() {
		tp.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		<-tp.done
		if st, err := tp.conn.Stats(); err == nil {
			tp.dropped = st.Drops
		}
		tp.conn.Close()
	})
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.frames
}

// Issue 6, acceptance 1: the packets and bytes `l2lb status --json` and the
// metrics report per member equal the traffic the test sent, counted at the
// senders (frames the clients put on the wire towards the VIP) and at the
// receivers (requests each frontend's servers answered). f1 is the
// balancer's own frontend: its frames are delivered locally (re-injected on
// lo) and count as its member packets too.
func TestStatusAndMetricsCountTraffic(t *testing.T) {
	needBed(t)
	b := startBalancer(t, "-p", "0")
	taps := map[string]*tap{}
	for _, c := range suite.Bed.Clients {
		taps[c.Name] = startTap(t, c)
	}
	before := b.status(t)
	metricsBefore := b.metrics(t)
	servedBefore := served()

	// UDP: every datagram of at most MTU bytes is exactly one frame, one
	// answer and one member packet. Two payload sizes make the byte counts
	// distinguishable from packet counts.
	srcs := sources()
	udpAddr := netip.AddrPortFrom(vip(), udpPort)
	udpSizes := []int{100, 1000}
	const udpN = 200
	udpByName := map[string]int{}
	udpBytesByName := map[string]uint64{}
	for i := 0; i < udpN; i++ {
		s := srcs[i%len(srcs)]
		size := udpSizes[i%len(udpSizes)]
		name, err := s.Host.UDPAsk(s.Addr, udpAddr, size)
		if err != nil {
			t.Fatalf("datagram %d from %v: %v", i, s, err)
		}
		udpByName[name]++
		// Ethernet (14) + IPv4 without options (20, RFC 791) + UDP (8, RFC 768).
		udpBytesByName[name] += uint64(14 + 20 + 8 + size)
	}

	// TCP: a known number of connections, each from a source port of its
	// own so that the frames of every flow can be attributed to the
	// frontend that answered it.
	const tcpN = 120
	tcpAddr := netip.AddrPortFrom(vip(), tcpPort)
	tcpByName := map[string]int{}
	flowOwner := map[flowKey]string{}
	for i := 0; i < tcpN; i++ {
		s := srcs[i%len(srcs)]
		local, name, err := askOnce(s, tcpAddr)
		if err != nil {
			t.Fatalf("connection %d from %v: %v", i, s, err)
		}
		tcpByName[name]++
		flowOwner[flowKey{layers.IPProtocolTCP, local}] = name
	}
	// Let the last FINs and ACKs cross the balancer before counting.
	if err := e2e.WaitClosed(append(append([]*testbed.Host{}, suite.Bed.Clients...), suite.Bed.Frontends...)...); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)

	// The senders' count, per member.
	wantPackets := map[string]uint64{}
	wantBytes := map[string]uint64{}
	udpFrames := 0
	var udpBytes uint64
	for name, tp := range taps {
		frames := tp.stop()
		if tp.err != nil {
			t.Fatalf("tap on %s: %v", name, tp.err)
		}
		if tp.dropped != 0 {
			t.Fatalf("tap on %s dropped %d frames: the senders' count is incomplete", name, tp.dropped)
		}
		for k, n := range frames {
			switch k.proto {
			case layers.IPProtocolUDP:
				udpFrames += n
				udpBytes += tp.bytes[k]
			case layers.IPProtocolTCP:
				owner, ok := flowOwner[k]
				if !ok {
					t.Errorf("%s sent %d TCP frames to the VIP from %v, which is none of the test's connections", name, n, k.src)
					continue
				}
				wantPackets[owner] += uint64(n)
				wantBytes[owner] += tp.bytes[k]
			}
		}
	}
	var udpBytesSent uint64
	for name, n := range udpByName {
		wantPackets[name] += uint64(n)
		wantBytes[name] += udpBytesByName[name]
		udpBytesSent += udpBytesByName[name]
	}
	if udpFrames != udpN || udpBytes != udpBytesSent {
		t.Errorf("the clients put %d UDP frames (%d bytes) towards the VIP on the wire, want %d (%d bytes): one frame per datagram",
			udpFrames, udpBytes, udpN, udpBytesSent)
	}

	after := b.status(t)
	metricsAfter := b.metrics(t)
	again := b.status(t)
	servedAfter := served()
	t.Logf("per frontend: UDP answers %v, TCP answers %v, frames sent %v", udpByName, tcpByName, wantPackets)

	var totalWant, totalGot uint64
	for _, f := range suite.Bed.Frontends {
		name := f.Name
		// The receivers' count.
		if got := servedAfter[name].Datagrams - servedBefore[name].Datagrams; got != uint64(udpByName[name]) {
			t.Errorf("%s's server answered %d datagrams, the clients got %d answers from it", name, got, udpByName[name])
		}
		if got := servedAfter[name].Names - servedBefore[name].Names; got != uint64(tcpByName[name]) {
			t.Errorf("%s's server answered %d NAME connections, the clients got %d answers from it", name, got, tcpByName[name])
		}
		mb, ma, m2 := member(t, before, f.Addr), member(t, after, f.Addr), member(t, again, f.Addr)
		if ma.Packets != m2.Packets || ma.Bytes != m2.Bytes {
			t.Fatalf("member %s counters still move with no traffic: %d/%d then %d/%d packets/bytes", f.Addr,
				ma.Packets, ma.Bytes, m2.Packets, m2.Bytes)
		}
		if ma.Local != (f == f1()) {
			t.Errorf("member %s (%s): local=%v in the status, want %v", f.Addr, name, ma.Local, f == f1())
		}
		gotPackets := ma.Packets - mb.Packets
		totalWant += wantPackets[name]
		totalGot += gotPackets
		if gotPackets != wantPackets[name] {
			t.Errorf("status: member %s (%s) counted %d packets, the clients sent it %d frames (%d datagrams + TCP frames of %d connections)",
				f.Addr, name, gotPackets, wantPackets[name], udpByName[name], tcpByName[name])
		}
		if gotPackets == 0 {
			t.Errorf("member %s (%s) got no traffic at all; the test needs every member to get some", f.Addr, name)
		}
		// Bytes count whole frames from the Ethernet header on, as the
		// clients put them on the wire.
		if gotBytes := ma.Bytes - mb.Bytes; gotBytes != wantBytes[name] {
			t.Errorf("status: member %s (%s) counted %d bytes, the clients sent it %d bytes of frames",
				f.Addr, name, gotBytes, wantBytes[name])
		}

		// The metrics agree with the status, absolutely and in the change.
		pk := series("l2lb_packets_forwarded_total", "member", f.Addr.String())
		by := series("l2lb_bytes_forwarded_total", "member", f.Addr.String())
		for _, c := range []struct {
			series        string
			before, after float64
			statB, statA  uint64
		}{
			{pk, metricsBefore[pk], metricsAfter[pk], mb.Packets, ma.Packets},
			{by, metricsBefore[by], metricsAfter[by], mb.Bytes, ma.Bytes},
		} {
			if _, ok := metricsAfter[c.series]; !ok {
				t.Errorf("metrics have no series %s", c.series)
				continue
			}
			if uint64(c.after) != c.statA {
				t.Errorf("metrics: %s = %v, status says %d", c.series, c.after, c.statA)
			}
			if uint64(c.after-c.before) != c.statA-c.statB {
				t.Errorf("metrics: %s grew by %v, status by %d", c.series, c.after-c.before, c.statA-c.statB)
			}
		}
		if w := series("l2lb_member_weight", "member", f.Addr.String()); metricsAfter[w] != float64(ma.Weight) {
			t.Errorf("metrics: %s = %v, status weight %d", w, metricsAfter[w], ma.Weight)
		}
	}
	// The verdicts add up to the same total: every frame was forwarded to
	// another frontend or delivered locally.
	verdicts := func(s map[string]uint64) uint64 { return s["forwarded"] + s["local"] }
	if got := verdicts(after.Verdicts) - verdicts(before.Verdicts); got != totalWant {
		t.Errorf("status verdicts forwarded+local grew by %d, the clients sent %d frames", got, totalWant)
	}
	for _, v := range []string{"forwarded", "local"} {
		s := series("l2lb_verdicts_total", "verdict", v)
		if uint64(metricsAfter[s]) != after.Verdicts[v] {
			t.Errorf("metrics: %s = %v, status says %d", s, metricsAfter[s], after.Verdicts[v])
		}
	}
	if metricsAfter["l2lb_role{role=\"active\"}"] != 1 || after.Role != "active" {
		t.Errorf("role: metrics l2lb_role{role=\"active\"} = %v, status %q; want 1 and active",
			metricsAfter["l2lb_role{role=\"active\"}"], after.Role)
	}
	if got := metricsAfter["l2lb_vips"]; got != float64(len(after.VIPs)) {
		t.Errorf("metrics: l2lb_vips = %v, status lists %d VIPs", got, len(after.VIPs))
	}
	t.Logf("%d frames sent, %d member packets counted", totalWant, totalGot)
	if totalGot != totalWant {
		t.Errorf("in all, members counted %d packets for %d frames sent", totalGot, totalWant)
	}
}
