package dataplane

import (
	"net/netip"
	"testing"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/scheduler"
)

// TestExportImportKeepsFlows plays a failover: the active engine's table is exported, imported
// into a standby whose scheduler would place flows differently (WRR), and the standby then sends
// every known flow and persistent client to the same frontend as the active did.
func TestExportImportKeepsFlows(t *testing.T) {
	active := newTestEngine(t, withPersistence(60*time.Second))
	standby := newTestEngine(t, withPersistence(60*time.Second), func(c *Config, _ *conntrack.Config) {
		c.Scheduler = scheduler.KindWRR
		c.Members[0].Local, c.Members[1].Local = false, true // the standby is f2
	})
	if err := standby.SetMAC(f1Addr, ourMAC); err != nil {
		t.Fatal(err)
	}
	want := map[uint16]netip.Addr{}
	for p := uint16(1); p <= 300; p++ {
		src := netip.AddrFrom4([4]byte{198, 51, byte(p >> 8), byte(p)})
		r := process(active, frameSpec{src: src, dst: vip, sport: 1000 + p, dport: 25, syn: true}.bytes(t))
		want[p] = ownerOf(t, active, r)
	}
	var recs []connsync.Record
	active.Export(func(r connsync.Record) bool { recs = append(recs, r); return true })
	flows, tmpls := 0, 0
	for _, r := range recs {
		if r.Kind == connsync.RecordTemplate {
			tmpls++
		} else {
			flows++
		}
		if r.TTL <= 0 || r.TTL > time.Hour {
			t.Fatalf("record TTL %v", r.TTL)
		}
	}
	if flows != 300 || tmpls != 300 {
		t.Fatalf("exported %d flows, %d templates; want 300 each", flows, tmpls)
	}
	if err := standby.Import(recs); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for p := uint16(1); p <= 300; p++ {
		src := netip.AddrFrom4([4]byte{198, 51, byte(p >> 8), byte(p)})
		r := process(standby, frameSpec{src: src, dst: vip, sport: 1000 + p, dport: 25, ack: true}.bytes(t))
		if ownerOf(t, standby, r) != want[p] || r.NewFlow {
			moved++
		}
		// A new connection of the same client follows its template.
		r = process(standby, frameSpec{src: src, dst: vip, sport: 5000 + p, dport: 143, syn: true}.bytes(t))
		if ownerOf(t, standby, r) != want[p] {
			t.Fatalf("persistent client %v moved from %v to %v", src, want[p], ownerOf(t, standby, r))
		}
	}
	if moved != 0 {
		t.Fatalf("%d of 300 flows changed frontend after the takeover", moved)
	}
}

func TestImportRejectsBadMember(t *testing.T) {
	e := newTestEngine(t)
	err := e.Import([]connsync.Record{{Kind: connsync.RecordFlow, Src: client1, Dst: vip, SPort: 1, DPort: 2, Proto: 6,
		State: conntrack.StateEstablished, TTL: time.Minute}})
	if err == nil {
		t.Fatal("record without a member address accepted")
	}
	if n, _ := e.Table().Len(); n != 0 {
		t.Fatalf("table has %d flows after a bad import", n)
	}
}

// TestPendingMemberFlowsWait: a standby that just became active knows its flows (from sync) before
// it knows the frontends' MACs. Frames of those flows must wait (be dropped, TCP retransmits), not
// be moved to a resolved frontend, which would answer with a reset. Once resolution fails the
// member is presumed down and its flows are rescheduled.
func TestPendingMemberFlowsWait(t *testing.T) {
	e := newTestEngine(t)
	if err := e.Import([]connsync.Record{{Kind: connsync.RecordFlow, Src: client1, Dst: vip, SPort: 4444, DPort: 25, Proto: 6,
		Member: netip.MustParseAddr("192.0.2.14"), State: conntrack.StateEstablished, TTL: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	cfg := e.Config()
	cfg.Members = append(append([]Member(nil), cfg.Members...), Member{Addr: netip.MustParseAddr("192.0.2.14"), Weight: 100})
	if err := e.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	ack := func() Result {
		return process(e, frameSpec{src: client1, dst: vip, sport: 4444, dport: 25, ack: true}.bytes(t))
	}
	if r := ack(); r.Verdict != VerdictDrop || r.Reason != ReasonMemberPending {
		t.Fatalf("frame of a flow whose frontend is still resolving: %+v, want drop member_pending", r)
	}
	f4MAC := []byte{2, 0, 0, 0, 0, 0x14}
	if err := e.SetMAC(netip.MustParseAddr("192.0.2.14"), f4MAC); err != nil {
		t.Fatal(err)
	}
	if r := ack(); r.Verdict != VerdictForward || ownerOf(t, e, r) != netip.MustParseAddr("192.0.2.14") {
		t.Fatalf("after resolution: %+v", r)
	}
	if err := e.SetMAC(netip.MustParseAddr("192.0.2.14"), nil); err != nil {
		t.Fatal(err)
	}
	if r := ack(); r.Verdict == VerdictDrop || ownerOf(t, e, r) == netip.MustParseAddr("192.0.2.14") {
		t.Fatalf("flow of a frontend presumed down must be rescheduled: %+v", r)
	}
}
