package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/afxdp"
)

// fakeFlows is a FlowCache that records installs and generations and holds entries for sweeps.
type fakeFlows struct {
	mu       sync.Mutex
	sent     func() int // how many frames the worker's socket had sent, read at each install
	installs []fakeInstall
	gens     []uint32
	entries  map[afxdp.FlowKey]*afxdp.FlowEntry
}

type fakeInstall struct {
	frame       []byte
	member, gen uint32
	sentBefore  int
}

func newFakeFlows() *fakeFlows { return &fakeFlows{entries: map[afxdp.FlowKey]*afxdp.FlowEntry{}} }

func (f *fakeFlows) InstallFlow(frame []byte, member, gen uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := fakeInstall{frame: bytes.Clone(frame), member: member, gen: gen}
	if f.sent != nil {
		in.sentBefore = f.sent()
	}
	f.installs = append(f.installs, in)
	if k, ok := afxdp.FlowKeyOf(frame); ok {
		e := &afxdp.FlowEntry{Gen: gen, Member: member}
		copy(e.DstMAC[:], frame[0:6])
		f.entries[k] = e
	}
	return nil
}

func (f *fakeFlows) SetGeneration(gen uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gens = append(f.gens, gen)
	return nil
}

func (f *fakeFlows) SweepFlows(fn func(k *afxdp.FlowKey, e *afxdp.FlowEntry) bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, e := range f.entries {
		kk, ee := k, *e
		if !fn(&kk, &ee) {
			delete(f.entries, k)
		}
	}
	return nil
}

// forward adds n datagrams of size bytes each to the entry of frame's flow, as the program would.
func (f *fakeFlows) forward(t *testing.T, frame []byte, n, size uint64) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	k, _ := afxdp.FlowKeyOf(frame)
	e := f.entries[k]
	if e == nil {
		t.Fatal("forward: flow not cached")
	}
	e.Packets += n
	e.Bytes += n * size
}

func (f *fakeFlows) cached(frame []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, _ := afxdp.FlowKeyOf(frame)
	return f.entries[k] != nil
}

func (f *fakeFlows) lastGen() (uint32, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.gens) == 0 {
		return 0, false
	}
	return f.gens[len(f.gens)-1], true
}

// udpDatagram is a datagram from client1:sport to the VIP's port 5004.
func udpDatagram(t testing.TB, sport uint16) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: vmacT, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: client1.AsSlice(), DstIP: vip.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: 5004}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload("rtp payload")); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// flowCacheWorker is a worker on an active node with a fake flow cache.
func flowCacheWorker(t *testing.T) (*Node, *worker, *fakeRx, *fakeFlows) {
	t.Helper()
	eng := newEngine(t, allMembers(), knownMACs())
	n := New(Config{Engine: eng})
	n.SetActive(true)
	rx := newFakeRx()
	w := newWorker(n, rx, newFakeTx(), n.counters[0])
	fc := newFakeFlows()
	fc.sent = func() int { return len(rx.sentFrames()) }
	w.flows, w.memo = fc, new(installMemo)
	return n, w, rx, fc
}

// remoteSport returns a source port whose flow the engine puts on a remote member.
func remoteSport(t *testing.T, n *Node, w *worker, rx *fakeRx) uint16 {
	t.Helper()
	for p := uint16(40000); p < 41000; p++ {
		before := len(rx.sentFrames())
		handleWires(w, wire(vnetHdrT, udpDatagram(t, p)))
		if len(rx.sentFrames()) > before {
			return p
		}
	}
	t.Fatal("no flow went to a remote member")
	return 0
}

// TestWorkerInstallsKnownFlowsAfterSending checks the worker's side of the flow cache: a known
// UDP flow on a remote member is installed with the frame as forwarded, the member and the
// generation read before the batch, only once the batch was handed to the socket (so that a
// datagram the cache forwards does not overtake it), and once per flow however many of its
// datagrams the batch held; a flow's first datagram, TCP segments other than ACK-only ones
// and the local member's flows are not installed.
func TestWorkerInstallsKnownFlowsAfterSending(t *testing.T) {
	n, w, rx, fc := flowCacheWorker(t)
	sport := remoteSport(t, n, w, rx)
	if len(fc.installs) != 0 {
		t.Fatalf("a flow's first datagram was installed: %+v", fc.installs)
	}
	gen := n.eng.FlowGeneration()
	d := udpDatagram(t, sport)
	sentBefore := len(rx.sentFrames())
	handleWires(w, wire(vnetHdrT, d), wire(vnetHdrT, d), wire(vnetHdrT, d))
	if len(fc.installs) != 1 {
		t.Fatalf("%d installs for one flow's batch of 3, want 1", len(fc.installs))
	}
	in := fc.installs[0]
	if in.gen != gen || in.sentBefore != sentBefore+3 {
		t.Errorf("install under generation %d after %d sent frames, want %d after %d", in.gen, in.sentBefore, gen, sentBefore+3)
	}
	fwd := rx.sentFrames()[sentBefore]
	if !bytes.Equal(in.frame, fwd[len(vnetHdrT):]) {
		t.Errorf("installed frame\n%x\nwant the forwarded one\n%x", in.frame, fwd[len(vnetHdrT):])
	}
	if dst := in.frame[0:6]; !bytes.Equal(dst, f2MAC) && !bytes.Equal(dst, f3MAC) {
		t.Errorf("installed destination MAC %x is not a remote member's", dst)
	}
	// TCP: a SYN, a retransmitted SYN and an ACK with data install nothing; the flow's first
	// ACK-only segment installs it, once.
	tcpFlows := 0
	for p := uint16(20000); p < 20100; p++ {
		before := len(fc.installs)
		handleWires(w, wire(vnetHdrT, tcpSYN(t, p)), wire(vnetHdrT, tcpSYN(t, p)),
			wire(vnetHdrT, tcpSegment(t, p, false, true, "MAIL FROM:<a@example.net>\r\n")))
		if len(fc.installs) != before {
			t.Fatalf("port %d: a SYN or an ACK with data installed its flow: %x", p, fc.installs[before].frame)
		}
		ack := tcpSegment(t, p, false, true, "")
		handleWires(w, wire(vnetHdrT, ack), wire(vnetHdrT, ack))
		switch got := len(fc.installs) - before; {
		case got > 1:
			t.Fatalf("port %d: %d installs for one flow, want 1", p, got)
		case got == 1:
			tcpFlows++
		}
	}
	if tcpFlows == 0 {
		t.Fatal("no TCP flow installed by its ACK-only segments")
	}
	for p := uint16(41000); p < 41100; p++ {
		handleWires(w, wire(vnetHdrT, udpDatagram(t, p)), wire(vnetHdrT, udpDatagram(t, p)))
	}
	for _, in := range fc.installs {
		ackOnly := in.frame[23] == 6 && in.frame[47]&0x37 == 0x10 && binary.BigEndian.Uint16(in.frame[16:18]) == 40
		if (in.frame[23] != 17 && !ackOnly) || bytes.Equal(in.frame[0:6], zeroMAC) {
			t.Fatalf("installed a frame that is neither a remote UDP flow's nor a remote TCP flow's ACK: %x", in.frame)
		}
	}
	t.Logf("%d of 100 TCP flows installed (the rest are the local member's)", tcpFlows)
}

// TestSweepHandsBackAndDrops checks the sweep: the cache's counts reach the node's and the
// VIP's counters once; an idle flow goes after a whole idle sweep, a flow of an old generation
// and a flow the engine no longer has at once.
func TestSweepHandsBackAndDrops(t *testing.T) {
	n, w, rx, fc := flowCacheWorker(t)
	sport := remoteSport(t, n, w, rx)
	d := udpDatagram(t, sport)
	handleWires(w, wire(vnetHdrT, d))
	if !fc.cached(d) {
		t.Fatal("flow not installed")
	}
	fwd := func() uint64 { return n.Stats().Verdicts["forwarded"] }
	vipPkts := func() uint64 { return n.eng.VIPStats()[vip].Packets }
	f0, v0 := fwd(), vipPkts()
	sw := &flowSweep{prev: map[afxdp.FlowKey]flowCounts{}}
	fc.forward(t, d, 5, uint64(len(d)))
	n.sweepFlows(fc, sw)
	if got := fwd() - f0; got != 5 {
		t.Errorf("forwarded counter moved by %d, want 5", got)
	}
	if got := vipPkts() - v0; got != 5 {
		t.Errorf("VIP counter moved by %d, want 5", got)
	}
	if st := n.FlowCacheStats(); st.Entries != 1 || st.Forwarded != 5 || st.Installs != 1 {
		t.Errorf("flow cache stats %+v, want 1 entry, 5 forwarded, 1 install", st)
	}
	n.sweepFlows(fc, sw) // nothing new: idle for one sweep
	if got := fwd() - f0; got != 5 {
		t.Errorf("an idle sweep counted %d more", got-5)
	}
	if fc.cached(d) {
		t.Error("flow idle for a whole sweep still cached")
	}
	// A flow of an old generation goes at once.
	reinstall(t, w, fc, d, "again")
	g := n.eng.FlowGeneration()
	if err := n.eng.Configure(n.eng.Config()); err != nil || n.eng.FlowGeneration() == g {
		t.Fatalf("reconfigure: %v, generation %d", err, n.eng.FlowGeneration())
	}
	fc.forward(t, d, 1, uint64(len(d)))
	n.sweepFlows(fc, sw)
	if fc.cached(d) {
		t.Error("flow of an old generation still cached")
	}
	// A flow the engine disowns (its table entry is gone) goes, uncounted.
	reinstall(t, w, fc, d, "under the new generation")
	k, _ := afxdp.FlowKeyOf(d)
	if !n.eng.Table().Delete(flowKey4(&k)) {
		t.Fatal("the flow is not in the table")
	}
	f1 := fwd()
	fc.forward(t, d, 3, uint64(len(d)))
	n.sweepFlows(fc, sw)
	if fc.cached(d) || fwd() != f1 {
		t.Errorf("disowned flow: cached %v, counted %d", fc.cached(d), fwd()-f1)
	}
}

// reinstall runs datagram d through w once more and fails unless its flow is cached after it
// (when: for the message). It forgets w's recent installs first, which would hold the install
// back for installMemoTTL.
func reinstall(t *testing.T, w *worker, fc *fakeFlows, d []byte, when string) {
	t.Helper()
	w.memo = new(installMemo)
	handleWires(w, wire(vnetHdrT, d))
	if !fc.cached(d) {
		t.Fatalf("flow not installed %s", when)
	}
}

// TestRunPublishesGenerations checks that Run gives the cache the engine's generation before the
// workers start and again after every change.
func TestRunPublishesGenerations(t *testing.T) {
	eng := newEngine(t, allMembers(), knownMACs())
	n := New(Config{Engine: eng})
	n.SetActive(true)
	fc := newFakeFlows()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- n.Run(ctx, Sockets{Workers: []RxSocket{newFakeRx()}, Lo: newFakeTx(), Flows: fc})
	}()
	waitFor(t, "the first generation", func() bool { g, ok := fc.lastGen(); return ok && g == eng.FlowGeneration() })
	for range 3 {
		g := eng.FlowGeneration()
		eng.SetActive(false)
		eng.SetActive(true)
		waitFor(t, "a new generation", func() bool { got, _ := fc.lastGen(); return got != g && got == eng.FlowGeneration() })
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return")
	}
}
