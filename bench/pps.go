package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/internal/testbed"
	"golang.org/x/sys/unix"
)

// Frame layout of the generator: a minimum Ethernet frame. 64 bytes on the
// wire (IEEE 802.3 clause 3.2.7) are 60 bytes plus the FCS the NIC adds:
// 14 Ethernet + 20 IPv4 + 8 UDP + 18 bytes of payload.
const (
	genFrameLen = 60
	genIPLen    = genFrameLen - 14
	genUDPLen   = genIPLen - 20
	// genFlows distinct source ports spread the frames over the backends
	// and over the fanout group's sockets (PACKET_FANOUT_HASH uses the
	// flow hash of the 4-tuple).
	genFlows = 1024
	// genBatch frames go into one sendmmsg(2) call (afpacket caps a call
	// at 64).
	genBatch = 64
	// discardPort is the UDP discard service (RFC 863); see udpSinks.
	discardPort = 9
)

// genFrames builds genFlows UDP frames from src to vip:discard, with the
// given Ethernet addresses and valid IPv4 header checksums (a router drops
// frames with bad ones, RFC 1812 section 5.2.2). The UDP checksum is 0,
// "no checksum" in IPv4 (RFC 768).
func genFrames(dst, srcMAC net.HardwareAddr, src, vip netip.Addr) [][]byte {
	frames := make([][]byte, genFlows)
	s4, v4 := src.As4(), vip.As4()
	for i := range frames {
		f := make([]byte, genFrameLen)
		copy(f[0:6], dst)
		copy(f[6:12], srcMAC)
		binary.BigEndian.PutUint16(f[12:], 0x0800)
		ip := f[14:34]
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], genIPLen)
		binary.BigEndian.PutUint16(ip[4:], uint16(i))
		ip[8] = 64
		ip[9] = 17
		copy(ip[12:16], s4[:])
		copy(ip[16:20], v4[:])
		binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
		udp := f[34:42]
		binary.BigEndian.PutUint16(udp[0:], uint16(10000+i))
		binary.BigEndian.PutUint16(udp[2:], discardPort)
		binary.BigEndian.PutUint16(udp[4:], genUDPLen)
		copy(f[42:], "l2lb bench 64B....")
		frames[i] = f
	}
	return frames
}

// ipChecksum is the Internet checksum of an IPv4 header whose checksum
// field is zero (RFC 1071).
func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// generator sends frames from the client namespace on several transmit-only
// AF_PACKET sockets, one goroutine each, with sendmmsg batches.
type generator struct {
	socks []*afpacket.Socket
	host  *testbed.Host
	pin   bool
}

func newGenerator(h *testbed.Host, n int, pin bool) (*generator, error) {
	g := &generator{host: h, pin: pin}
	for range n {
		var s *afpacket.Socket
		err := h.Do(func() error {
			var err error
			// Protocol 0: the socket receives nothing, so it never
			// copies its own frames (packet(7)). Qdisc bypass: veth has
			// no queue to back-pressure anyway, and the kernel path is
			// the shortest.
			s, err = afpacket.Open(afpacket.Config{Ifindex: h.Ifindex, QdiscBypass: true})
			return err
		})
		if err != nil {
			g.close()
			return nil, fmt.Errorf("bench: generator socket in %s: %w", h.NS, err)
		}
		g.socks = append(g.socks, s)
	}
	return g, nil
}

func (g *generator) close() {
	for _, s := range g.socks {
		s.Close()
	}
}

// run sends frames until stop is closed or ctx ends, at most rate frames per
// second in total (0: as fast as possible), adding every frame the kernel
// accepted to sent.
func (g *generator) run(ctx context.Context, stop <-chan struct{}, frames [][]byte, rate int, sent *atomic.Uint64) {
	var wg sync.WaitGroup
	per := float64(rate) / float64(len(g.socks))
	for i, s := range g.socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g.pin {
				// The balancer is pinned to CPU 1; keep the generator off
				// it. sched_setaffinity with pid 0 affects only this
				// (locked) thread.
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				var set unix.CPUSet
				set.Set(0)
				_ = unix.SchedSetaffinity(0, &set)
			}
			start := time.Now()
			off := (i * genFlows / len(g.socks)) % genFlows
			var mine float64
			for n := 0; ; n++ {
				if n%16 == 0 {
					select {
					case <-stop:
						return
					case <-ctx.Done():
						return
					default:
					}
				}
				if rate > 0 {
					due := per * time.Since(start).Seconds()
					if mine+genBatch > due {
						// Sleep granularity is ~50-100 µs; at a fixed
						// rate the batches just come in bursts.
						time.Sleep(time.Duration((mine + genBatch - due) / per * float64(time.Second)))
						continue
					}
				}
				end := off + genBatch
				if end > len(frames) {
					off, end = 0, genBatch
				}
				k, _ := s.SendBatch(frames[off:end])
				off = end % len(frames)
				mine += float64(k)
				sent.Add(uint64(k))
				if k == 0 {
					// ENOBUFS and the like: the receive side is
					// saturated; yield instead of spinning.
					runtime.Gosched()
				}
			}
		}()
	}
	wg.Wait()
}

// phaseResult is one measured phase of the pps scenario.
type phaseResult struct {
	offered, delivered float64 // frames per second
	balCPU             float64 // balancer CPU ns per delivered frame (NaN without a process)
	balSwitches        float64 // balancer context switches per delivered frame (NaN without a process)
	sysCPU             float64 // whole-machine busy CPU ns per delivered frame
}

func (p phaseResult) dropRate() float64 {
	if !(p.offered > 0) {
		return math.NaN()
	}
	d := 1 - p.delivered/p.offered
	if d < 0 {
		// Frames queued before the window was opened and delivered inside
		// it can make a lossless phase look slightly negative.
		d = 0
	}
	return d
}

// measure runs the generator towards dst for the phase duration and
// measures over the window after a warm-up, while the generator is still
// sending, so frames buffered in rings before or after the window do not
// count. pid is the balancer's process (0: none).
func (e *env) measure(ctx context.Context, g *generator, dst net.HardwareAddr, rate int, pid int) (phaseResult, error) {
	return e.measureFor(ctx, g, dst, rate, pid, e.opts.Duration)
}

// measureFor is measure with a phase length of d.
func (e *env) measureFor(ctx context.Context, g *generator, dst net.HardwareAddr, rate int, pid int, d time.Duration) (phaseResult, error) {
	frames := genFrames(dst, e.client.MAC, e.client.Addr, e.vip)
	var sent atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		g.run(ctx, stop, frames, rate, &sent)
		close(done)
	}()
	defer func() {
		close(stop)
		<-done
	}()
	warm := min(d/4, 500*time.Millisecond)
	select {
	case <-time.After(warm):
	case <-ctx.Done():
		return phaseResult{}, ctx.Err()
	}
	type sample struct {
		t        time.Time
		sent, rx uint64
		cpu      time.Duration
		switches uint64
		busy     time.Duration
	}
	take := func() (sample, error) {
		s := sample{t: time.Now(), sent: sent.Load()}
		var err error
		if s.rx, err = e.backendRX(); err != nil {
			return s, err
		}
		if pid > 0 {
			if s.cpu, err = ProcessCPU(pid); err != nil {
				return s, err
			}
			if s.switches, err = ProcessSwitches(pid); err != nil {
				return s, err
			}
		}
		s.busy, _, err = SystemCPU()
		return s, err
	}
	a, err := take()
	if err != nil {
		return phaseResult{}, err
	}
	select {
	case <-time.After(d - warm):
	case <-ctx.Done():
		return phaseResult{}, ctx.Err()
	}
	b, err := take()
	if err != nil {
		return phaseResult{}, err
	}
	secs := b.t.Sub(a.t).Seconds()
	rx := float64(b.rx - a.rx)
	r := phaseResult{offered: float64(b.sent-a.sent) / secs, delivered: rx / secs, balCPU: math.NaN(), sysCPU: math.NaN(), balSwitches: math.NaN()}
	if rx > 0 {
		if pid > 0 {
			r.balCPU = float64(b.cpu-a.cpu) / rx
			r.balSwitches = float64(b.switches-a.switches) / rx
		}
		r.sysCPU = float64(b.busy-a.busy) / rx
	}
	return r, nil
}

// runPPS is one run of the pps scenario: for each worker count, l2lb at the
// generator's full rate and at the fixed rate; then f1 as a kernel router,
// the same two ways.
func (e *env) runPPS(ctx context.Context, sc *Scenario) error {
	g, err := newGenerator(e.client, e.opts.Generators, e.opts.Pin)
	if err != nil {
		return err
	}
	defer g.close()
	if e.opts.Pin && haveTaskset() {
		sc.note("generator pinned to CPU 0, balancer (all workers) to CPU 1 with taskset; the kernel router runs in the generator's softirq context")
	} else {
		sc.note("not pinned: generator (%d sockets), balancer and softirq work share all %d CPUs; on veth the kernel router runs in the sender's softirq context", e.opts.Generators, runtime.NumCPU())
	}
	sc.note("delivered = RX frames at the backends' eth0 (netlink counters) over the window after a %v warm-up; CPU per frame at a fixed offered rate of %d frames/s, from the process's CPU clock: balancer CPU/frame with the balancer on CPU 1 and the switch port's receive work steered to CPU 0 by RPS (its own work plus the RPS hand-off: an upper bound), incl. receivers without (veth runs the switch's and backend's receive path on the sender's stack); system CPU = whole-machine busy time (includes the generator and anything else running); context switches/frame = the balancer's threads' voluntary and involuntary switches (/proc/PID/task/*/status) in the balancer CPU/frame phase: waits in poll(2) and the Go runtime's own sleeps", min(e.opts.Duration/4, 500*time.Millisecond), e.opts.PPSRate)
	sc.note("forwarding CPU/frame = system CPU/frame minus that of direct delivery (the generator sending the same frames straight to %s's MAC): what putting the forwarder in the path costs the whole machine per frame", e.backends[0].Name)
	sc.note("kernel RPS = the kernel router with f1's receive work handed to a CPU by RPS (mask %s): its hop made asynchronous, as behind a NIC interrupt and as l2lb's thread always is", allCPUsMask())
	e.logf("pps: direct delivery, max rate")
	dmax, err := e.measure(ctx, g, e.backends[0].MAC, 0, 0)
	if err != nil {
		return err
	}
	sc.add("direct delivered", "frames/s", dmax.delivered)
	e.logf("pps: direct delivery, fixed rate")
	dfix, err := e.measure(ctx, g, e.backends[0].MAC, e.opts.PPSRate, 0)
	if err != nil {
		return err
	}
	direct := dfix.sysCPU
	sc.add("direct system CPU/frame", "ns", direct)

	e.logf("pps: kernel router, max rate")
	kmax, err := e.measure(ctx, g, e.lb.MAC, 0, 0)
	if err != nil {
		return err
	}
	sc.add("kernel delivered", "frames/s", kmax.delivered)
	sc.add("kernel offered", "frames/s", kmax.offered)
	sc.add("kernel drop rate", "fraction", kmax.dropRate())
	// Forwarding inline in the sender's context, the kernel router normally
	// loses nothing even at the generator's full rate.
	kernelLossFree := kmax.delivered
	if kmax.dropRate() >= noDropLoss {
		e.logf("pps: kernel router, loss-free rate search")
		if kernelLossFree, err = e.noDropRate(ctx, g, e.lb.MAC, 0, kmax.offered); err != nil {
			return err
		}
	}
	sc.add("kernel loss-free rate", "frames/s", kernelLossFree)
	e.logf("pps: kernel router, fixed rate")
	kfix, err := e.measure(ctx, g, e.lb.MAC, e.opts.PPSRate, 0)
	if err != nil {
		return err
	}
	sc.add("kernel drop rate @fixed", "fraction", kfix.dropRate())
	sc.add("kernel system CPU/frame", "ns", kfix.sysCPU)
	sc.add("kernel forwarding CPU/frame", "ns", kfix.sysCPU-direct)
	rps, err := e.runPPSKernelRPS(ctx, sc, g, direct)
	if err != nil {
		return err
	}

	ref := kernelRef{delivered: kmax.delivered, lossFree: kernelLossFree, rps: rps, direct: direct}
	for _, b := range e.opts.Backends {
		for _, w := range e.opts.Workers {
			if err := e.runPPSBalancer(ctx, sc, g, b, w, ref); err != nil {
				return err
			}
		}
	}
	return nil
}

// kernelRef holds the kernel-router and direct-delivery figures of a pps run
// that l2lb's are compared with.
type kernelRef struct {
	delivered, lossFree float64 // kernel router's full and loss-free rates, frames/s
	rps                 float64 // kernel router's full rate with RPS on f1, frames/s
	direct              float64 // system CPU ns per frame of direct delivery
}

// runPPSKernelRPS measures the kernel router at full rate and at the fixed
// rate with f1's receive work handed to a CPU by RPS, and returns the full
// rate. Why: on veth the kernel router forwards inside the generator's send
// call, synchronously and for free in wake-ups; RPS makes its hop
// asynchronous, as a NIC interrupt would and as l2lb's thread always is.
func (e *env) runPPSKernelRPS(ctx context.Context, sc *Scenario, g *generator, direct float64) (_ float64, err error) {
	if err := setRPS(e.lb, "eth0", allCPUsMask()); err != nil {
		return 0, err
	}
	defer func() {
		if rerr := setRPS(e.lb, "eth0", "0"); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	e.logf("pps: kernel router with RPS, max rate")
	rmax, err := e.measure(ctx, g, e.lb.MAC, 0, 0)
	if err != nil {
		return 0, err
	}
	sc.add("kernel RPS delivered", "frames/s", rmax.delivered)
	sc.add("kernel RPS drop rate", "fraction", rmax.dropRate())
	e.logf("pps: kernel router with RPS, fixed rate")
	rfix, err := e.measure(ctx, g, e.lb.MAC, e.opts.PPSRate, 0)
	if err != nil {
		return 0, err
	}
	sc.add("kernel RPS forwarding CPU/frame", "ns", rfix.sysCPU-direct)
	return rmax.delivered, nil
}

// runPPSBalancer measures l2lb with w workers on the backend: idle CPU, the generator's
// full rate, the loss-free rate, the fixed rate and, on 2 CPUs or more, the
// fixed rate with the receivers steered off (measureOwn), and compares them
// with ref from the same run.
func (e *env) runPPSBalancer(ctx context.Context, sc *Scenario, g *generator, backend string, w int, ref kernelRef) error {
	// AF_PACKET, the default backend, keeps the metric names it always had.
	name := fmt.Sprintf("l2lb w%d", w)
	if backend != "afpacket" {
		name = fmt.Sprintf("l2lb %s w%d", backend, w)
	}
	var extra []string
	if e.opts.ProfileDir != "" {
		e.runN++
		extra = []string{"--cpuprofile", filepath.Join(e.opts.ProfileDir, fmt.Sprintf("%s-pps-%d.pprof", strings.ReplaceAll(name, " ", "-"), e.runN))}
	}
	bal, err := e.startBalancer(ctx, backend, w, extra...)
	if err != nil {
		return err
	}
	defer e.stopBalancer()
	// alive turns a phase that ended with the balancer gone into an error.
	alive := func(err error, what string) error {
		if err == nil && !bal.alive() {
			err = fmt.Errorf("%w: exited during the %s; log: %s", ErrBalancer, what, bal.lastLog())
		}
		return err
	}
	p := name + " "
	// The balancer's CPU use without traffic (timers, ring block
	// retirement), which every forwarded frame's share includes at a fixed
	// rate.
	idle, err := idleCPU(ctx, bal.pid, time.Second)
	if err != nil {
		return err
	}
	sc.add(p+"idle CPU", "% of a CPU", idle*100)

	e.logf("pps: %s, max rate", name)
	r, err := e.measure(ctx, g, benchVMAC, 0, bal.pid)
	if err = alive(err, "phase"); err != nil {
		return err
	}
	sc.add(p+"delivered", "frames/s", r.delivered)
	sc.add(p+"offered", "frames/s", r.offered)
	sc.add(p+"drop rate", "fraction", r.dropRate())
	// The headline comparison (issue 14): the kernel router with RPS forwards asynchronously, as
	// behind a NIC interrupt and as l2lb's thread always does; the inline kernel router, which
	// forwards inside the generator's send call on veth, is shown beside it.
	sc.add(p+"/ kernel RPS", "ratio", ratio(r.delivered, ref.rps))
	sc.add(p+"/ kernel", "ratio", ratio(r.delivered, ref.delivered))
	sc.headline(Headline{Label: fmt.Sprintf("l2lb %s %d worker(s) / kernel router with RPS =", backend, w), Metric: p + "/ kernel RPS",
		Beside: p + "/ kernel", BesideLabel: "/ inline kernel router ="})
	e.logf("pps: %s, loss-free rate search", name)
	nd, err := e.noDropRate(ctx, g, benchVMAC, bal.pid, r.offered)
	if err = alive(err, "search"); err != nil {
		return err
	}
	sc.add(p+"loss-free rate", "frames/s", nd)
	sc.add(p+"/ kernel, loss-free", "ratio", ratio(nd, ref.lossFree))

	e.logf("pps: %s, fixed rate", name)
	r, err = e.measure(ctx, g, benchVMAC, e.opts.PPSRate, bal.pid)
	if err = alive(err, "phase"); err != nil {
		return err
	}
	sc.add(p+"drop rate @fixed", "fraction", r.dropRate())
	sc.add(p+"balancer CPU/frame incl. receivers", "ns", r.balCPU)
	sc.add(p+"system CPU/frame", "ns", r.sysCPU)
	sc.add(p+"forwarding CPU/frame", "ns", r.sysCPU-ref.direct)

	if runtime.NumCPU() >= 2 {
		e.logf("pps: %s, fixed rate, receivers steered off the balancer's CPU", name)
		r, err := e.measureOwn(ctx, g, bal.pid)
		if err = alive(err, "phase"); err != nil {
			return err
		}
		sc.add(p+"balancer CPU/frame", "ns", r.balCPU)
		sc.add(p+"balancer context switches/frame", "per frame", r.balSwitches)
	}
	return nil
}

// Loss-free rate search (RFC 2544 section 26.1, "Throughput": the fastest
// offered rate at which no frame is lost), adapted to a shared 2-CPU VM:
// a trial counts as loss-free below noDropLoss, because frames in rings at
// the window's edges make a loss-free trial read a few hundred frames off;
// trials are shorter than RFC 2544's 60 s so a search fits a bench run.
const (
	noDropLoss  = 0.001
	noDropTrial = 1500 * time.Millisecond
	noDropSteps = 6 // binary search steps: resolution max/64
)

// noDropRate searches the highest offered rate below hi that dst forwards
// with a drop rate under noDropLoss and returns the rate delivered there.
//
// Why besides the overload figure: past its capacity l2lb drops the excess
// at its ring, but on this testbed the generator shares the 2 CPUs, so the
// frames it makes only to be dropped take CPU from the balancer; the kernel
// router, running inline in the generator's context, never drops and pays
// no such tax. The loss-free rate is what the forwarder carries without
// that distortion, and the figure RFC 2544 defines for forwarding devices.
func (e *env) noDropRate(ctx context.Context, g *generator, dst net.HardwareAddr, pid int, hi float64) (float64, error) {
	lo, best := 0.0, 0.0
	for range noDropSteps {
		mid := (lo + hi) / 2
		r, err := e.measureFor(ctx, g, dst, int(mid), pid, min(noDropTrial, e.opts.Duration))
		if err != nil {
			return 0, err
		}
		if r.dropRate() < noDropLoss {
			lo, best = mid, r.delivered
		} else {
			hi = mid
		}
	}
	return best, nil
}

// measureOwn is the fixed-rate phase with the balancer's process pinned to
// CPU 1 and the receive processing of the switch port it transmits into
// steered to CPU 0 with RPS (Documentation/networking/scaling.rst), so the
// balancer's CPU time holds its own work plus the cost of that hand-off.
//
// Why: veth_xmit hands a frame to the peer with netif_rx, and without RPS
// the peer's whole receive path (the switch's bridge, the backend's veth,
// IP and UDP) then runs as a softirq on the sender's stack when it
// re-enables bottom halves, billed to the sender's CPU time (this kernel has
// no CONFIG_IRQ_TIME_ACCOUNTING). A perf profile of the balancer at
// 50 000 frames/s put 40 % of its samples there. With a NIC that work
// happens on other machines. With RPS the balancer pays the backlog enqueue
// and an inter-processor interrupt per burst instead, which in a VM is an
// exit: at 200 000 frames/s the hand-off cost more than the receivers' work
// it moved (3.7 against 3.3 µs per frame), so this figure is an upper bound
// of the balancer's own work, and forwarding CPU/frame (whole machine, over
// direct delivery) is the fairer comparison with the kernel router.
func (e *env) measureOwn(ctx context.Context, g *generator, pid int) (phaseResult, error) {
	rps := func(mask string) error { return setRPS(e.bed.Switch, e.lb.Name, mask) }
	var one, all unix.CPUSet
	one.Set(1)
	for i := range runtime.NumCPU() {
		all.Set(i)
	}
	if e.opts.Pin && haveTaskset() {
		all = one // --pin keeps the balancer on CPU 1 throughout
	}
	if err := setProcessAffinity(pid, &one); err != nil {
		return phaseResult{}, err
	}
	defer setProcessAffinity(pid, &all)
	if err := rps("1"); err != nil {
		return phaseResult{}, err
	}
	defer rps("0")
	return e.measure(ctx, g, benchVMAC, e.opts.PPSRate, pid)
}

// setProcessAffinity sets the CPU affinity of every thread of pid; threads
// it starts later inherit it from their creator (sched_setaffinity(2)).
func setProcessAffinity(pid int, set *unix.CPUSet) error {
	tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return fmt.Errorf("bench: threads of pid %d: %w", pid, err)
	}
	for _, t := range tids {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		// A thread that exited since the listing is no error.
		if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
			return fmt.Errorf("bench: affinity of thread %d: %w", tid, err)
		}
	}
	return nil
}

// idleCPU returns the share of one CPU pid uses over d.
func idleCPU(ctx context.Context, pid int, d time.Duration) (float64, error) {
	a, err := ProcessCPU(pid)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, d); err != nil {
		return 0, err
	}
	b, err := ProcessCPU(pid)
	if err != nil {
		return 0, err
	}
	return float64(b-a) / float64(time.Since(t0)), nil
}

// udpSinks binds a UDP socket to VIP:discard on every backend that is never
// read and has the smallest receive buffer, so the backend's kernel drops
// the generator's datagrams once that buffer is full (counted in UDP
// RcvbufErrors). Without a socket every datagram would make the backend
// route and rate-limit an ICMP port unreachable (RFC 1122 section 3.2.2.1),
// and on veth that work runs in the sender's context: it showed up as 7% of
// the balancer's CPU in a profile. The sockets are plain file descriptors,
// not registered with Go's netpoller, so arrivals wake nobody.
func (e *env) udpSinks() error {
	for _, h := range e.backends {
		err := h.Do(func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			e.mu.Lock()
			e.fds = append(e.fds, fd)
			e.mu.Unlock()
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 0); err != nil {
				return err
			}
			return unix.Bind(fd, &unix.SockaddrInet4{Port: discardPort, Addr: e.vip.As4()})
		})
		if err != nil {
			return fmt.Errorf("bench: %s: UDP sink on %v:%d: %w", h.NS, e.vip, discardPort, err)
		}
	}
	return nil
}
