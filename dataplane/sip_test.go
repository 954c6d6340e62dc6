package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/scheduler"
	"github.com/l2lb/l2lb/vipset"
)

const sipPort = 5060

// withCallID turns Call-ID affinity on for the given ports.
func withCallID(ports ...uint16) engineOpt {
	return func(c *Config, _ *conntrack.Config) { c.CallIDPorts = ports }
}

// sipRequest returns a SIP request of about size bytes (RFC 3261 §24.2's INVITE, padded with SDP
// attribute lines) whose Call-ID header line is callIDLine (e.g. "Call-ID: abc@host").
func sipRequest(method, callIDLine string, size int) []byte {
	var h strings.Builder
	fmt.Fprintf(&h, "%s sip:bob@biloxi.example.com SIP/2.0\r\n", method)
	h.WriteString("Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n")
	h.WriteString("Max-Forwards: 70\r\n")
	h.WriteString("To: Bob <sip:bob@biloxi.example.com>\r\n")
	h.WriteString("From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n")
	h.WriteString(callIDLine + "\r\n")
	fmt.Fprintf(&h, "CSeq: 314159 %s\r\n", method)
	h.WriteString("Contact: <sip:alice@pc33.atlanta.example.com>\r\n")
	h.WriteString("Content-Type: application/sdp\r\n")
	body := "v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\ns=-\r\n" +
		"c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
	for h.Len()+len(body)+40 < size {
		body += "a=x-padding:0123456789abcdef0123456789abcdef\r\n"
	}
	fmt.Fprintf(&h, "Content-Length: %d\r\n\r\n", len(body))
	return []byte(h.String() + body)
}

func invite(callID string) []byte { return sipRequest("INVITE", "Call-ID: "+callID, 600) }

// sipFrame is a UDP datagram from src:sport to the VIP's Call-ID port carrying msg.
func sipFrame(t testing.TB, src netip.Addr, sport uint16, dst netip.Addr, msg []byte) []byte {
	t.Helper()
	if dst.Is6() {
		return frame6{src: src, dst: dst, proto: layers.IPProtocolUDP, sport: sport, dport: sipPort, payload: msg}.bytes(t)
	}
	return frameSpec{src: src, dst: dst, proto: layers.IPProtocolUDP, sport: sport, dport: sipPort, payload: msg}.bytes(t)
}

// udpDatagram serializes a UDP header and payload (with its checksum over src and dst).
func udpDatagram(t testing.TB, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	var nl gopacket.NetworkLayer
	if src.Is4() {
		nl = &layers.IPv4{Version: 4, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	} else {
		nl = &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	}
	if err := udp.SetNetworkLayerForChecksum(nl); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// fragments splits the UDP datagram of msg from src:sport to dst's Call-ID port into IP fragments
// (RFC 791 for IPv4, RFC 8200 §4.5 for IPv6) of at most chunk bytes of data each (a multiple of
// 8), as the sending host's IP layer does.
func fragments(t testing.TB, src netip.Addr, sport uint16, dst netip.Addr, msg []byte, id uint32, chunk int) [][]byte {
	t.Helper()
	dg := udpDatagram(t, src, dst, sport, sipPort, msg)
	var out [][]byte
	for off := 0; off < len(dg); off += chunk {
		end := min(off+chunk, len(dg))
		more := end < len(dg)
		if dst.Is6() {
			out = append(out, frame6{src: src, dst: dst, proto: layers.IPProtocolUDP, frag: true, fragOff: uint16(off / 8),
				more: more, fragID: id, rawTransport: dg[off:end]}.bytes(t))
			continue
		}
		eth := &layers.Ethernet{SrcMAC: clentMAC, DstMAC: vmacT, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(),
			Id: uint16(id), FragOffset: uint16(off / 8)}
		if more {
			ip.Flags = layers.IPv4MoreFragments
		}
		buf := gopacket.NewSerializeBuffer()
		opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
		if err := gopacket.SerializeLayers(buf, opts, eth, ip, gopacket.Payload(dg[off:end])); err != nil {
			t.Fatal(err)
		}
		out = append(out, append([]byte(nil), buf.Bytes()...))
	}
	return out
}

// dialogs counts the dialog entries of e's table.
func dialogs(e *Engine) int {
	n := 0
	e.Table().Range(func(k conntrack.Key, _ conntrack.Entry) bool {
		if IsDialog(k.Proto, k.DPort) {
			n++
		}
		return true
	})
	e.Table().Range6(func(k conntrack.Key6, _ conntrack.Entry) bool {
		if IsDialog(k.Proto, k.DPort) {
			n++
		}
		return true
	})
	return n
}

// clientAddr is the i-th test client of the VIP's family.
func clientAddr(vipAddr netip.Addr, i int) netip.Addr {
	if vipAddr.Is6() {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 8), byte(i)})
	}
	return netip.AddrFrom4([4]byte{198, 51, byte(100 + i>>8), byte(i)})
}

func TestCallID(t *testing.T) {
	for _, c := range []struct {
		name, msg, want string
		ok              bool
	}{
		{"request", "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nCall-ID: a84b4c76e66710@pc33\r\n\r\n", "a84b4c76e66710@pc33", true},
		{"response", "SIP/2.0 200 OK\r\nCall-ID: abc\r\n\r\nbody", "abc", true},
		{"compact", "BYE sip:b@x SIP/2.0\r\ni:abc\r\n\r\n", "abc", true},
		{"compact upper", "BYE sip:b@x SIP/2.0\r\nI : abc\r\n\r\n", "abc", true},
		{"case", "BYE sip:b@x sip/2.0\r\ncALL-iD:\tabc \t\r\n\r\n", "abc", true},
		{"space before colon", "BYE sip:b@x SIP/2.0\r\nCall-ID \t : abc\r\n\r\n", "abc", true},
		{"bare LF", "BYE sip:b@x SIP/2.0\nTo: x\nCall-ID: abc\n\n", "abc", true},
		{"leading CRLF", "\r\n\r\nBYE sip:b@x SIP/2.0\r\nCall-ID: abc\r\n\r\n", "abc", true},
		{"first wins", "BYE sip:b@x SIP/2.0\r\ni: one\r\nCall-ID: two\r\n\r\n", "one", true},
		{"folded value", "BYE sip:b@x SIP/2.0\r\nCall-ID:\r\n   abc\r\n\r\n", "abc", true},
		{"fold after value ignored", "BYE sip:b@x SIP/2.0\r\nCall-ID: abc\r\n def\r\n\r\n", "abc", true},
		{"no colon line skipped", "BYE sip:b@x SIP/2.0\r\ngarbage\r\nCall-ID: abc\r\n\r\n", "abc", true},
		{"case kept", "BYE sip:b@x SIP/2.0\r\nCall-ID: AbC@Host\r\n\r\n", "AbC@Host", true},
		{"keep-alive", "\r\n\r\n", "", false},
		{"empty", "", "", false},
		{"not SIP", "GET / HTTP/1.1\r\nCall-ID: abc\r\n\r\n", "", false},
		{"binary", "\x00\x01\x00\x00\x21\x12\xa4\x42", "", false},
		{"after headers", "BYE sip:b@x SIP/2.0\r\nTo: x\r\n\r\nCall-ID: abc\r\n", "", false},
		{"cut short", "BYE sip:b@x SIP/2.0\r\nCall-ID: abc@ho", "", false},
		{"empty value", "BYE sip:b@x SIP/2.0\r\nCall-ID:  \r\ni: x\r\n\r\n", "", false},
		{"prefix name", "BYE sip:b@x SIP/2.0\r\nCall-Info: <x>\r\nCall-IDs: y\r\nid: z\r\n\r\n", "", false},
		{"continuation name", "BYE sip:b@x SIP/2.0\r\nTo: x\r\n Call-ID: abc\r\n\r\n", "", false},
		{"start line only", "BYE sip:b@x SIP/2.0", "", false},
		{"control character", "BYE sip:b@x SIP/2.0\nCall-ID:\r0\n\n", "", false},
		{"space inside", "BYE sip:b@x SIP/2.0\r\nCall-ID: a b\r\n\r\n", "", false},
	} {
		got, ok := CallID([]byte(c.msg))
		if ok != c.ok || string(got) != c.want {
			t.Errorf("%s: CallID(%q) = %q, %v; want %q, %v", c.name, c.msg, got, ok, c.want, c.ok)
		}
	}
	// The bound: a Call-ID line that ends past MaxSIPScan is not found, one that ends before it is.
	pad := "BYE sip:b@x SIP/2.0\r\nX: " + strings.Repeat("a", MaxSIPScan-40) + "\r\n"
	if v, ok := CallID([]byte(pad + "Call-ID: abc\r\n\r\n")); !ok || string(v) != "abc" {
		t.Errorf("Call-ID inside the bound: %q %v", v, ok)
	}
	if _, ok := CallID([]byte(pad + "X: " + strings.Repeat("b", 40) + "\r\nCall-ID: abc\r\n\r\n")); ok {
		t.Error("Call-ID beyond MaxSIPScan was read")
	}
}

func TestCallIDAllocs(t *testing.T) {
	msg := invite("a84b4c76e66710@pc33.atlanta.example.com")
	if n := testing.AllocsPerRun(100, func() { CallID(msg) }); n != 0 {
		t.Fatalf("CallID allocates %v", n)
	}
}

func TestCallIDPortsValidated(t *testing.T) {
	e := newTestEngine(t)
	for _, ports := range [][]uint16{{0}, {5060, 5060}, {5060, 5080, 5060}} {
		cfg := e.Config()
		cfg.CallIDPorts = ports
		if err := e.Configure(cfg); !errors.Is(err, ErrBadCallIDPort) {
			t.Errorf("ports %v: err %v, want ErrBadCallIDPort", ports, err)
		}
	}
	cfg := e.Config()
	cfg.CallIDPorts = []uint16{5060, 5080}
	if err := e.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	cfg.CallIDPorts[0] = 1 // the engine keeps its own copy
	if got := e.Config().CallIDPorts; got[0] != 5060 {
		t.Fatalf("configured ports changed through the caller's slice: %v", got)
	}
}

// TestSIPDialogAffinity sends requests of each Call-ID from 20 source addresses and ports: all
// reach the frontend of the dialog, and each datagram's own flow points there too.
func TestSIPDialogAffinity(t *testing.T) {
	for _, vipAddr := range []netip.Addr{vip, vip6} {
		e := newTestEngine6(t, withCallID(sipPort))
		owners := map[netip.Addr]int{}
		for c := 0; c < 30; c++ {
			cid := fmt.Sprintf("%08x@pc33.atlanta.example.com", c*7919)
			var want netip.Addr
			for s := 0; s < 20; s++ {
				src := clientAddr(vipAddr, s%5)
				r := process(e, sipFrame(t, src, uint16(5060+s), vipAddr, invite(cid)))
				if r.Verdict != VerdictForward && r.Verdict != VerdictLocal {
					t.Fatalf("%v: %+v", vipAddr, r)
				}
				if got := ownerOf(t, e, r); s == 0 {
					want = got
					if !r.NewDialog || r.NewFlow != (c == 0) {
						t.Fatalf("first request of a dialog: %+v", r)
					}
				} else if got != want {
					t.Fatalf("%v Call-ID %s: request %d went to %v, the dialog's first to %v", vipAddr, cid, s, got, want)
				} else if r.NewDialog {
					t.Fatalf("request %d of a known dialog counted as a new dialog", s)
				}
			}
			owners[want]++
		}
		if n := dialogs(e); n != 30 {
			t.Fatalf("%v: %d dialog entries, want 30", vipAddr, n)
		}
		if len(owners) < 2 {
			t.Fatalf("%v: 30 dialogs all on %v", vipAddr, owners)
		}
		// Every 5-tuple has its flow: 5 clients x 20 ports... the last dialog's member each.
		flows := 0
		count := func(proto uint8, en conntrack.Entry) {
			if proto == protoUDP {
				flows++
			}
		}
		e.Table().Range(func(k conntrack.Key, en conntrack.Entry) bool { count(k.Proto, en); return true })
		e.Table().Range6(func(k conntrack.Key6, en conntrack.Entry) bool { count(k.Proto, en); return true })
		if flows != 20 {
			t.Fatalf("%v: %d UDP flows, want 20 (one per source address and port)", vipAddr, flows)
		}
	}
}

// TestSIPHeaderForms checks that the compact form, other cases of the name and whitespace reach
// the same dialog as the canonical header.
func TestSIPHeaderForms(t *testing.T) {
	e := newTestEngine(t, withCallID(sipPort))
	const cid = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6@foo.bar.com"
	first := process(e, sipFrame(t, client1, 1000, vip, invite(cid)))
	for i, line := range []string{"i: " + cid, "I:" + cid, "call-id:  " + cid + " ", "CALL-ID\t:" + cid, "Call-Id : " + cid} {
		for _, method := range []string{"ACK", "BYE"} {
			r := process(e, sipFrame(t, clientAddr(vip, i+1), uint16(2000+i), vip, sipRequest(method, line, 300)))
			if r.Member != first.Member || r.NewDialog {
				t.Fatalf("%s with %q: member %d new %v; the INVITE's %d", method, line, r.Member, r.NewDialog, first.Member)
			}
		}
	}
	if n := dialogs(e); n != 1 {
		t.Fatalf("%d dialogs, want 1", n)
	}
}

// TestSIPSpreadByWeight checks that dialogs are spread over the members by weight.
func TestSIPSpreadByWeight(t *testing.T) {
	e := newTestEngine(t, withCallID(sipPort), func(c *Config, _ *conntrack.Config) { c.Members[2].Weight = 200 })
	counts := map[netip.Addr]int{}
	const n = 4000
	for i := 0; i < n; i++ {
		msg := sipRequest("REGISTER", fmt.Sprintf("Call-ID: %d-reg@192.0.2.4", i), 200)
		r := process(e, sipFrame(t, client1, 5060, vip, msg)) // one source: a proxy
		counts[ownerOf(t, e, r)]++
	}
	for addr, want := range map[netip.Addr]float64{f1Addr: 0.25, f2Addr: 0.25, f3Addr: 0.5} {
		if got := float64(counts[addr]) / n; got < want*0.85 || got > want*1.15 {
			t.Errorf("%v: share %.3f, want %.2f ±15%% (%v)", addr, got, want, counts)
		}
	}
}

// TestSIPFragmentedInvite sends a 3000-byte INVITE in three fragments and a BYE of the same
// dialog from another port: every fragment and the BYE reach one frontend.
func TestSIPFragmentedInvite(t *testing.T) {
	for _, vipAddr := range []netip.Addr{vip, vip6} {
		e := newTestEngine6(t, withCallID(sipPort))
		for c := 0; c < 40; c++ {
			cid := fmt.Sprintf("frag-%d@client.example.com", c)
			msg := sipRequest("INVITE", "Call-ID: "+cid, 3000)
			src := clientAddr(vipAddr, c)
			frags := fragments(t, src, 5062, vipAddr, msg, uint32(100+c), 1448)
			if len(frags) != 3 {
				t.Fatalf("%d fragments", len(frags))
			}
			first := process(e, frags[0])
			if !first.NewDialog || first.NoCallID {
				t.Fatalf("%v: first fragment not scheduled by its Call-ID: %+v", vipAddr, first)
			}
			for i, f := range frags[1:] {
				if r := process(e, f); r.Member != first.Member || r.Verdict != first.Verdict {
					t.Fatalf("%v: fragment %d went to %+v, the first to %+v", vipAddr, i+1, r, first)
				}
			}
			bye := process(e, sipFrame(t, clientAddr(vipAddr, 200), 40000, vipAddr, sipRequest("BYE", "i: "+cid, 400)))
			if bye.Member != first.Member || bye.NewDialog {
				t.Fatalf("%v: BYE went to %+v, the INVITE to %+v", vipAddr, bye, first)
			}
		}
	}
}

// TestSIPNoCallID checks the datagrams without a Call-ID: 5-tuple behaviour and the counter.
func TestSIPNoCallID(t *testing.T) {
	e := newTestEngine6(t, withCallID(sipPort))
	var ctr Counters
	rec := func(r Result, b []byte) Result { ctr.Record(&r, len(b)); return r }
	for i, msg := range [][]byte{[]byte("\r\n\r\n"), []byte("\x00\x01\x00\x00\x21\x12\xa4\x42 STUN"), []byte("hello")} {
		for _, vipAddr := range []netip.Addr{vip, vip6} {
			src := clientAddr(vipAddr, i)
			b := sipFrame(t, src, 7000, vipAddr, msg)
			r := rec(process(e, append([]byte(nil), b...)), b)
			if !r.NoCallID || r.NewDialog || !r.NewFlow {
				t.Fatalf("%q to %v: %+v", msg, vipAddr, r)
			}
			// It is an ordinary flow: its next datagram follows it.
			if r2 := rec(process(e, b), b); r2.Member != r.Member || r2.NewFlow {
				t.Fatalf("%q to %v: second datagram %+v, first %+v", msg, vipAddr, r2, r)
			}
		}
	}
	// A first fragment cut before the Call-ID line: 5-tuple, and its fragments follow it.
	msg := sipRequest("INVITE", "Call-ID: late@x", 3000)
	msg = append([]byte("INVITE sip:b@x SIP/2.0\r\nX-Pad: "+strings.Repeat("p", 1500)+"\r\n"), msg[strings.Index(string(msg), "\r\n")+2:]...)
	frags := fragments(t, client1, 5070, vip, msg, 7, 1448)
	first := rec(process(e, frags[0]), frags[0])
	if !first.NoCallID || first.NewDialog {
		t.Fatalf("cut first fragment: %+v", first)
	}
	for _, f := range frags[1:] {
		if r := process(e, f); r.Member != first.Member || r.Verdict != first.Verdict {
			t.Fatalf("fragment went to %+v, first to %+v", r, first)
		}
	}
	// Other ports and TCP are untouched.
	if r := process(e, frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, sport: 1, dport: 5061,
		payload: invite("x")}.bytes(t)); r.NoCallID || r.NewDialog {
		t.Fatalf("UDP to another port: %+v", r)
	}
	if r := process(e, frameSpec{src: client1, dst: vip, sport: 1, dport: sipPort, syn: true, payload: invite("x")}.bytes(t)); r.NoCallID || r.NewDialog {
		t.Fatalf("TCP to the Call-ID port: %+v", r)
	}
	if s := Sum(&ctr); s.SIPNoCallID != 13 || s.SIPNewDialogs != 0 {
		t.Fatalf("counters: no Call-ID %d (want 13), new dialogs %d", s.SIPNoCallID, s.SIPNewDialogs)
	}
	if n := dialogs(e); n != 0 {
		t.Fatalf("%d dialogs", n)
	}
}

// TestSIPTwoBalancersAgree checks that two engines with the same members, listed in another order
// and with another local node (so other member IDs), and no sync, agree on every Call-ID.
func TestSIPTwoBalancersAgree(t *testing.T) {
	a := newTestEngine6(t, withCallID(sipPort))
	b := newTestEngine6(t, withCallID(sipPort), func(c *Config, _ *conntrack.Config) {
		c.Members = []Member{{Addr: f3Addr, Weight: 100}, {Addr: f2Addr, Weight: 100, Local: true}, {Addr: f1Addr, Weight: 100}}
	})
	if err := b.SetMAC(f1Addr, ourMAC); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 600; i++ {
		vipAddr := []netip.Addr{vip, vip6}[i%2]
		msg := invite(fmt.Sprintf("%x@agree.example.com", i*2654435761))
		ra := process(a, sipFrame(t, clientAddr(vipAddr, i), 5060, vipAddr, msg))
		rb := process(b, sipFrame(t, clientAddr(vipAddr, i+1), 6060, vipAddr, msg))
		if oa, ob := ownerOf(t, a, ra), ownerOf(t, b, rb); oa != ob {
			t.Fatalf("dialog %d on %v: balancer A chose %v, B %v", i, vipAddr, oa, ob)
		}
	}
}

// TestSIPDialogSurvivesMemberChange checks that an existing dialog keeps its frontend when a
// member is added, and follows the no-destination policy when its member is removed.
func TestSIPDialogSurvivesMemberChange(t *testing.T) {
	f4Addr, f4MAC := netip.MustParseAddr("192.0.2.14"), net.HardwareAddr{0x02, 0, 0, 0, 0, 0x14}
	for _, policy := range []NoDestPolicy{NoDestReschedule, NoDestExpire} {
		e := newTestEngine6(t, withCallID(sipPort), func(c *Config, _ *conntrack.Config) { c.NoDest = policy })
		want := map[string]netip.Addr{}
		for i := 0; i < 300; i++ {
			cid := fmt.Sprintf("keep-%d@x", i)
			want[cid] = ownerOf(t, e, process(e, sipFrame(t, client1, uint16(10000+i), vip, invite(cid))))
		}
		cfg := e.Config()
		cfg.Members = append(append([]Member(nil), cfg.Members...), Member{Addr: f4Addr, Weight: 300})
		if err := e.SetMAC(f4Addr, f4MAC); err != nil {
			t.Fatal(err)
		}
		if err := e.Configure(cfg); err != nil {
			t.Fatal(err)
		}
		newOnF4 := 0
		for i := 0; i < 300; i++ {
			cid := fmt.Sprintf("keep-%d@x", i)
			r := process(e, sipFrame(t, clientAddr(vip, 7), uint16(20000+i), vip, sipRequest("BYE", "Call-ID: "+cid, 300)))
			if got := ownerOf(t, e, r); got != want[cid] || r.NewDialog {
				t.Fatalf("dialog %s moved from %v to %v when a member was added", cid, want[cid], got)
			}
			r = process(e, sipFrame(t, client1, 30000, vip, invite(fmt.Sprintf("new-%d@x", i))))
			if ownerOf(t, e, r) == f4Addr {
				newOnF4++
			}
		}
		if newOnF4 == 0 {
			t.Fatal("the added member got no new dialog")
		}
		// Remove f2: its dialogs follow the policy, the others stay.
		cfg.Members = []Member{cfg.Members[0], cfg.Members[2], cfg.Members[3]}
		if err := e.Configure(cfg); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 300; i++ {
			cid := fmt.Sprintf("keep-%d@x", i)
			b := sipFrame(t, clientAddr(vip, 8), uint16(20000+i), vip, sipRequest("BYE", "Call-ID: "+cid, 300))
			r := process(e, append([]byte(nil), b...))
			switch {
			case want[cid] != f2Addr:
				if ownerOf(t, e, r) != want[cid] {
					t.Fatalf("dialog %s moved off a member that stayed", cid)
				}
			case policy == NoDestReschedule:
				if r.Verdict == VerdictDrop || ownerOf(t, e, r) == f2Addr {
					t.Fatalf("reschedule: %+v", r)
				}
			default:
				if r.Verdict != VerdictDrop || r.Reason != ReasonMemberGone {
					t.Fatalf("expire: %+v", r)
				}
				if r := process(e, b); r.Verdict == VerdictDrop || !r.NewDialog {
					t.Fatalf("expire: the next request must start the dialog anew: %+v", r)
				}
			}
		}
	}
}

// TestSIPDialogSync plays a failover: dialogs exported by the active engine and imported by a
// standby whose scheduler would not agree (WRR) keep their frontends on the standby, for requests
// from source ports neither balancer has seen.
func TestSIPDialogSync(t *testing.T) {
	active := newTestEngine6(t, withCallID(sipPort))
	standby := newTestEngine6(t, withCallID(sipPort), func(c *Config, _ *conntrack.Config) {
		c.Scheduler = scheduler.KindWRR
		c.Members[0].Local, c.Members[1].Local = false, true
	})
	if err := standby.SetMAC(f1Addr, ourMAC); err != nil {
		t.Fatal(err)
	}
	type dlg struct {
		vip netip.Addr
		cid string
	}
	want := map[dlg]netip.Addr{}
	for i := 0; i < 200; i++ {
		d := dlg{[]netip.Addr{vip, vip6}[i%2], fmt.Sprintf("sync-%d@x", i)}
		want[d] = ownerOf(t, active, process(active, sipFrame(t, clientAddr(d.vip, i), 5060, d.vip, invite(d.cid))))
	}
	var recs []connsync.Record
	nd := 0
	active.Export(func(r connsync.Record) bool {
		recs = append(recs, r)
		if IsDialog(r.Proto, r.DPort) {
			nd++
			if r.State != conntrack.StateOther || r.DPort != sipPort ||
				!(netip.MustParsePrefix("240.0.0.0/4").Contains(r.Src) || netip.MustParsePrefix("100::/64").Contains(r.Src)) {
				t.Errorf("dialog record %+v", r)
			}
		}
		return true
	})
	if nd != 200 {
		t.Fatalf("exported %d dialogs, want 200", nd)
	}
	// The records go through the sync wire, as they would between two nodes.
	var wire []connsync.Record
	for _, r := range recs {
		msg, err := connsync.Encode(nil, connsync.Header{Type: connsync.MsgUpdate, Sender: f1Addr}, []connsync.Record{r}, nil)
		if err != nil {
			t.Fatalf("record %+v does not encode: %v", r, err)
		}
		_, got, err := connsync.Decode(msg, nil, 0, nil)
		if err != nil {
			t.Fatalf("record %+v does not decode: %v", r, err)
		}
		wire = append(wire, got...)
	}
	// Without the records the standby would move dialogs: the test has teeth.
	fresh := newTestEngine6(t, withCallID(sipPort), func(c *Config, _ *conntrack.Config) { c.Scheduler = scheduler.KindWRR })
	differ := 0
	for d, w := range want {
		if ownerOf(t, fresh, process(fresh, sipFrame(t, clientAddr(d.vip, 999), 40000, d.vip, invite(d.cid)))) != w {
			differ++
		}
	}
	if differ == 0 {
		t.Fatal("a standby without sync placed every dialog like the active: the test proves nothing")
	}
	if err := standby.Import(wire); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for d, w := range want {
		r := process(standby, sipFrame(t, clientAddr(d.vip, 999), 40000, d.vip, sipRequest("BYE", "Call-ID: "+d.cid, 300)))
		if ownerOf(t, standby, r) != w || r.NewDialog {
			moved++
		}
	}
	if moved != 0 {
		t.Fatalf("%d of 200 dialogs changed frontend after the takeover", moved)
	}
}

// TestSIPPortRangeWins checks that a Call-ID port inside a member's source-port range keeps the
// range's rule.
func TestSIPPortRangeWins(t *testing.T) {
	e := newTestEngine(t, withCallID(sipPort), func(c *Config, _ *conntrack.Config) { c.Members[1].Ports = PortRange{5000, 5999} })
	for i := 0; i < 50; i++ {
		r := process(e, sipFrame(t, clientAddr(vip, i), 5060, vip, invite(fmt.Sprintf("r-%d@x", i))))
		if ownerOf(t, e, r) != f2Addr || r.NewDialog {
			t.Fatalf("reply to f2's own port: %+v", r)
		}
	}
}

func TestProcessSIPAllocs(t *testing.T) {
	e := newTestEngine6(t, withCallID(sipPort))
	for _, vipAddr := range []netip.Addr{vip, vip6} {
		b := sipFrame(t, clientAddr(vipAddr, 1), 5060, vipAddr, invite("allocs@x"))
		process(e, append([]byte(nil), b...))
		var scratch [128]byte
		n := testing.AllocsPerRun(1000, func() {
			copy(b[0:6], vmacT)
			e.Process(b, false, scratch[:])
		})
		if n != 0 {
			t.Fatalf("Process allocates %v per SIP datagram to %v, want 0", n, vipAddr)
		}
	}
}

// BenchmarkProcessSIP is BenchmarkProcess for ~600-byte INVITEs of 1024 dialogs to a Call-ID
// port: Call-ID parse, dialog lookup and flow lookup per frame.
func BenchmarkProcessSIP(b *testing.B) {
	benchSIP(b, vip)
}

// BenchmarkProcessSIP6 is BenchmarkProcessSIP through an IPv6 VIP.
func BenchmarkProcessSIP6(b *testing.B) {
	benchSIP(b, vip6)
}

func benchSIP(b *testing.B, vipAddr netip.Addr) {
	e := newTestEngine(b, withCallID(sipPort), func(c *Config, _ *conntrack.Config) { c.VIPs = vipset.New(vip, vip6) })
	frames := make([][]byte, 1024)
	for i := range frames {
		frames[i] = sipFrame(b, clientAddr(vipAddr, i), uint16(1000+i), vipAddr, invite(fmt.Sprintf("%08x-%d@pc33.atlanta.example.com", i*7919, i)))
		process(e, append([]byte(nil), frames[i]...))
	}
	if len(frames[0]) < 600 {
		b.Fatalf("frame of %d bytes", len(frames[0]))
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

func BenchmarkCallID(b *testing.B) {
	msg := invite("a84b4c76e66710@pc33.atlanta.example.com")
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		CallID(msg)
	}
}

// TestSIPOverridesPersistence checks that with persistence on a client's dialogs are still spread
// by Call-ID (a proxy carries many users' dialogs), and that the client's template is the one its
// 5-tuple flow made: its other connections go to the frontend of its first dialog.
func TestSIPOverridesPersistence(t *testing.T) {
	e := newTestEngine(t, withCallID(sipPort), withPersistence(60*time.Second))
	owners := map[netip.Addr]int{}
	var first netip.Addr
	for i := 0; i < 60; i++ {
		r := process(e, sipFrame(t, client1, 5060, vip, invite(fmt.Sprintf("p-%d@proxy", i))))
		o := ownerOf(t, e, r)
		if i == 0 {
			first = o
		}
		owners[o]++
	}
	if len(owners) < 3 {
		t.Fatalf("a persistent client's 60 dialogs all went to %v", owners)
	}
	r := process(e, frameSpec{src: client1, dst: vip, sport: 40000, dport: 443, syn: true}.bytes(t))
	if got := ownerOf(t, e, r); got != first {
		t.Fatalf("the client's new TCP connection went to %v; its template points at the first dialog's %v", got, first)
	}
}
