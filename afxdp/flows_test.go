package afxdp

import (
	"bytes"
	"net"
	"os"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/internal/e2e"
)

// xdpDrop stands in for the redirect in the flow cache tests (an empty XSKMAP's fallback):
// xdpTX, the stand-in of the other tests, is what a cache hit returns.
const xdpDrop = 1

var memberMAC = net.HardwareAddr{0x02, 0x4c, 0x32, 0x4c, 0x42, 0x12}

// flowUDPFrame returns an IPv4 UDP frame from the client to the virtual MAC.
func flowUDPFrame(t testing.TB, sport uint16, opts []layers.IPv4Option, payload int) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, Options: opts,
		SrcIP: net.IPv4(198, 51, 100, 7), DstIP: net.IPv4(192, 0, 2, 100)}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: 5004}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return clientFrame(t, ip, udp, payload)
}

// clientFrame serialises ip and l4, with payload zero bytes of data, in a frame from the client
// to the virtual MAC, with lengths and checksums filled in.
func clientFrame(t testing.TB, ip *layers.IPv4, l4 gopacket.SerializableLayer, payload int) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{DstMAC: testVMAC, SrcMAC: clientMAC, EthernetType: layers.EthernetTypeIPv4},
		ip, l4, gopacket.Payload(make([]byte, payload)))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// flowTCPFrame returns an IPv4 TCP segment from the client to the virtual MAC with the flags
// (gopacket's TCP flag fields set from FIN 0x01 ... CWR 0x80), the options and payload bytes
// of data.
func flowTCPFrame(t testing.TB, sport uint16, flags uint8, opts []layers.TCPOption, payload int) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.IPv4(198, 51, 100, 7), DstIP: net.IPv4(192, 0, 2, 100)}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: 25, Seq: 1000, Ack: 2000, Window: 512, Options: opts,
		FIN: flags&0x01 != 0, SYN: flags&0x02 != 0, RST: flags&0x04 != 0, PSH: flags&0x08 != 0,
		ACK: flags&0x10 != 0, URG: flags&0x20 != 0, ECE: flags&0x40 != 0, CWR: flags&0x80 != 0}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return clientFrame(t, ip, tcp, payload)
}

// tcpTimestamps is the option block of most Linux segments: NOP, NOP, timestamps (RFC 7323).
var tcpTimestamps = []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
	{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)}}

// rewritten is frame as the balancer forwards it to memberMAC.
func rewritten(frame []byte) []byte {
	f := append([]byte(nil), frame...)
	copy(f[0:6], memberMAC)
	copy(f[6:12], testVMAC)
	return f
}

func newFlowProgram(t testing.TB, passTCP bool) *Program {
	t.Helper()
	if os.Geteuid() != 0 {
		e2e.Prereq(t, "loading XDP programs needs root")
	}
	p, err := newProgram(testVMAC, 1, ProgramOptions{PassTCP: passTCP, FlowCache: 64}, xdpDrop)
	if err != nil {
		e2e.Prereq(t, "BPF unavailable: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func run(t *testing.T, p *Program, frame []byte) (uint32, []byte) {
	t.Helper()
	act, out, err := p.RunOut(frame)
	if err != nil {
		t.Fatal(err)
	}
	return act, out
}

// TestFlowCacheForwardsInstalledFlows checks the cache's life cycle on the program itself: a
// flow is forwarded by the program (XDP_TX, with the balancer's rewrite) only once installed and
// only under the current generation; other flows and frames the cache does not take go the
// AF_XDP way; the sweep sees the program's counts and deletes what it is told to.
func TestFlowCacheForwardsInstalledFlows(t *testing.T) {
	for _, passTCP := range []bool{false, true} {
		p := newFlowProgram(t, passTCP)
		frame := flowUDPFrame(t, 40000, nil, 18)
		if act, _ := run(t, p, frame); act != xdpDrop {
			t.Fatalf("PassTCP %v: not installed: action %d, want the redirect", passTCP, act)
		}
		if err := p.InstallFlow(rewritten(frame), 3, 7); err != nil {
			t.Fatal(err)
		}
		if act, _ := run(t, p, frame); act != xdpDrop {
			t.Fatalf("installed under generation 7 while 0 is current: action %d, want the redirect", act)
		}
		if err := p.SetGeneration(7); err != nil {
			t.Fatal(err)
		}
		act, out := run(t, p, frame)
		if act != XDPTX {
			t.Fatalf("installed, current generation: action %d, want XDP_TX", act)
		}
		if !bytes.Equal(out, rewritten(frame)) {
			t.Fatalf("forwarded frame\n%x\nwant\n%x", out, rewritten(frame))
		}
		run(t, p, frame)
		for name, f := range map[string][]byte{
			"another flow": flowUDPFrame(t, 40001, nil, 18),
			"IP options":   flowUDPFrame(t, 40000, []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}, 18),
			"TCP":          tcpOf(frame),
			"fragment":     fragmentOf(frame),
		} {
			if act, _ := run(t, p, f); act == XDPTX {
				t.Errorf("%s: forwarded by the cache", name)
			}
		}
		seen := 0
		err := p.SweepFlows(func(k *FlowKey, e *FlowEntry) bool {
			seen++
			want, _ := FlowKeyOf(frame)
			if *k != want || e.Member != 3 || e.Gen != 7 || e.Packets != 2 || e.Bytes != uint64(2*len(frame)) {
				t.Errorf("entry %x %+v, want key %x, member 3, generation 7, 2 packets, %d bytes", k[:], e, want[:], 2*len(frame))
			}
			return false
		})
		if err != nil || seen != 1 {
			t.Fatalf("sweep: %v, %d entries, want 1", err, seen)
		}
		if act, _ := run(t, p, frame); act != xdpDrop {
			t.Fatalf("swept: action %d, want the redirect", act)
		}
		if err := p.InstallFlow(rewritten(frame), 3, 7); err != nil {
			t.Fatal(err)
		}
		if err := p.SetGeneration(8); err != nil {
			t.Fatal(err)
		}
		if act, _ := run(t, p, frame); act != xdpDrop {
			t.Fatalf("after a new generation: action %d, want the redirect", act)
		}
	}
}

// TestFlowCacheTCPACKs checks which segments of an installed TCP flow the program forwards:
// ACK-only ones, with or without options, PSH, ECE or Ethernet padding; never one with data, SYN,
// FIN, RST or URG, or one whose header lengths lie. FlowKeyOf agrees with the program on each.
func TestFlowCacheTCPACKs(t *testing.T) {
	const (
		fin, syn, rst, psh, ack, urg, ece = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
	)
	p := newFlowProgram(t, true)
	ackOnly := flowTCPFrame(t, 41000, ack, tcpTimestamps, 0)
	if err := p.InstallFlow(rewritten(ackOnly), 2, 0); err != nil {
		t.Fatal(err)
	}
	padded := append(flowTCPFrame(t, 41000, ack, nil, 0), make([]byte, 6)...) // 54 bytes padded to 60
	lyingDoff := flowTCPFrame(t, 41000, ack, nil, 0)
	lyingDoff[tcpDataOff] = 4 << 4
	longDoff := flowTCPFrame(t, 41000, ack, nil, 0)
	longDoff[tcpDataOff] = 15 << 4 // 60 header bytes in a 20-byte header
	for _, c := range []struct {
		name  string
		frame []byte
		hit   bool
	}{
		{"ACK with timestamps", ackOnly, true},
		{"ACK without options", flowTCPFrame(t, 41000, ack, nil, 0), true},
		{"ACK padded to 60 bytes", padded, true},
		{"ACK PSH", flowTCPFrame(t, 41000, ack|psh, tcpTimestamps, 0), true},
		{"ACK ECE", flowTCPFrame(t, 41000, ack|ece, tcpTimestamps, 0), true},
		{"ACK with data", flowTCPFrame(t, 41000, ack|psh, tcpTimestamps, 100), false},
		{"ACK with one byte", flowTCPFrame(t, 41000, ack, nil, 1), false},
		{"SYN", flowTCPFrame(t, 41000, syn, nil, 0), false},
		{"SYN ACK", flowTCPFrame(t, 41000, syn|ack, nil, 0), false},
		{"FIN ACK", flowTCPFrame(t, 41000, fin|ack, tcpTimestamps, 0), false},
		{"RST ACK", flowTCPFrame(t, 41000, rst|ack, nil, 0), false},
		{"RST", flowTCPFrame(t, 41000, rst, nil, 0), false},
		{"URG ACK", flowTCPFrame(t, 41000, urg|ack, nil, 0), false},
		{"no flags", flowTCPFrame(t, 41000, 0, nil, 0), false},
		{"data offset below 5", lyingDoff, false},
		{"data offset past the frame", longDoff, false},
		{"truncated before the flags", ackOnly[:tcpFlagsOff], false},
		{"another flow", flowTCPFrame(t, 41001, ack, nil, 0), false},
	} {
		act, out := run(t, p, c.frame)
		if hit := act == XDPTX; hit != c.hit {
			t.Errorf("%s: action %d, want forwarded by the cache %v", c.name, act, c.hit)
		} else if hit && !bytes.Equal(out, rewritten(c.frame)) {
			t.Errorf("%s: forwarded\n%x\nwant\n%x", c.name, out, rewritten(c.frame))
		}
		_, ok := FlowKeyOf(c.frame)
		if ok != (c.hit || c.name == "another flow") {
			t.Errorf("%s: FlowKeyOf accepts it: %v", c.name, ok)
		}
	}
}

func tcpOf(frame []byte) []byte {
	f := append([]byte(nil), frame...)
	f[ipv4ProtoOff] = ipProtoTCP
	return f
}

func fragmentOf(frame []byte) []byte {
	f := append([]byte(nil), frame...)
	f[ipv4FragOff] |= 0x20 // more fragments
	return f
}

// TestFlowCacheWithoutCache checks that the cache's methods refuse a program without one.
func TestFlowCacheWithoutCache(t *testing.T) {
	p := newTestProgram(t, 1)
	if p.FlowCache() {
		t.Fatal("FlowCache() true without a cache")
	}
	if err := p.SetGeneration(1); err != ErrNoFlowCache {
		t.Fatalf("SetGeneration: %v, want ErrNoFlowCache", err)
	}
}

// FuzzFlowCacheMatchesFlowKeyOf checks the program's parsing against FlowKeyOf's on arbitrary
// frames: with a UDP and a TCP flow installed, a frame is forwarded by the program exactly when
// it is to the virtual MAC and FlowKeyOf gives one of their keys; the rest is steered as without
// a cache.
func FuzzFlowCacheMatchesFlowKeyOf(f *testing.F) {
	p := newFlowProgram(f, false)
	frame := flowUDPFrame(f, 40000, nil, 18)
	want, _ := FlowKeyOf(frame)
	if err := p.InstallFlow(rewritten(frame), 1, 1); err != nil {
		f.Fatal(err)
	}
	if err := p.SetGeneration(1); err != nil {
		f.Fatal(err)
	}
	ackOnly := flowTCPFrame(f, 41000, 0x10, tcpTimestamps, 0)
	wantTCP, _ := FlowKeyOf(ackOnly)
	if err := p.InstallFlow(rewritten(ackOnly), 2, 1); err != nil {
		f.Fatal(err)
	}
	f.Add(ackOnly)
	f.Add(ackOnly[:tcpFlagsEnd])
	f.Add(flowTCPFrame(f, 41000, 0x18, nil, 10))
	f.Add(flowTCPFrame(f, 41000, 0x11, nil, 0))
	f.Add(frame)
	f.Add(frame[:ipv4PortsEnd])
	f.Add(frame[:ipv4PortsEnd-1])
	f.Add(tcpOf(frame))
	f.Add(fragmentOf(frame))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 14 || len(b) > 4000 {
			return
		}
		act, out, err := p.RunOut(b)
		if err != nil {
			t.Fatal(err)
		}
		k, ok := FlowKeyOf(b)
		hit := bytes.Equal(b[:6], testVMAC) && ok && (k == want || k == wantTCP)
		switch {
		case hit && (act != XDPTX || !bytes.Equal(out, rewritten(b))):
			t.Fatalf("frame %x of the installed flow: action %d, out %x", b, act, out)
		case !hit && act == XDPTX:
			t.Fatalf("frame %x forwarded by the cache", b)
		case !hit && act != XDPPass && act != xdpDrop:
			t.Fatalf("frame %x: action %d", b, act)
		case !hit && (act == XDPPass) != !bytes.Equal(b[:6], testVMAC):
			t.Fatalf("frame %x: action %d", b, act)
		}
	})
}

// installN installs n flows (source ports 1..n) in p and returns their frames' keys.
func installN(t testing.TB, p *Program, n int) map[FlowKey]uint16 {
	t.Helper()
	keys := make(map[FlowKey]uint16, n)
	base := flowUDPFrame(t, 1, nil, 18)
	for i := 1; i <= n; i++ {
		f := rewritten(base)
		f[34], f[35] = byte(i>>8), byte(i)
		if err := p.InstallFlow(f, uint32(i%7), 1); err != nil {
			t.Fatal(err)
		}
		k, _ := FlowKeyOf(f)
		keys[k] = uint16(i)
	}
	return keys
}

// TestSweepFlowsBatches checks a sweep over more entries than one batch holds: every entry is
// seen once, and exactly those fn refuses are deleted.
func TestSweepFlowsBatches(t *testing.T) {
	if os.Geteuid() != 0 {
		e2e.Prereq(t, "loading XDP programs needs root")
	}
	const n = 3*sweepBatch + 17
	p, err := newProgram(testVMAC, 1, ProgramOptions{FlowCache: 2 * n}, xdpDrop)
	if err != nil {
		e2e.Prereq(t, "BPF unavailable: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	keys := installN(t, p, n)
	seen := map[FlowKey]int{}
	err = p.SweepFlows(func(k *FlowKey, e *FlowEntry) bool {
		seen[*k]++
		port := keys[*k]
		if port == 0 || e.Member != uint32(port%7) {
			t.Errorf("entry %x %+v was never installed", k[:], e)
		}
		return port%2 == 0
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != n {
		t.Fatalf("sweep saw %d of %d entries", len(seen), n)
	}
	left := 0
	if err := p.SweepFlows(func(k *FlowKey, e *FlowEntry) bool {
		left++
		if keys[*k]%2 != 0 {
			t.Errorf("entry of port %d survived its deletion", keys[*k])
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if left != n/2 {
		t.Fatalf("%d entries left, want %d", left, n/2)
	}
}

// BenchmarkSweepFlows measures one sweep of a cache of 65 536 flows, none deleted: the
// sweep's cost per second of the balancer (node.FlowSweepInterval).
func BenchmarkSweepFlows(b *testing.B) {
	if os.Geteuid() != 0 {
		e2e.Prereq(b, "loading XDP programs needs root")
	}
	const n = 65536
	p, err := newProgram(testVMAC, 1, ProgramOptions{FlowCache: n}, xdpDrop)
	if err != nil {
		e2e.Prereq(b, "BPF unavailable: %v", err)
	}
	b.Cleanup(func() { p.Close() })
	installN(b, p, n-1)
	b.ResetTimer()
	for range b.N {
		if err := p.SweepFlows(func(*FlowKey, *FlowEntry) bool { return true }); err != nil {
			b.Fatal(err)
		}
	}
}
