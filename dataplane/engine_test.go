package dataplane

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/vipset"
)

type engineOpt func(*Config, *conntrack.Config)

func newTestEngine(t testing.TB, opts ...engineOpt) *Engine {
	t.Helper()
	cfg := Config{VirtualMAC: vmacT, InterfaceMAC: ourMAC, VIPs: vipset.New(vip),
		Members: []Member{{Addr: f1Addr, Weight: 100, Local: true}, {Addr: f2Addr, Weight: 100}, {Addr: f3Addr, Weight: 100}}}
	ct := conntrack.Config{MaxEntries: 1 << 16, Timeouts: conntrack.DefaultTimeouts()}
	for _, o := range opts {
		o(&cfg, &ct)
	}
	e := New(ct)
	if err := e.SetMAC(f2Addr, f2MAC); err != nil {
		t.Fatal(err)
	}
	if err := e.SetMAC(f3Addr, f3MAC); err != nil {
		t.Fatal(err)
	}
	if err := e.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	e.SetActive(true)
	return e
}

func withPersistence(d time.Duration) engineOpt {
	return func(_ *Config, c *conntrack.Config) { c.Persistence = d }
}

func process(e *Engine, b []byte) Result {
	var scratch [128]byte
	return e.Process(b, false, scratch[:])
}

// ownerOf maps a result to the member address it went to.
func ownerOf(t testing.TB, e *Engine, r Result) netip.Addr {
	t.Helper()
	for _, m := range e.Members() {
		if m.ID == r.Member {
			return m.Addr
		}
	}
	t.Fatalf("result member %d unknown", r.Member)
	return netip.Addr{}
}

func TestForwardRewritesOnlyMACs(t *testing.T) {
	e := newTestEngine(t)
	seen := map[Verdict]int{}
	for port := uint16(1000); port < 1300; port++ {
		in := frameSpec{src: client1, dst: vip, sport: port, dport: 25, syn: true, payload: []byte("x")}.bytes(t)
		b := append([]byte(nil), in...)
		r := process(e, b)
		seen[r.Verdict]++
		switch r.Verdict {
		case VerdictForward:
			owner := ownerOf(t, e, r)
			want := map[netip.Addr]net.HardwareAddr{f2Addr: f2MAC, f3Addr: f3MAC}[owner]
			if !bytes.Equal(b[0:6], want) || !bytes.Equal(b[6:12], ourMAC) {
				t.Fatalf("MACs %x %x, want dst %x src %x", b[0:6], b[6:12], want, ourMAC)
			}
		case VerdictLocal:
			if !bytes.Equal(b[0:12], make([]byte, 12)) {
				t.Fatalf("local delivery must zero the Ethernet addresses (lo drops OTHERHOST), got %x", b[0:12])
			}
		default:
			t.Fatalf("verdict %v reason %v", r.Verdict, r.Reason)
		}
		if !bytes.Equal(b[12:], in[12:]) {
			t.Fatal("bytes beyond the Ethernet addresses changed")
		}
		if !r.NewFlow {
			t.Fatal("first SYN not marked as a new flow")
		}
	}
	if seen[VerdictForward] == 0 || seen[VerdictLocal] == 0 {
		t.Fatalf("expected both forwarded and local flows: %v", seen)
	}
	if got := e.VIPStats()[vip]; got.Packets != 300 || got.Bytes == 0 {
		t.Fatalf("per-VIP counters %+v, want 300 packets", got)
	}
}

func TestFlowSticksAndStates(t *testing.T) {
	e := newTestEngine(t)
	syn := frameSpec{src: client1, dst: vip, sport: 4000, dport: 143, syn: true}
	r1 := process(e, syn.bytes(t))
	for i := 0; i < 10; i++ {
		r := process(e, frameSpec{src: client1, dst: vip, sport: 4000, dport: 143, ack: true}.bytes(t))
		if r.Member != r1.Member || r.Verdict != r1.Verdict || r.NewFlow {
			t.Fatalf("packet %d of a flow went elsewhere: %+v vs %+v", i, r, r1)
		}
	}
	k := conntrack.Key{Src: u32(client1), Dst: u32(vip), SPort: 4000, DPort: 143, Proto: 6}
	found := false
	e.Table().Range(func(kk conntrack.Key, en conntrack.Entry) bool {
		if kk == k {
			found = true
			if en.State != conntrack.StateEstablished {
				t.Errorf("state %v, want established", en.State)
			}
		}
		return true
	})
	if !found {
		t.Fatal("flow not in table")
	}
}

func TestWeightsAndSelfWeight(t *testing.T) {
	for _, tc := range []struct {
		self uint32
		want float64 // f1's expected share
	}{{100, 1.0 / 3}, {50, 50.0 / 250}} {
		e := newTestEngine(t, func(c *Config, _ *conntrack.Config) { c.Members[0].Weight = tc.self })
		counts := map[netip.Addr]int{}
		const n = 30000
		for i := 0; i < n; i++ {
			src := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
			r := process(e, frameSpec{src: src, dst: vip, sport: uint16(1024 + i%60000), dport: 25, syn: true}.bytes(t))
			counts[ownerOf(t, e, r)]++
		}
		got := float64(counts[f1Addr]) / n
		if got < tc.want*0.9 || got > tc.want*1.1 {
			t.Errorf("-r %d: f1 share %.3f, want %.3f ±10%% (%v)", tc.self, got, tc.want, counts)
		}
	}
}

func TestPersistence(t *testing.T) {
	e := newTestEngine(t, withPersistence(15*time.Second))
	for c := 0; c < 50; c++ {
		src := netip.AddrFrom4([4]byte{198, 51, 100, byte(c)})
		var first netip.Addr
		for p := 0; p < 20; p++ {
			r := process(e, frameSpec{src: src, dst: vip, sport: uint16(2000 + p), dport: uint16(25 + p%3), syn: true}.bytes(t))
			o := ownerOf(t, e, r)
			if p == 0 {
				first = o
			} else if o != first {
				t.Fatalf("client %v: connection %d went to %v, first to %v", src, p, o, first)
			}
		}
	}
}

func TestPortRangeOwner(t *testing.T) {
	e := newTestEngine(t, func(c *Config, _ *conntrack.Config) {
		c.Members[0].Ports = PortRange{50000, 54000}
		c.Members[1].Ports = PortRange{55000, 59000}
		c.Members[2].Ports = PortRange{60000, 64000}
	})
	for i := 0; i < 100; i++ {
		src := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		r := process(e, frameSpec{src: src, dst: vip, sport: 25, dport: 55001 + uint16(i), syn: true, ack: true}.bytes(t))
		if r.Verdict != VerdictForward || ownerOf(t, e, r) != f2Addr || r.NewFlow {
			t.Fatalf("reply to f2's outgoing connection: %+v", r)
		}
		r = process(e, frameSpec{src: src, dst: vip, sport: 25, dport: 50001 + uint16(i), ack: true}.bytes(t))
		if r.Verdict != VerdictLocal {
			t.Fatalf("reply to f1's (self) outgoing connection: %+v", r)
		}
	}
	bad := Config{VirtualMAC: vmacT, InterfaceMAC: ourMAC, VIPs: vipset.New(vip),
		Members: []Member{{Addr: f1Addr, Weight: 1, Ports: PortRange{100, 200}}, {Addr: f2Addr, Weight: 1, Ports: PortRange{200, 300}}}}
	if err := e.Configure(bad); !errors.Is(err, ErrPortRangeOverlap) {
		t.Fatalf("overlap: err %v", err)
	}
}

func TestFragmentsFollowFirst(t *testing.T) {
	e := newTestEngine(t)
	for id := uint16(1); id < 200; id++ {
		src := netip.AddrFrom4([4]byte{198, 51, 100, byte(id)})
		first := frameSpec{src: src, dst: vip, proto: layers.IPProtocolUDP, sport: 5060, dport: 5060, mf: true, id: id,
			payload: make([]byte, 1472)}
		r1 := process(e, first.bytes(t))
		rest := frameSpec{src: src, dst: vip, proto: layers.IPProtocolUDP, fragOff: 185, id: id, payload: make([]byte, 600)}
		r2 := process(e, rest.bytes(t))
		if r1.Verdict == VerdictDrop || r2.Verdict != r1.Verdict || r2.Member != r1.Member {
			t.Fatalf("fragment went elsewhere: first %+v rest %+v", r1, r2)
		}
	}
	orphan := frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, fragOff: 185, id: 9999, payload: make([]byte, 8)}
	if r := process(e, orphan.bytes(t)); r.Verdict != VerdictDrop || r.Reason != ReasonFragmentUnknown {
		t.Fatalf("orphan fragment: %+v", r)
	}
}

func TestICMPErrorsFollowFlow(t *testing.T) {
	e := newTestEngine(t)
	for port := uint16(3000); port < 3100; port++ {
		r1 := process(e, frameSpec{src: client1, dst: vip, sport: port, dport: 80, syn: true}.bytes(t))
		// The frontend's reply VIP:80 -> client:port hit "fragmentation needed" on the way.
		b := icmpError(t, 3, 4, frameSpec{src: vip, dst: client1, proto: layers.IPProtocolTCP, sport: 80, dport: port})
		r2 := process(e, b)
		if r2.Verdict != r1.Verdict || r2.Member != r1.Member {
			t.Fatalf("ICMP error went to %+v, flow to %+v", r2, r1)
		}
	}
	b := icmpError(t, 3, 3, frameSpec{src: vip, dst: client1, proto: layers.IPProtocolUDP, sport: 9, dport: 9})
	if r := process(e, b); r.Verdict != VerdictLocal {
		t.Fatalf("ICMP error about an unknown flow: %+v, want local", r)
	}
}

func TestQuiesceAndRemove(t *testing.T) {
	for _, policy := range []NoDestPolicy{NoDestReschedule, NoDestExpire} {
		e := newTestEngine(t)
		// Open flows until one lands on f2.
		var port uint16
		for port = 1; ; port++ {
			r := process(e, frameSpec{src: client1, dst: vip, sport: port, dport: 25, syn: true}.bytes(t))
			if r.Verdict == VerdictForward && ownerOf(t, e, r) == f2Addr {
				break
			}
		}
		cfg := e.Config()
		cfg.NoDest = policy
		cfg.Members = append([]Member(nil), cfg.Members...)
		cfg.Members[1].Weight = 0 // quiesce f2
		if err := e.Configure(cfg); err != nil {
			t.Fatal(err)
		}
		if r := process(e, frameSpec{src: client1, dst: vip, sport: port, dport: 25, ack: true}.bytes(t)); ownerOf(t, e, r) != f2Addr {
			t.Fatal("quiesced member lost its established flow")
		}
		for p := uint16(20000); p < 20500; p++ {
			r := process(e, frameSpec{src: client1, dst: vip, sport: p, dport: 25, syn: true}.bytes(t))
			if ownerOf(t, e, r) == f2Addr {
				t.Fatal("quiesced member got a new flow")
			}
		}
		cfg.Members = []Member{cfg.Members[0], cfg.Members[2]} // remove f2
		if err := e.Configure(cfg); err != nil {
			t.Fatal(err)
		}
		r := process(e, frameSpec{src: client1, dst: vip, sport: port, dport: 25, ack: true}.bytes(t))
		switch policy {
		case NoDestReschedule:
			if r.Verdict == VerdictDrop || ownerOf(t, e, r) == f2Addr {
				t.Fatalf("reschedule: %+v", r)
			}
		case NoDestExpire:
			if r.Verdict != VerdictDrop || r.Reason != ReasonMemberGone {
				t.Fatalf("expire: %+v", r)
			}
			if r := process(e, frameSpec{src: client1, dst: vip, sport: port, dport: 25, ack: true}.bytes(t)); r.Verdict == VerdictDrop {
				t.Fatalf("expire: next frame should be scheduled anew, got %+v", r)
			}
		}
	}
}

func TestUnresolvedMemberGetsNoNewFlows(t *testing.T) {
	e := newTestEngine(t)
	if err := e.SetMAC(f3Addr, nil); err != nil {
		t.Fatal(err)
	}
	for p := uint16(1); p < 1000; p++ {
		r := process(e, frameSpec{src: client1, dst: vip, sport: p, dport: 25, syn: true}.bytes(t))
		if ownerOf(t, e, r) == f3Addr {
			t.Fatal("unresolved member got a flow")
		}
	}
}

func TestDropsAndIgnores(t *testing.T) {
	e := newTestEngine(t)
	good := frameSpec{src: client1, dst: vip, sport: 1, dport: 25, syn: true}.bytes(t)
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		b    []byte
		v    Verdict
		r    Reason
	}{
		{"runt", good[:10], VerdictDrop, ReasonRunt},
		{"other mac", mut(func(b []byte) []byte { b[0] = 0x04; return b }), VerdictIgnored, ReasonNone},
		{"IPv6 ethertype on an IPv4 packet", mut(func(b []byte) []byte { b[12], b[13] = 0x86, 0xdd; return b }), VerdictDrop, ReasonIPVersion},
		{"another ethertype", mut(func(b []byte) []byte { b[12], b[13] = 0x88, 0xb5; return b }), VerdictDrop, ReasonNotIP},
		{"vlan", mut(func(b []byte) []byte { b[12], b[13] = 0x81, 0x00; return b }), VerdictDrop, ReasonVLAN},
		{"truncated ip", good[:30], VerdictDrop, ReasonIPTruncated},
		{"version", mut(func(b []byte) []byte { b[14] = 0x65; return b }), VerdictDrop, ReasonIPVersion},
		{"ihl", mut(func(b []byte) []byte { b[14] = 0x44; return b }), VerdictDrop, ReasonIPHeaderLen},
		{"total len", mut(func(b []byte) []byte { b[16], b[17] = 0x40, 0; return b }), VerdictDrop, ReasonIPTotalLen},
		{"checksum", mut(func(b []byte) []byte { b[24] ^= 0xff; return b }), VerdictDrop, ReasonIPChecksum},
		{"tcp data offset", mut(func(b []byte) []byte { b[14+20+12] = 0x20; return b }), VerdictDrop, ReasonTCPDataOffset},
		{"not vip", frameSpec{src: client1, dst: f2Addr, sport: 1, dport: 25, syn: true}.bytes(t), VerdictDrop, ReasonNotVIP},
	}
	for _, c := range cases {
		r := process(e, c.b)
		if r.Verdict != c.v || r.Reason != c.r {
			t.Errorf("%s: got %v/%v, want %v/%v", c.name, r.Verdict, r.Reason, c.v, c.r)
		}
	}
	var scratch [128]byte
	if r := e.Process(append([]byte(nil), good...), true, scratch[:]); r.Reason != ReasonVLAN {
		t.Errorf("offloaded VLAN tag: %+v", r)
	}
	opt := frameSpec{src: client1, dst: vip, sport: 7, dport: 25, syn: true, options: true}.bytes(t)
	if r := process(e, opt); r.Verdict == VerdictDrop {
		t.Errorf("IPv4 options must be handled: %+v", r)
	}
	e.SetActive(false)
	if r := process(e, append([]byte(nil), good...)); r.Reason != ReasonInactive {
		t.Errorf("inactive: %+v", r)
	}
}

func TestARP(t *testing.T) {
	e := newTestEngine(t)
	req := arpRequest(t, client1, clentMAC, vip)
	r := process(e, req)
	if r.Verdict != VerdictARPReply {
		t.Fatalf("ARP request for VIP: %+v", r)
	}
	pkt := gopacket.NewPacket(r.Reply, layers.LayerTypeEthernet, gopacket.Default)
	eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	a := pkt.Layer(layers.LayerTypeARP).(*layers.ARP)
	if !bytes.Equal(eth.SrcMAC, vmacT) || !bytes.Equal(eth.DstMAC, clentMAC) {
		t.Fatalf("reply Ethernet %v -> %v", eth.SrcMAC, eth.DstMAC)
	}
	if a.Operation != layers.ARPReply || !bytes.Equal(a.SourceHwAddress, vmacT) || !bytes.Equal(a.SourceProtAddress, vip.AsSlice()) ||
		!bytes.Equal(a.DstProtAddress, client1.AsSlice()) {
		t.Fatalf("reply %+v", a)
	}
	if r := process(e, arpRequest(t, client1, clentMAC, f2Addr)); r.Verdict != VerdictIgnored {
		t.Fatalf("ARP for a non-VIP: %+v", r)
	}
	if r := process(e, arpRequest(t, vip, f2MAC, vip)); !r.Conflict {
		t.Fatalf("another MAC announcing our VIP must be noticed: %+v", r)
	}
	if r := process(e, arpRequest(t, vip, vmacT, vip)); !r.Conflict {
		t.Fatalf("another balancer announcing our VIP with our virtual MAC (split brain) must be noticed: %+v", r)
	}
	e.SetActive(false)
	if r := process(e, req); r.Verdict != VerdictIgnored {
		t.Fatalf("standby must not answer ARP: %+v", r)
	}
	for _, f := range Announcements(vmacT, []netip.Addr{vip}) {
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		a := p.Layer(layers.LayerTypeARP).(*layers.ARP)
		if !bytes.Equal(p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet).SrcMAC, vmacT) ||
			!bytes.Equal(a.SourceProtAddress, vip.AsSlice()) || !bytes.Equal(a.DstProtAddress, vip.AsSlice()) {
			t.Fatalf("announcement %+v", a)
		}
	}
}

func TestTableFullStillForwardsConsistently(t *testing.T) {
	e := newTestEngine(t, func(_ *Config, c *conntrack.Config) { c.MaxEntries = 10 })
	full := 0
	for p := uint16(1); p < 200; p++ {
		b := frameSpec{src: client1, dst: vip, sport: p, dport: 25, syn: true}.bytes(t)
		r1 := process(e, append([]byte(nil), b...))
		r2 := process(e, b)
		if r1.TableFull {
			full++
			if r2.Member != r1.Member {
				t.Fatal("flow beyond the table limit changed frontend")
			}
		}
	}
	if full == 0 {
		t.Fatal("table limit never reported")
	}
}

func TestProcessAllocs(t *testing.T) {
	e := newTestEngine(t)
	b := frameSpec{src: client1, dst: vip, sport: 1, dport: 25, ack: true}.bytes(t)
	process(e, append([]byte(nil), b...))
	var scratch [128]byte
	n := testing.AllocsPerRun(1000, func() {
		b[0], b[1], b[2], b[3], b[4], b[5] = vmacT[0], vmacT[1], vmacT[2], vmacT[3], vmacT[4], vmacT[5]
		e.Process(b, false, scratch[:])
	})
	if n != 0 {
		t.Fatalf("Process allocates %v per frame, want 0", n)
	}
}

func BenchmarkProcess(b *testing.B) {
	e := newTestEngine(b)
	frames := make([][]byte, 1024)
	for i := range frames {
		frames[i] = frameSpec{src: netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), dst: vip, sport: uint16(1000 + i),
			dport: 25, ack: true, payload: make([]byte, 18)}.bytes(b)
		process(e, append([]byte(nil), frames[i]...))
	}
	var scratch [128]byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := frames[i&1023]
		copy(f[0:6], vmacT)
		e.Process(f, false, scratch[:])
	}
}

func BenchmarkParseIPv4(b *testing.B) {
	f := frameSpec{src: client1, dst: vip, sport: 1, dport: 25, ack: true}.bytes(b)
	var p Packet
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		ParseIPv4(f, &p)
	}
}

// TestLeavingMember checks issue 13's graceful leave in the engine: a member marked Leaving keeps
// its established flows, and unlike a quiesced member its persistent clients' new connections go
// elsewhere.
func TestLeavingMember(t *testing.T) {
	e := newTestEngine(t, withPersistence(15*time.Second))
	// A client whose template points at f2, with one established flow there.
	var src netip.Addr
	for c := 0; ; c++ {
		src = netip.AddrFrom4([4]byte{198, 51, 100, byte(c)})
		if r := process(e, frameSpec{src: src, dst: vip, sport: 3000, dport: 143, syn: true}.bytes(t)); ownerOf(t, e, r) == f2Addr {
			break
		}
	}
	cfg := e.Config()
	cfg.Members = append([]Member(nil), cfg.Members...)
	cfg.Members[1].Leaving = true
	if err := e.Configure(cfg); !errors.Is(err, ErrBadMember) {
		t.Fatalf("leaving with weight %d: err %v, want ErrBadMember", cfg.Members[1].Weight, err)
	}
	cfg.Members[1].Weight = 0
	if err := e.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if r := process(e, frameSpec{src: src, dst: vip, sport: 3000, dport: 143, ack: true}.bytes(t)); ownerOf(t, e, r) != f2Addr {
			t.Fatalf("leaving member lost its established flow: %+v", r)
		}
	}
	// A segment of a connection this table has not learnt yet (a hand-over, sync on its way)
	// still goes to the template's member, leaving or not.
	if r := process(e, frameSpec{src: src, dst: vip, sport: 3999, dport: 143, ack: true}.bytes(t)); ownerOf(t, e, r) != f2Addr {
		t.Fatalf("an unknown connection's ACK from a persistent client went to %v, not its template's leaving member", ownerOf(t, e, r))
	}
	r := process(e, frameSpec{src: src, dst: vip, sport: 3001, dport: 143, syn: true}.bytes(t))
	if r.Verdict == VerdictDrop || ownerOf(t, e, r) == f2Addr {
		t.Fatalf("a persistent client's new connection went to the leaving member: %+v", r)
	}
	// The client closes its flow on the leaving member and reuses the 4-tuple for a new
	// connection (IPVS would give the SYN to the old server): it is scheduled anew.
	process(e, frameSpec{src: src, dst: vip, sport: 3000, dport: 143, fin: true, ack: true}.bytes(t))
	if r := process(e, frameSpec{src: src, dst: vip, sport: 3000, dport: 143, ack: true}.bytes(t)); ownerOf(t, e, r) != f2Addr {
		t.Fatalf("the last ACK of the leaving member's flow went elsewhere: %+v", r)
	}
	r = process(e, frameSpec{src: src, dst: vip, sport: 3000, dport: 143, syn: true}.bytes(t))
	if r.Verdict == VerdictDrop || ownerOf(t, e, r) == f2Addr || !r.NewFlow {
		t.Fatalf("a SYN reusing the leaving member's 4-tuple: %+v, want a new flow elsewhere", r)
	}
	if r2 := process(e, frameSpec{src: src, dst: vip, sport: 3000, dport: 143, ack: true}.bytes(t)); ownerOf(t, e, r2) != ownerOf(t, e, r) {
		t.Fatalf("the reused 4-tuple's next frame went to %v, its SYN to %v", ownerOf(t, e, r2), ownerOf(t, e, r))
	}
	// The quiesced case, for contrast: the template is honoured (IPVS's behaviour).
	cfg.Members[1].Leaving = false
	if err := e.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	var other netip.Addr
	for c := 100; ; c++ {
		other = netip.AddrFrom4([4]byte{198, 51, 100, byte(c)})
		cfg.Members[1].Weight = 100
		if err := e.Configure(cfg); err != nil {
			t.Fatal(err)
		}
		if r := process(e, frameSpec{src: other, dst: vip, sport: 3000, dport: 143, syn: true}.bytes(t)); ownerOf(t, e, r) == f2Addr {
			break
		}
	}
	cfg.Members[1].Weight = 0
	if err := e.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	if r := process(e, frameSpec{src: other, dst: vip, sport: 3001, dport: 143, syn: true}.bytes(t)); ownerOf(t, e, r) != f2Addr {
		t.Fatalf("a quiesced member's persistent client %v was moved (src %v): %+v", other, src, r)
	}
}

// TestProbeSourceIgnored: replies to the health probes' own address reach the fast path's
// sockets (they go to the virtual MAC) and are ignored, not counted as drops.
func TestProbeSourceIgnored(t *testing.T) {
	probe := netip.MustParseAddr("192.0.2.250")
	e := newTestEngine(t, func(c *Config, _ *conntrack.Config) { c.ProbeSources = []netip.Addr{probe} })
	if r := process(e, frameSpec{src: f2Addr, dst: probe, sport: 25, dport: 40000, syn: true, ack: true}.bytes(t)); r.Verdict != VerdictIgnored {
		t.Fatalf("frame to the probe source: %+v, want ignored", r)
	}
	if r := process(e, frameSpec{src: f2Addr, dst: netip.MustParseAddr("192.0.2.251"), sport: 25, dport: 40000, syn: true}.bytes(t)); r.Reason != ReasonNotVIP {
		t.Fatalf("frame to another address: %+v, want not_vip", r)
	}
}
