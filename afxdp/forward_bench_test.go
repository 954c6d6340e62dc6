package afxdp

import (
	"encoding/binary"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// sinkMAC is where forwarded frames go: vb receives them as PACKET_OTHERHOST and drops them
// in ip_rcv, the cheapest receiver there is, and counts them in its rx_packets.
var sinkMAC = net.HardwareAddr{0x02, 0x4c, 0x32, 0x4c, 0x42, 0xee}

// udpFrame returns a valid 60-byte IPv4/UDP frame (the 64-byte minimum on the wire with the
// FCS) from 10.9.0.100:sport to 10.9.0.2:9 with dst as Ethernet destination.
func udpFrame(dst, src net.HardwareAddr, sport uint16) []byte {
	f := make([]byte, 60)
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], 46)
	copy(ip[12:], []byte{10, 9, 0, 100})
	copy(ip[16:], []byte{10, 9, 0, 2})
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(f[34:], sport)
	binary.BigEndian.PutUint16(f[36:], 9)
	binary.BigEndian.PutUint16(f[38:], 26)
	return f
}

// rxtx is what the forwarding loop needs of either backend.
type rxtx interface {
	ReceiveBlocks(fn func(*afpacket.Frame), done func()) (int, error)
	SendBatch(frames [][]byte) (int, error)
	Close() error
}

// forwarder is the worker loop reduced to its socket work: rewrite the MACs in place and send
// each wake-up's frames with one SendBatch before they go back to the kernel.
type forwarder struct {
	s      rxtx
	src    net.HardwareAddr
	out    [][]byte
	fn     func(*afpacket.Frame)
	doneFn func()
	frames int
}

func newForwarder(s rxtx, src net.HardwareAddr) *forwarder {
	w := &forwarder{s: s, src: src, out: make([][]byte, 0, 64)}
	w.fn = func(f *afpacket.Frame) {
		if len(f.Data) < 14 || f.Data[0] != testVMAC[0] || f.Data[5] != testVMAC[5] {
			return
		}
		copy(f.Data[0:6], sinkMAC)
		copy(f.Data[6:12], w.src)
		w.out = append(w.out, f.SendBuf())
		w.frames++
	}
	w.doneFn = func() {
		if len(w.out) > 0 {
			w.s.SendBatch(w.out)
			clear(w.out)
			w.out = w.out[:0]
		}
	}
	return w
}

// threadCPU is the calling thread's CPU time (user + system, RUSAGE_THREAD).
func threadCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_THREAD, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy returns the busy time of all CPUs from /proc/stat (everything but idle and
// iowait), which includes the softirq work the kernel does for the frames on any CPU.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line := strings.SplitN(string(b), "\n", 2)[0]
	var total int64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 7 { // steal, guest: not this machine's work
			break
		}
		total += v
	}
	return time.Duration(total) * time.Second / 100 // USER_HZ is 100 on Linux
}

func linkStats(e *vethNS, name string) (rx, tx uint64) {
	e.Run(func() error {
		l, err := netlink.LinkByName(name)
		if err == nil && l.Attrs().Statistics != nil {
			rx, tx = l.Attrs().Statistics.RxPackets, l.Attrs().Statistics.TxPackets
		}
		return err
	})
	return rx, tx
}

// BenchmarkForwardVeth forwards 64-byte frames from vb through va back to vb for a fixed
// window with each backend and reports forwarded frames/s, the forwarding thread's CPU per
// frame, the whole machine's busy CPU per frame and the share of generated frames forwarded.
// The generator (sendmmsg on an AF_PACKET socket with PACKET_QDISC_BYPASS, 64 frames a call)
// runs as fast as it can. Run with: go test -run '^$' -bench ForwardVeth -benchtime 1x ./afxdp/
// L2LB_XDP_BENCH_RATE=50000 paces the generator (frames/s) to compare CPU per frame at a
// given load; L2LB_XDP_BENCH_WINDOW sets the measured window (default 2s).
// The kernel mode forwards the same frames with the kernel's IPv4 router (ip_forward, out of
// the interface they came in on, send_redirects off), to the sink as a static neighbour.
func BenchmarkForwardVeth(b *testing.B) {
	window := 2 * time.Second
	if v := os.Getenv("L2LB_XDP_BENCH_WINDOW"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			window = d
		}
	}
	rate := 0 // frames/s; 0: as fast as the generator can
	if v := os.Getenv("L2LB_XDP_BENCH_RATE"); v != "" {
		rate, _ = strconv.Atoi(v)
	}
	for _, mode := range []string{"gen-only", "afxdp-native", "afxdp-generic", "afpacket", "kernel"} {
		b.Run(mode, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchForward(b, mode, window, rate)
			}
		})
	}
}

func benchForward(b *testing.B, mode string, window time.Duration, rate int) {
	e := newVethNS(b, 1)
	var fw rxtx
	dst := testVMAC
	switch mode {
	case "afxdp-native", "afxdp-generic":
		m := ModeNative
		if mode == "afxdp-generic" {
			m = ModeGeneric
		}
		_, s, _ := e.openXDP(b, m)
		fw = s
	case "afpacket":
		err := e.Run(func() error {
			s, err := afpacket.Open(afpacket.Config{Ifindex: e.a.Index, Protocol: unix.ETH_P_ALL, VnetHdr: true,
				IgnoreOutgoing: true, QdiscBypass: true, UnicastMACs: []net.HardwareAddr{testVMAC},
				Ring: afpacket.DefaultRing()})
			fw = s
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	case "gen-only":
		// The generator alone, its frames dropped on va as PACKET_OTHERHOST: the cost every
		// other mode pays before forwarding.
		dst = sinkMAC
	case "kernel":
		dst = e.a.HardwareAddr
		err := e.Run(func() error {
			for k, v := range map[string]string{"ipv4/ip_forward": "1", "ipv4/conf/all/send_redirects": "0",
				"ipv4/conf/va/send_redirects": "0", "ipv4/conf/all/rp_filter": "0", "ipv4/conf/va/rp_filter": "0",
				"ipv4/conf/all/accept_local": "1"} {
				if err := os.WriteFile("/proc/sys/net/"+k, []byte(v), 0o644); err != nil {
					return err
				}
			}
			l, err := netlink.LinkByName("va")
			if err != nil {
				return err
			}
			a, _ := netlink.ParseAddr("10.9.0.1/24")
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
			return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
				IP: net.IPv4(10, 9, 0, 2), HardwareAddr: sinkMAC})
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	var gen *afpacket.Socket
	if err := e.Run(func() (err error) {
		gen, err = afpacket.Open(afpacket.Config{Ifindex: e.b.Index, VnetHdr: true, QdiscBypass: true})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer gen.Close()
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = append(make([]byte, afpacket.VnetHdrLen), udpFrame(dst, e.b.HardwareAddr, uint16(1000+i))...)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var fwCPU time.Duration
	var fwFrames int
	var allocs uint64
	if fw != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			w := newForwarder(fw, e.a.HardwareAddr)
			// Warm up, then measure the window.
			var ms runtime.MemStats
			c0 := threadCPU()
			runtime.ReadMemStats(&ms)
			m0 := ms.Mallocs
			for !stop.Load() {
				if _, err := fw.ReceiveBlocks(w.fn, w.doneFn); err != nil {
					break
				}
			}
			fwCPU = threadCPU() - c0
			runtime.ReadMemStats(&ms)
			allocs = ms.Mallocs - m0
			fwFrames = w.frames
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if rate <= 0 {
			for !stop.Load() {
				gen.SendBatch(batch)
			}
			return
		}
		// Paced: every millisecond, the frames due since the start (a 1 ms tick would be
		// late under load; catching up keeps the average rate).
		start, sent := time.Now(), 0
		for !stop.Load() {
			due := int(time.Since(start).Seconds() * float64(rate))
			for due > sent {
				n := min(due-sent, len(batch))
				gen.SendBatch(batch[:n])
				sent += n
			}
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(200 * time.Millisecond) // let the rings and caches warm up
	rx0, _ := linkStats(e, "vb")
	_, tx0 := linkStats(e, "vb")
	busy0, t0 := machineBusy(), time.Now()
	time.Sleep(window)
	rx1, tx1 := linkStats(e, "vb")
	busy1, el := machineBusy(), time.Since(t0)
	stop.Store(true)
	if fw != nil {
		fw.Close() // wakes the forwarder
	}
	wg.Wait()
	fwd := float64(rx1 - rx0)
	gen1 := float64(tx1 - tx0)
	if mode == "gen-only" {
		b.ReportMetric(gen1/el.Seconds(), "gen/s")
		b.ReportMetric(float64(busy1-busy0)/gen1, "machine-ns/gen")
		return
	}
	if fwd == 0 {
		b.Fatalf("%s: nothing forwarded (generated %.0f)", mode, gen1)
	}
	b.ReportMetric(fwd/el.Seconds(), "fwd/s")
	b.ReportMetric(fwd/gen1, "fwd/gen")
	b.ReportMetric(float64(busy1-busy0)/fwd, "machine-ns/fwd")
	if fw != nil && fwFrames > 0 {
		b.ReportMetric(float64(fwCPU)/float64(fwFrames), "thread-ns/frame")
		b.ReportMetric(float64(allocs)/float64(fwFrames), "allocs/frame")
	}
	b.Logf("%s: %.0f frames/s forwarded of %.0f/s generated", mode, fwd/el.Seconds(), gen1/el.Seconds())
}
