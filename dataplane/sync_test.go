package dataplane

import (
	"net/netip"
	"testing"
	"time"

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
	var recs []SyncRecord
	active.Export(func(r SyncRecord) bool { recs = append(recs, r); return true })
	flows, tmpls := 0, 0
	for _, r := range recs {
		if r.Template {
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
	err := e.Import([]SyncRecord{{Key: conntrack.Key{Src: 1, Dst: u32(vip), SPort: 1, DPort: 2, Proto: 6},
		State: conntrack.StateEstablished, TTL: time.Minute}})
	if err == nil {
		t.Fatal("record without a member address accepted")
	}
	if n, _ := e.Table().Len(); n != 0 {
		t.Fatalf("table has %d flows after a bad import", n)
	}
}
