package connsync

import (
	"errors"
	"net/netip"
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
					rec.Key.SPort = uint16(g*10000 + i)
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
			rec.Key.SPort = uint16(next)
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
				if int(rec.Key.SPort) != want {
					t.Fatalf("dequeued SPort %d, want %d", rec.Key.SPort, want)
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
	if !r.fix(&ok) || ok.TTL != MaxTTL {
		t.Fatalf("over-long TTL: kept=%v TTL %v, want clamped to MaxTTL", ok.TTL == MaxTTL, ok.TTL)
	}
	expired := everyKind()[0]
	expired.TTL = 0
	bad := everyKind()[0]
	bad.Member = netip.MustParseAddr("2001:db8::1")
	if r.fix(&expired) || r.fix(&bad) {
		t.Fatal("expired or invalid record accepted")
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
