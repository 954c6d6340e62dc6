package afpacket

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// testEtherType is IEEE 802 "Local Experimental Ethertype 1" (0x88B5), so
// the test frames mean nothing to any stack.
const testEtherType = 0x88b5

var virtualMAC = net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x00, 0x01}

// testRing is small enough for many sockets yet holds a 64 KiB GSO frame:
// 66 KiB slots, 30 of them.
func testRing() RingConfig {
	return RingConfig{BlockSize: 1 << 20, BlockCount: 2, FrameSize: 66 << 10}
}

// testFrame builds an Ethernet frame of testEtherType whose payload carries
// seq and then bytes derived from it.
func testFrame(dst, src net.HardwareAddr, seq uint64, payload int) []byte {
	b := make([]byte, ethHdrLen+8+payload)
	copy(b, dst)
	copy(b[6:], src)
	binary.BigEndian.PutUint16(b[12:], testEtherType)
	binary.BigEndian.PutUint64(b[14:], seq)
	for i := 0; i < payload; i++ {
		b[22+i] = byte(seq) + byte(i)
	}
	return b
}

// parseTestFrame returns the sequence number of a valid test frame.
func parseTestFrame(d []byte) (uint64, bool) {
	if len(d) < 22 || binary.BigEndian.Uint16(d[12:]) != testEtherType {
		return 0, false
	}
	seq := binary.BigEndian.Uint64(d[14:])
	for i, c := range d[22:] {
		if c != byte(seq)+byte(i) {
			return 0, false
		}
	}
	return seq, true
}

func withVnet(f []byte) []byte { return append(append([]byte{}, ZeroVnetHdr()...), f...) }

// receiveUntil calls Receive in a goroutine, passing every frame to fn until
// fn returns true; after timeout it closes s and fails.
func receiveUntil(t *testing.T, s *Socket, timeout time.Duration, fn func(f *Frame) bool) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		stop := false
		cb := func(f *Frame) {
			if !stop {
				stop = fn(f)
			}
		}
		for !stop {
			if _, err := s.Receive(cb); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
	case <-time.After(timeout):
		_ = s.Close()
		<-done
		t.Fatalf("wanted frames did not arrive within %v", timeout)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, r := range []RingConfig{DefaultRing(), testRing(), {BlockSize: 4096, BlockCount: 1, FrameSize: 64, BusyPoll: time.Microsecond},
		{BlockSize: 4096, BlockCount: 1, FrameSize: 64, Coalesce: maxCoalesce}} {
		good := Config{Ifindex: 1, Protocol: EthPAll, Ring: r}
		if err := good.validate(); err != nil {
			t.Fatalf("ring %+v rejected: %v", r, err)
		}
	}
	bad := map[string]Config{
		"no ifindex":        {Protocol: EthPAll, Ring: testRing()},
		"tx-only ring":      {Ifindex: 1, Ring: DefaultRing()},
		"tx-only fanout":    {Ifindex: 1, FanoutGroup: 7},
		"receive, no ring":  {Ifindex: 1, Protocol: EthPAll},
		"short MAC":         {Ifindex: 1, UnicastMACs: []net.HardwareAddr{{1, 2, 3}}},
		"block not paged":   {Ifindex: 1, Protocol: EthPAll, Ring: RingConfig{BlockSize: 1000, BlockCount: 1, FrameSize: 64}},
		"no blocks":         {Ifindex: 1, Protocol: EthPAll, Ring: RingConfig{BlockSize: 4096, FrameSize: 64}},
		"frame unaligned":   {Ifindex: 1, Protocol: EthPAll, Ring: RingConfig{BlockSize: 4096, BlockCount: 1, FrameSize: 100}},
		"frame < hdrlen":    {Ifindex: 1, Protocol: EthPAll, Ring: RingConfig{BlockSize: 4096, BlockCount: 1, FrameSize: 48}},
		"frame above block": {Ifindex: 1, Protocol: EthPAll, Ring: RingConfig{BlockSize: 4096, BlockCount: 1, FrameSize: 8192}},
		"negative poll":     {Ifindex: 1, Protocol: EthPAll, Ring: RingConfig{BlockSize: 4096, BlockCount: 1, FrameSize: 2048, BusyPoll: -1}},
		"negative coalesce": {Ifindex: 1, Protocol: EthPAll, Ring: RingConfig{BlockSize: 4096, BlockCount: 1, FrameSize: 2048, Coalesce: -1}},
		"long coalesce":     {Ifindex: 1, Protocol: EthPAll, Ring: RingConfig{BlockSize: 4096, BlockCount: 1, FrameSize: 2048, Coalesce: 2 * maxCoalesce}},
	}
	for name, cfg := range bad {
		if _, err := Open(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Open = %v, want ErrInvalidConfig", name, err)
		}
	}
}

// Ring receive: bytes, packet types and the virtio_net_hdr of frames sent
// from the peer.
func TestRingReceive(t *testing.T) {
	env := newVethEnv(t)
	rx := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, VnetHdr: true, Ring: testRing()})
	tx := env.open(t, Config{Ifindex: env.a.Index, VnetHdr: true})
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	want := map[uint64]struct {
		frame []byte
		typ   uint8
	}{
		1: {testFrame(env.b.HardwareAddr, env.a.HardwareAddr, 1, 100), unix.PACKET_HOST},
		2: {testFrame(bcast, env.a.HardwareAddr, 2, 46), unix.PACKET_BROADCAST},
		3: {testFrame(other, env.a.HardwareAddr, 3, 1400), unix.PACKET_OTHERHOST},
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if err := tx.Send(withVnet(want[seq].frame)); err != nil {
			t.Fatalf("Send %d: %v", seq, err)
		}
	}
	seen := map[uint64]bool{}
	receiveUntil(t, rx, 5*time.Second, func(f *Frame) bool {
		seq, ok := parseTestFrame(f.Data)
		if !ok {
			return false
		}
		w := want[seq]
		if !bytes.Equal(f.Data, w.frame) {
			t.Errorf("frame %d: got %x, want %x", seq, f.Data, w.frame)
		}
		if f.PktType != w.typ {
			t.Errorf("frame %d: PktType %d, want %d", seq, f.PktType, w.typ)
		}
		if len(f.VnetHdr) != VnetHdrLen || f.VnetHdr[1] != 0 {
			t.Errorf("frame %d: VnetHdr %x, want 10 bytes with gso_type NONE", seq, f.VnetHdr)
		}
		if sb := f.SendBuf(); len(sb) != VnetHdrLen+len(f.Data) || &sb[0] != &f.VnetHdr[0] || &sb[VnetHdrLen] != &f.Data[0] {
			t.Errorf("frame %d: SendBuf is not VnetHdr+Data contiguous", seq)
		}
		if f.Truncated || f.VLANValid {
			t.Errorf("frame %d: unexpected flags %+v", seq, f)
		}
		seen[seq] = true
		return len(seen) == len(want)
	})
}

// 100 000 frames: every one is either received, in order and intact, or
// counted as a drop by PACKET_STATISTICS.
func TestRingCountExact(t *testing.T) {
	const n = 100_000
	env := newVethEnv(t)
	rx := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, VnetHdr: true, Ring: DefaultRing()})
	tx := env.open(t, Config{Ifindex: env.a.Index, VnetHdr: true})

	var got atomic.Uint64
	var bad atomic.Uint64
	done := make(chan error, 1)
	go func() {
		next := uint64(0)
		cb := func(f *Frame) {
			seq, ok := parseTestFrame(f.Data)
			if !ok || seq < next || f.PktType != unix.PACKET_HOST {
				bad.Add(1)
				return
			}
			next = seq + 1
			got.Add(1)
		}
		for {
			if _, err := rx.Receive(cb); err != nil {
				done <- err
				return
			}
		}
	}()

	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = withVnet(testFrame(env.b.HardwareAddr, env.a.HardwareAddr, 0, 50))
	}
	for seq := uint64(0); seq < n; {
		k := 0
		for ; k < len(batch) && seq < n; k++ {
			copy(batch[k][VnetHdrLen:], testFrame(env.b.HardwareAddr, env.a.HardwareAddr, seq, 50))
			seq++
		}
		if sent, err := tx.SendBatch(batch[:k]); err != nil || sent != k {
			t.Fatalf("SendBatch: sent %d of %d: %v", sent, k, err)
		}
	}
	var st Stats
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if st, err = rx.Stats(); err != nil {
			t.Fatal(err)
		}
		if got.Load()+st.Drops >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Let a late (impossible) extra frame show up before the final count.
	time.Sleep(20 * time.Millisecond)
	if st2, err := rx.Stats(); err == nil {
		st = st2
	}
	_ = rx.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Receive after Close: %v, want ErrClosed", err)
	}
	t.Logf("received %d, dropped %d", got.Load(), st.Drops)
	if bad.Load() != 0 {
		t.Errorf("%d frames were corrupt, foreign or out of order", bad.Load())
	}
	if got.Load()+st.Drops != n {
		t.Errorf("received %d + dropped %d != sent %d", got.Load(), st.Drops, n)
	}
	if st.Packets != got.Load() {
		t.Errorf("Stats.Packets = %d, but %d frames were received", st.Packets, got.Load())
	}
	if got.Load() == 0 {
		t.Error("nothing received")
	}
}

// TestRxDropsCountsOverflow fills a 32-slot ring that nobody reads and checks that RxDrops counts
// exactly the frames that did not fit, and keeps counting across reads (the kernel resets its
// counters on every read; the fast path's overload boost reads them every few milliseconds).
func TestRxDropsCountsOverflow(t *testing.T) {
	const n, slots = 300, 32
	env := newVethEnv(t)
	rx := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, VnetHdr: true,
		Ring: RingConfig{BlockSize: 32 << 10, BlockCount: 2, FrameSize: 2 << 10}})
	if d, err := rx.RxDrops(); err != nil || d != 0 {
		t.Fatalf("RxDrops of a new socket: %d, %v; want 0", d, err)
	}
	env.sendBurst(t, n)
	var first uint64
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err := rx.RxDrops()
		if err != nil {
			t.Fatal(err)
		}
		first = d
		if first >= n-slots || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if first != n-slots {
		t.Fatalf("RxDrops = %d after %d frames into a %d-slot ring nobody read, want %d", first, n, slots, n-slots)
	}
	got := 0
	receiveUntil(t, rx, 2*time.Second, func(*Frame) bool { got++; return got == slots })
	if d, err := rx.RxDrops(); err != nil || d != first {
		t.Fatalf("RxDrops after reading the ring: %d, %v; want still %d", d, err, first)
	}
}

// A unicast membership makes the interface accept the virtual MAC (on veth:
// promiscuity goes up), frames to it arrive as OTHERHOST, and the
// membership ends with the socket.
func TestUnicastMAC(t *testing.T) {
	env := newVethEnv(t)
	if p := env.promiscuity(t, "vb"); p != 0 {
		t.Fatalf("vb promiscuity %d before the test", p)
	}
	rx := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, Ring: testRing(), UnicastMACs: []net.HardwareAddr{virtualMAC}})
	if p := env.promiscuity(t, "vb"); p == 0 {
		t.Error("unicast membership did not reach the device (promiscuity 0)")
	}
	tx := env.open(t, Config{Ifindex: env.a.Index})
	want := testFrame(virtualMAC, env.a.HardwareAddr, 42, 64)
	if err := tx.Send(want); err != nil {
		t.Fatal(err)
	}
	receiveUntil(t, rx, 5*time.Second, func(f *Frame) bool {
		if _, ok := parseTestFrame(f.Data); !ok {
			return false
		}
		if !bytes.Equal(f.Data, want) || f.PktType != unix.PACKET_OTHERHOST || f.VnetHdr != nil {
			t.Errorf("got %x type %d vnet %x; want %x type OTHERHOST, no vnet", f.Data, f.PktType, f.VnetHdr, want)
		}
		return true
	})
	if err := rx.Close(); err != nil {
		t.Fatal(err)
	}
	if p := env.promiscuity(t, "vb"); p != 0 {
		t.Errorf("promiscuity %d after Close, want 0", p)
	}
}

// With IgnoreOutgoing a socket never reads frames the host transmits;
// without it, it reads those of other sockets (as PACKET_OUTGOING), which
// shows the test can tell. A socket never reads back its own sends
// (skb_loop_sk in dev_queue_xmit_nit) either way.
func TestIgnoreOutgoing(t *testing.T) {
	for _, ignore := range []bool{true, false} {
		t.Run(map[bool]string{true: "on", false: "off"}[ignore], func(t *testing.T) {
			env := newVethEnv(t)
			s := env.open(t, Config{Ifindex: env.a.Index, Protocol: EthPAll, VnetHdr: true, IgnoreOutgoing: ignore, Ring: testRing()})
			other := env.open(t, Config{Ifindex: env.a.Index})
			peer := env.open(t, Config{Ifindex: env.b.Index})
			if err := s.Send(withVnet(testFrame(env.b.HardwareAddr, env.a.HardwareAddr, 1, 64))); err != nil {
				t.Fatal(err)
			}
			if err := other.Send(testFrame(env.b.HardwareAddr, env.a.HardwareAddr, 2, 64)); err != nil {
				t.Fatal(err)
			}
			if err := peer.Send(testFrame(env.a.HardwareAddr, env.b.HardwareAddr, 3, 64)); err != nil {
				t.Fatal(err)
			}
			seen := map[uint64]bool{}
			receiveUntil(t, s, 5*time.Second, func(f *Frame) bool {
				seq, ok := parseTestFrame(f.Data)
				if !ok {
					return false
				}
				seen[seq] = true
				want := uint8(unix.PACKET_OUTGOING)
				if seq == 3 {
					want = unix.PACKET_HOST
				}
				if f.PktType != want {
					t.Errorf("frame %d has PktType %d, want %d", seq, f.PktType, want)
				}
				return seq == 3
			})
			if seen[1] {
				t.Error("socket read back its own frame")
			}
			if seen[2] == ignore {
				t.Errorf("IgnoreOutgoing=%v: another local socket's frame read = %v", ignore, seen[2])
			}
		})
	}
}

// tcpGSOFrame builds an Ethernet/IPv4/TCP frame of total bytes whose TCP
// checksum field holds the pseudo-header sum, as NEEDS_CSUM requires
// (virtio spec 5.1.6.2: the device completes the checksum from csum_start).
func tcpGSOFrame(t *testing.T, dst, src net.HardwareAddr, total int) (frame, payload []byte) {
	t.Helper()
	const hdrs = 14 + 20 + 20
	payload = make([]byte, total-hdrs)
	for i := range payload {
		payload[i] = byte(i*7 + i>>8)
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
		SrcIP: net.IPv4(192, 0, 2, 1).To4(), DstIP: net.IPv4(192, 0, 2, 2).To4()}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1000, Ack: 1, ACK: true, PSH: true, Window: 65535}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}, ip, tcp, gopacket.Payload(payload))
	if err != nil {
		t.Fatal(err)
	}
	frame = buf.Bytes()
	// Pseudo-header (RFC 793 section 3.1): addresses, protocol, TCP length.
	var sum uint32
	for i := 26; i < 34; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(frame[i:]))
	}
	sum += 6 + uint32(len(frame)-34)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(frame[34+16:], uint16(sum))
	return frame, payload
}

// A >MTU TCP frame sent with a GSO virtio_net_hdr is accepted (without the
// header the kernel refuses it) and its payload arrives whole, either as
// MSS-sized segments or as one GSO frame that keeps its metadata.
func TestVnetGSOSend(t *testing.T) {
	env := newVethEnv(t)
	rx := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, VnetHdr: true, Ring: testRing()})
	tx := env.open(t, Config{Ifindex: env.a.Index, VnetHdr: true})
	plain := env.open(t, Config{Ifindex: env.a.Index})
	frame, payload := tcpGSOFrame(t, env.b.HardwareAddr, env.a.HardwareAddr, 20000)

	if err := plain.Send(frame); !errors.Is(err, unix.EMSGSIZE) {
		t.Fatalf("20000-byte frame without virtio_net_hdr: %v, want EMSGSIZE", err)
	}
	if err := tx.Send(withVnet(frame)); !errors.Is(err, unix.EMSGSIZE) {
		t.Fatalf("20000-byte frame with a zero virtio_net_hdr: %v, want EMSGSIZE", err)
	}
	vh := make([]byte, VnetHdrLen)
	vh[0] = 1                  // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vh[1] = 1                  // VIRTIO_NET_HDR_GSO_TCPV4
	ne := binary.NativeEndian  // legacy virtio headers are in host order
	ne.PutUint16(vh[2:], 54)   // hdr_len
	ne.PutUint16(vh[4:], 1448) // gso_size
	ne.PutUint16(vh[6:], 34)   // csum_start: the TCP header
	ne.PutUint16(vh[8:], 16)   // csum_offset: TCP checksum field
	if err := tx.Send(append(vh, frame...)); err != nil {
		t.Fatalf("GSO Send: %v", err)
	}

	got := make([]byte, len(payload))
	var bytesSeen, segments int
	receiveUntil(t, rx, 5*time.Second, func(f *Frame) bool {
		pkt := gopacket.NewPacket(f.Data, layers.LayerTypeEthernet, gopacket.NoCopy)
		tcpL, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcpL == nil || tcpL.SrcPort != 40000 {
			return false
		}
		segments++
		if len(f.Data) > 1514 {
			if f.VnetHdr[1] != 1 || ne.Uint16(f.VnetHdr[4:]) != 1448 {
				t.Errorf("GSO frame of %d bytes arrived with virtio_net_hdr %x", len(f.Data), f.VnetHdr)
			}
		}
		off := int(tcpL.Seq - 1000)
		if off < 0 || off+len(tcpL.Payload) > len(got) {
			t.Errorf("segment seq %d len %d outside the sent range", tcpL.Seq, len(tcpL.Payload))
			return true
		}
		copy(got[off:], tcpL.Payload)
		bytesSeen += len(tcpL.Payload)
		return bytesSeen >= len(payload)
	})
	t.Logf("payload arrived in %d frame(s)", segments)
	if bytesSeen != len(payload) || !bytes.Equal(got, payload) {
		t.Errorf("payload mismatch: %d bytes seen of %d", bytesSeen, len(payload))
	}
}

// The re-injection path: a frame for a VIP held on lo, sent on lo with
// destination MAC 00:00:00:00:00:00, reaches the local stack; with any other
// destination MAC it is OTHERHOST and lost. (127.0.0.1 would be dropped as a
// martian: an injected frame has no route attached, and loopback sources
// are refused by ip_route_input without route_localnet.)
func TestLoopbackInject(t *testing.T) {
	env := newVethEnv(t)
	vip := net.IPv4(192, 0, 2, 10).To4()
	client := net.IPv4(198, 51, 100, 7).To4()
	lo := env.open(t, Config{Ifindex: env.lo.Index, VnetHdr: true})
	var uc *net.UDPConn
	if err := env.ns.Run(func() (err error) {
		// This namespace's own sysctls: loose/no reverse-path filtering,
		// as the design notes require for re-injection on lo.
		for _, p := range []string{"/proc/sys/net/ipv4/conf/all/rp_filter", "/proc/sys/net/ipv4/conf/lo/rp_filter"} {
			if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
				return err
			}
		}
		loLink, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(loLink, &netlink.Addr{IPNet: &net.IPNet{IP: vip, Mask: net.CIDRMask(32, 32)}}); err != nil {
			return err
		}
		uc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: vip})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	port := uc.LocalAddr().(*net.UDPAddr).Port

	build := func(dst net.HardwareAddr, msg string) []byte {
		buf := gopacket.NewSerializeBuffer()
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: client, DstIP: vip}
		udp := &layers.UDP{SrcPort: 5353, DstPort: layers.UDPPort(port)}
		_ = udp.SetNetworkLayerForChecksum(ip)
		err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			&layers.Ethernet{SrcMAC: make(net.HardwareAddr, 6), DstMAC: dst, EthernetType: layers.EthernetTypeIPv4},
			ip, udp, gopacket.Payload(msg))
		if err != nil {
			t.Fatal(err)
		}
		return withVnet(buf.Bytes())
	}
	rb := make([]byte, 1500)
	if err := lo.Send(build(net.HardwareAddr{2, 0, 0, 0, 0, 1}, "wrong-mac")); err != nil {
		t.Fatal(err)
	}
	_ = uc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := uc.ReadFrom(rb); err == nil {
		t.Fatalf("frame with a non-zero destination MAC was delivered: %q", rb[:n])
	}
	if err := lo.Send(build(make(net.HardwareAddr, 6), "hello-lo")); err != nil {
		t.Fatal(err)
	}
	_ = uc.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, from, err := uc.ReadFrom(rb)
	if err != nil {
		t.Fatalf("re-injected datagram not delivered: %v", err)
	}
	if string(rb[:n]) != "hello-lo" || !from.(*net.UDPAddr).IP.Equal(client) {
		t.Fatalf("got %q from %v", rb[:n], from)
	}
}

// PACKET_FANOUT_LB spreads frames over the group's sockets round-robin:
// each gets exactly half (counting ring drops).
func TestFanout(t *testing.T) {
	const n = 1000
	env := newVethEnv(t)
	cfg := Config{Ifindex: env.b.Index, Protocol: EthPAll, Ring: testRing(), FanoutGroup: 0x4c32, FanoutMode: unix.PACKET_FANOUT_LB}
	socks := []*Socket{env.open(t, cfg), env.open(t, cfg)}
	tx := env.open(t, Config{Ifindex: env.a.Index})
	var counts [2]atomic.Uint64
	var wg sync.WaitGroup
	for i, s := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn := func(f *Frame) {
				if _, ok := parseTestFrame(f.Data); ok {
					counts[i].Add(1)
				}
			}
			for {
				if _, err := s.Receive(fn); err != nil {
					return
				}
			}
		}()
	}
	for i := uint64(0); i < n; i++ {
		if err := tx.Send(testFrame(env.b.HardwareAddr, env.a.HardwareAddr, i, 32)); err != nil {
			t.Fatal(err)
		}
	}
	var drops [2]uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		total := uint64(0)
		for i, s := range socks {
			st, err := s.Stats()
			if err != nil {
				t.Fatal(err)
			}
			drops[i] = st.Drops
			total += counts[i].Load() + st.Drops
		}
		if total >= n {
			break
		}
	}
	for _, s := range socks {
		_ = s.Close()
	}
	wg.Wait()
	for i := range socks {
		if got := counts[i].Load() + drops[i]; got != n/2 {
			t.Errorf("socket %d: received %d + dropped %d, want %d in all", i, counts[i].Load(), drops[i], n/2)
		}
	}
}

// Close wakes a Receive blocked in poll(2), a second Close is a no-op, and
// later calls report ErrClosed.
func TestCloseUnblocksReceive(t *testing.T) {
	env := newVethEnv(t)
	rx := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, Ring: testRing()})
	errc := make(chan error, 1)
	go func() {
		_, err := rx.Receive(func(*Frame) {})
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("Receive returned before Close: %v", err)
	default:
	}
	if err := rx.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("blocked Receive returned %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not unblock Receive")
	}
	if err := rx.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := rx.Receive(func(*Frame) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Receive after Close: %v", err)
	}
	if err := rx.Send(make([]byte, 60)); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close: %v", err)
	}
	if _, err := rx.Stats(); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats after Close: %v", err)
	}
}

// A transmit-only socket (no ring, as the dataplane's lo socket) refuses
// Receive and ReceiveBlocks, sends one frame and batches, reports Stats and
// closes; its frames reach the peer.
func TestTransmitOnly(t *testing.T) {
	env := newVethEnv(t)
	rx := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, VnetHdr: true, Ring: testRing()})
	tx := env.open(t, Config{Ifindex: env.a.Index, VnetHdr: true})
	if _, err := tx.Receive(func(*Frame) {}); !errors.Is(err, ErrNotReceiving) {
		t.Errorf("Receive on a transmit-only socket: %v", err)
	}
	if _, err := tx.ReceiveBlocks(func(*Frame) {}, func() {}); !errors.Is(err, ErrNotReceiving) {
		t.Errorf("ReceiveBlocks on a transmit-only socket: %v", err)
	}
	if err := tx.Send(make([]byte, 10)); !errors.Is(err, ErrShortFrame) {
		t.Errorf("Send of 10 bytes: %v", err)
	}
	if err := tx.Send(withVnet(testFrame(env.b.HardwareAddr, env.a.HardwareAddr, 0, 64))); err != nil {
		t.Fatalf("Send: %v", err)
	}
	batch := [][]byte{
		withVnet(testFrame(env.b.HardwareAddr, env.a.HardwareAddr, 1, 64)),
		withVnet(testFrame(env.b.HardwareAddr, env.a.HardwareAddr, 2, 64)),
	}
	if sent, err := tx.SendBatch(batch); err != nil || sent != len(batch) {
		t.Fatalf("SendBatch: %d, %v", sent, err)
	}
	seen := map[uint64]bool{}
	receiveUntil(t, rx, 5*time.Second, func(f *Frame) bool {
		if seq, ok := parseTestFrame(f.Data); ok {
			seen[seq] = true
		}
		return len(seen) == 3
	})
	if _, err := tx.Stats(); err != nil {
		t.Errorf("Stats on a transmit-only socket: %v", err)
	}
	if err := tx.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := tx.Send(batch[0]); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close: %v", err)
	}
}

// Send, SendBatch and the Receive loop do not allocate.
func TestZeroAllocs(t *testing.T) {
	env := newVethEnv(t)
	tx := env.open(t, Config{Ifindex: env.a.Index, VnetHdr: true})
	frame := withVnet(testFrame(env.b.HardwareAddr, env.a.HardwareAddr, 7, 64))
	batch := [][]byte{frame, frame, frame, frame}
	rx := env.open(t, Config{Ifindex: env.b.Index, Protocol: EthPAll, VnetHdr: true, Ring: testRing()})
	got := 0
	fn := func(f *Frame) {
		if _, ok := parseTestFrame(f.Data); ok {
			got++
		}
	}
	var err error
	allocs := testing.AllocsPerRun(100, func() {
		if err == nil {
			err = tx.Send(frame)
		}
		for got = 0; got == 0 && err == nil; {
			_, err = rx.Receive(fn)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Errorf("Send+Receive allocate %v times per frame", allocs)
	}
	allocs = testing.AllocsPerRun(100, func() {
		if err == nil {
			_, err = tx.SendBatch(batch)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Errorf("SendBatch allocates %v times per call", allocs)
	}
}

// BenchmarkReceiveSend measures frames/s from a SendBatch goroutine on one
// veth end to a ring Receive loop on the other.
func BenchmarkReceiveSend(b *testing.B) {
	env := newVethEnv(b)
	rx := env.open(b, Config{Ifindex: env.b.Index, Protocol: EthPAll, VnetHdr: true, IgnoreOutgoing: true, Ring: DefaultRing()})
	tx := env.open(b, Config{Ifindex: env.a.Index, VnetHdr: true, QdiscBypass: true})
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = withVnet(testFrame(env.b.HardwareAddr, env.a.HardwareAddr, uint64(i), 46))
	}
	var stop atomic.Bool
	sent := 0
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		for !stop.Load() {
			k, err := tx.SendBatch(batch)
			sent += k
			if err != nil {
				return
			}
		}
	}()
	got := 0
	fn := func(*Frame) { got++ }
	b.ResetTimer()
	start := time.Now()
	for got < b.N {
		if _, err := rx.Receive(fn); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	stop.Store(true)
	<-senderDone
	st, _ := rx.Stats()
	b.ReportMetric(float64(got)/elapsed.Seconds(), "frames/s")
	b.ReportMetric(float64(st.Drops), "drops")
}
