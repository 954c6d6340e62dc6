package connsync

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// newBed builds a switch with three frontends (balancer nodes: f1 active,
// f2 and f3 standbys) and one client (c1, the attacker), all in namespaces
// removed at cleanup.
func newBed(t *testing.T) *testbed.Bed {
	t.Helper()
	if os.Geteuid() != 0 {
		e2e.Prereq(t, "needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		e2e.Prereq(t, "needs iproute2's ip: %v", err)
	}
	bed, err := testbed.New(testbed.Options{Frontends: 3, Clients: 1, Logf: t.Logf})
	if err != nil {
		e2e.Prereq(t, "cannot build the namespace testbed: %v", err)
	}
	t.Cleanup(func() {
		if err := bed.Close(); err != nil {
			t.Errorf("testbed close: %v", err)
		}
	})
	return bed
}

// message is one delivery to a node's Receive callback, copied.
type message struct {
	from netip.Addr
	h    Header
	recs []Record
	at   time.Time
}

// node is a Conn in a namespace with its Receive loop running.
type node struct {
	c     *Conn
	mu    sync.Mutex
	msgs  []message
	dumps []netip.Addr
	// onDump, if set before traffic starts, is called on a dump request.
	onDump func(netip.Addr)
}

// testLogger logs to t, one t.Log call per record.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// listen opens a Conn inside h's namespace and runs its Receive loop until
// cleanup.
func listen(t *testing.T, h *testbed.Host, cfg Config) *node {
	t.Helper()
	return listenWith(t, h, cfg, nil)
}

func listenWith(t *testing.T, h *testbed.Host, cfg Config, onDump func(netip.Addr)) *node {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = testLogger(t).With("node", h.Name)
	}
	n := &node{onDump: onDump}
	err := h.Do(func() error {
		var err error
		n.c, err = Listen(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("%s: Listen: %v", h.Name, err)
	}
	done := make(chan error, 1)
	go func() {
		done <- n.c.Receive(func(from netip.Addr, hd Header, recs []Record) {
			n.mu.Lock()
			n.msgs = append(n.msgs, message{from, hd, append([]Record(nil), recs...), time.Now()})
			n.mu.Unlock()
		}, func(from netip.Addr) {
			n.mu.Lock()
			n.dumps = append(n.dumps, from)
			n.mu.Unlock()
			if n.onDump != nil {
				n.onDump(from)
			}
		})
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s (%v): stats %+v", h.Name, n.c.LocalAddr(), n.c.Stats())
		}
		n.c.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Receive: %v", h.Name, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s: Receive did not return after Close", h.Name)
		}
	})
	return n
}

func (n *node) messages() []message {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]message(nil), n.msgs...)
}

// records returns every record received in updates, in order.
func (n *node) records() []Record {
	var out []Record
	for _, m := range n.messages() {
		out = append(out, m.recs...)
	}
	return out
}

func (n *node) dumpRequests() []netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]netip.Addr(nil), n.dumps...)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// flowID is what identifies a record in a table: its kind and flow key.
type flowID struct {
	kind         RecordKind
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
}

func idOf(r Record) flowID {
	return flowID{r.Kind, r.Src, r.Dst, r.SPort, r.DPort, r.Proto}
}

func sameRecords(a, b []Record) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNamespaces(t *testing.T) {
	bed := newBed(t)
	f1, f2, f3, c1 := bed.Frontends[0], bed.Frontends[1], bed.Frontends[2], bed.Clients[0]
	key := []byte("group secret")

	t.Run("multicast", func(t *testing.T) {
		group := netip.MustParseAddrPort("239.255.108.50:8850")
		a := listen(t, f1, Config{SyncID: 7, Key: key, Interface: "eth0", Group: group})
		b := listen(t, f2, Config{SyncID: 7, Key: key, Interface: "eth0", Group: group})
		anyID := listen(t, f3, Config{SyncID: 0, Key: key, Interface: "eth0", Group: group})
		if a.c.Sender() != f1.Addr {
			t.Fatalf("Local defaulted to %v, want the interface address %v", a.c.Sender(), f1.Addr)
		}
		// Three version 1 datagrams, then two version 2 ones.
		recs := append(everyKind(), manyRecords(2*MaxRecordsV1)...)
		recs = append(recs, append(everyKind6(), manyRecords6(MaxRecordsV2)...)...)
		if err := a.c.Send(recs); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*node{b, anyID} {
			waitFor(t, "all records", 5*time.Second, func() bool { return len(n.records()) >= len(recs) })
			if got := n.records(); !sameRecords(got, recs) {
				t.Errorf("received records differ from those sent (%d vs %d)", len(got), len(recs))
			}
			for _, m := range n.messages() {
				if m.from != f1.Addr || m.h.Sender != f1.Addr || m.h.SyncID != 7 || m.h.Type != MsgUpdate {
					t.Errorf("message from %v header %+v", m.from, m.h)
				}
			}
			if st := n.c.Stats(); st.ReceivedMessages != 5 || st.ReceivedRecords != uint64(len(recs)) || st.Rejected() != 0 {
				t.Errorf("receiver stats %+v", st)
			}
		}
		// IP_MULTICAST_LOOP is off: the sender never reads its own.
		waitFor(t, "send counters", time.Second, func() bool { return a.c.Stats().SentMessages == 5 })
		time.Sleep(50 * time.Millisecond)
		if st := a.c.Stats(); st.SentMessages != 5 || st.SentRecords != uint64(len(recs)) || st.ReceivedMessages != 0 || st.Own != 0 {
			t.Errorf("sender stats %+v", st)
		}

		// A standby that (re)joins asks for a dump; the active sees it.
		if err := b.c.RequestDump(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "dump request at the active", 5*time.Second, func() bool { return len(a.dumpRequests()) == 1 })
		if got := a.dumpRequests()[0]; got != f2.Addr {
			t.Errorf("dump request from %v, want %v", got, f2.Addr)
		}
		if st := a.c.Stats(); st.DumpRequests != 1 {
			t.Errorf("DumpRequests %d", st.DumpRequests)
		}
	})

	t.Run("rejects", func(t *testing.T) {
		group := netip.MustParseAddrPort("239.255.108.50:8851")
		a := listen(t, f1, Config{SyncID: 7, Key: key, Interface: "eth0", Group: group})
		b := listen(t, f2, Config{SyncID: 7, Key: key, Interface: "eth0", Group: group})
		// The attacker joins too; its own Conns provide well-formed
		// messages with the wrong SyncID or key, and its socket sends raw
		// garbage.
		wrongID := listen(t, c1, Config{SyncID: 9, Key: key, Interface: "eth0", Group: group})
		wrongKey := listen(t, c1, Config{SyncID: 7, Key: []byte("guessed"), Interface: "eth0", Group: group})
		noKey := listen(t, c1, Config{SyncID: 7, Interface: "eth0", Group: group, Log: slog.New(slog.DiscardHandler)})
		evil := manyRecords(5)
		for i := range evil {
			evil[i].Member = c1.Addr // would steal flows
		}
		for _, n := range []*node{wrongID, wrongKey, noKey} {
			if err := n.c.Send(evil); err != nil {
				t.Fatal(err)
			}
		}
		raw := func(b []byte) {
			t.Helper()
			if _, err := wrongID.c.uc.WriteToUDPAddrPort(b, group); err != nil {
				t.Fatal(err)
			}
		}
		h := Header{Type: MsgUpdate, SyncID: 7, Sender: f1.Addr}
		valid, err := Encode(nil, h, evil, key)
		if err != nil {
			t.Fatal(err)
		}
		raw([]byte("GET / HTTP/1.0\r\n\r\n"))                                                   // magic
		raw([]byte("L2"))                                                                       // short
		raw(append([]byte("L2SY\x03"), valid[5:]...))                                           // version
		raw(valid[:len(valid)-3])                                                               // truncated: count
		raw(append(append([]byte(nil), valid...), make([]byte, 3000)...))                       // oversized: count
		raw(craft(t, h, evil, key, func(b []byte) []byte { b[HeaderLen] = 9; return b }, true)) // record (the key leaked)
		forged := append([]byte(nil), valid...)
		forged[16] ^= 0xff // sequence changed, MAC not recomputed
		raw(forged)
		// Version 2: relabelled as version 1 (count), and a record whose
		// address flags claim a version 1 record (the key leaked).
		evil6 := manyRecords6(5)
		for i := range evil6 {
			evil6[i].Member = c1.Addr
		}
		valid6, err := Encode(nil, h, evil6, key)
		if err != nil || valid6[4] != Version2 {
			t.Fatalf("version 2 message: %v", err)
		}
		raw(append([]byte("L2SY\x01"), valid6[5:]...))
		raw(craft(t, h, evil6, key, func(b []byte) []byte { b[HeaderLen+3] = v2Flags; return b }, true))
		want := Stats{RejectedMagic: 1, RejectedShort: 1, RejectedVersion: 1, RejectedCount: 3, RejectedRecord: 2, RejectedSyncID: 1, RejectedAuth: 3}
		check := func(st Stats) bool {
			return st.RejectedMagic == want.RejectedMagic && st.RejectedShort == want.RejectedShort &&
				st.RejectedVersion == want.RejectedVersion && st.RejectedCount == want.RejectedCount &&
				st.RejectedRecord == want.RejectedRecord && st.RejectedSyncID == want.RejectedSyncID &&
				st.RejectedAuth == want.RejectedAuth && st.RejectedHeader == 0 && st.RejectedPeer == 0
		}
		for _, n := range []*node{a, b} {
			waitFor(t, "all injected datagrams counted", 5*time.Second, func() bool { return n.c.Stats().Rejected() >= want.Rejected() })
			if st := n.c.Stats(); !check(st) {
				t.Errorf("rejections %+v, want %+v", st, want)
			}
		}
		// Then a genuine update: it arrives, and it is the only thing
		// that ever reached the callback.
		genuine := append(everyKind(), everyKind6()...)
		if err := a.c.Send(genuine); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the genuine update", 5*time.Second, func() bool { return len(b.records()) >= len(genuine) })
		time.Sleep(50 * time.Millisecond)
		if got := b.records(); !sameRecords(got, genuine) {
			t.Errorf("standby received %d records, want only the %d genuine ones", len(got), len(genuine))
		}
		if st := b.c.Stats(); st.ReceivedMessages != 2 {
			t.Errorf("standby accepted %d messages, want 2", st.ReceivedMessages)
		}
		if got := a.records(); len(got) != 0 {
			t.Errorf("active accepted %d injected records", len(got))
		}
	})

	t.Run("unicast", func(t *testing.T) {
		const port = 8852
		grp := netip.AddrPortFrom(DefaultGroup.Addr(), port)
		a := listen(t, f1, Config{SyncID: 3, Key: key, Local: f1.Addr, Group: grp, Peers: []netip.AddrPort{
			netip.AddrPortFrom(f2.Addr, port), netip.AddrPortFrom(f3.Addr, port)}})
		b := listen(t, f2, Config{SyncID: 3, Key: key, Local: f2.Addr, Group: grp, Peers: []netip.AddrPort{netip.AddrPortFrom(f1.Addr, port)}})
		cc := listen(t, f3, Config{SyncID: 3, Key: key, Local: f3.Addr, Group: grp, Peers: []netip.AddrPort{netip.AddrPortFrom(f1.Addr, port)}})
		if got := a.c.LocalAddr(); got != netip.AddrPortFrom(f1.Addr, port) {
			t.Fatalf("bound to %v", got)
		}
		recs := append(everyKind(), manyRecords(MaxRecords)...)
		if err := a.c.Send(recs); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*node{b, cc} {
			waitFor(t, "unicast records", 5*time.Second, func() bool { return len(n.records()) >= len(recs) })
			if got := n.records(); !sameRecords(got, recs) {
				t.Errorf("unicast records differ")
			}
		}
		if st := a.c.Stats(); st.SentMessages != 4 { // 2 batches to 2 peers
			t.Errorf("SentMessages %d, want 4", st.SentMessages)
		}
		// A well-formed, correctly keyed message from an address that is
		// not a peer is dropped before decoding.
		intruder := listen(t, c1, Config{SyncID: 3, Key: key, Local: c1.Addr, Group: grp, Peers: []netip.AddrPort{netip.AddrPortFrom(f2.Addr, port)}})
		if err := intruder.c.Send(everyKind()); err != nil {
			t.Fatal(err)
		}
		if err := cc.c.RequestDump(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "peer rejection", 5*time.Second, func() bool { return b.c.Stats().RejectedPeer == 1 })
		waitFor(t, "unicast dump request", 5*time.Second, func() bool { return len(a.dumpRequests()) == 1 })
		if got := a.dumpRequests()[0]; got != f3.Addr {
			t.Errorf("dump request from %v", got)
		}
		if got := b.records(); len(got) != len(recs) {
			t.Errorf("standby has %d records after the intrusion, want %d", len(got), len(recs))
		}
	})

	t.Run("replicator", func(t *testing.T) {
		group := netip.MustParseAddrPort("239.255.108.50:8853")
		const refresh = 400 * time.Millisecond
		const ttl = time.Minute
		flows := manyRecords(300)
		for i := range flows {
			flows[i].TTL = ttl
		}
		flows6 := manyRecords6(100)
		for i := range flows6 {
			flows6[i].TTL = ttl
		}
		tmpl, tmpl6 := everyKind()[7], everyKind6()[11]
		tmpl.TTL, tmpl6.TTL = ttl, ttl
		live := append(append(flows, flows6...), tmpl, tmpl6)
		rangeFn := func(fn func(Record) bool) {
			for _, r := range live {
				if !fn(r) {
					return
				}
			}
		}
		// The dump callback runs on the Receive goroutine, which starts
		// before the Replicator exists.
		var repP atomic.Pointer[Replicator]
		a := listenWith(t, f1, Config{SyncID: 1, Key: key, Interface: "eth0", Group: group}, func(netip.Addr) {
			if r := repP.Load(); r != nil {
				r.Dump()
			}
		})
		rep := NewReplicator(a.c, rangeFn, refresh)
		repP.Store(rep)
		b := listen(t, f2, Config{SyncID: 1, Key: key, Interface: "eth0", Group: group})
		ctx, cancel := context.WithCancel(context.Background())
		runErr := make(chan error, 1)
		start := time.Now()
		go func() { runErr <- rep.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-runErr; err != nil {
				t.Errorf("Run: %v", err)
			}
		})

		// Refresh: every live entry arrives at least twice (two cycles)
		// within about two intervals, each carrying its remaining TTL.
		seen := func() map[flowID]int {
			m := map[flowID]int{}
			for _, r := range b.records() {
				m[idOf(r)]++
			}
			return m
		}
		waitFor(t, "two refresh cycles", 10*refresh, func() bool {
			m := seen()
			for _, r := range live {
				if m[idOf(r)] < 2 {
					return false
				}
			}
			return true
		})
		// Two cycles need 1.75 intervals (the second starts after one and
		// is spread over three quarters of it); the rest is slack for a
		// loaded machine.
		if el := time.Since(start); el > 4*refresh {
			t.Errorf("two cycles took %v with a %v interval", el, refresh)
		}
		for _, r := range b.records() {
			if r.TTL > ttl || r.TTL < ttl-time.Duration(3)*refresh {
				t.Fatalf("refreshed TTL %v not the remaining lifetime of %v", r.TTL, ttl)
			}
		}
		// The first cycle was spread over the interval, not one burst.
		msgs := b.messages()
		n, k, first, last := 0, 0, time.Time{}, time.Time{}
		for _, m := range msgs {
			if n >= len(live) {
				break
			}
			if first.IsZero() {
				first = m.at
			}
			last = m.at
			n += len(m.recs)
			k++
		}
		if spread := last.Sub(first); spread < refresh/4 {
			t.Errorf("first cycle of %d messages arrived within %v; want it spread over the interval", k, spread)
		}
		// Run counts a cycle after its last send returns, which may be
		// after the standby has read it.
		waitFor(t, "two cycles counted", time.Second, func() bool { return rep.Stats().Cycles >= 2 })
		if st := rep.Stats(); st.Refreshed < 2*uint64(len(live)) || st.Invalid != 0 {
			t.Errorf("replicator stats %+v", st)
		}

		// Notify: entries rangeFn does not know, IPv4 and IPv6, reach the
		// standby long before any refresh could carry them.
		fresh, fresh6 := everyKind()[4], everyKind6()[4]
		fresh.TTL, fresh6.TTL = ttl, ttl
		sent := time.Now()
		rep.Notify(fresh)
		rep.Notify(fresh6)
		waitFor(t, "the notified entries", refresh/2, func() bool { return seen()[idOf(fresh)] > 0 && seen()[idOf(fresh6)] > 0 })
		t.Logf("notified entries arrived after %v", time.Since(sent))

		// Dump: the standby asks, the active answers with everything and
		// a dump end.
		before := len(b.messages())
		if err := b.c.RequestDump(); err != nil {
			t.Fatal(err)
		}
		var dumpEnd int
		waitFor(t, "dump end", 5*time.Second, func() bool {
			msgs := b.messages()
			for i := before; i < len(msgs); i++ {
				if msgs[i].h.Type == MsgDumpEnd {
					dumpEnd = i
					return true
				}
			}
			return false
		})
		got := map[flowID]bool{}
		for _, m := range b.messages()[before:dumpEnd] {
			for _, r := range m.recs {
				got[idOf(r)] = true
			}
		}
		for _, r := range live {
			if !got[idOf(r)] {
				t.Fatalf("dump did not carry %+v", idOf(r))
			}
		}
		if st := rep.Stats(); st.Dumps != 1 || st.Dumped != uint64(len(live)) {
			t.Errorf("dump stats %+v", st)
		}

		// Flood: Notify from several goroutines while Run drains. Every
		// call is either queued or counted as a drop, and the standby
		// gets at most what was queued (TestNotifyFullQueueDropsWithout-
		// Blocking proves that Notify never waits for Run).
		const per, workers = 50000, 4
		floodStart := time.Now()
		var wg sync.WaitGroup
		for g := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rec := flows[0]
				for i := range per {
					rec.SPort = uint16(i)
					rec.Src = netip.AddrFrom4([4]byte{10, 0, 0, byte(g + 1)})
					rep.Notify(rec)
				}
			}()
		}
		wg.Wait()
		el := time.Since(floodStart)
		st := rep.Stats()
		if st.Notified+st.Dropped != workers*per+2 { // +2: fresh, fresh6
			t.Errorf("notified %d + dropped %d != %d", st.Notified, st.Dropped, workers*per+2)
		}
		t.Logf("flood of %d Notify calls took %v; %d dropped, standby stats %+v", workers*per, el, st.Dropped, b.c.Stats())
		if el > 10*time.Second {
			t.Errorf("Notify flood took %v", el)
		}
		flooded := func() (n uint64) {
			for _, r := range b.records() {
				if a := r.Src.As16(); r.Src.Is4() && a[12] == 10 && a[13] == 0 && a[14] == 0 && a[15] >= 1 && a[15] <= workers {
					n++
				}
			}
			return n
		}
		waitFor(t, "flooded records at the standby", 5*time.Second, func() bool { return flooded() > 0 })
		time.Sleep(100 * time.Millisecond)
		if got, queued := flooded(), st.Notified-2; got > queued {
			t.Errorf("standby received %d flooded records, only %d were queued", got, queued)
		}
	})

	t.Run("closed", func(t *testing.T) {
		group := netip.MustParseAddrPort("239.255.108.50:8854")
		a := listen(t, f1, Config{SyncID: 1, Key: key, Interface: "eth0", Group: group})
		rep := NewReplicator(a.c, func(func(Record) bool) {}, time.Second)
		a.c.Close()
		if err := a.c.Send(everyKind()); !errors.Is(err, ErrClosed) {
			t.Errorf("Send after Close: %v", err)
		}
		rep.Notify(everyKind()[0])
		done := make(chan error, 1)
		go func() { done <- rep.Run(context.Background()) }()
		select {
		case err := <-done:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("Run on a closed Conn: %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not stop on a closed Conn")
		}
	})
}
