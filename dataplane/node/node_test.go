package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/vipset"
	"golang.org/x/sys/unix"
)

// Test addresses: documentation ranges only (RFC 5737).
var (
	vip       = netip.MustParseAddr("192.0.2.200")
	vip2      = netip.MustParseAddr("192.0.2.201")
	client1   = netip.MustParseAddr("198.51.100.1")
	f1Addr    = netip.MustParseAddr("192.0.2.11") // this node (Local)
	f2Addr    = netip.MustParseAddr("192.0.2.12")
	f3Addr    = netip.MustParseAddr("192.0.2.13")
	f4Addr    = netip.MustParseAddr("192.0.2.14") // never answers ARP
	vmacT     = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0, 0}
	ourMAC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}
	f2MAC     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x12}
	f3MAC     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x13}
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	otherMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	zeroMAC   = net.HardwareAddr{0, 0, 0, 0, 0, 0}
	bcastMAC  = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

	// vnetHdrT is a non-trivial virtio_net_hdr (VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start 34,
	// csum_offset 16) that forwarded frames must carry back unchanged.
	vnetHdrT = []byte{1, 0, 0, 0, 0, 0, 34, 0, 16, 0}

	errLinkDown = errors.New("fake: link down (ENOBUFS)")
	errBatch    = errors.New("fake: sendmmsg refused a frame (EMSGSIZE)")
)

// ---- engine and frames ----

func allMembers() []dataplane.Member {
	return []dataplane.Member{{Addr: f1Addr, Weight: 100, Local: true}, {Addr: f2Addr, Weight: 100},
		{Addr: f3Addr, Weight: 100}}
}

func knownMACs() map[netip.Addr]net.HardwareAddr {
	return map[netip.Addr]net.HardwareAddr{f2Addr: f2MAC, f3Addr: f3MAC}
}

// newEngine configures an engine as dataplane's newTestEngine does, but leaves it inactive:
// the tests activate it through the Node.
func newEngine(t testing.TB, members []dataplane.Member, macs map[netip.Addr]net.HardwareAddr, vips ...netip.Addr) *dataplane.Engine {
	t.Helper()
	if len(vips) == 0 {
		vips = []netip.Addr{vip}
	}
	e := dataplane.New(conntrack.Config{MaxEntries: 1 << 16, Timeouts: conntrack.DefaultTimeouts()})
	for a, m := range macs {
		if err := e.SetMAC(a, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Configure(dataplane.Config{VirtualMAC: vmacT, InterfaceMAC: ourMAC, VIPs: vipset.New(vips...),
		Members: members}); err != nil {
		t.Fatal(err)
	}
	return e
}

func memberID(t testing.TB, e *dataplane.Engine, a netip.Addr) uint32 {
	t.Helper()
	id, ok := e.MemberID(a)
	if !ok {
		t.Fatalf("no member ID for %v", a)
	}
	return id
}

func memberStatus(t testing.TB, e *dataplane.Engine, a netip.Addr) dataplane.MemberStatus {
	t.Helper()
	for _, m := range e.Members() {
		if m.Addr == a {
			return m
		}
	}
	t.Fatalf("member %v not configured", a)
	return dataplane.MemberStatus{}
}

// tcpSYN is a client's SYN from client1:sport to the VIP's port 25, with a payload.
func tcpSYN(t testing.TB, sport uint16) []byte {
	t.Helper()
	return tcpSegment(t, sport, true, false, "EHLO example.net\r\n")
}

// tcpSegment is a TCP segment from client1:sport to the VIP's port 25 with SYN or ACK set and
// payload as its data.
func tcpSegment(t testing.TB, sport uint16, syn, ack bool, payload string) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: vmacT, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: client1.AsSlice(), DstIP: vip.AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: 25, SYN: syn, ACK: ack, Window: 1000}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

type arpSpec struct {
	op              uint16
	ethDst, ethSrc  net.HardwareAddr
	senderHW, tgtHW net.HardwareAddr
	senderIP, tgtIP netip.Addr
}

func arpFrame(t testing.TB, s arpSpec) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: s.ethSrc, DstMAC: s.ethDst, EthernetType: layers.EthernetTypeARP}
	a := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6,
		ProtAddressSize: 4, Operation: s.op, SourceHwAddress: s.senderHW, SourceProtAddress: s.senderIP.AsSlice(),
		DstHwAddress: s.tgtHW, DstProtAddress: s.tgtIP.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, eth, a); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// arpWhoHas is a client's broadcast ARP request for target.
func arpWhoHas(t testing.TB, target netip.Addr) []byte {
	return arpFrame(t, arpSpec{op: layers.ARPRequest, ethDst: bcastMAC, ethSrc: clientMAC, senderHW: clientMAC,
		senderIP: client1, tgtHW: zeroMAC, tgtIP: target})
}

// arpClaim is a gratuitous ARP reply from another host (Ethernet source ethSrc) claiming ip for mac.
func arpClaim(t testing.TB, ethSrc, mac net.HardwareAddr, ip netip.Addr) []byte {
	return arpFrame(t, arpSpec{op: layers.ARPReply, ethDst: bcastMAC, ethSrc: ethSrc, senderHW: mac,
		senderIP: ip, tgtHW: bcastMAC, tgtIP: ip})
}

// wire puts a virtio_net_hdr in front of an Ethernet frame, as a PACKET_VNET_HDR ring hands it over.
func wire(hdr, frame []byte) []byte {
	if hdr == nil {
		hdr = make([]byte, afpacket.VnetHdrLen)
	}
	return append(append([]byte(nil), hdr...), frame...)
}

type decoded struct {
	vnet []byte
	eth  *layers.Ethernet
	arp  *layers.ARP
	ip   *layers.IPv4
	tcp  *layers.TCP
}

// decode parses a sent buffer (virtio_net_hdr + Ethernet frame).
func decode(t testing.TB, b []byte) decoded {
	t.Helper()
	if len(b) < afpacket.VnetHdrLen+14 {
		t.Fatalf("sent buffer of %d bytes: no room for virtio_net_hdr and Ethernet header", len(b))
	}
	p := gopacket.NewPacket(b[afpacket.VnetHdrLen:], layers.LayerTypeEthernet, gopacket.Default)
	d := decoded{vnet: b[:afpacket.VnetHdrLen]}
	if l, ok := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); ok {
		d.eth = l
	} else {
		t.Fatalf("sent buffer is not Ethernet: %x", b)
	}
	d.arp, _ = p.Layer(layers.LayerTypeARP).(*layers.ARP)
	d.ip, _ = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	d.tcp, _ = p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	return d
}

func isARP(b []byte) bool {
	return len(b) >= afpacket.VnetHdrLen+14 &&
		b[afpacket.VnetHdrLen+12] == 0x08 && b[afpacket.VnetHdrLen+13] == 0x06
}

func onlyARP(bs [][]byte) (out [][]byte) {
	for _, b := range bs {
		if isARP(b) {
			out = append(out, b)
		}
	}
	return out
}

func onlyIPv4(bs [][]byte) (out [][]byte) {
	for _, b := range bs {
		if !isARP(b) {
			out = append(out, b)
		}
	}
	return out
}

// ---- fakes ----

// fakeTx is a TxSocket that records (copies of) every buffer it sent.
type fakeTx struct {
	mu          sync.Mutex
	sent        [][]byte // everything that went out, in order (Send and SendBatch)
	sendTried   [][]byte // every buffer given to Send, refused or not
	sendCalls   int
	batchCalls  int
	closes      int
	refuse      func(b []byte) error // Send's error for b (nil: sent)
	batchFailAt int                  // SendBatch sends frames[:k] then fails with errBatch; <0: never
}

func newFakeTx() *fakeTx { return &fakeTx{batchFailAt: -1} }

func (f *fakeTx) Send(b []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sendCalls++
	f.sendTried = append(f.sendTried, bytes.Clone(b))
	if f.refuse != nil {
		if err := f.refuse(b); err != nil {
			return err
		}
	}
	f.sent = append(f.sent, bytes.Clone(b))
	return nil
}

func (f *fakeTx) SendBatch(frames [][]byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batchCalls++
	for i, b := range frames {
		if i == f.batchFailAt {
			return i, errBatch
		}
		f.sent = append(f.sent, bytes.Clone(b))
	}
	return len(frames), nil
}

func (f *fakeTx) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	return nil
}

func (f *fakeTx) setRefuse(fn func([]byte) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = fn
}

func (f *fakeTx) setBatchFailAt(k int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batchFailAt = k
}

func (f *fakeTx) sentFrames() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.sent...)
}

func (f *fakeTx) triedSends() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.sendTried...)
}

func (f *fakeTx) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent, f.sendTried = nil, nil
}

func (f *fakeTx) closeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closes
}

// rxEntry is one frame the fake ring holds, with the metadata the kernel would set.
type rxEntry struct {
	wire      []byte
	pktType   uint8
	truncated bool
}

// fakeRx is an RxSocket fed from a queue: ReceiveBlocks hands every queued frame to fn, calls
// done, and blocks while the queue is empty until more frames come, Close (then it returns
// afpacket.ErrClosed) or an injected error.
type fakeRx struct {
	*fakeTx
	rmu      sync.Mutex
	cond     *sync.Cond
	queue    []rxEntry
	closed   bool
	recvErr  error
	handled  int // frames handed to fn whose done has run
	blocks   int // ReceiveBlocks calls that handed frames over
	prefetch func([]byte)
	fetched  int
	joined   []string // JoinMulticast's groups
}

func newFakeRx() *fakeRx {
	r := &fakeRx{fakeTx: newFakeTx()}
	r.cond = sync.NewCond(&r.rmu)
	return r
}

func (r *fakeRx) push(wires ...[]byte) {
	for _, w := range wires {
		r.pushEntry(rxEntry{wire: w, pktType: unix.PACKET_OTHERHOST})
	}
}

func (r *fakeRx) pushEntry(e rxEntry) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	e.wire = bytes.Clone(e.wire) // the worker rewrites frames in place, as in the ring
	r.queue = append(r.queue, e)
	r.cond.Broadcast()
}

// fail makes the next (and every later) ReceiveBlocks return err.
func (r *fakeRx) fail(err error) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.recvErr = err
	r.cond.Broadcast()
}

func (r *fakeRx) ReceiveBlocks(fn func(*afpacket.Frame), done func()) (int, error) {
	r.rmu.Lock()
	for len(r.queue) == 0 && !r.closed && r.recvErr == nil {
		r.cond.Wait()
	}
	if r.closed {
		r.rmu.Unlock()
		return 0, afpacket.ErrClosed
	}
	if r.recvErr != nil {
		err := r.recvErr
		r.rmu.Unlock()
		return 0, err
	}
	q := r.queue
	r.queue = nil
	pf := r.prefetch
	r.rmu.Unlock()
	for _, e := range q {
		if pf != nil {
			pf(e.wire[afpacket.VnetHdrLen:])
		}
		f := afpacket.FrameOf(e.wire)
		f.PktType, f.Truncated = e.pktType, e.truncated
		fn(f)
	}
	if done != nil {
		done()
	}
	r.rmu.Lock()
	r.handled += len(q)
	r.blocks++
	if pf != nil {
		r.fetched += len(q)
	}
	r.cond.Broadcast()
	r.rmu.Unlock()
	return len(q), nil
}

// JoinMulticast records the groups joined.
func (r *fakeRx) JoinMulticast(mac net.HardwareAddr) error {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.joined = append(r.joined, mac.String())
	return nil
}

func (r *fakeRx) SetPrefetch(fn func([]byte)) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.prefetch = fn
}

func (r *fakeRx) Close() error {
	r.fakeTx.Close()
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.closed = true
	r.cond.Broadcast()
	return nil
}

func (r *fakeRx) handledCount() int {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	return r.handled
}

// fakeResolver answers from a map and fails for everything else; it counts calls per address.
type fakeResolver struct {
	mu        sync.Mutex
	macs      map[netip.Addr]net.HardwareAddr
	calls     map[netip.Addr]int
	closes    int
	onResolve func(netip.Addr)
}

func newFakeResolver(macs map[netip.Addr]net.HardwareAddr) *fakeResolver {
	return &fakeResolver{macs: macs, calls: map[netip.Addr]int{}}
}

func (r *fakeResolver) Resolve(ip netip.Addr) (net.HardwareAddr, error) {
	r.mu.Lock()
	r.calls[ip]++
	mac, ok := r.macs[ip]
	hook := r.onResolve
	r.mu.Unlock()
	if hook != nil {
		hook(ip)
	}
	if !ok {
		return nil, fmt.Errorf("fake: %v does not answer ARP", ip)
	}
	return append(net.HardwareAddr(nil), mac...), nil
}

func (r *fakeResolver) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closes++
	return nil
}

func (r *fakeResolver) set(ip netip.Addr, mac net.HardwareAddr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if mac == nil {
		delete(r.macs, ip)
	} else {
		r.macs[ip] = mac
	}
}

func (r *fakeResolver) callCount(ip netip.Addr) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[ip]
}

func (r *fakeResolver) closeCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closes
}

// logRecorder is a slog.Handler keeping every record's message and "member" attribute.
type logRecorder struct {
	mu   sync.Mutex
	recs []string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	s := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "member" {
			s += " member=" + a.Value.String()
		}
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, s)
	return nil
}

func (h *logRecorder) count(substr string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, s := range h.recs {
		if bytes.Contains([]byte(s), []byte(substr)) {
			n++
		}
	}
	return n
}

// waitFor polls cond for up to 2 s (only ever reached when a test fails).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// handleWires runs frames through a worker as one ring wake-up: handle each, then flush.
func handleWires(w *worker, wires ...[]byte) {
	for _, b := range wires {
		f := afpacket.FrameOf(bytes.Clone(b))
		f.PktType = unix.PACKET_OTHERHOST
		w.handle(f)
	}
	w.flush()
}

// installTx makes n send announcements on tx, as Run does with its first worker socket.
func installTx(n *Node, tx TxSocket) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.tx = tx
}

// firstBurst returns the time the first pending announcement burst is scheduled for.
func firstBurst(t testing.TB, n *Node) time.Time {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.bursts) == 0 {
		t.Fatal("no announcement burst scheduled")
	}
	return n.bursts[0]
}

// ---- 1. forwarding through Run ----

// TestRunForwards sends SYNs through Run: remote flows leave on the worker's socket with only
// the Ethernet addresses rewritten (the IP destination stays the VIP, the virtio_net_hdr is
// passed back), local flows go to lo with both MACs zeroed, the counters add up, and cancelling
// ctx makes Run return nil with every socket closed.
func TestRunForwards(t *testing.T) {
	eng := newEngine(t, allMembers(), knownMACs())
	res := newFakeResolver(knownMACs())
	n := New(Config{Engine: eng})
	n.SetActive(true)
	rx, lo := newFakeRx(), newFakeTx()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- n.Run(ctx, Sockets{Workers: []RxSocket{rx}, Lo: lo, ARP: res}) }()

	const flows = 100
	in := map[uint16][]byte{}
	for i := 0; i < flows; i++ {
		port := uint16(20000 + i)
		in[port] = tcpSYN(t, port)
		rx.push(wire(vnetHdrT, in[port]))
	}
	waitFor(t, "every frame handled", func() bool { return rx.handledCount() == flows })
	// Run announces at once on Workers[0] since the engine is active.
	waitFor(t, "the first announcement burst", func() bool { return len(onlyARP(rx.sentFrames())) >= 2 })
	waitFor(t, "the first resolution", func() bool { return res.callCount(f2Addr) > 0 && res.callCount(f3Addr) > 0 })
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if rx.closeCount() == 0 || lo.closeCount() == 0 || res.closeCount() == 0 {
		t.Errorf("sockets not all closed: rx %d, lo %d, resolver %d", rx.closeCount(), lo.closeCount(), res.closeCount())
	}
	if got := res.callCount(f1Addr); got != 0 {
		t.Errorf("the local member was resolved %d times", got)
	}
	rx.rmu.Lock()
	fetched := rx.fetched
	rx.rmu.Unlock()
	if fetched != flows {
		t.Errorf("prefetch hook ran for %d frames, want %d (worker must install Engine.Prefetch)", fetched, flows)
	}

	perMAC := map[string]int{}
	fwd := onlyIPv4(rx.sentFrames())
	for _, b := range fwd {
		d := decode(t, b)
		if d.tcp == nil || d.ip == nil {
			t.Fatalf("forwarded frame is not TCP/IPv4: %x", b)
		}
		orig := in[uint16(d.tcp.SrcPort)]
		if orig == nil {
			t.Fatalf("forwarded frame from unknown port %d", d.tcp.SrcPort)
		}
		if !bytes.Equal(d.vnet, vnetHdrT) {
			t.Errorf("virtio_net_hdr %x, want %x passed back unchanged", d.vnet, vnetHdrT)
		}
		if !bytes.Equal(d.eth.SrcMAC, ourMAC) {
			t.Errorf("forwarded source MAC %v, want the interface MAC %v", d.eth.SrcMAC, ourMAC)
		}
		if !bytes.Equal(d.eth.DstMAC, f2MAC) && !bytes.Equal(d.eth.DstMAC, f3MAC) {
			t.Errorf("forwarded destination MAC %v is no remote member's", d.eth.DstMAC)
		}
		if !d.ip.DstIP.Equal(vip.AsSlice()) {
			t.Errorf("IP destination %v, want the VIP %v", d.ip.DstIP, vip)
		}
		if body := b[afpacket.VnetHdrLen+12:]; !bytes.Equal(body, orig[12:]) {
			t.Errorf("bytes after the Ethernet addresses changed:\n got %x\nwant %x", body, orig[12:])
		}
		perMAC[d.eth.DstMAC.String()]++
	}
	locals := lo.sentFrames()
	for _, b := range locals {
		d := decode(t, b)
		if d.tcp == nil {
			t.Fatalf("local frame is not TCP: %x", b)
		}
		orig := in[uint16(d.tcp.SrcPort)]
		if !bytes.Equal(b[afpacket.VnetHdrLen:afpacket.VnetHdrLen+12], make([]byte, 12)) {
			t.Errorf("local frame's MACs %v -> %v, want both zero (lo drops OTHERHOST)", d.eth.SrcMAC, d.eth.DstMAC)
		}
		if !bytes.Equal(d.vnet, vnetHdrT) {
			t.Errorf("lo virtio_net_hdr %x, want %x", d.vnet, vnetHdrT)
		}
		if !bytes.Equal(b[afpacket.VnetHdrLen+12:], orig[12:]) {
			t.Error("local frame: bytes after the Ethernet addresses changed")
		}
	}
	if len(onlyARP(locals)) != 0 {
		t.Error("ARP frames sent on lo")
	}
	if len(fwd) == 0 || len(locals) == 0 || len(fwd)+len(locals) != flows {
		t.Fatalf("%d forwarded + %d local, want both non-zero and %d in all", len(fwd), len(locals), flows)
	}

	st := n.Stats()
	if st.Verdicts["forwarded"] != uint64(len(fwd)) || st.Verdicts["local"] != uint64(len(locals)) {
		t.Errorf("verdicts %v, want forwarded %d local %d", st.Verdicts, len(fwd), len(locals))
	}
	if st.NewFlows != flows {
		t.Errorf("new flows %d, want %d", st.NewFlows, flows)
	}
	flen := uint64(len(in[20000]))
	for _, c := range []struct {
		addr netip.Addr
		want int
	}{{f1Addr, len(locals)}, {f2Addr, perMAC[f2MAC.String()]}, {f3Addr, perMAC[f3MAC.String()]}} {
		id := memberID(t, eng, c.addr)
		if st.MemberPackets[id] != uint64(c.want) || st.MemberBytes[id] != uint64(c.want)*flen {
			t.Errorf("member %v: %d packets %d bytes, want %d packets %d bytes", c.addr,
				st.MemberPackets[id], st.MemberBytes[id], c.want, uint64(c.want)*flen)
		}
	}
	if st.ARPAnnounced < 2 {
		t.Errorf("ARPAnnounced %d, want at least the first burst (2)", st.ARPAnnounced)
	}
	n.mu.Lock()
	tx := n.tx
	n.mu.Unlock()
	if tx != nil {
		t.Error("announcement socket still installed after Run returned")
	}
}

// TestWorkerSkipsOutgoingAndTruncated: frames of our own (PACKET_OUTGOING) are never
// re-forwarded, frames the ring cut short are dropped as capture_truncated, not forwarded.
func TestWorkerSkipsOutgoingAndTruncated(t *testing.T) {
	eng := newEngine(t, []dataplane.Member{{Addr: f2Addr, Weight: 1}}, knownMACs())
	n := New(Config{Engine: eng})
	n.SetActive(true)
	rx := newFakeRx()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- n.Run(ctx, Sockets{Workers: []RxSocket{rx}, Lo: newFakeTx()}) }()
	rx.pushEntry(rxEntry{wire: wire(nil, tcpSYN(t, 1000)), pktType: unix.PACKET_OUTGOING})
	rx.pushEntry(rxEntry{wire: wire(nil, tcpSYN(t, 1001)), pktType: unix.PACKET_OTHERHOST, truncated: true})
	rx.pushEntry(rxEntry{wire: wire(nil, tcpSYN(t, 1002)), pktType: unix.PACKET_OTHERHOST})
	waitFor(t, "frames handled", func() bool { return rx.handledCount() == 3 })
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	fwd := onlyIPv4(rx.sentFrames())
	if len(fwd) != 1 || uint16(decode(t, fwd[0]).tcp.SrcPort) != 1002 {
		t.Fatalf("forwarded %d frames, want only the one from port 1002", len(fwd))
	}
	st := n.Stats()
	if st.Drops["capture_truncated"] != 1 || st.Verdicts["forwarded"] != 1 {
		t.Errorf("drops %v verdicts %v, want 1 capture_truncated and 1 forwarded", st.Drops, st.Verdicts)
	}
}

// ---- 2. ARP answers ----

// TestARPAnsweredWhileActive: a broadcast who-has for the VIP is answered on the worker's socket
// with the virtual MAC (ARP sender and Ethernet source) while active; nothing is sent on standby
// or for addresses that are not VIPs; a refused reply counts as tx_error.
func TestARPAnsweredWhileActive(t *testing.T) {
	eng := newEngine(t, allMembers(), knownMACs())
	n := New(Config{Engine: eng})
	n.SetActive(true)
	rx, lo := newFakeRx(), newFakeTx()
	w := newWorker(n, rx, lo, n.counters[0])

	handleWires(w, wire(nil, arpWhoHas(t, vip)))
	sent := rx.sentFrames()
	if len(sent) != 1 {
		t.Fatalf("%d frames sent for one ARP request, want 1 reply", len(sent))
	}
	d := decode(t, sent[0])
	if !bytes.Equal(d.vnet, make([]byte, afpacket.VnetHdrLen)) {
		t.Errorf("reply's virtio_net_hdr %x, want zero", d.vnet)
	}
	if d.arp == nil || d.arp.Operation != layers.ARPReply {
		t.Fatalf("sent frame is not an ARP reply: %x", sent[0])
	}
	if !bytes.Equal(d.eth.SrcMAC, vmacT) || !bytes.Equal(d.eth.DstMAC, clientMAC) {
		t.Errorf("reply Ethernet %v -> %v, want %v -> %v", d.eth.SrcMAC, d.eth.DstMAC, vmacT, clientMAC)
	}
	if !bytes.Equal(d.arp.SourceHwAddress, vmacT) || !bytes.Equal(d.arp.SourceProtAddress, vip.AsSlice()) {
		t.Errorf("reply says %v is at %v, want %v at %v", net.IP(d.arp.SourceProtAddress),
			net.HardwareAddr(d.arp.SourceHwAddress), vip, vmacT)
	}
	if !bytes.Equal(d.arp.DstHwAddress, clientMAC) || !bytes.Equal(d.arp.DstProtAddress, client1.AsSlice()) {
		t.Errorf("reply target %v/%v, want the requester %v/%v", net.HardwareAddr(d.arp.DstHwAddress),
			net.IP(d.arp.DstProtAddress), clientMAC, client1)
	}
	if len(lo.sentFrames()) != 0 {
		t.Error("ARP reply went to lo")
	}
	if got := n.Stats().Verdicts["arp_reply"]; got != 1 {
		t.Errorf("arp_reply verdicts %d, want 1", got)
	}

	rx.reset()
	handleWires(w, wire(nil, arpWhoHas(t, f2Addr)))
	if len(rx.sentFrames()) != 0 {
		t.Error("answered ARP for an address that is not a VIP")
	}

	n.SetActive(false)
	handleWires(w, wire(nil, arpWhoHas(t, vip)))
	if len(rx.sentFrames()) != 0 {
		t.Error("answered ARP for the VIP while standby")
	}
	if got := n.Stats().Verdicts["arp_reply"]; got != 1 {
		t.Errorf("arp_reply verdicts %d after standby request, want still 1", got)
	}

	n.SetActive(true)
	rx.setRefuse(func([]byte) error { return errLinkDown })
	handleWires(w, wire(nil, arpWhoHas(t, vip)))
	st := n.Stats()
	if st.Drops["tx_error"] != 1 || st.Verdicts["arp_reply"] != 1 {
		t.Errorf("refused reply: drops %v arp_reply %d, want 1 tx_error and no new arp_reply", st.Drops,
			st.Verdicts["arp_reply"])
	}
}

// ---- 3. announcements on a synthetic clock ----

// checkAnnouncements asserts that frames are one gratuitous ARP request and one reply per VIP,
// from and for the virtual MAC.
func checkAnnouncements(t *testing.T, frames [][]byte, vips ...netip.Addr) {
	t.Helper()
	if len(frames) != 2*len(vips) {
		t.Fatalf("%d announcement frames, want %d (request and reply per VIP)", len(frames), 2*len(vips))
	}
	type key struct {
		ip string
		op uint16
	}
	seen := map[key]bool{}
	for _, b := range frames {
		d := decode(t, b)
		if d.arp == nil {
			t.Fatalf("announcement is not ARP: %x", b)
		}
		if !bytes.Equal(d.vnet, make([]byte, afpacket.VnetHdrLen)) {
			t.Errorf("announcement virtio_net_hdr %x, want zero", d.vnet)
		}
		if !bytes.Equal(d.eth.SrcMAC, vmacT) || !bytes.Equal(d.eth.DstMAC, bcastMAC) {
			t.Errorf("announcement Ethernet %v -> %v, want %v -> broadcast", d.eth.SrcMAC, d.eth.DstMAC, vmacT)
		}
		if !bytes.Equal(d.arp.SourceHwAddress, vmacT) {
			t.Errorf("announcement sender MAC %v, want %v", net.HardwareAddr(d.arp.SourceHwAddress), vmacT)
		}
		if !bytes.Equal(d.arp.SourceProtAddress, d.arp.DstProtAddress) {
			t.Errorf("gratuitous ARP with sender IP %v != target IP %v", net.IP(d.arp.SourceProtAddress),
				net.IP(d.arp.DstProtAddress))
		}
		seen[key{net.IP(d.arp.SourceProtAddress).String(), d.arp.Operation}] = true
	}
	for _, v := range vips {
		if !seen[key{v.String(), layers.ARPRequest}] || !seen[key{v.String(), layers.ARPReply}] {
			t.Errorf("VIP %v: request %v reply %v, want both", v, seen[key{v.String(), layers.ARPRequest}],
				seen[key{v.String(), layers.ARPReply}])
		}
	}
}

func TestAnnouncementSchedule(t *testing.T) {
	eng := newEngine(t, allMembers(), knownMACs(), vip, vip2)
	n := New(Config{Engine: eng})
	tx := newFakeTx()
	installTx(n, tx)
	before := time.Now()
	n.SetActive(true)
	after := time.Now()
	t0 := firstBurst(t, n)
	if t0.Before(before) || t0.After(after) {
		t.Fatalf("first burst at %v, want when SetActive ran (%v..%v)", t0, before, after)
	}
	const perBurst = 4 // request and reply for each of two VIPs
	total := 0
	step := func(at time.Duration, want int) {
		t.Helper()
		tx.reset()
		n.Tick(t0.Add(at))
		got := tx.sentFrames()
		if len(got) != want {
			t.Fatalf("Tick(t0+%v) sent %d frames, want %d", at, len(got), want)
		}
		if want > 0 {
			checkAnnouncements(t, got, vip, vip2)
		}
		total += want
	}
	ms := time.Millisecond
	step(0, perBurst)
	step(40*ms, 0)
	step(50*ms, perBurst)
	step(99*ms, 0)
	step(100*ms, perBurst)
	step(150*ms, 0) // announceBurst bursts, no fourth
	step(499*ms, 0)
	step(500*ms, perBurst)
	step(550*ms, perBurst)
	step(600*ms, perBurst)
	step(1999*ms, 0)
	step(2000*ms, perBurst)
	step(2050*ms, perBurst)
	step(2100*ms, perBurst)
	step(4999*ms, 0)
	step(5000*ms, perBurst)
	step(5050*ms, perBurst)
	step(5100*ms, perBurst)
	step(6*time.Second, 0)
	step(29999*ms, 0)
	step(30*time.Second, perBurst) // the refresh, 30 s after becoming active
	step(30*time.Second+50*ms, 0)  // a refresh is one burst
	step(59999*ms, 0)
	step(60*time.Second, perBurst) // 30 s after the last refresh
	if got := n.Stats().ARPAnnounced; got != uint64(total) {
		t.Errorf("ARPAnnounced %d, want %d", got, total)
	}
}

// TestAnnouncementLateTick: bursts that are all due at one late tick go out once, not once each.
func TestAnnouncementLateTick(t *testing.T) {
	n := New(Config{Engine: newEngine(t, allMembers(), knownMACs())})
	tx := newFakeTx()
	installTx(n, tx)
	n.SetActive(true)
	t0 := firstBurst(t, n)
	n.Tick(t0.Add(700 * time.Millisecond)) // six bursts due
	if got := len(tx.sentFrames()); got != 2 {
		t.Fatalf("a late tick sent %d frames, want one burst (2)", got)
	}
	tx.reset()
	n.Tick(t0.Add(1900 * time.Millisecond))
	if got := len(tx.sentFrames()); got != 0 {
		t.Fatalf("%d frames before the 2 s repeat", got)
	}
	n.Tick(t0.Add(2000 * time.Millisecond))
	if got := len(tx.sentFrames()); got != 2 {
		t.Fatalf("2 s repeat sent %d frames, want 2", got)
	}
}

// TestAnnouncementRetry: announcements the link refuses are retried 1 s later (and again while
// it keeps refusing), not at every tick; a partly refused burst is retried too; the counter
// counts only frames that went out.
func TestAnnouncementRetry(t *testing.T) {
	n := New(Config{Engine: newEngine(t, allMembers(), knownMACs())})
	tx := newFakeTx()
	installTx(n, tx)
	n.SetActive(true)
	t0 := firstBurst(t, n)
	for _, d := range []time.Duration{0, 50, 100, 500, 550, 600, 2000, 2050, 2100, 5000, 5050, 5100} {
		n.Tick(t0.Add(d * time.Millisecond))
	}
	if got := n.Stats().ARPAnnounced; got != 24 {
		t.Fatalf("ARPAnnounced %d after the initial bursts, want 24", got)
	}
	tx.reset()
	tx.setRefuse(func([]byte) error { return errLinkDown })
	tries := func() int { return len(tx.triedSends()) }
	sec := time.Second
	n.Tick(t0.Add(30 * sec)) // refresh: refused
	if tries() != 2 {
		t.Fatalf("refresh tried %d sends, want 2", tries())
	}
	n.Tick(t0.Add(30*sec + 10*time.Millisecond))
	n.Tick(t0.Add(30*sec + 500*time.Millisecond))
	n.Tick(t0.Add(31*sec - time.Millisecond))
	if tries() != 2 {
		t.Fatalf("%d sends tried before the retry is due (1 s), want 2", tries())
	}
	n.Tick(t0.Add(31 * sec)) // retry: refused again
	if tries() != 4 {
		t.Fatalf("retry at +1 s tried %d sends in all, want 4", tries())
	}
	// Only the first frame is refused now: a partial burst is retried as well.
	var refused atomic.Bool
	tx.setRefuse(func([]byte) error {
		if refused.CompareAndSwap(false, true) {
			return errLinkDown
		}
		return nil
	})
	n.Tick(t0.Add(31*sec + 999*time.Millisecond))
	if tries() != 4 {
		t.Fatalf("second retry came early")
	}
	n.Tick(t0.Add(32 * sec))
	if tries() != 6 || len(tx.sentFrames()) != 1 {
		t.Fatalf("second retry: %d tried, %d sent; want 6 tried, 1 sent", tries(), len(tx.sentFrames()))
	}
	n.Tick(t0.Add(33 * sec))
	if tries() != 8 || len(tx.sentFrames()) != 3 {
		t.Fatalf("third retry: %d tried, %d sent; want 8 tried, 3 sent", tries(), len(tx.sentFrames()))
	}
	n.Tick(t0.Add(34 * sec))
	n.Tick(t0.Add(59 * sec))
	if tries() != 8 {
		t.Fatalf("sent again although the last retry succeeded")
	}
	n.Tick(t0.Add(60 * sec)) // next refresh: 30 s after the refused one
	if tries() != 10 {
		t.Fatalf("refresh 30 s after the previous one tried %d sends in all, want 10", tries())
	}
	if got := n.Stats().ARPAnnounced; got != 24+1+2+2 {
		t.Errorf("ARPAnnounced %d, want %d (refused frames not counted)", got, 24+1+2+2)
	}
}

// TestAnnouncementStandby: Announce on standby schedules nothing, neither does SetActive(false)
// leave bursts that a later tick would send, and a standby node never refreshes.
func TestAnnouncementStandby(t *testing.T) {
	n := New(Config{Engine: newEngine(t, allMembers(), knownMACs())})
	tx := newFakeTx()
	installTx(n, tx)
	n.Announce()
	n.mu.Lock()
	pending := len(n.bursts)
	n.mu.Unlock()
	if pending != 0 {
		t.Fatalf("Announce on standby scheduled %d bursts", pending)
	}
	now := time.Now()
	for d := time.Duration(0); d <= 70*time.Second; d += 50 * time.Millisecond {
		n.Tick(now.Add(d))
	}
	if got := len(tx.sentFrames()); got != 0 {
		t.Fatalf("standby node sent %d frames", got)
	}

	n.SetActive(true)
	t0 := firstBurst(t, n)
	n.SetActive(false)
	for d := time.Duration(0); d <= 70*time.Second; d += 50 * time.Millisecond {
		n.Tick(t0.Add(d))
	}
	if got := len(tx.sentFrames()); got != 0 {
		t.Fatalf("node that went standby sent %d announcement frames", got)
	}
	if got := n.Stats().ARPAnnounced; got != 0 {
		t.Errorf("ARPAnnounced %d, want 0", got)
	}

	// Announce while active does reschedule (a VIP change).
	n.SetActive(true)
	t1 := firstBurst(t, n)
	for _, d := range []time.Duration{0, 50, 100, 500, 550, 600, 2000, 2050, 2100, 5000, 5050, 5100} {
		n.Tick(t1.Add(d * time.Millisecond))
	}
	tx.reset()
	n.Announce()
	t2 := firstBurst(t, n)
	n.Tick(t2)
	if got := len(tx.sentFrames()); got != 2 {
		t.Errorf("Announce while active: %d frames at once, want 2", got)
	}
}

// ---- 4. Release ----

func TestRelease(t *testing.T) {
	eng := newEngine(t, []dataplane.Member{{Addr: f2Addr, Weight: 1}}, knownMACs())
	n := New(Config{Engine: eng})
	rx, lo := newFakeRx(), newFakeTx()
	installTx(n, rx)
	w := newWorker(n, rx, lo, n.counters[0])
	n.SetActive(true)
	t0 := firstBurst(t, n)
	n.Tick(t0)
	rx.reset()

	now := t0.Add(10 * time.Millisecond)
	const grace = 2 * time.Second
	n.Release(now, grace)
	handleWires(w, wire(nil, arpWhoHas(t, vip)))
	if got := len(rx.sentFrames()); got != 0 {
		t.Fatalf("released node answered ARP (%d frames)", got)
	}
	handleWires(w, wire(nil, tcpSYN(t, 3000)))
	if got := len(rx.sentFrames()); got != 1 {
		t.Fatalf("draining node sent %d frames for a data frame, want it forwarded", got)
	}
	n.Tick(t0.Add(500 * time.Millisecond)) // a repeat burst would be due: Release cancelled it
	n.Tick(now.Add(grace - time.Millisecond))
	if !eng.Active() {
		t.Fatal("engine inactive before the grace ended")
	}
	handleWires(w, wire(nil, tcpSYN(t, 3001)))
	if got := len(rx.sentFrames()); got != 2 {
		t.Fatalf("%d frames sent, want 2 data frames forwarded and no announcement", got)
	}
	n.Tick(now.Add(grace))
	if eng.Active() {
		t.Fatal("engine still active after the grace")
	}
	handleWires(w, wire(nil, tcpSYN(t, 3000)), wire(nil, arpWhoHas(t, vip)))
	n.Tick(now.Add(grace + 40*time.Second)) // no refresh either
	if got := len(rx.sentFrames()); got != 2 {
		t.Fatalf("%d frames sent after the release ended, want none more", got)
	}
	st := n.Stats()
	if st.Drops["inactive"] != 1 || st.Verdicts["forwarded"] != 2 || st.Verdicts["arp_reply"] != 0 {
		t.Errorf("drops %v verdicts %v, want 1 inactive, 2 forwarded, no arp_reply", st.Drops, st.Verdicts)
	}
}

// TestReleaseCancelledBySetActive: SetActive(true) before the deadline keeps the node active
// and answering ARP.
func TestReleaseCancelledBySetActive(t *testing.T) {
	eng := newEngine(t, []dataplane.Member{{Addr: f2Addr, Weight: 1}}, knownMACs())
	n := New(Config{Engine: eng})
	rx := newFakeRx()
	w := newWorker(n, rx, newFakeTx(), n.counters[0])
	n.SetActive(true)
	now := time.Now()
	n.Release(now, time.Second)
	n.SetActive(true)
	n.Tick(now.Add(time.Second))
	n.Tick(now.Add(5 * time.Second))
	if !eng.Active() {
		t.Fatal("SetActive(true) did not cancel the Release")
	}
	handleWires(w, wire(nil, arpWhoHas(t, vip)), wire(nil, tcpSYN(t, 4000)))
	if got := n.Stats(); got.Verdicts["arp_reply"] != 1 || got.Verdicts["forwarded"] != 1 {
		t.Errorf("verdicts %v, want the ARP request answered and the frame forwarded", got.Verdicts)
	}
	// SetActive(false) also ends it (at once).
	n.Release(now, time.Hour)
	n.SetActive(false)
	if eng.Active() {
		t.Error("SetActive(false) during a Release left the engine active")
	}
}

// TestSetActiveAfterReleaseAnnounces: a node that released its VIPs (another node announced
// the virtual MAC meanwhile) and is made active again before the grace ends must announce
// again, or switches keep sending the virtual MAC's frames to the other node's port until
// the next 30 s refresh. Node.SetActive only schedules announcements when the engine was
// inactive, and a draining engine still reports Active, while Release dropped the pending
// bursts.
func TestSetActiveAfterReleaseAnnounces(t *testing.T) {
	n := New(Config{Engine: newEngine(t, allMembers(), knownMACs())})
	tx := newFakeTx()
	installTx(n, tx)
	n.SetActive(true)
	t0 := firstBurst(t, n)
	for _, d := range []time.Duration{0, 50, 100, 500, 550, 600, 2000, 2050, 2100, 5000, 5050, 5100} {
		n.Tick(t0.Add(d * time.Millisecond))
	}
	n.Release(t0.Add(6*time.Second), 2*time.Second)
	tx.reset()
	n.SetActive(true) // the hand-over is undone
	n.Tick(time.Now())
	if got := len(tx.sentFrames()); got == 0 {
		t.Fatal("no gratuitous ARP after SetActive(true) cancelled a Release: the switch still " +
			"sends the virtual MAC to the node that took over")
	}
}

// ---- 5. MAC resolution ----

func TestResolveOnce(t *testing.T) {
	members := []dataplane.Member{{Addr: f1Addr, Weight: 1, Local: true}, {Addr: f2Addr, Weight: 1},
		{Addr: f3Addr, Weight: 1}, {Addr: f4Addr, Weight: 1}}
	eng := newEngine(t, members, nil)
	logs := &logRecorder{}
	n := New(Config{Engine: eng, Log: slog.New(logs)})
	r := newFakeResolver(map[netip.Addr]net.HardwareAddr{f2Addr: f2MAC, f3Addr: f3MAC})
	ctx := context.Background()
	for _, a := range []netip.Addr{f2Addr, f3Addr, f4Addr} {
		if m := memberStatus(t, eng, a); m.Ready || m.MAC != nil {
			t.Fatalf("%v ready before any resolution: %+v", a, m)
		}
	}
	t0 := time.Now()
	at := func(d time.Duration) { n.ResolveOnce(ctx, r, t0.Add(d)) }
	calls := func(want2, want3, want4 int) {
		t.Helper()
		if g2, g3, g4 := r.callCount(f2Addr), r.callCount(f3Addr), r.callCount(f4Addr); g2 != want2 || g3 != want3 || g4 != want4 {
			t.Fatalf("resolutions f2 %d f3 %d f4 %d, want %d %d %d", g2, g3, g4, want2, want3, want4)
		}
		if g := r.callCount(f1Addr); g != 0 {
			t.Fatalf("the local member was resolved %d times", g)
		}
	}
	unresolvedLog := "no flows to it until it answers ARP member=" + f4Addr.String()
	lostLog := "no longer resolves; no new flows to it member=" + f3Addr.String()

	at(0)
	calls(1, 1, 1)
	for _, c := range []struct {
		a   netip.Addr
		mac net.HardwareAddr
	}{{f2Addr, f2MAC}, {f3Addr, f3MAC}} {
		if m := memberStatus(t, eng, c.a); !m.Ready || !bytes.Equal(m.MAC, c.mac) {
			t.Errorf("%v after resolution: ready %v MAC %v, want ready with %v", c.a, m.Ready, m.MAC, c.mac)
		}
	}
	if m := memberStatus(t, eng, f4Addr); m.Ready || m.MAC != nil {
		t.Errorf("unresolvable f4 ready %v MAC %v", m.Ready, m.MAC)
	}
	if m := memberStatus(t, eng, f1Addr); !m.Ready {
		t.Error("local member not ready")
	}

	at(500 * time.Millisecond)
	calls(1, 1, 1) // nothing due: the retry is 1 s away
	at(time.Second)
	calls(1, 1, 2)
	if logs.count(unresolvedLog) != 0 {
		t.Fatal("f4 given up after 2 failures")
	}
	at(1500 * time.Millisecond)
	calls(1, 1, 2)
	at(2 * time.Second)
	calls(1, 1, 3)
	if logs.count(unresolvedLog) != 1 {
		t.Fatalf("f4 not marked unresolved after the third failure (logs %q)", logs.recs)
	}
	at(3 * time.Second) // retries go on, every second
	calls(1, 1, 4)
	if logs.count(unresolvedLog) != 1 {
		t.Fatal("f4 marked unresolved again after the fourth failure")
	}

	// f3 stops answering.
	r.set(f3Addr, nil)
	at(9999 * time.Millisecond)
	calls(1, 1, 5) // the resolved ones are not asked again before 10 s
	at(10 * time.Second)
	calls(2, 2, 5) // f4's retry is due at 10.999 s
	if m := memberStatus(t, eng, f3Addr); !m.Ready || !bytes.Equal(m.MAC, f3MAC) {
		t.Fatalf("f3 lost its MAC after one failure: %+v", m)
	}
	at(11 * time.Second)
	calls(2, 3, 6)
	if m := memberStatus(t, eng, f3Addr); !m.Ready || !bytes.Equal(m.MAC, f3MAC) {
		t.Fatalf("f3 lost its MAC after two failures: %+v", m)
	}
	if logs.count(lostLog) != 0 {
		t.Fatal("f3 given up after two failures")
	}
	at(12 * time.Second)
	calls(2, 4, 7)
	if m := memberStatus(t, eng, f3Addr); m.Ready || m.MAC != nil {
		t.Fatalf("f3 after three failures: ready %v MAC %v, want unresolved", m.Ready, m.MAC)
	}
	if logs.count(lostLog) != 1 {
		t.Errorf("no warning that f3 no longer resolves (logs %q)", logs.recs)
	}
	// It answers again: ready at the next retry (1 s), then refreshed every 10 s.
	r.set(f3Addr, f3MAC)
	at(13 * time.Second)
	calls(2, 5, 8)
	if m := memberStatus(t, eng, f3Addr); !m.Ready || !bytes.Equal(m.MAC, f3MAC) {
		t.Fatalf("f3 answers again but is %+v", m)
	}
	if m := memberStatus(t, eng, f2Addr); !m.Ready || !bytes.Equal(m.MAC, f2MAC) {
		t.Fatalf("f2 is %+v", m)
	}
	at(22999 * time.Millisecond)
	calls(3, 5, 9) // f2 refreshed at 20 s, f3 not before 23 s
	at(23 * time.Second)
	calls(3, 6, 9) // f4 next at 23.999 s
}

func TestResolveOnceStopsOnCancel(t *testing.T) {
	members := []dataplane.Member{{Addr: f2Addr, Weight: 1}, {Addr: f3Addr, Weight: 1}, {Addr: f4Addr, Weight: 1}}
	n := New(Config{Engine: newEngine(t, members, nil)})
	r := newFakeResolver(knownMACs())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n.ResolveOnce(ctx, r, time.Now())
	if got := r.callCount(f2Addr) + r.callCount(f3Addr) + r.callCount(f4Addr); got != 0 {
		t.Fatalf("%d resolutions with a cancelled context", got)
	}

	// Cancelled during the first resolution: no further member is asked.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	r.onResolve = func(netip.Addr) { cancel() }
	n.ResolveOnce(ctx, r, time.Now())
	if got := r.callCount(f2Addr) + r.callCount(f3Addr) + r.callCount(f4Addr); got != 1 {
		t.Fatalf("%d resolutions after the context was cancelled during the first, want 1", got)
	}
}

// ---- 6. conflict watch ----

func TestConflictCallback(t *testing.T) {
	eng := newEngine(t, allMembers(), knownMACs())
	type call struct {
		vip netip.Addr
		mac string
	}
	var mu sync.Mutex
	var calls []call
	n := New(Config{Engine: eng, OnConflict: func(v netip.Addr, mac net.HardwareAddr) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, call{v, mac.String()})
	}})
	got := func() []call {
		mu.Lock()
		defer mu.Unlock()
		return append([]call(nil), calls...)
	}
	rx := newFakeRx()
	w := newWorker(n, rx, newFakeTx(), n.counters[0])

	// Standby: another host may own the address; nothing to report.
	handleWires(w, wire(nil, arpClaim(t, otherMAC, otherMAC, vip)))
	if len(got()) != 0 {
		t.Fatal("conflict reported while standby")
	}

	n.SetActive(true)
	handleWires(w, wire(nil, arpClaim(t, otherMAC, otherMAC, vip)))
	if c := got(); len(c) != 1 || c[0] != (call{vip, otherMAC.String()}) {
		t.Fatalf("OnConflict calls %v, want one for %v at %v", c, vip, otherMAC)
	}
	handleWires(w, wire(nil, arpClaim(t, otherMAC, otherMAC, vip)))
	if c := got(); len(c) != 1 {
		t.Fatalf("second conflict within a second: %d calls, want still 1", len(c))
	}
	if st := n.Stats(); st.ARPConflicts != 2 {
		t.Errorf("ARPConflicts %d, want both counted (2)", st.ARPConflicts)
	}
	if len(rx.sentFrames()) != 0 {
		t.Error("a conflicting ARP frame was answered")
	}

	// A second later (pretend): another balancer announcing our virtual MAC (split brain).
	n.mu.Lock()
	n.conflictLog = n.conflictLog.Add(-conflictLogGap)
	n.mu.Unlock()
	handleWires(w, wire(nil, arpClaim(t, otherMAC, vmacT, vip)))
	if c := got(); len(c) != 2 || c[1] != (call{vip, vmacT.String()}) {
		t.Fatalf("OnConflict calls %v, want a second one for %v at %v", c, vip, vmacT)
	}
}

// ---- 7. Run's errors ----

func TestRunErrors(t *testing.T) {
	newNode := func(workers int) *Node {
		n := New(Config{Engine: newEngine(t, allMembers(), knownMACs()), Workers: workers})
		n.SetActive(true)
		return n
	}
	t.Run("no sockets", func(t *testing.T) {
		n := newNode(1)
		if err := n.Run(context.Background(), Sockets{Lo: newFakeTx()}); !errors.Is(err, ErrNoSockets) {
			t.Errorf("Run without worker sockets = %v, want ErrNoSockets", err)
		}
		rx, res := newFakeRx(), newFakeResolver(nil)
		if err := n.Run(context.Background(), Sockets{Workers: []RxSocket{rx}, ARP: res}); !errors.Is(err, ErrNoSockets) {
			t.Errorf("Run without lo = %v, want ErrNoSockets", err)
		}
		if rx.closeCount() == 0 || res.closeCount() == 0 {
			t.Error("Run without lo left the given sockets open")
		}
	})
	t.Run("more worker sockets than workers", func(t *testing.T) {
		// The AF_XDP backend with TCP left to the kernel has more sockets than workers: each
		// runs, with counters of its own that Stats sums while Run adds them.
		n := newNode(1)
		rx1, rx2, lo := newFakeRx(), newFakeRx(), newFakeTx()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- n.Run(ctx, Sockets{Workers: []RxSocket{rx1, rx2}, Lo: lo}) }()
		rx1.push(wire(nil, tcpSYN(t, 5000)))
		rx2.push(wire(nil, tcpSYN(t, 5001)))
		waitFor(t, "both sockets' frames", func() bool {
			st := n.Stats().Verdicts
			return st["forwarded"]+st["local"] == 2
		})
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
		if rx1.closeCount() == 0 || rx2.closeCount() == 0 || lo.closeCount() == 0 {
			t.Error("sockets left open")
		}
	})
	t.Run("worker error", func(t *testing.T) {
		n := newNode(2)
		rx1, rx2, lo, res := newFakeRx(), newFakeRx(), newFakeTx(), newFakeResolver(knownMACs())
		errDown := errors.New("fake: interface went away (ENETDOWN)")
		done := make(chan error, 1)
		go func() {
			done <- n.Run(context.Background(), Sockets{Workers: []RxSocket{rx1, rx2}, Lo: lo, ARP: res})
		}()
		rx2.push(wire(nil, tcpSYN(t, 5000)))
		waitFor(t, "the worker running", func() bool { return rx2.handledCount() == 1 })
		rx2.fail(errDown)
		select {
		case err := <-done:
			if !errors.Is(err, errDown) {
				t.Errorf("Run = %v, want the worker's error", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("Run did not return after a worker failed")
		}
		if rx1.closeCount() == 0 || rx2.closeCount() == 0 || lo.closeCount() == 0 || res.closeCount() == 0 {
			t.Errorf("closed: rx1 %d rx2 %d lo %d resolver %d, want all", rx1.closeCount(), rx2.closeCount(),
				lo.closeCount(), res.closeCount())
		}
		// The node outlives its sockets: Run again on new ones, counters carry over.
		before := n.Stats().Verdicts
		n.mu.Lock()
		n.bursts = n.bursts[:0] // as if the first life's bursts had all gone out long ago
		n.mu.Unlock()
		rx3 := newFakeRx()
		ctx, cancel := context.WithCancel(context.Background())
		go func() { done <- n.Run(ctx, Sockets{Workers: []RxSocket{rx3}, Lo: newFakeTx()}) }()
		rx3.push(wire(nil, tcpSYN(t, 5001)))
		waitFor(t, "the second life's frame", func() bool { return rx3.handledCount() == 1 })
		// New sockets: announced again, the switch may have forgotten the virtual MAC.
		waitFor(t, "re-announcement", func() bool { return len(onlyARP(rx3.sentFrames())) >= 2 })
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("second Run = %v", err)
		}
		after := n.Stats().Verdicts
		if after["forwarded"]+after["local"] != before["forwarded"]+before["local"]+1 {
			t.Errorf("verdicts %v then %v: the counters did not carry over", before, after)
		}
	})
}

// ---- 8. batch send failure ----

func TestBatchSendFailure(t *testing.T) {
	eng := newEngine(t, []dataplane.Member{{Addr: f2Addr, Weight: 1}}, knownMACs())
	n := New(Config{Engine: eng})
	n.SetActive(true)
	rx := newFakeRx()
	w := newWorker(n, rx, newFakeTx(), n.counters[0])
	const k, frames, refusedPort = 2, 6, 6004
	rx.setBatchFailAt(k)
	rx.setRefuse(func(b []byte) error {
		d := gopacket.NewPacket(b[afpacket.VnetHdrLen:], layers.LayerTypeEthernet, gopacket.Default)
		if tcp, ok := d.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && tcp.SrcPort == refusedPort {
			return errBatch
		}
		return nil
	})
	var in [][]byte
	for i := 0; i < frames; i++ {
		in = append(in, wire(nil, tcpSYN(t, uint16(6000+i))))
	}
	handleWires(w, in...)

	ports := func(bs [][]byte) (out []int) {
		for _, b := range bs {
			out = append(out, int(decode(t, b).tcp.SrcPort))
		}
		return out
	}
	// sendmmsg sent frames[:k] and refused frames[k]; the rest go one by one.
	if got, want := fmt.Sprint(ports(rx.triedSends())), fmt.Sprint([]int{6003, 6004, 6005}); got != want {
		t.Errorf("Send called for ports %s, want %s (those after the refused one)", got, want)
	}
	if got, want := fmt.Sprint(ports(rx.sentFrames())), fmt.Sprint([]int{6000, 6001, 6003, 6005}); got != want {
		t.Errorf("frames out: ports %s, want %s", got, want)
	}
	st := n.Stats()
	id := memberID(t, eng, f2Addr)
	if st.Drops["tx_error"] != 2 || st.Verdicts["dropped"] != 2 || st.Verdicts["forwarded"] != 4 || st.MemberPackets[id] != 4 {
		t.Errorf("drops %v verdicts %v member packets %d; want 2 tx_error (the refused frame and the one "+
			"Send refused), 4 forwarded", st.Drops, st.Verdicts, st.MemberPackets[id])
	}

	// The batch's memory is reset: the next wake-up sends only its own frames.
	rx.reset()
	rx.setBatchFailAt(-1)
	handleWires(w, wire(nil, tcpSYN(t, 6000)))
	if got := len(rx.sentFrames()); got != 1 {
		t.Errorf("next batch sent %d frames, want 1", got)
	}
	for i, f := range w.out.frames[:cap(w.out.frames)] {
		if f != nil {
			t.Fatalf("batch slot %d still points into the ring after flush", i)
		}
	}
}

// TestFullBatchSentOnItsSocket: a wake-up with more frames for one socket than a batch holds
// sends each full batch at once, on the right socket (local flows on lo, others on the
// interface), and the rest at flush.
func TestFullBatchSentOnItsSocket(t *testing.T) {
	for _, tc := range []struct {
		name   string
		member dataplane.Member
		local  bool
	}{{"local", dataplane.Member{Addr: f1Addr, Weight: 1, Local: true}, true},
		{"remote", dataplane.Member{Addr: f2Addr, Weight: 1}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			n := New(Config{Engine: newEngine(t, []dataplane.Member{tc.member}, knownMACs())})
			n.SetActive(true)
			rx, lo := newFakeRx(), newFakeTx()
			w := newWorker(n, rx, lo, n.counters[0])
			const frames = 2*maxBatch + 5
			var in [][]byte
			for i := 0; i < frames; i++ {
				in = append(in, wire(nil, tcpSYN(t, uint16(8000+i))))
			}
			handleWires(w, in...)
			want, other := rx.fakeTx, lo
			if tc.local {
				want, other = lo, rx.fakeTx
			}
			if got := len(want.sentFrames()); got != frames {
				t.Errorf("%d frames on the %s socket, want %d", got, tc.name, frames)
			}
			if got := len(other.sentFrames()); got != 0 {
				t.Errorf("%d frames on the other socket", got)
			}
			want.mu.Lock()
			batches := want.batchCalls
			want.mu.Unlock()
			if batches != 3 {
				t.Errorf("%d SendBatch calls, want 3 (two full batches and the rest)", batches)
			}
		})
	}
}

// ---- 9. allocations ----

// nopRx is an RxSocket whose sends succeed without allocating; it only counts them.
type nopRx struct{ sends, batched atomic.Int64 }

func (s *nopRx) Send([]byte) error { s.sends.Add(1); return nil }
func (s *nopRx) SendBatch(f [][]byte) (int, error) {
	s.batched.Add(int64(len(f)))
	return len(f), nil
}
func (s *nopRx) Close() error                         { return nil }
func (s *nopRx) SetPrefetch(func([]byte))             {}
func (s *nopRx) JoinMulticast(net.HardwareAddr) error { return nil }
func (s *nopRx) ReceiveBlocks(func(*afpacket.Frame), func()) (int, error) {
	return 0, afpacket.ErrClosed
}

func forwardSetup(t testing.TB) (*Node, *worker, *nopRx, *afpacket.Frame) {
	eng := newEngine(t, []dataplane.Member{{Addr: f2Addr, Weight: 1}}, knownMACs())
	n := New(Config{Engine: eng})
	n.SetActive(true)
	rx := &nopRx{}
	w := newWorker(n, rx, &nopRx{}, n.counters[0])
	f := afpacket.FrameOf(wire(vnetHdrT, tcpSYN(t, 7000)))
	f.PktType = unix.PACKET_OTHERHOST
	return n, w, rx, f
}

func TestForwardDoesNotAllocate(t *testing.T) { forwardWithoutAllocs(t, false) }

// forwardWithoutAllocs forwards the same frame forwardRuns times, with the worker's prefetch
// first if asked, asserts 0 allocations per frame and that every run was really forwarded, and
// returns the node.
func forwardWithoutAllocs(t *testing.T, prefetch bool) *Node {
	t.Helper()
	n, w, rx, f := forwardSetup(t)
	allocs := testing.AllocsPerRun(forwardRuns, func() {
		copy(f.Data[0:6], vmacT) // the previous run rewrote it for f2
		if prefetch {
			w.prefetch(f.Data)
		}
		w.handle(f)
		w.flush()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per forwarded frame, want 0", allocs)
	}
	// AllocsPerRun runs once more to warm up; every run must really have been forwarded.
	if got := rx.batched.Load(); got != forwardRuns+1 {
		t.Fatalf("%d frames sent, want %d", got, forwardRuns+1)
	}
	if got := n.Stats().Verdicts["forwarded"]; got != forwardRuns+1 {
		t.Fatalf("%d forwarded, want %d", got, forwardRuns+1)
	}
	return n
}

// forwardRuns is how many frames forwardWithoutAllocs forwards.
const forwardRuns = 1000

func BenchmarkWorkerForward(b *testing.B) {
	_, w, _, f := forwardSetup(b)
	b.ReportAllocs()
	for b.Loop() {
		copy(f.Data[0:6], vmacT)
		w.handle(f)
		w.flush()
	}
}

// TestNextTick checks the periodic loop's deadlines: the next expiry when idle, the first
// pending burst, a Release's end, and the periodic announcement while active.
func TestNextTick(t *testing.T) {
	eng := newEngine(t, allMembers(), knownMACs())
	n := New(Config{Engine: eng})
	t0 := time.Now()
	n.Tick(t0)
	if got := n.nextTick(); !got.Equal(t0.Add(expireInterval)) {
		t.Fatalf("idle: next tick %v after t0, want the next expiry %v", got.Sub(t0), expireInterval)
	}
	n.SetActive(true) // bursts from now on (announceRepeats)
	n.mu.Lock()
	first := n.bursts[0]
	n.mu.Unlock()
	if got := n.nextTick(); !got.Equal(first) {
		t.Fatalf("bursts pending: next tick %v after t0, want the first burst at %v", got.Sub(t0), first.Sub(t0))
	}
	// Every burst sent (no socket: they are dropped), expiry at t0+6s: the next expiry comes
	// before the 30 s refresh.
	n.Tick(t0.Add(6 * time.Second))
	if got := n.nextTick(); !got.Equal(t0.Add(7 * time.Second)) {
		t.Fatalf("active, nothing pending: next tick %v after t0, want 7s", got.Sub(t0))
	}
	n.Release(t0.Add(6*time.Second), 300*time.Millisecond)
	if got := n.nextTick(); !got.Equal(t0.Add(6300 * time.Millisecond)) {
		t.Fatalf("releasing: next tick %v after t0, want the release at 6.3s", got.Sub(t0))
	}
	n.Tick(t0.Add(6300 * time.Millisecond))
	if eng.Active() {
		t.Fatal("still active after the release's Tick")
	}
	// The periodic announcement is due before the next expiry when one second is left of it.
	n2 := New(Config{Engine: newEngine(t, allMembers(), knownMACs())})
	n2.SetActive(true)
	n2.mu.Lock()
	n2.bursts, n2.lastRefresh, n2.lastExpire = nil, t0.Add(-29500*time.Millisecond), t0
	n2.mu.Unlock()
	if got := n2.nextTick(); !got.Equal(t0.Add(500 * time.Millisecond)) {
		t.Fatalf("refresh due: next tick %v after t0, want 500ms", got.Sub(t0))
	}
}

// TestRunAnnouncesAtOnceOnActivation checks that Run's loop, which sleeps until its next
// deadline (up to a second when idle), is woken when the node becomes active: the first
// announcement must not wait for the next expiry.
func TestRunAnnouncesAtOnceOnActivation(t *testing.T) {
	eng := newEngine(t, allMembers(), knownMACs())
	n := New(Config{Engine: eng})
	rx := newFakeRx()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- n.Run(ctx, Sockets{Workers: []RxSocket{rx}, Lo: newFakeTx()}) }()
	defer func() {
		cancel()
		<-errc
	}()
	// Let the loop make its first Tick and go to sleep until the next expiry, ~1 s away.
	time.Sleep(100 * time.Millisecond)
	if got := len(onlyARP(rx.sentFrames())); got != 0 {
		t.Fatalf("%d announcements while inactive", got)
	}
	start := time.Now()
	n.SetActive(true)
	waitFor(t, "the first announcement burst", func() bool { return len(onlyARP(rx.sentFrames())) >= 2 })
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("first announcement %v after SetActive, want at once (the loop was asleep until the next expiry)", d)
	}
}
