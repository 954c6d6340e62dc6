package connsync

import (
	"errors"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestNotifyFullQueueDropsWithoutBlocking(t *testing.T) {
	// No Run: nothing drains the queue, so everything past QueueLen must
	// be dropped and counted, and Notify must still return at once.
	r := NewReplicator(nil, func(func(Record) bool) {}, 0)
	rec := everyKind()[1]
	const extra = 1000
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range (QueueLen + extra) / 4 {
					rec := rec
					rec.SPort = uint16(g*10000 + i)
					r.Notify(rec)
				}
			}()
		}
		wg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Notify blocked on a full queue")
	}
	st := r.Stats()
	if st.Notified != QueueLen || st.Dropped != extra {
		t.Fatalf("notified %d dropped %d, want %d and %d", st.Notified, st.Dropped, QueueLen, extra)
	}
	if n := testing.AllocsPerRun(1000, func() { r.Notify(rec) }); n != 0 {
		t.Fatalf("Notify allocates %v times", n)
	}
}

func TestNotifyQueueIsFIFOAcrossWrap(t *testing.T) {
	r := NewReplicator(nil, func(func(Record) bool) {}, 0)
	base := everyKind()[1]
	next, want := 0, 0
	push := func(n int) {
		for range n {
			rec := base
			rec.SPort = uint16(next)
			next++
			r.Notify(rec)
		}
	}
	var batch [MaxRecords]Record
	pop := func(n int) {
		for n > 0 {
			k := r.take(batch[:min(n, MaxRecords)])
			if k == 0 {
				t.Fatalf("queue empty with %d records still expected", n)
			}
			for _, rec := range batch[:k] {
				if int(rec.SPort) != want {
					t.Fatalf("dequeued SPort %d, want %d", rec.SPort, want)
				}
				want++
			}
			n -= k
		}
	}
	push(QueueLen - 10)
	pop(QueueLen - 100)
	push(200) // wraps around the end of the ring
	pop(290)
	if k := r.take(batch[:]); k != 0 || r.Stats().Dropped != 0 {
		t.Fatalf("%d records left, %d dropped after draining", k, r.Stats().Dropped)
	}
}

func TestFixClampsAndCounts(t *testing.T) {
	r := NewReplicator(nil, nil, 0)
	ok := everyKind()[0]
	ok.TTL = 100 * MaxTTL
	if r.fix(&ok) != Version1 || ok.TTL != MaxTTL {
		t.Fatalf("over-long TTL: kept=%v TTL %v, want clamped to MaxTTL", ok.TTL == MaxTTL, ok.TTL)
	}
	expired := everyKind()[0]
	expired.TTL = 0
	bad := everyKind()[0]
	bad.Member = netip.MustParseAddr("fe80::1") // link-local
	ok6 := everyKind6()[0]
	if r.fix(&expired) != 0 || r.fix(&bad) != 0 || r.fix(&ok6) != Version2 {
		t.Fatal("expired or invalid record accepted, or an IPv6 one refused")
	}
	if st := r.Stats(); st.Invalid != 1 {
		t.Fatalf("Invalid %d, want 1 (expired records are not invalid)", st.Invalid)
	}
}

func TestListenConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"multicast without interface", Config{}},
		{"unicast group address", Config{Interface: "lo", Group: netip.MustParseAddrPort("192.0.2.1:8848")}},
		{"group without port", Config{Interface: "lo", Group: netip.MustParseAddrPort("239.255.1.1:0")}},
		{"unicast without Local", Config{Peers: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:8848")}}},
		{"IPv6 peer", Config{Local: netip.MustParseAddr("192.0.2.1"), Peers: []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::1]:8848")}}},
		{"peer without port", Config{Local: netip.MustParseAddr("192.0.2.1"), Peers: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:0")}}},
	} {
		c, err := Listen(tc.cfg)
		if !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err %v, want ErrConfig", tc.name, err)
		}
		if c != nil {
			c.Close()
		}
	}
}

// sizesByVersion sums up messages as version -> record counts, in order.
func sizesByVersion(msgs []decoded) map[int][]int {
	m := map[int][]int{}
	for _, d := range msgs {
		m[d.version] = append(m[d.version], len(d.recs))
	}
	return m
}

// TestFlushFillsMessagesOfEachVersion: the Notify queue's records, mixed,
// go out in full messages of each version and at most one partly filled
// message of each, never mixed, each version in the order notified.
func TestFlushFillsMessagesOfEachVersion(t *testing.T) {
	c, rx := loopConn(t, testKey)
	r := NewReplicator(c, func(func(Record) bool) {}, 0)
	v4, v6 := manyRecords(100), manyRecords6(50)
	for _, rec := range interleave(v4, v6) {
		r.Notify(rec)
	}
	expired := v4[0]
	expired.TTL = 0
	r.Notify(expired) // skipped, not counted invalid
	if err := r.flushQueue(); err != nil {
		t.Fatal(err)
	}
	got := decodeAll(t, datagrams(t, rx), testKey)
	sizes := sizesByVersion(got)
	if want := map[int][]int{Version1: {56, 44}, Version2: {22, 22, 6}}; !reflect.DeepEqual(sizes, want) {
		t.Errorf("message sizes by version %v, want %v", sizes, want)
	}
	var got4, got6 []Record
	for _, d := range got {
		if d.version == Version1 {
			got4 = append(got4, d.recs...)
		} else {
			got6 = append(got6, d.recs...)
		}
	}
	if !reflect.DeepEqual(got4, v4) || !reflect.DeepEqual(got6, v6) {
		t.Errorf("records differ or are out of order: %d IPv4, %d IPv6", len(got4), len(got6))
	}
	if st := r.Stats(); st.Invalid != 0 || st.Notified != 151 {
		t.Errorf("stats %+v", st)
	}
	// Drained: another flush sends nothing.
	if err := r.flushQueue(); err != nil {
		t.Fatal(err)
	}
	if n := len(datagrams(t, rx)); n != 0 {
		t.Errorf("empty flush sent %d datagrams", n)
	}
}

// TestSnapshotsCarryBothVersions: a dump and a refresh cycle send every
// live record, IPv6 ones included, in messages of one version each, the
// refresh paced in whole messages.
func TestSnapshotsCarryBothVersions(t *testing.T) {
	c, rx := loopConn(t, nil)
	live := interleave(manyRecords(130), manyRecords6(50))
	tmpl4, tmpl6 := everyKind()[7], everyKind6()[11]
	tmpl4.TTL, tmpl6.TTL = time.Hour, time.Hour
	live = append(live, tmpl4, tmpl6)
	invalid := live[0]
	invalid.Src = addr("fe80::1") // family mismatch with the VIP
	rangeFn := func(fn func(Record) bool) {
		for _, rec := range append(live, invalid) {
			if !fn(rec) {
				return
			}
		}
	}
	r := NewReplicator(c, rangeFn, time.Second)
	want := map[flowID]Record{}
	for _, rec := range live {
		want[idOf(rec)] = rec
	}
	check := func(what string, msgs []decoded, wantMsgs map[int][]int) {
		t.Helper()
		if got := sizesByVersion(msgs); !reflect.DeepEqual(got, wantMsgs) {
			t.Errorf("%s: message sizes by version %v, want %v", what, got, wantMsgs)
		}
		seen := map[flowID]bool{}
		for _, d := range msgs {
			for _, rec := range d.recs {
				w, ok := want[idOf(rec)]
				if !ok || rec.Member != w.Member || rec.TTL > w.TTL || rec.TTL < w.TTL-time.Minute {
					t.Fatalf("%s: unexpected record %+v", what, rec)
				}
				seen[idOf(rec)] = true
			}
		}
		if len(seen) != len(live) {
			t.Errorf("%s: %d of %d live records", what, len(seen), len(live))
		}
	}
	// 131 IPv4 records (56+56+19) and 51 IPv6 ones (22+22+7).
	full := map[int][]int{Version1: {56, 56, 19}, Version2: {22, 22, 7}}

	if err := r.sendDump(t.Context()); err != nil {
		t.Fatal(err)
	}
	msgs := datagrams(t, rx)
	if len(msgs) == 0 {
		t.Fatal("dump sent nothing")
	}
	end, err := func() (Header, error) { h, _, err := Decode(msgs[len(msgs)-1], nil, 0, nil); return h, err }()
	if err != nil || end.Type != MsgDumpEnd {
		t.Fatalf("dump does not end with a dump end: %+v %v", end, err)
	}
	check("dump", decodeAll(t, msgs[:len(msgs)-1], nil), full)
	if st := r.Stats(); st.Dumps != 1 || st.Dumped != uint64(len(live)) || st.Invalid != 1 {
		t.Errorf("dump stats %+v", st)
	}

	// A refresh cycle half way through its span has sent half of its six
	// messages, version 1 first; at the end of the span all of them.
	r.startCycle()
	span := r.refresh * refreshSpanNum / refreshSpanDen
	r.snapTime = time.Now().Add(-span / 2)
	if err := r.sendDue(); err != nil {
		t.Fatal(err)
	}
	first := decodeAll(t, datagrams(t, rx), nil)
	if got := sizesByVersion(first); len(first) < 3 || len(first) > 4 || !reflect.DeepEqual(got[Version1], []int{56, 56, 19}) {
		t.Errorf("half a span: messages by version %v, want the three version 1 ones (and perhaps one more)", got)
	}
	r.snapTime = time.Now().Add(-span)
	if err := r.sendDue(); err != nil {
		t.Fatal(err)
	}
	check("refresh", append(first, decodeAll(t, datagrams(t, rx), nil)...), full)
	if st := r.Stats(); st.Cycles != 1 || st.Refreshed != uint64(len(live)) {
		t.Errorf("refresh stats %+v", st)
	}
}
