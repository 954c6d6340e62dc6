package ipv6

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
)

// floodKind is one kind of frame of the flood and the drop reason l2lb must count it under ("" for
// random bytes, which may land under several).
type floodKind struct {
	name   string
	reason string
	build  func() []byte
}

// floodEach is how many frames of each kind the flood sends.
const floodEach = 1000

// floodBatch frames are sent between short pauses, so that the flood measures the parser and its
// counters rather than the receive ring's size.
const floodBatch = 200

// A flood of malformed IPv6 frames to the virtual MAC from c1 (an AF_PACKET socket in its
// namespace, as e2e's IPv4 TestMalformedFlood): truncated headers, payload lengths beyond the
// frame or zero, a Hop-by-Hop header that is not first, an over-long extension chain, two Fragment
// headers, an extension header cut short, neighbour discovery with hop limit 64 or cut short, a
// Packet Too Big whose quote is cut short, truncated or bad TCP headers, a wrong version and
// random bytes behind ethertype 0x86dd. The
// balancer keeps running, counts every kind under its reason in `l2lb status --json` (roughly as
// many as were sent), reports no neighbour conflict for the bad advertisements, still handles
// valid but unusual IPv6 (Hop-by-Hop and Destination options, an atomic fragment), and forwards
// real traffic of both families afterwards.
func TestIPv6MalformedFlood(t *testing.T) {
	bed := needBed(t)
	b := startBalancer(t, bed, options{extra: []string{"-p", "0"}})
	c1 := bed.Clients[0]
	raw, err := c1.RawConn()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	fb := &frameBuilder6{src: c1.MAC, dst: b.VMAC6, from: c1.Addr6, to: vip6(bed), rng: rand.New(rand.NewPCG(6, 12))}
	kinds := []floodKind{
		{"truncated IPv6 header", "ip_truncated", fb.truncatedHeader},
		{"payload length beyond the frame", "ip_total_len", fb.longPayloadLen},
		{"payload length zero", "ip_total_len", fb.zeroPayloadLen},
		{"hop-by-hop not first", "ipv6_ext_chain", fb.hopByHopNotFirst},
		{"over-long extension chain", "ipv6_ext_chain", fb.longChain},
		{"two fragment headers", "ipv6_ext_chain", fb.twoFragments},
		{"extension header cut short", "ipv6_ext_chain", fb.cutExtension},
		{"neighbour solicitation with hop limit 64", "ndp_malformed", fb.nsHopLimit64},
		{"neighbour advertisement with hop limit 64", "ndp_malformed", fb.naHopLimit64},
		{"neighbour solicitation cut short", "ndp_malformed", fb.nsTruncated},
		{"Packet Too Big quoting a cut-short packet", "icmp_inner", fb.tooBigShortQuote},
		{"TCP header cut short", "l4_truncated", fb.tcpTruncated},
		{"TCP data offset < 5", "tcp_data_offset", fb.tcpShortOffset},
		{"version 4 under ethertype 0x86dd", "ip_version", fb.badVersion},
		{"random bytes under ethertype 0x86dd", "", fb.garbage},
	}
	before := b.statusCLI(t)
	dst := &packet.Addr{HardwareAddr: b.VMAC6}
	expect := map[string]uint64{}
	random := uint64(0)
	total := len(kinds) * floodEach
	sendErrs := 0
	start := time.Now()
	for i := 0; i < total; i++ {
		k := kinds[i%len(kinds)]
		if _, err := raw.WriteTo(k.build(), dst); err != nil {
			sendErrs++
			if sendErrs == 1 {
				t.Errorf("sending a %q frame: %v", k.name, err)
			}
			continue
		}
		if k.reason == "" {
			random++
		} else {
			expect[k.reason]++
		}
		if i%floodBatch == floodBatch-1 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	t.Logf("sent %d malformed IPv6 frames of %d kinds to %v in %v (%d send errors)",
		total, len(kinds), b.VMAC6, time.Since(start).Round(time.Millisecond), sendErrs)
	if !b.Running() {
		t.Fatalf("l2lb exited during the flood: %v\nlog:\n%s", b.WaitErr(), b.LogText())
	}

	// Valid but unusual IPv6 is still handled: answered by a frontend, local or forwarded.
	// Each datagram comes from a socket of its own, so that they are spread.
	time.Sleep(300 * time.Millisecond)
	payload := []byte("ipv6 extension headers must still be handled")
	sum := sha256.Sum256(payload)
	wantSuffix := " " + hex.EncodeToString(sum[:])
	for _, v := range []struct {
		name  string
		build func(sport uint16) []byte
	}{
		{"Hop-by-Hop and Destination Options", func(sport uint16) []byte { return fb.udpWithOptions(sport, udpPort, payload) }},
		{"atomic fragment", func(sport uint16) []byte { return fb.udpAtomicFragment(sport, udpPort, payload) }},
	} {
		const n = 20
		answers := map[string]int{}
		got := 0
		var lost []string
		for i := 0; i < n; i++ {
			uc, err := c1.ListenUDP(netip.AddrPortFrom(c1.Addr6, 0))
			if err != nil {
				t.Fatal(err)
			}
			sport := uc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
			if _, err := raw.WriteTo(v.build(sport), dst); err != nil {
				t.Errorf("sending a datagram with %s: %v", v.name, err)
			}
			uc.SetReadDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 512)
			m, _, err := uc.ReadFromUDPAddrPort(buf)
			uc.Close()
			name, ok := strings.CutSuffix(string(buf[:max(m, 0)]), wantSuffix)
			if err != nil || !ok {
				lost = append(lost, fmt.Sprintf("from port %d: %q, %v", sport, buf[:max(m, 0)], err))
				continue
			}
			got++
			answers[name]++
		}
		if got < n*9/10 || len(answers) < 2 {
			t.Errorf("%d of %d UDP datagrams with %s were answered (by %v), want nearly all and by more than one frontend; they are valid IPv6. Lost: %v",
				got, n, v.name, answers, lost)
		} else {
			t.Logf("datagrams with %s answered %d/%d by %v", v.name, got, n, answers)
		}
	}

	// Real traffic of both families still goes through.
	conns6 := askMany(t, 60, sources6(bed), netip.AddrPortFrom(vip6(bed), tcpPort))
	conns4 := askMany(t, 30, sources4(bed), netip.AddrPortFrom(vip4(bed), tcpPort))
	t.Logf("after the flood: %d/60 IPv6 connections %v, %d/30 IPv4 connections %v", len(conns6), countNames(conns6), len(conns4), countNames(conns4))
	if !b.Running() {
		t.Fatalf("l2lb exited after the flood: %v\nlog:\n%s", b.WaitErr(), b.LogText())
	}

	// The drops are counted by reason, roughly as many as were sent: at least 95 % of each kind
	// (a frame the receive ring had no room for is lost uncounted), and no more than the kind's
	// frames plus the random ones, which may land under any reason.
	var after map[string]uint64
	s2 := before
	deadline := time.Now().Add(5 * time.Second)
	for {
		s2 = b.statusCLI(t)
		after = map[string]uint64{}
		var all uint64
		for r, n := range s2.Drops {
			after[r] = n - before.Drops[r]
			all += after[r]
		}
		if all >= uint64(total)-uint64(sendErrs) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	var reasons []string
	var all uint64
	for r, n := range after {
		if n > 0 {
			reasons = append(reasons, r)
		}
		all += n
	}
	sort.Strings(reasons)
	var desc []string
	for _, r := range reasons {
		desc = append(desc, r+"="+strconv.FormatUint(after[r], 10))
	}
	t.Logf("drops counted during the flood (l2lb status --json): %s; %d in all for %d frames sent", strings.Join(desc, " "), all, total-sendErrs)
	t.Logf("expected per reason (without the %d random frames): %v", random, expect)
	for r, want := range expect {
		got := after[r]
		if got < want*95/100 || got > want+random {
			t.Errorf("drop reason %s counted %d, want %d (from %d to %d with the random frames)", r, got, want, want*95/100, want+random)
		}
	}
	if want := uint64(total-sendErrs) * 95 / 100; all < want {
		t.Errorf("%d drops counted in all for %d malformed frames, want at least %d", all, total-sendErrs, want)
	}
	if all > uint64(total-sendErrs)+50 {
		t.Errorf("%d drops counted in all for %d malformed frames: frames outside the flood were dropped too", all, total-sendErrs)
	}
	if s2.ARP.Conflicts != before.ARP.Conflicts {
		t.Errorf("neighbour conflicts went from %d to %d: the hop-limit-64 advertisements must be dropped, not believed",
			before.ARP.Conflicts, s2.ARP.Conflicts)
	}
	if !s2.Ready || s2.Role != "active" {
		t.Errorf("after the flood the balancer is ready=%v role=%q, want ready and active", s2.Ready, s2.Role)
	}
}

// frameBuilder6 makes the flood's frames, all from c1 to the virtual MAC and the IPv6 VIP.
type frameBuilder6 struct {
	src, dst net.HardwareAddr
	from, to netip.Addr
	rng      *rand.Rand
	id       uint32
}

// IPv6 protocol numbers (RFC 8200, IANA).
const (
	etherIPv6  = 0x86dd
	nhHopByHop = 0
	nhTCP      = 6
	nhUDP      = 17
	nhFragment = 44
	nhICMPv6   = 58
	nhDestOpts = 60
)

func (fb *frameBuilder6) eth(payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], fb.dst)
	copy(f[6:12], fb.src)
	binary.BigEndian.PutUint16(f[12:14], etherIPv6)
	return append(f, payload...)
}

// ipv6 returns a correct IPv6 header (RFC 8200 section 3) with next header nh and hop limit hl,
// followed by payload (extension headers and the upper layer).
func (fb *frameBuilder6) ipv6(nh, hl byte, payload []byte) []byte {
	h := make([]byte, 40, 40+len(payload))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6] = nh
	h[7] = hl
	copy(h[8:24], fb.from.AsSlice())
	copy(h[24:40], fb.to.AsSlice())
	return append(h, payload...)
}

// checksum is the Internet checksum (RFC 1071) of b, starting from initial.
func checksum(b []byte, initial uint32) uint16 {
	s := initial
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// l4sum is an upper-layer checksum over the IPv6 pseudo-header (RFC 8200 section 8.1).
func (fb *frameBuilder6) l4sum(proto byte, seg []byte) uint16 {
	var s uint32
	for _, a := range []netip.Addr{fb.from, fb.to} {
		b := a.As16()
		for i := 0; i < 16; i += 2 {
			s += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	s += uint32(len(seg)) + uint32(proto)
	return checksum(seg, s)
}

func (fb *frameBuilder6) udp(sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	u = append(u, payload...)
	c := fb.l4sum(nhUDP, u)
	if c == 0 {
		c = 0xffff // a computed zero is sent as all ones (RFC 768, RFC 8200 section 8.1)
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return u
}

// floodUDP is a datagram to a port nothing listens on, from a random port.
func (fb *frameBuilder6) floodUDP() []byte {
	return fb.udp(40000+uint16(fb.rng.IntN(1000)), 9, []byte("flood"))
}

// ext is an 8-byte Hop-by-Hop or Destination Options header (RFC 8200 sections 4.3, 4.6) whose
// next header is nh, padded with one PadN option.
func ext(nh byte) []byte { return []byte{nh, 0, 1, 4, 0, 0, 0, 0} }

// frag is a Fragment header (RFC 8200 section 4.5) with next header nh, offset 0 and more set
// as given.
func (fb *frameBuilder6) frag(nh byte, more bool) []byte {
	fb.id++
	h := []byte{nh, 0, 0, 0, 0, 0, 0, 0}
	if more {
		h[3] = 1
	}
	binary.BigEndian.PutUint32(h[4:], fb.id)
	return h
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func (fb *frameBuilder6) truncatedHeader() []byte {
	return fb.eth(fb.ipv6(nhUDP, 64, fb.floodUDP())[:30])
}

func (fb *frameBuilder6) longPayloadLen() []byte {
	p := fb.ipv6(nhUDP, 64, fb.floodUDP())
	binary.BigEndian.PutUint16(p[4:], 1000)
	return fb.eth(p)
}

func (fb *frameBuilder6) zeroPayloadLen() []byte {
	p := fb.ipv6(nhUDP, 64, fb.floodUDP())
	binary.BigEndian.PutUint16(p[4:], 0) // a jumbogram without its Hop-by-Hop option (RFC 2675)
	return fb.eth(p)
}

// hopByHopNotFirst: Destination Options, then Hop-by-Hop (RFC 8200 section 4.1 allows it only
// right after the IPv6 header), then UDP.
func (fb *frameBuilder6) hopByHopNotFirst() []byte {
	return fb.eth(fb.ipv6(nhDestOpts, 64, cat(ext(nhHopByHop), ext(nhUDP), fb.floodUDP())))
}

// longChain is sixteen Destination Options headers before UDP; a legitimate chain has at most
// six headers (RFC 8200 section 4.1).
func (fb *frameBuilder6) longChain() []byte {
	var chain []byte
	for i := 0; i < 16; i++ {
		nh := byte(nhDestOpts)
		if i == 15 {
			nh = nhUDP
		}
		chain = append(chain, ext(nh)...)
	}
	return fb.eth(fb.ipv6(nhDestOpts, 64, append(chain, fb.floodUDP()...)))
}

func (fb *frameBuilder6) twoFragments() []byte {
	return fb.eth(fb.ipv6(nhFragment, 64, cat(fb.frag(nhFragment, true), fb.frag(nhUDP, true), fb.floodUDP())))
}

// cutExtension is a Destination Options header that claims 88 bytes where the packet ends after 8.
func (fb *frameBuilder6) cutExtension() []byte {
	h := ext(nhUDP)
	h[1] = 10
	return fb.eth(fb.ipv6(nhDestOpts, 64, h))
}

// ns is a neighbour solicitation for the VIP (RFC 4861 section 4.3) with a source link-layer
// address option, with a correct checksum.
func (fb *frameBuilder6) ns() []byte {
	m := make([]byte, 24, 32)
	m[0] = 135
	copy(m[8:24], fb.to.AsSlice())
	m = append(m, 1, 1)
	m = append(m, fb.src...)
	binary.BigEndian.PutUint16(m[2:], fb.l4sum(nhICMPv6, m))
	return m
}

// na is a neighbour advertisement for the VIP (RFC 4861 section 4.4) with the override flag and
// a target link-layer address option claiming c1's MAC, with a correct checksum.
func (fb *frameBuilder6) na() []byte {
	m := make([]byte, 24, 32)
	m[0] = 136
	m[4] = 0x20 // override
	copy(m[8:24], fb.to.AsSlice())
	m = append(m, 2, 1)
	m = append(m, fb.src...)
	binary.BigEndian.PutUint16(m[2:], fb.l4sum(nhICMPv6, m))
	return m
}

// NDP must carry hop limit 255 (RFC 4861 section 7.1.1); 64 means it crossed a router.
func (fb *frameBuilder6) nsHopLimit64() []byte { return fb.eth(fb.ipv6(nhICMPv6, 64, fb.ns())) }
func (fb *frameBuilder6) naHopLimit64() []byte { return fb.eth(fb.ipv6(nhICMPv6, 64, fb.na())) }

// nsTruncated is a solicitation that ends before its target address.
func (fb *frameBuilder6) nsTruncated() []byte { return fb.eth(fb.ipv6(nhICMPv6, 255, fb.ns()[:12])) }

// tooBigShortQuote is an ICMPv6 Packet Too Big (RFC 4443 section 3.2) whose quoted packet ends
// after 20 bytes, before the end of its IPv6 header: nobody can tell which flow it is about.
func (fb *frameBuilder6) tooBigShortQuote() []byte {
	m := make([]byte, 8, 28)
	m[0] = 2
	binary.BigEndian.PutUint32(m[4:], 1280)
	q := fb.ipv6(nhTCP, 64, fb.tcp(5))
	m = append(m, q[:20]...)
	binary.BigEndian.PutUint16(m[2:], fb.l4sum(nhICMPv6, m))
	return fb.eth(fb.ipv6(nhICMPv6, 64, m))
}

func (fb *frameBuilder6) tcp(offset byte) []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], 40000+uint16(fb.rng.IntN(1000)))
	binary.BigEndian.PutUint16(t[2:], tcpPort)
	binary.BigEndian.PutUint32(t[4:], fb.rng.Uint32())
	t[12] = offset << 4
	t[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(t[14:], 1024)
	binary.BigEndian.PutUint16(t[16:], fb.l4sum(nhTCP, t))
	return t
}

func (fb *frameBuilder6) tcpTruncated() []byte { return fb.eth(fb.ipv6(nhTCP, 64, fb.tcp(5)[:10])) }

// tcpShortOffset has a data offset of 3 words, below RFC 9293's minimum of 5.
func (fb *frameBuilder6) tcpShortOffset() []byte { return fb.eth(fb.ipv6(nhTCP, 64, fb.tcp(3))) }

func (fb *frameBuilder6) badVersion() []byte {
	p := fb.ipv6(nhUDP, 64, fb.floodUDP())
	p[0] = 0x40
	return fb.eth(p)
}

// garbage is 1 to 200 random bytes after a valid Ethernet header with ethertype 0x86dd.
func (fb *frameBuilder6) garbage() []byte {
	b := make([]byte, 1+fb.rng.IntN(200))
	for i := range b {
		b[i] = byte(fb.rng.Uint32())
	}
	return fb.eth(b)
}

// udpWithOptions is a valid datagram behind a Hop-by-Hop and a Destination Options header.
func (fb *frameBuilder6) udpWithOptions(sport, dport uint16, payload []byte) []byte {
	return fb.eth(fb.ipv6(nhHopByHop, 64, cat(ext(nhDestOpts), ext(nhUDP), fb.udp(sport, dport, payload))))
}

// udpAtomicFragment is a valid datagram in a Fragment header with offset 0 and no more
// fragments (RFC 6946).
func (fb *frameBuilder6) udpAtomicFragment(sport, dport uint16, payload []byte) []byte {
	return fb.eth(fb.ipv6(nhFragment, 64, cat(fb.frag(nhUDP, false), fb.udp(sport, dport, payload))))
}
