package dataplane

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/conntrack"
)

type namedFrame struct {
	name  string
	frame []byte
}

// prefetchSeeds are TCP and UDP frames Process tracks as flows.
func prefetchSeeds(t testing.TB) []namedFrame {
	padded := frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, sport: 53, dport: 53}.bytes(t)
	padded = append(padded, make([]byte, 60-len(padded))...) // Ethernet minimum frame: padding past total length
	return []namedFrame{
		{"tcp syn", frameSpec{src: client1, dst: vip, sport: 40000, dport: 443, syn: true}.bytes(t)},
		{"tcp ip options", frameSpec{src: client1, dst: vip, sport: 7, dport: 25, options: true, syn: true}.bytes(t)},
		{"udp", frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, sport: 5060, dport: 5061, payload: []byte("INVITE")}.bytes(t)},
		{"udp padded", padded},
		{"udp first frag", frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, sport: 4500, dport: 4501, mf: true, id: 9, payload: make([]byte, 32)}.bytes(t)},
	}
}

// TestPrefetchKeyMatchesProcess runs each frame through a fresh engine and
// checks that the one flow Process recorded has exactly the key Prefetch
// computes for the frame.
func TestPrefetchKeyMatchesProcess(t *testing.T) {
	for _, s := range prefetchSeeds(t) {
		b := s.frame
		t.Run(s.name, func(t *testing.T) {
			e := newTestEngine(t)
			k, ok := prefetchKey(b)
			if !ok {
				t.Fatal("no key for a tracked flow")
			}
			if r := process(e, append([]byte(nil), b...)); !r.NewFlow {
				t.Fatalf("Process did not create a flow: %+v", r)
			}
			var got []conntrack.Key
			e.Table().Range(func(k conntrack.Key, _ conntrack.Entry) bool {
				got = append(got, k)
				return true
			})
			if len(got) != 1 || got[0] != k {
				t.Fatalf("Process recorded %+v, Prefetch computes %+v", got, k)
			}
			e.Prefetch(b) // and the real thing runs
		})
	}
}

// TestPrefetchSkips checks the frames Process does not look up by their own
// 5-tuple get no key.
func TestPrefetchSkips(t *testing.T) {
	tcp := frameSpec{src: client1, dst: vip, sport: 1, dport: 25, syn: true}.bytes(t)
	shortTotal := append([]byte(nil), tcp...)
	binary.BigEndian.PutUint16(shortTotal[16:18], 20+19) // TCP header cut short by the total length
	badOffset := append([]byte(nil), tcp...)
	badOffset[14+20+12] = 4 << 4 // TCP data offset below 5 words
	for name, b := range map[string][]byte{
		"empty":           nil,
		"runt":            tcp[:20],
		"arp":             arpRequest(t, client1, clentMAC, vip),
		"icmp echo":       frameSpec{src: client1, dst: vip, proto: layers.IPProtocolICMPv4, payload: make([]byte, 8)}.bytes(t),
		"icmp error":      icmpError(t, 3, 4, frameSpec{src: vip, dst: client1, proto: layers.IPProtocolTCP, sport: 80, dport: 4000}),
		"later fragment":  frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, fragOff: 185, id: 3, payload: make([]byte, 16)}.bytes(t),
		"gre":             frameSpec{src: client1, dst: vip, proto: layers.IPProtocolGRE, payload: make([]byte, 8)}.bytes(t),
		"tcp short total": shortTotal,
		"tcp bad offset":  badOffset,
		"ip truncated":    tcp[:14+20+10],
	} {
		if k, ok := prefetchKey(b); ok {
			t.Errorf("%s: got key %+v, want none", name, k)
		}
	}
}

func TestPrefetchAllocs(t *testing.T) {
	e := newTestEngine(t)
	frames := make([][]byte, 0, 256)
	for i := range 256 {
		frames = append(frames, frameSpec{src: netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), dst: vip, sport: uint16(1000 + i), dport: 25, ack: true}.bytes(t))
		process(e, append([]byte(nil), frames[i]...))
	}
	i := 0
	if n := testing.AllocsPerRun(1000, func() { e.Prefetch(frames[i&255]); i++ }); n != 0 {
		t.Fatalf("Prefetch allocates %v per frame, want 0", n)
	}
}

// FuzzPrefetch checks that Prefetch never panics and, with ParseIPv4 as the
// oracle, that it computes the key Process would use: whenever the parser
// accepts a TCP or UDP frame that carries ports, prefetchKey agrees on the
// key, and it never finds a key in a frame the parser rejects for anything
// but its header checksum (which Prefetch does not verify).
func FuzzPrefetch(f *testing.F) {
	for _, s := range prefetchSeeds(f) {
		f.Add(s.frame)
	}
	f.Add(frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, fragOff: 185, id: 3, payload: make([]byte, 16)}.bytes(f))
	f.Add(icmpError(f, 3, 4, frameSpec{src: vip, dst: client1, proto: layers.IPProtocolTCP, sport: 80, dport: 4000}))
	f.Add([]byte{})
	e := newTestEngine(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		e.Prefetch(b)
		// Fix the IPv4 header checksum of a copy, so mutated frames get
		// past that check and the comparison below covers them.
		b = append([]byte(nil), b...)
		if len(b) >= ethHeaderLen+ipv4MinHdrLen {
			if ihl := int(b[ethHeaderLen]&0x0f) * 4; ihl >= ipv4MinHdrLen && len(b) >= ethHeaderLen+ihl {
				h := b[ethHeaderLen : ethHeaderLen+ihl]
				h[10], h[11] = 0, 0
				binary.BigEndian.PutUint16(h[10:12], ipChecksum(h))
			}
		}
		k, ok := prefetchKey(b)
		var p Packet
		r := ParseIPv4(b, &p)
		tracked := r == ReasonNone && (p.Proto == protoTCP || p.Proto == protoUDP) && (!p.Fragment || p.FirstFragment)
		want := conntrack.Key{Src: p.Src, Dst: p.Dst, SPort: p.SPort, DPort: p.DPort, Proto: p.Proto}
		switch {
		case tracked && (!ok || k != want):
			t.Fatalf("Process looks up %+v, Prefetch got %+v (ok %v)", want, k, ok)
		case !tracked && ok && r != ReasonIPChecksum:
			t.Fatalf("Prefetch found %+v in a frame Process does not look up (reason %v, packet %+v)", k, r, p)
		}
	})
}

// BenchmarkProcess1MFlows is BenchmarkProcess over 1 M established flows
// in random order, so each frame's table slot is a cache miss, without and
// with Engine.Prefetch run prefetchDistance frames ahead as the worker's
// ring walk does. Frames are written into a small ring of buffers just
// before use, as the kernel writes them into the receive ring, so only the
// table is cold (1 M stored frames in random order would add a miss per
// frame that the real ring does not have).
func BenchmarkProcess1MFlows(b *testing.B) {
	const n = 1 << 20
	const prefetchDistance = 4 // afpacket's prefetchAhead
	const ringSlots = 8
	e := newTestEngine(b, func(_ *Config, c *conntrack.Config) { c.MaxEntries = 2 * n })
	tmpl := frameSpec{src: netip.AddrFrom4([4]byte{10, 0, 0, 0}), dst: vip, sport: 1024, dport: 25, ack: true,
		payload: make([]byte, 18)}.bytes(b)
	// fill writes flow k's frame: source 10.k (24 bits) and port 1024+k%50000.
	fill := func(f []byte, k int) {
		copy(f, tmpl)
		ip := f[ethHeaderLen:]
		ip[13], ip[14], ip[15] = byte(k>>16), byte(k>>8), byte(k)
		binary.BigEndian.PutUint16(ip[20:], uint16(1024+k%50000))
		binary.BigEndian.PutUint16(ip[10:], 0)
		binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:20]))
	}
	var ring [ringSlots][]byte
	for i := range ring {
		ring[i] = make([]byte, len(tmpl))
	}
	var scratch [128]byte
	for k := range n {
		fill(ring[0], k)
		if r := e.Process(ring[0], false, scratch[:]); r.Verdict != VerdictForward && r.Verdict != VerdictLocal {
			b.Fatalf("flow %d: verdict %v", k, r.Verdict)
		}
	}
	order := rand.Perm(n)
	// hint is the worker's way since issue 14: PrefetchHint hands the key's hash to ProcessHint.
	for _, pf := range []string{"false", "true", "hint"} {
		b.Run("prefetch="+pf, func(b *testing.B) {
			for j := range prefetchDistance {
				fill(ring[j], order[j])
			}
			var hints [ringSlots]FlowHint
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				next := ring[(i+prefetchDistance)%ringSlots]
				fill(next, order[(i+prefetchDistance)&(n-1)])
				switch pf {
				case "true":
					e.Prefetch(next)
					e.Process(ring[i%ringSlots], false, scratch[:])
				case "hint":
					e.PrefetchHint(next, &hints[(i+prefetchDistance)%ringSlots])
					e.ProcessHint(ring[i%ringSlots], false, scratch[:], &hints[i%ringSlots])
				default:
					e.Process(ring[i%ringSlots], false, scratch[:])
				}
				i++
			}
		})
	}
}
