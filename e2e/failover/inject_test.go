package failover

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Sync settings of the injection scenario: the group runs with SyncID 7
// and a key; the attacker uses SyncID 8, a wrong key, or none.
const (
	groupSyncID = 7
	otherSyncID = 8
	groupKey    = "failover-e2e sync key, 32 bytes+"
	wrongKey    = "not the group's key, but close.."
)

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

// injector sends datagrams to the sync multicast group from a client's
// eth0, with TTL 1 (Go's default for multicast), like a rogue host on the
// link.
type injector struct {
	t    *testing.T
	uc   *net.UDPConn
	sent int
}

func newInjector(t *testing.T, h *testbed.Host) *injector {
	t.Helper()
	var uc *net.UDPConn
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Ifname)
		if err != nil {
			return err
		}
		// ListenMulticastUDP sets IP_MULTICAST_IF to eth0, so the
		// datagrams leave there although the namespace has no route for
		// 239.0.0.0/8; the socket also joins the group, which is harmless.
		uc, err = net.ListenMulticastUDP("udp4", ifi, net.UDPAddrFromAddrPort(connsync.DefaultGroup))
		return err
	})
	if err != nil {
		t.Fatalf("%s: multicast socket: %v", h.Name, err)
	}
	t.Cleanup(func() { uc.Close() })
	return &injector{t: t, uc: uc}
}

func (in *injector) send(b []byte) {
	in.t.Helper()
	if _, err := in.uc.WriteToUDPAddrPort(b, connsync.DefaultGroup); err != nil {
		in.t.Fatalf("injecting a datagram: %v", err)
	}
	in.sent++
	// Pace the burst so that no receive buffer overflows: a drop there
	// would look like a rejection.
	if in.sent%50 == 0 {
		time.Sleep(5 * time.Millisecond)
	}
}

// sendRecords encodes recs in messages of at most MaxRecords and sends them.
func (in *injector) sendRecords(h connsync.Header, recs []connsync.Record, key []byte) {
	in.t.Helper()
	for len(recs) > 0 {
		n := min(len(recs), connsync.MaxRecords)
		b, err := connsync.Encode(nil, h, recs[:n], key)
		if err != nil {
			in.t.Fatalf("encoding an injected message: %v", err)
		}
		in.send(b)
		h.Seq++
		recs = recs[n:]
	}
}

// TestSyncInjection runs the group with -s 7 and a sync key and injects on
// the link: random garbage, well-formed messages of SyncID 8, messages of
// SyncID 7 signed with a wrong key and unsigned ones, all claiming to come
// from the active node and pointing every stream and every persistent client
// at another frontend, plus bogus flows. Nothing may change: the standbys'
// tables do not grow, their logs show the rejections, and after a takeover
// every stream still reaches its own frontend. A correctly signed message
// then proves the injection path reaches the nodes.
//
// connsync.FuzzDecode covers the decoder itself; the rejection counters
// (connsync.Stats) are not in the stats file, so the nodes' first-rejection
// log lines stand in for them.
func TestSyncInjection(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "sync.key")
	if err := os.WriteFile(keyFile, []byte(groupKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := setup(t, false, "-s", "7", "--sync-key-file", keyFile)
	vip := sc.bed.VIPs[0]
	f1, f2, f3 := sc.bed.Frontends[0], sc.bed.Frontends[1], sc.bed.Frontends[2]
	addrOf := map[string]netip.Addr{"f1": f1.Addr, "f2": f2.Addr, "f3": f3.Addr}
	other := map[string]string{"f1": "f2", "f2": "f3", "f3": "f1"}

	// The forged records: each stream and each client address's template
	// to another frontend, and bogus flows from a range no client uses.
	var forged []connsync.Record
	tmplTo := map[netip.Addr]string{}
	for _, s := range sc.ss.All {
		forged = append(forged, connsync.Record{Kind: connsync.RecordFlow,
			Src: s.Local.Addr(), Dst: vip, SPort: s.Local.Port(), DPort: echoPort, Proto: conntrack.ProtoTCP,
			Member: addrOf[other[s.Frontend]], State: conntrack.StateEstablished, TTL: 900 * time.Second})
		tmplTo[s.Local.Addr()] = other[s.Frontend]
	}
	for a, to := range tmplTo {
		forged = append(forged, connsync.Record{Kind: connsync.RecordTemplate, Src: a, Dst: vip,
			Member: addrOf[to], TTL: 60 * time.Second})
	}
	bogus := func(first, n int) []connsync.Record {
		var rs []connsync.Record
		for i := 0; i < n; i++ {
			src := netip.AddrFrom4([4]byte{198, 51, 100, byte(first + i)})
			rs = append(rs, connsync.Record{Kind: connsync.RecordFlow,
				Src: src, Dst: vip, SPort: 40000, DPort: echoPort, Proto: conntrack.ProtoTCP,
				Member: f3.Addr, State: conntrack.StateEstablished, TTL: 120 * time.Second})
		}
		return rs
	}
	forged = append(forged, bogus(1, 100)...)

	standbys := []*node{sc.cl.node("f2"), sc.cl.node("f3")}
	before := map[string]snapshot{}
	for _, n := range standbys {
		s, err := n.stats()
		if err != nil {
			t.Fatal(err)
		}
		before[n.host.Name] = s
	}
	tInject := time.Now()
	in := newInjector(t, sc.bed.Clients[0])
	// Garbage: random bytes, and random bytes behind a valid magic and
	// version so that the later checks are reached too.
	for i := 0; i < 200; i++ {
		b := make([]byte, rand.IntN(connsync.MaxMessage+100))
		for j := range b {
			b[j] = byte(rand.Uint32())
		}
		if i%2 == 1 && len(b) >= 5 {
			copy(b, "L2SY\x01")
		}
		in.send(b)
	}
	hdr := connsync.Header{Type: connsync.MsgUpdate, SyncID: otherSyncID, Sender: f1.Addr, Seq: 1}
	in.sendRecords(hdr, forged, []byte(groupKey)) // right key, other group
	hdr.SyncID = groupSyncID
	in.sendRecords(hdr, forged, []byte(wrongKey)) // right group, wrong key
	in.sendRecords(hdr, forged, nil)              // right group, no key
	// A dump request with the wrong key must not make the active node dump.
	dr, err := connsync.Encode(nil, connsync.Header{Type: connsync.MsgDumpRequest, SyncID: groupSyncID, Sender: f2.Addr}, nil, []byte(wrongKey))
	if err != nil {
		t.Fatal(err)
	}
	in.send(dr)
	t.Logf("injected %d datagrams (garbage, SyncID %d, wrong key, no key) claiming to come from f1", in.sent, otherSyncID)
	time.Sleep(2500 * time.Millisecond) // two stats-file periods

	for _, n := range standbys {
		s, err := n.stats()
		if err != nil {
			t.Fatal(err)
		}
		b := before[n.host.Name]
		t.Logf("%s: flows %d -> %d, templates %d -> %d", n.host.Name, b.Flows, s.Flows, b.Templates, s.Templates)
		if s.Flows > b.Flows+5 || s.Templates > b.Templates {
			t.Errorf("%s's table grew after the injection: flows %d -> %d, templates %d -> %d", n.host.Name, b.Flows, s.Flows, b.Templates, s.Templates)
		}
		for _, why := range []string{"connsync: other SyncID", "connsync: authentication failed", "connsync: bad magic"} {
			if l, ok := n.findLog(tInject, `msg="dropped a sync datagram`, "from="+sc.bed.Clients[0].Addr.String(), why); ok {
				t.Logf("%s: %s", n.host.Name, l.text)
			} else {
				t.Errorf("%s logged no rejection %q of the injected datagrams", n.host.Name, why)
			}
		}
	}
	for _, n := range sc.cl.nodes {
		checkNoRoleChange(t, n, tInject)
	}

	// Positive control: the same path with the group's SyncID and key is
	// accepted, so the rejections above are not an artefact of the path.
	control := bogus(101, 50)
	hdr.Seq = 1000
	in.sendRecords(hdr, control, []byte(groupKey))
	deadline := time.Now().Add(3 * time.Second)
	for _, n := range standbys {
		for {
			s, _ := n.stats()
			if s.Flows >= before[n.host.Name].Flows+len(control) {
				t.Logf("control: %s imported the correctly signed message (flows %d)", n.host.Name, s.Flows)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("control: %s did not import %d flows from a correctly signed message (flows %d): the injection path does not reach the nodes",
					n.host.Name, len(control), s.Flows)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// Behavioural check: a takeover by f2 uses its table; had it taken the
	// forged records, the streams would go to other frontends and be reset.
	t0 := sc.cl.node("f1").signal(syscall.SIGTERM)
	succ, at, ok := sc.cl.waitRoleActive(t0, handoverLimit, "f1")
	if !ok {
		t.Fatalf("no node took over within %v of SIGTERM to f1", handoverLimit)
	}
	t.Logf("takeover by %s %v after SIGTERM to f1", succ.host.Name, at.Sub(t0).Round(time.Millisecond))
	time.Sleep(settle)
	// New connections from the client addresses go to their real frontend,
	// not to the one the forged templates named (f1's clients may move: its
	// l2lb left the group).
	raddr := netip.AddrPortFrom(vip, echoPort)
	for _, s := range sc.srcs {
		real := ""
		for _, st := range sc.ss.All {
			if st.Src == s {
				real = st.Frontend
				break
			}
		}
		if real == "f1" || real == "" {
			continue
		}
		c, err := s.Host.DialTCP(netip.AddrPortFrom(s.Addr, 0), raddr, 2*time.Second)
		if err != nil {
			t.Errorf("new connection from %v after the takeover: %v", s, err)
			continue
		}
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		got := ""
		for i := 0; i < 100 && got == ""; i++ {
			got = sc.echo.frontendOf(local)
			time.Sleep(10 * time.Millisecond)
		}
		c.Close()
		if got != real {
			t.Errorf("new connection from %v went to %q, want its persistent frontend %s (a forged template named %s)", s, got, real, tmplTo[s.Addr])
		}
	}
	res := sc.ss.Finish(t0)
	kept, total, resets, bytes := sc.ss.Report(res, e2e.AllStreams)
	t.Logf("injection then takeover: %d of %d streams kept, %d reset, %d bytes verified", kept, total, resets, bytes)
	if kept != total {
		t.Errorf("%d of %d streams did not survive the injection and the takeover", total-kept, total)
	}
}

// checkNoRoleChange fails if n logged a role change at or after since.
func checkNoRoleChange(t *testing.T, n *node, since time.Time) {
	t.Helper()
	if l, ok := n.findLog(since, `msg="role change"`); ok {
		t.Errorf("%s: unexpected role change after the injection: %s", n.host.Name, l.text)
	}
}
