package afxdp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vethNS is a namespace of its own (nstest) with lo up and a veth pair va <-> vb, both up; the
// namespace is removed at cleanup, also when the test fails.
type vethNS struct {
	*nstest.NS
	a, b net.Interface
}

func newVethNS(t testing.TB, queues int) *vethNS {
	t.Helper()
	v := nstest.NewVeth(t, "xdp", queues)
	return &vethNS{NS: v.NS, a: v.A, b: v.B}
}

// rawSocket opens a non-blocking AF_PACKET socket on ifindex that ignores its own output.
func rawSocket(ifindex int) (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(ethPAll))
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethPAll, Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// openXDP opens a program and a socket on va inside e, attached in mode.
func (e *vethNS) openXDP(t testing.TB, mode Mode) (*Program, *Socket, Mode) {
	t.Helper()
	var (
		p   *Program
		s   *Socket
		got Mode
	)
	err := e.Run(func() (err error) {
		if p, err = NewProgram(testVMAC, 1, ProgramOptions{}); err != nil {
			return err
		}
		if s, err = Open(Config{Ifindex: e.a.Index, Queue: 0, Program: p, Control: true, VirtualMAC: testVMAC,
			FixPartialChecksums: true}); err != nil {
			p.Close()
			return err
		}
		if got, err = p.Attach(e.a.Index, mode, nil); err != nil {
			s.Close()
			p.Close()
			return err
		}
		return nil
	})
	if err != nil {
		e2e.Prereq(t, "AF_XDP unavailable: %v", err)
	}
	t.Cleanup(func() { s.Close(); p.Close() })
	return p, s, got
}

func TestSocketOnVeth(t *testing.T) {
	for _, mode := range []Mode{ModeNative, ModeGeneric} {
		t.Run(mode.String(), func(t *testing.T) { testSocketOnVeth(t, mode) })
	}
}

func testSocketOnVeth(t *testing.T, mode Mode) {
	e := newVethNS(t, 1)
	p, s, got := e.openXDP(t, mode)
	if got != mode {
		t.Fatalf("attached in %v mode, asked %v", got, mode)
	}
	// With the socket in the XSKMAP the program redirects the virtual MAC's frames.
	if act, err := p.Run(ethFrame(testVMAC, clientMAC, 0x0800, 1)); err != nil || act != XDPRedirect {
		t.Fatalf("virtual MAC frame: action %d, %v; want XDP_REDIRECT", act, err)
	}
	if act, err := p.Run(ethFrame(otherMAC, clientMAC, 0x0800, 1)); err != nil || act != XDPPass {
		t.Fatalf("other frame: action %d, %v; want XDP_PASS", act, err)
	}

	var gen int
	if err := e.Run(func() (err error) { gen, err = rawSocket(e.b.Index); return err }); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(gen)
	unix.SetsockoptTimeval(gen, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})

	// The worker: record what arrives; forward IPv4 frames to vb in place (new destination
	// MAC, ours as source), and answer the ARP frame with a copy (a buffer outside the UMEM).
	type rec struct{ data []byte }
	var (
		mu   sync.Mutex
		seen []rec
	)
	var out [][]byte
	fn := func(f *afpacket.Frame) {
		mu.Lock()
		seen = append(seen, rec{data: bytes.Clone(f.Data)})
		mu.Unlock()
		if !bytes.Equal(f.VnetHdr, make([]byte, afpacket.VnetHdrLen)) {
			t.Errorf("virtio_net_hdr not zeroed: %x", f.VnetHdr)
		}
		switch f.Data[12] {
		case 0x08:
			if f.Data[13] == 0x00 {
				copy(f.Data[0:6], e.b.HardwareAddr)
				copy(f.Data[6:12], e.a.HardwareAddr)
				out = append(out, f.SendBuf())
			} else if f.Data[13] == 0x06 {
				reply := append(make([]byte, afpacket.VnetHdrLen), ethFrame(e.b.HardwareAddr, testVMAC, 0x0806, 0xaa)...)
				if err := s.Send(reply); err != nil {
					t.Errorf("Send: %v", err)
				}
			}
		}
	}
	done := func() {
		if len(out) > 0 {
			if n, err := s.SendBatch(out); err != nil || n != len(out) {
				t.Errorf("SendBatch: %d of %d, %v", n, len(out), err)
			}
			out = out[:0]
		}
	}
	recvDone := make(chan error, 1)
	go func() {
		for {
			if _, err := s.ReceiveBlocks(fn, done); err != nil {
				recvDone <- err
				return
			}
		}
	}()

	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	send := [][]byte{
		ethFrame(testVMAC, clientMAC, 0x0800, 1),
		ethFrame(otherMAC, clientMAC, 0x0800, 2), // not ours: passed to the kernel, unseen
		ethFrame(testVMAC, clientMAC, 0x0800, 3),
		ethFrame(bcast, clientMAC, 0x0806, 4), // broadcast ARP: kernel and control socket
		ethFrame(testVMAC, clientMAC, 0x0800, 5),
	}
	for _, f := range send {
		if _, err := unix.Write(gen, f); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	// vb receives the three forwarded frames and the ARP answer.
	got3 := map[byte]bool{}
	arp := false
	buf := make([]byte, 2048)
	deadline := time.Now().Add(3 * time.Second)
	for (len(got3) < 3 || !arp) && time.Now().Before(deadline) {
		n, err := unix.Read(gen, buf)
		if err != nil {
			break
		}
		f := buf[:n]
		switch {
		case bytes.Equal(f[:6], e.b.HardwareAddr) && bytes.Equal(f[6:12], e.a.HardwareAddr) && f[12] == 8 && f[13] == 0:
			if len(f) != 60 || !bytes.Equal(f[14:], bytes.Repeat([]byte{f[14]}, 46)) {
				t.Errorf("forwarded frame corrupted: %x", f)
			}
			got3[f[14]] = true
		case bytes.Equal(f[6:12], testVMAC) && f[12] == 8 && f[13] == 6 && f[14] == 0xaa:
			arp = true
		}
	}
	if !got3[1] || !got3[3] || !got3[5] || len(got3) != 3 {
		t.Errorf("forwarded frames seen on vb: %v, want 1, 3, 5", got3)
	}
	if !arp {
		t.Error("the ARP answer (a copy into a transmit frame) did not arrive")
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-recvDone:
		if err != ErrClosed {
			t.Errorf("ReceiveBlocks after Close: %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("ReceiveBlocks did not return after Close")
	}
	mu.Lock()
	defer mu.Unlock()
	// The two sockets are read in no fixed order relative to each other: the AF_XDP frames
	// must come in order, the ARP frame once, anywhere among them.
	var xsk []byte
	arps := 0
	for _, r := range seen {
		if r.data[14] == 4 {
			arps++
		} else {
			xsk = append(xsk, r.data[14])
		}
	}
	if !bytes.Equal(xsk, []byte{1, 3, 5}) || arps != 1 {
		t.Errorf("frames seen: AF_XDP %v, want 1, 3, 5; ARP (control socket) %d times, want 1", xsk, arps)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Program.Close: %v", err)
	}
	// Detached: the interface carries no XDP program any more.
	if err := e.Run(func() error {
		l, err := netlink.LinkByName("va")
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			return fmt.Errorf("XDP program still attached: %+v", x)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// TestFramePathDoesNotAllocate receives, rewrites and forwards frames in place, and answers
// with copies, under testing.AllocsPerRun: the per-frame path must not allocate.
func TestFramePathDoesNotAllocate(t *testing.T) {
	e := newVethNS(t, 1)
	_, s, _ := e.openXDP(t, ModeAuto)
	var gen int
	if err := e.Run(func() (err error) { gen, err = rawSocket(e.b.Index); return err }); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(gen)
	frame := ethFrame(testVMAC, clientMAC, 0x0800, 7)
	reply := append(make([]byte, afpacket.VnetHdrLen), ethFrame(clientMAC, testVMAC, 0x0806, 8)...)
	out := make([][]byte, 0, 64)
	got := 0
	fn := func(f *afpacket.Frame) {
		copy(f.Data[0:6], sinkMAC)
		out = append(out, f.SendBuf())
		got++
	}
	done := func() {
		if _, err := s.SendBatch(out); err != nil {
			t.Errorf("SendBatch: %v", err)
		}
		clear(out)
		out = out[:0]
		if err := s.Send(reply); err != nil {
			t.Errorf("Send: %v", err)
		}
	}
	const perRun = 8
	allocs := testing.AllocsPerRun(20, func() {
		for i := 0; i < perRun; i++ {
			unix.Write(gen, frame)
		}
		for want := got + perRun; got < want; {
			if _, err := s.ReceiveBlocks(fn, done); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per %d frames", allocs, perRun)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.RxDropped != 0 || st.TxInvalid != 0 {
		t.Errorf("kernel counters: %+v", st)
	}
}

// TestLargeBatchLeavesAtOnce sends more frames in one SendBatch than copy mode transmits per
// sendto(2) (the socket's TX budget, 32 by default): all must leave without a later call.
func TestLargeBatchLeavesAtOnce(t *testing.T) {
	e := newVethNS(t, 1)
	_, s, _ := e.openXDP(t, ModeAuto)
	var sink int
	if err := e.Run(func() (err error) { sink, err = rawSocket(e.b.Index); return err }); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sink)
	unix.SetsockoptTimeval(sink, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	unix.SetsockoptInt(sink, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	const n = 300
	batch := make([][]byte, n)
	for i := range batch {
		batch[i] = append(make([]byte, afpacket.VnetHdrLen), ethFrame(sinkMAC, e.a.HardwareAddr, 0x0800, byte(i))...)
	}
	if sent, err := s.SendBatch(batch); err != nil || sent != n {
		t.Fatalf("SendBatch: %d, %v", sent, err)
	}
	got := 0
	buf := make([]byte, 2048)
	for got < n {
		if _, err := unix.Read(sink, buf); err != nil {
			break
		}
		got++
	}
	if got != n {
		t.Fatalf("%d of %d frames left the socket", got, n)
	}
}

// sendBack returns ReceiveBlocks callbacks that send every frame, while forward reports true,
// back out of the socket from va to vb (from done, so that the send is a deferred one).
func sendBack(t *testing.T, e *vethNS, s *Socket, forward func() bool) (func(*afpacket.Frame), func()) {
	var out [][]byte
	fn := func(f *afpacket.Frame) {
		if forward() {
			copy(f.Data[0:6], e.b.HardwareAddr)
			copy(f.Data[6:12], e.a.HardwareAddr)
			out = append(out, f.SendBuf())
		}
	}
	done := func() {
		if n, err := s.SendBatch(out); err != nil || n != len(out) {
			t.Errorf("SendBatch: %d of %d, %v", n, len(out), err)
		}
		out = out[:0]
	}
	return fn, done
}

// TestDeferredKick forwards frames from ReceiveBlocks' done callback, one at a time, so that
// each send is deferred to the receive loop's next poll(2) (finishKick). Each frame must reach
// vb on its own, without a later frame pushing it out. With the real poll the kernel transmits
// and kicks stay deferred; with a poll that leaves the AF_XDP socket out (a kernel whose poll
// does not drive transmission) the frames still leave, through the sendto(2) fallback, which
// then stays on.
func TestDeferredKick(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pollSkips bool
	}{{"poll transmits", false}, {"poll does not transmit", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newVethNS(t, 1)
			_, s, _ := e.openXDP(t, ModeAuto)
			if s.zeroCopy {
				t.Fatal("the veth socket is zero-copy, where kicks are never deferred: veth has no zero-copy mode, so this test cannot see what it tests")
			}
			if tc.pollSkips {
				s.poll = func(fds []unix.PollFd, timeout int) (int, error) {
					fds[0].Revents = 0
					if timeout < 0 || timeout > 5 {
						timeout = 5 // the AF_XDP socket is not polled: look at its ring every 5 ms
					}
					return unix.Poll(fds[1:], timeout)
				}
			}
			var gen int
			if err := e.Run(func() (err error) { gen, err = rawSocket(e.b.Index); return err }); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(gen)
			unix.SetsockoptTimeval(gen, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
			fn, done := sendBack(t, e, s, func() bool { return true })
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				for {
					if _, err := s.ReceiveBlocks(fn, done); err != nil {
						return
					}
				}
			}()
			defer func() { s.Close(); <-stopped }()
			buf := make([]byte, 2048)
			for i := byte(1); i <= 5; i++ {
				if _, err := unix.Write(gen, ethFrame(testVMAC, clientMAC, 0x0800, i)); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				for {
					n, err := unix.Read(gen, buf)
					if err != nil {
						t.Fatalf("frame %d not forwarded: %v", i, err)
					}
					if n >= 15 && bytes.Equal(buf[6:12], e.a.HardwareAddr) && buf[14] == i {
						break
					}
				}
				if d := time.Since(start); d > 100*time.Millisecond {
					t.Errorf("frame %d took %v", i, d)
				}
			}
			s.mu.Lock()
			pollSends, noDefer := s.pollSends, s.noDefer
			s.mu.Unlock()
			if pollSends == tc.pollSkips || noDefer != tc.pollSkips {
				t.Errorf("pollSends %v, noDefer %v; want %v, %v", pollSends, noDefer, !tc.pollSkips, tc.pollSkips)
			}
		})
	}
}

// TestDeferredKickAges keeps the receive ring busy after a deferred send, so that the receive
// loop never reaches poll(2): the frame must leave once maxDeferBatches batches have gone by
// (beginDone), and not before, since in copy mode nothing else transmits the tx ring.
func TestDeferredKickAges(t *testing.T) {
	e := newVethNS(t, 1)
	_, s, _ := e.openXDP(t, ModeAuto)
	if s.zeroCopy {
		t.Fatal("the veth socket is zero-copy, where kicks are never deferred: veth has no zero-copy mode, so this test cannot see what it tests")
	}
	var gen int
	if err := e.Run(func() (err error) { gen, err = rawSocket(e.b.Index); return err }); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(gen)
	defer s.Close()
	forwarded := func() bool {
		buf := make([]byte, 2048)
		for {
			n, _, err := unix.Recvfrom(gen, buf, unix.MSG_DONTWAIT)
			if err != nil {
				return false
			}
			if n >= 15 && bytes.Equal(buf[6:12], e.a.HardwareAddr) && buf[14] == 1 {
				return true
			}
		}
	}
	// receive writes frame seq and takes it off the ring in a batch of its own.
	receive := func(seq byte, forward bool) {
		t.Helper()
		if _, err := unix.Write(gen, ethFrame(testVMAC, clientMAC, 0x0800, seq)); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(time.Second); s.rx.avail() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("frame %d did not reach the rx ring", seq)
			}
		}
		fn, done := sendBack(t, e, s, func() bool { return forward })
		if n, err := s.ReceiveBlocks(fn, done); err != nil || n != 1 {
			t.Fatalf("ReceiveBlocks: %d, %v", n, err)
		}
	}
	receive(1, true)
	for seq := byte(2); seq < 2+maxDeferBatches; seq++ {
		time.Sleep(10 * time.Millisecond) // time enough for a frame sent to reach gen
		if forwarded() {
			t.Fatalf("frame 1 left after %d batches, before the deferred kick was due", seq-2)
		}
		receive(seq, false)
	}
	for deadline := time.Now().Add(time.Second); !forwarded(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("frame 1 not forwarded after %d busy batches", maxDeferBatches)
		}
	}
}

// TestSuperFrames sends one 5000-byte TCP segment with a GSO virtio_net_hdr from vb: in native
// mode veth has turned vb's GSO off and the socket gets it as five wire-sized segments; in
// generic mode it reaches XDP whole, does not fit a UMEM frame and is counted as dropped (the
// reason Attach warns about GRO in generic mode).
func TestSuperFrames(t *testing.T) {
	for _, m := range []Mode{ModeNative, ModeGeneric} {
		t.Run(m.String(), func(t *testing.T) {
			e := newVethNS(t, 1)
			_, s, _ := e.openXDP(t, m)
			gen := e.vnetSender(t)
			const payload = 5000
			f := make([]byte, afpacket.VnetHdrLen+54+payload)
			v := f[:afpacket.VnetHdrLen]               // include/uapi/linux/virtio_net.h
			v[0], v[1] = 1, 1                          // VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4
			binary.LittleEndian.PutUint16(v[2:], 54)   // hdr_len
			binary.LittleEndian.PutUint16(v[4:], 1000) // gso_size
			binary.LittleEndian.PutUint16(v[6:], 34)   // csum_start
			binary.LittleEndian.PutUint16(v[8:], 16)   // csum_offset
			d := f[afpacket.VnetHdrLen:]
			copy(d, udpFrame(testVMAC, clientMAC, 1)[:34])
			d[14+9] = 6 // TCP
			binary.BigEndian.PutUint16(d[16:], 40+payload)
			d[24], d[25] = 0, 0
			binary.BigEndian.PutUint16(d[24:], ^fold(sum16(d[14:34], 0)))
			d[34+12], d[34+13] = 5<<4, 0x18 // data offset 5, PSH|ACK
			if err := gen.Send(f); err != nil {
				t.Fatal(err)
			}
			var sizes []int
			deadline := time.Now().Add(time.Second)
			want := 5
			if m == ModeGeneric {
				want = 0
			}
			for time.Now().Before(deadline) {
				st, err := s.Stats()
				if err != nil {
					t.Fatal(err)
				}
				if m == ModeGeneric && st.RxDropped == 1 {
					break
				}
				if len(sizes) >= want && want > 0 {
					break
				}
				if s.rx.avail() > 0 {
					s.ReceiveBlocks(func(fr *afpacket.Frame) { sizes = append(sizes, len(fr.Data)) }, nil)
				}
				time.Sleep(5 * time.Millisecond)
			}
			st, _ := s.Stats()
			switch m {
			case ModeNative:
				if len(sizes) != 5 || sizes[0] != 54+1000 {
					t.Errorf("native: frames %v, want five of %d bytes", sizes, 54+1000)
				}
			case ModeGeneric:
				if len(sizes) != 0 || st.RxDropped != 1 {
					t.Errorf("generic: frames %v, stats %+v; want none and one drop", sizes, st)
				}
			}
		})
	}
}

// vnetSender opens a transmit-only AF_PACKET socket with PACKET_VNET_HDR on vb, as a same-host
// sender with offloads sends, closed when the test ends.
func (e *vethNS) vnetSender(t *testing.T) *afpacket.Socket {
	t.Helper()
	var gen *afpacket.Socket
	if err := e.Run(func() (err error) {
		gen, err = afpacket.Open(afpacket.Config{Ifindex: e.b.Index, VnetHdr: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gen.Close() })
	return gen
}

// TestPartialChecksumCompleted sends a TCP segment as a same-host sender with checksum offload
// does (CHECKSUM_PARTIAL through a virtio_net_hdr with VIRTIO_NET_HDR_F_NEEDS_CSUM, the field
// holding the pseudo-header sum): AF_XDP hands it over as is (measured), and the socket must
// complete the checksum before the worker sees it.
func TestPartialChecksumCompleted(t *testing.T) {
	for _, m := range []Mode{ModeNative, ModeGeneric} {
		t.Run(m.String(), func(t *testing.T) {
			e := newVethNS(t, 1)
			_, s, _ := e.openXDP(t, m)
			gen := e.vnetSender(t)
			good, field := l4Frame(t, false, false, false, []byte("partial checksum payload"))
			f := bytes.Clone(good)
			partial(f, field, false, false, false)
			v := make([]byte, afpacket.VnetHdrLen)
			v[0] = 1                                 // VIRTIO_NET_HDR_F_NEEDS_CSUM
			binary.LittleEndian.PutUint16(v[6:], 34) // csum_start: the TCP header
			binary.LittleEndian.PutUint16(v[8:], 16) // csum_offset: its checksum field
			if err := gen.Send(append(v, f...)); err != nil {
				t.Fatal(err)
			}
			var got []byte
			deadline := time.Now().Add(time.Second)
			for got == nil && time.Now().Before(deadline) {
				if s.rx.avail() == 0 {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				s.ReceiveBlocks(func(fr *afpacket.Frame) { got = bytes.Clone(fr.Data) }, nil)
			}
			if !bytes.Equal(got, good) {
				t.Fatalf("received %x\nwant     %x", got, good)
			}
		})
	}
}

// TestRxDropsCountsOverflow sends more frames than the socket's rx ring holds while nobody reads
// it, and checks that RxDrops counts exactly those that did not fit: what the fast path's
// overload boost watches.
func TestRxDropsCountsOverflow(t *testing.T) {
	e := newVethNS(t, 1)
	_, s, _ := e.openXDP(t, ModeGeneric)
	if d, err := s.RxDrops(); err != nil || d != 0 {
		t.Fatalf("RxDrops of a new socket: %d, %v; want 0", d, err)
	}
	var gen int
	if err := e.Run(func() (err error) { gen, err = rawSocket(e.b.Index); return err }); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(gen)
	const sent = DefaultRxFrames + 300
	f := ethFrame(testVMAC, clientMAC, 0x0800, 1)
	for i := range sent {
		if _, err := unix.Write(gen, f); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	var drops uint64
	deadline := time.Now().Add(3 * time.Second)
	for drops < sent-DefaultRxFrames && time.Now().Before(deadline) {
		var err error
		if drops, err = s.RxDrops(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Everything that was not dropped is in the ring.
	var got atomic.Uint64
	recvDone := make(chan error, 1)
	go func() {
		for {
			if _, err := s.ReceiveBlocks(func(*afpacket.Frame) { got.Add(1) }, func() {}); err != nil {
				recvDone <- err
				return
			}
		}
	}()
	deadline = time.Now().Add(3 * time.Second)
	for got.Load()+drops < sent && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	after, err := s.RxDrops()
	s.Close()
	<-recvDone
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d, received %d, dropped %d", sent, got.Load(), drops)
	if drops < sent-DefaultRxFrames || after != drops {
		t.Errorf("RxDrops %d (then %d) after %d frames into a %d-frame ring, want at least %d and unchanged",
			drops, after, sent, DefaultRxFrames, sent-DefaultRxFrames)
	}
	if got.Load()+drops != sent {
		t.Errorf("received %d + dropped %d != sent %d", got.Load(), drops, sent)
	}
}
