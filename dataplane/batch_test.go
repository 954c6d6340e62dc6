package dataplane

import (
	"net/netip"
	"testing"
)

// hintFrames returns n frames of n flows to the VIP (the first of each flow, a SYN, has been
// processed already) and the engine they were processed by.
func hintFrames(t testing.TB, n int) (*Engine, [][]byte) {
	e := newTestEngine(t)
	frames := make([][]byte, n)
	for i := range frames {
		src := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		process(e, frameSpec{src: src, dst: vip, sport: uint16(1000 + i), dport: 25, syn: true}.bytes(t))
		frames[i] = frameSpec{src: src, dst: vip, sport: uint16(1000 + i), dport: 25, ack: true, payload: make([]byte, 18)}.bytes(t)
	}
	return e, frames
}

// TestProcessHintMatchesProcess checks that a frame processed with its own hint, with another
// frame's hint, with an empty hint and without one gets the same verdict and member: a hint is
// only ever an optimisation.
func TestProcessHintMatchesProcess(t *testing.T) {
	e, frames := hintFrames(t, 64)
	var scratch [128]byte
	for i, f := range frames {
		want := e.Process(append([]byte(nil), f...), false, scratch[:])
		var own, other FlowHint
		e.PrefetchHint(f, &own)
		if !own.ok {
			t.Fatalf("frame %d: PrefetchHint found no flow key", i)
		}
		e.PrefetchHint(frames[(i+1)%len(frames)], &other)
		for name, h := range map[string]*FlowHint{"own": &own, "other": &other, "empty": {}, "nil": nil} {
			got := e.ProcessHint(append([]byte(nil), f...), false, scratch[:], h)
			if got.Verdict != want.Verdict || got.Member != want.Member || got.NewFlow {
				t.Fatalf("frame %d, %s hint: %v member %d (new %v), Process: %v member %d",
					i, name, got.Verdict, got.Member, got.NewFlow, want.Verdict, want.Member)
			}
		}
	}
	// A non-IP frame resets the hint.
	h := FlowHint{ok: true}
	e.PrefetchHint([]byte{1, 2, 3}, &h)
	if h.ok {
		t.Fatal("PrefetchHint kept a hint for a runt")
	}
}

// TestRecordBatchMatchesRecord checks that counting ProcessHint's results with RecordBatch gives
// the same counters and per-VIP traffic as Process and Record frame by frame.
func TestRecordBatchMatchesRecord(t *testing.T) {
	e1, frames := hintFrames(t, 64)
	e2, _ := hintFrames(t, 64)
	var scratch [128]byte
	var one, batch Counters
	res := make([]Result, 0, len(frames)+2)
	lens := make([]int, 0, len(frames)+2)
	for _, f := range frames {
		r := e1.Process(append([]byte(nil), f...), false, scratch[:])
		one.Record(&r, len(f))
		r = e2.ProcessHint(append([]byte(nil), f...), false, scratch[:], nil)
		res, lens = append(res, r), append(lens, len(f))
	}
	// A failed send, a new flow and more members than RecordBatch sums locally take its
	// per-frame path.
	extra := []Result{{Verdict: VerdictDrop, Reason: ReasonTxError}, {Verdict: VerdictForward, Member: 3, NewFlow: true}}
	for m := range uint32(batchMembers + 2) {
		extra = append(extra, Result{Verdict: VerdictForward, Member: 10 + m})
	}
	for _, r := range extra {
		one.Record(&r, 60)
		res, lens = append(res, r), append(lens, 60)
	}
	batch.RecordBatch(res, lens)
	a, b := Sum(&one), Sum(&batch)
	for v, n := range a.Verdicts {
		if b.Verdicts[v] != n {
			t.Errorf("verdict %s: batch %d, one by one %d", v, b.Verdicts[v], n)
		}
	}
	for r, n := range a.Drops {
		if b.Drops[r] != n {
			t.Errorf("drop %s: batch %d, one by one %d", r, b.Drops[r], n)
		}
	}
	for m, n := range a.MemberPackets {
		if b.MemberPackets[m] != n || b.MemberBytes[m] != a.MemberBytes[m] {
			t.Errorf("member %d: batch %d/%d, one by one %d/%d", m, b.MemberPackets[m], b.MemberBytes[m], n, a.MemberBytes[m])
		}
	}
	if len(b.MemberPackets) != len(a.MemberPackets) {
		t.Errorf("members: batch %v, one by one %v", b.MemberPackets, a.MemberPackets)
	}
	// e1 and e2 each saw one SYN per flow before; e2's 64 ACKs are counted by RecordBatch.
	if v1, v2 := e1.VIPStats()[vip], e2.VIPStats()[vip]; v1 != v2 || v1.Packets != 128 {
		t.Fatalf("VIP traffic: Process %+v, ProcessHint+RecordBatch %+v, want 128 packets each", v1, v2)
	}
}

func TestProcessHintRecordBatchAllocs(t *testing.T) {
	e, frames := hintFrames(t, 8)
	var scratch [128]byte
	var c Counters
	var hints [8]FlowHint
	res := make([]Result, len(frames))
	lens := make([]int, len(frames))
	n := testing.AllocsPerRun(200, func() {
		for i, f := range frames {
			e.PrefetchHint(f, &hints[i])
		}
		for i, f := range frames {
			copy(f[0:6], vmacT)
			res[i], lens[i] = e.ProcessHint(f, false, scratch[:], &hints[i]), len(f)
		}
		c.RecordBatch(res, lens)
	})
	if n != 0 {
		t.Fatalf("PrefetchHint/ProcessHint/RecordBatch allocate %v per batch, want 0", n)
	}
}

// BenchmarkRecordBatch compares counting a 64-frame batch one by one and with RecordBatch.
func BenchmarkRecordBatch(b *testing.B) {
	e, frames := hintFrames(b, 64)
	var scratch [128]byte
	res := make([]Result, len(frames))
	lens := make([]int, len(frames))
	for i, f := range frames {
		res[i], lens[i] = e.ProcessHint(f, false, scratch[:], nil), len(f)
	}
	var c Counters
	b.Run("record", func(b *testing.B) {
		for b.Loop() {
			for i := range res {
				c.Record(&res[i], lens[i])
			}
		}
	})
	b.Run("batch", func(b *testing.B) {
		for b.Loop() {
			c.RecordBatch(res, lens)
		}
	})
}

// FuzzProcessHint checks that a frame's own PrefetchHint never changes what Process decides:
// two engines with the same configuration see the same frames, one through Process, the other
// through PrefetchHint and ProcessHint, and agree on every verdict, reason, member and flag. The
// frame is then replayed, so a flow the first frame created is looked up with the hint.
func FuzzProcessHint(f *testing.F) {
	for _, s := range prefetchSeeds(f) {
		f.Add(s.frame)
	}
	f.Add([]byte{})
	e1, e2 := newTestEngine(f), newTestEngine(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var scratch [128]byte
		var h FlowHint
		for range 2 {
			want := e1.Process(append([]byte(nil), b...), false, scratch[:])
			e2.PrefetchHint(b, &h)
			got := e2.ProcessHint(append([]byte(nil), b...), false, scratch[:], &h)
			if got.Verdict != want.Verdict || got.Reason != want.Reason || got.Member != want.Member ||
				got.NewFlow != want.NewFlow || got.TableFull != want.TableFull {
				t.Fatalf("ProcessHint %+v, Process %+v", got, want)
			}
		}
	})
}
