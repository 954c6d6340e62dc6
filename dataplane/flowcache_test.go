package dataplane

import (
	"encoding/binary"
	"testing"

	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/conntrack"
)

// remoteFlow returns a UDP source port whose flow the engine schedules on a remote member, with
// the frame of its first datagram.
func remoteFlow(t *testing.T, e *Engine, dport uint16) (uint16, Result) {
	t.Helper()
	for sport := uint16(30000); sport < 31000; sport++ {
		r := process(e, frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, sport: sport, dport: dport, payload: []byte("rtp")}.bytes(t))
		if r.Verdict == VerdictForward {
			return sport, r
		}
	}
	t.Fatal("no flow went to a remote member")
	return 0, Result{}
}

// TestCacheableOnlyForKnownRemoteUDPFlows checks which results the XDP flow cache may take: a
// known UDP flow over IPv4 forwarded to a remote member, and nothing else.
func TestCacheableOnlyForKnownRemoteUDPFlows(t *testing.T) {
	e := newTestEngine(t, func(c *Config, _ *conntrack.Config) { c.CallIDPorts = []uint16{5060} })
	udp := func(sport, dport uint16) frameSpec {
		return frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, sport: sport, dport: dport, payload: []byte("rtp")}
	}
	sport, first := remoteFlow(t, e, 5004)
	if first.Cacheable || !first.NewFlow {
		t.Fatalf("first datagram: %+v, want a new flow, not cacheable", first)
	}
	if r := process(e, udp(sport, 5004).bytes(t)); r.Verdict != VerdictForward || !r.Cacheable {
		t.Fatalf("second datagram: %+v, want forwarded and cacheable", r)
	}
	for name, spec := range map[string]frameSpec{
		"first fragment": {src: client1, dst: vip, proto: layers.IPProtocolUDP, sport: sport, dport: 5004, mf: true, id: 9, payload: []byte("rtp")},
		"TCP SYN":        {src: client1, dst: vip, sport: sport, dport: 5004, syn: true},
	} {
		process(e, spec.bytes(t))
		if r := process(e, spec.bytes(t)); r.Cacheable {
			t.Errorf("%s: cacheable: %+v", name, r)
		}
	}
	// A SIP port is dispatched by Call-ID, datagram by datagram.
	for range 2 {
		if r := process(e, udp(sport, 5060).bytes(t)); r.Cacheable {
			t.Errorf("SIP port: cacheable: %+v", r)
		}
	}
	// The local member's flows are re-injected on lo by user space.
	for p := uint16(31000); p < 31200; p++ {
		process(e, udp(p, 5004).bytes(t))
		if r := process(e, udp(p, 5004).bytes(t)); r.Verdict == VerdictLocal && r.Cacheable {
			t.Fatalf("local flow: cacheable: %+v", r)
		}
	}
}

// TestCacheableTCPACKs checks which TCP segments may install their flow in the XDP flow cache:
// an ACK without SYN, FIN or RST of a known flow on a remote member; never the segment that
// schedules the flow, nor one that moves its state.
func TestCacheableTCPACKs(t *testing.T) {
	e := newTestEngine(t)
	seg := func(sport uint16, s frameSpec) []byte {
		s.src, s.dst, s.sport, s.dport = client1, vip, sport, 25
		return s.bytes(t)
	}
	var sport uint16
	for p := uint16(32000); ; p++ {
		if p == 33000 {
			t.Fatal("no TCP flow went to a remote member")
		}
		if r := process(e, seg(p, frameSpec{syn: true})); r.Verdict == VerdictForward {
			if r.Cacheable || !r.NewFlow {
				t.Fatalf("SYN: %+v, want a new flow, not cacheable", r)
			}
			sport = p
			break
		}
	}
	for _, c := range []struct {
		name      string
		spec      frameSpec
		cacheable bool
	}{
		{"SYN again", frameSpec{syn: true}, false},
		{"handshake ACK", frameSpec{ack: true}, true},
		{"ACK with data", frameSpec{ack: true, payload: []byte("EHLO x\r\n")}, true},
		{"ACK", frameSpec{ack: true}, true},
		{"FIN ACK", frameSpec{fin: true, ack: true}, false},
		{"ACK after FIN", frameSpec{ack: true}, true},
		{"RST ACK", frameSpec{rst: true, ack: true}, false},
		{"RST", frameSpec{rst: true}, false},
		{"no flags", frameSpec{}, false},
	} {
		r := process(e, seg(sport, c.spec))
		if r.Verdict != VerdictForward || r.Cacheable != c.cacheable {
			t.Errorf("%s: %+v, want forwarded, cacheable %v", c.name, r, c.cacheable)
		}
	}
	// The local member's flows are re-injected on lo by user space.
	for p := uint16(33000); p < 33200; p++ {
		process(e, seg(p, frameSpec{syn: true}))
		if r := process(e, seg(p, frameSpec{ack: true})); r.Verdict == VerdictLocal && r.Cacheable {
			t.Fatalf("local flow: cacheable: %+v", r)
		}
	}
}

// TestFlowGenerationMovesOnEveryChange checks that every change that can alter a cached flow's
// answer moves the generation on and signals it.
func TestFlowGenerationMovesOnEveryChange(t *testing.T) {
	e := newTestEngine(t)
	drain := func() bool {
		select {
		case <-e.FlowGenerationChanged():
			return true
		default:
			return false
		}
	}
	drain()
	for name, change := range map[string]func(){
		"SetMAC":     func() { _ = e.SetMAC(f2Addr, f3MAC) },
		"Configure":  func() { _ = e.Configure(e.Config()) },
		"SetActive":  func() { e.SetActive(false) },
		"reactivate": func() { e.SetActive(true) },
	} {
		g := e.FlowGeneration()
		change()
		if e.FlowGeneration() == g {
			t.Errorf("%s: generation stayed %d", name, g)
		}
		if !drain() {
			t.Errorf("%s: no signal", name)
		}
	}
}

// TestForwardedByCache checks the hand-back of the cache's counts: they land on the verdict,
// member and VIP counters of a flow still on its member, and a flow gone from the table or on
// another member is disowned.
func TestForwardedByCache(t *testing.T) {
	e := newTestEngine(t)
	sport, r := remoteFlow(t, e, 5004)
	k := conntrack.Key{Src: binary.BigEndian.Uint32(client1.AsSlice()), Dst: binary.BigEndian.Uint32(vip.AsSlice()),
		SPort: sport, DPort: 5004, Proto: 17}
	var c Counters
	before := e.VIPStats()[vip]
	if !e.ForwardedByCache(k, r.Member, 10, 1000, &c) {
		t.Fatal("flow on its member disowned")
	}
	s := Sum(&c)
	if s.Verdicts["forwarded"] != 10 || s.MemberPackets[r.Member] != 10 || s.MemberBytes[r.Member] != 1000 {
		t.Errorf("counters %+v, want 10 forwarded frames, 1000 bytes on member %d", s, r.Member)
	}
	if got := e.VIPStats()[vip]; got.Packets != before.Packets+10 || got.Bytes != before.Bytes+1000 {
		t.Errorf("VIP counters %+v, want %+v plus 10 and 1000", got, before)
	}
	if e.ForwardedByCache(k, r.Member+1, 1, 1, &c) {
		t.Error("flow claimed for another member")
	}
	k.SPort++
	if e.ForwardedByCache(k, r.Member, 1, 1, &c) {
		t.Error("unknown flow owned")
	}
	if s := Sum(&c); s.Verdicts["forwarded"] != 10 {
		t.Errorf("disowned flows counted: %d forwarded", s.Verdicts["forwarded"])
	}
}
