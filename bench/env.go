package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/testbed"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// benchVMAC is the virtual MAC the balancer under test answers with; it is
// locally administered (RFC 7042 section 2.1) and differs from l2lb's
// SyncID-derived default only so that a capture shows which tool sent it.
var benchVMAC = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0xbe, 0x01}

// env is the namespace testbed shared by the network scenarios: client c1,
// the balancer node f1 (not a member itself, so every frame it takes is
// forwarded) and the backends f2 and f3, which hold the VIP on lo.
type env struct {
	opts     Options
	bed      *testbed.Bed
	client   *testbed.Host
	lb       *testbed.Host
	backends []*testbed.Host
	vip      netip.Addr
	dir      string
	vipFile  string
	links    []*netlink.Handle // one per backend, for RX counters
	runN     int               // numbers the balancer profiles
	flowRx   sync.Map          // netip.AddrPort (client) -> *atomic.Uint64, bytes of 'F' flows

	mu        sync.Mutex
	bal       *balancer          // the running balancer, if any
	procs     []*balancer        // every l2lb process started, stopped by close
	listeners []*net.TCPListener // the bench's servers on the backends
	f1Serving bool               // f1 has a server on the VIP (failover)
	fds       []int              // UDP sink sockets on the backends
}

// newEnv builds the testbed and the kernel-router configuration of f1.
func newEnv(opts Options) (_ *env, err error) {
	bed, err := testbed.New(testbed.Options{Frontends: 3, Clients: 1, Logf: opts.Logf})
	if err != nil {
		return nil, err
	}
	e := &env{opts: opts, bed: bed, client: bed.Clients[0], lb: bed.Frontends[0], backends: bed.Frontends[1:], vip: bed.VIPs[0]}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "l2lb-bench-"); err != nil {
		return nil, err
	}
	e.vipFile = filepath.Join(e.dir, "vipaddrs")
	if err := os.WriteFile(e.vipFile, []byte(e.vip.String()+"\n"), 0o644); err != nil {
		return nil, err
	}
	for _, h := range e.backends {
		ns, err := netns.GetFromName(h.NS)
		if err != nil {
			return nil, fmt.Errorf("bench: open namespace %s: %w", h.NS, err)
		}
		lh, err := netlink.NewHandleAt(ns)
		ns.Close()
		if err != nil {
			return nil, fmt.Errorf("bench: netlink in %s: %w", h.NS, err)
		}
		e.links = append(e.links, lh)
	}
	if err := e.setupRouter(); err != nil {
		return nil, err
	}
	// Static forwarding entries in the switch: a learned entry ages out
	// (bridge ageing_time, 300 s by default) and the bridge then floods
	// unknown unicast to every port, which would count the generator's
	// frames at the backends without any forwarding at all. The backends'
	// MACs are pinned too: the kernel router reaches f2 through a permanent
	// neighbour entry, so f2 may never have sent a frame the bridge could
	// learn from, and flooding its traffic to every port cost the kernel
	// router about a third of its rate (≈340 k against ≈480 k frames/s in
	// the same session; pps ratios measured before this was fixed are
	// flattering).
	for _, fe := range []struct {
		mac  net.HardwareAddr
		port string
	}{{benchVMAC, e.lb.Name}, {e.lb.MAC, e.lb.Name}, {e.backends[0].MAC, e.backends[0].Name}, {e.backends[1].MAC, e.backends[1].Name}} {
		out, err := exec.Command("bridge", "-n", bed.Switch.NS, "fdb", "replace", fe.mac.String(), "dev", fe.port, "master", "static").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("bench: bridge fdb replace %s dev %s: %w: %s", fe.mac, fe.port, err, strings.TrimSpace(string(out)))
		}
	}
	return e, nil
}

// setupRouter makes f1 a plain kernel IPv4 router for the VIP: it does not
// own the VIP, forwards (ip_forward=1) and has a static route to the first
// backend with a permanent neighbour entry, so no ARP happens while
// measuring. Redirects are off: f1 forwards out of the interface the frame
// came in on, which would otherwise make it send ICMP redirects
// (RFC 1812 section 5.2.7.2). All of it lives in f1's namespace.
func (e *env) setupRouter() error {
	to := e.backends[0]
	if _, err := e.lb.RunIP("addr", "del", netip.PrefixFrom(e.vip, 32).String(), "dev", "lo"); err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv4.conf.all.send_redirects", "0"},
		{"net.ipv4.conf.eth0.send_redirects", "0"},
	} {
		if err := e.lb.SetSysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	if _, err := e.lb.RunIP("neigh", "replace", to.Addr.String(), "lladdr", to.MAC.String(), "dev", "eth0", "nud", "permanent"); err != nil {
		return err
	}
	_, err := e.lb.RunIP("route", "replace", netip.PrefixFrom(e.vip, 32).String(), "via", to.Addr.String(), "dev", "eth0")
	return err
}

// setRPS sets the RPS CPU mask (hex; "0" turns RPS off) of ifname's receive
// queue in h's namespace (Documentation/networking/scaling.rst). sysfs shows
// a namespace's own devices only to a process that mounted it there, so the
// write runs under ip netns exec.
func setRPS(h *testbed.Host, ifname, mask string) error {
	out, err := h.Command("sh", "-c", fmt.Sprintf("echo %s > /sys/class/net/%s/queues/rx-0/rps_cpus", mask, ifname)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("bench: RPS mask %s on %s in %s: %w: %s", mask, ifname, h.Name, err, out)
	}
	return nil
}

// allCPUsMask is the RPS mask of every CPU: a hex bitmap in comma-separated
// 32-bit groups, most significant first, as the kernel's bitmap_parse reads it.
func allCPUsMask() string {
	n := runtime.NumCPU()
	var groups []string
	for ; n > 0; n -= 32 {
		groups = append([]string{strconv.FormatUint(1<<min(n, 32)-1, 16)}, groups...)
	}
	return strings.Join(groups, ",")
}

// close stops the balancer and removes the testbed and temporary files.
func (e *env) close() error {
	e.mu.Lock()
	procs := e.procs
	e.mu.Unlock()
	for _, p := range procs {
		p.stop()
	}
	e.mu.Lock()
	for _, ln := range e.listeners {
		ln.Close()
	}
	for _, fd := range e.fds {
		unix.Close(fd)
	}
	e.mu.Unlock()
	for _, lh := range e.links {
		lh.Close()
	}
	err := e.bed.Close()
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
	return err
}

// backendRX returns the sum of the backends' eth0 received-frame counters.
func (e *env) backendRX() (uint64, error) {
	var sum uint64
	for i, lh := range e.links {
		l, err := lh.LinkByName("eth0")
		if err != nil {
			return 0, fmt.Errorf("bench: %s eth0: %w", e.backends[i].NS, err)
		}
		st := l.Attrs().Statistics
		if st == nil {
			return 0, fmt.Errorf("bench: %s eth0: no statistics", e.backends[i].NS)
		}
		sum += st.RxPackets
	}
	return sum, nil
}

// balancer is an `l2lb run` process on f1.
type balancer struct {
	cmd       *exec.Cmd
	pid       int
	statsFile string
	done      chan struct{}
	waitErr   error

	mu   sync.Mutex
	tail []string // last lines of its log, for error messages
}

// ErrBalancer means the balancer under test did not start or died.
var ErrBalancer = errors.New("bench: balancer failed")

// startBalancer runs `l2lb run` with the given number of workers on f1,
// balancing the VIP over the backends, and waits until it is ready and has
// resolved every backend's MAC.
func (e *env) startBalancer(ctx context.Context, backend string, workers int, extra ...string) (*balancer, error) {
	// AF_XDP serves one receive queue per socket and l2lb opens a socket per queue in use, so
	// the balancer's veth gets a queue per worker, and its switch-side end as many transmit
	// queues to spread frames over them by flow hash (netdev_pick_tx); AF_PACKET's fanout
	// spreads frames itself, on the single queue veth uses by default.
	queues := 1
	if strings.HasPrefix(backend, "afxdp") {
		queues = workers
	}
	if err := e.setQueues(queues); err != nil {
		return nil, err
	}
	statsFile := filepath.Join(e.dir, fmt.Sprintf("stats-%d.json", time.Now().UnixNano()))
	args := []string{"run", "-i", "eth0", "-f", e.vipFile, "-p", "0", "--workers", strconv.Itoa(workers),
		"--vmac", benchVMAC.String(), "--stats-file", statsFile}
	args = append(args, backendArgs[backend]...)
	for _, h := range e.backends {
		args = append(args, "--member", h.Addr.String())
	}
	args = append(args, extra...)
	args = append(args, e.opts.BalancerArgs...)
	b, err := e.startL2LB(ctx, e.lb, statsFile, e.opts.Pin, args)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.bal = b
	e.mu.Unlock()
	deadline := time.After(15 * time.Second)
	// The status lists each member as ready once its MAC is resolved.
	for {
		if n, err := b.readyMembers(); err == nil && n == len(e.backends) {
			return b, nil
		}
		select {
		case <-b.done:
			return nil, fmt.Errorf("%w: exited: %v; log: %s", ErrBalancer, b.waitErr, b.lastLog())
		case <-deadline:
			b.stop()
			return nil, fmt.Errorf("%w: backends' MACs not resolved after 15 s; log: %s", ErrBalancer, b.lastLog())
		case <-ctx.Done():
			b.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// setQueues sets the receive and transmit queues in use on both ends of the balancer's veth
// (ethtool -L).
func (e *env) setQueues(n int) error {
	c := ethtool.Channels{RxCount: uint32(n), TxCount: uint32(n)}
	for _, end := range []struct {
		h      *testbed.Host
		ifname string
	}{{e.lb, "eth0"}, {e.bed.Switch, e.lb.Name}} {
		err := end.h.Do(func() error {
			et, err := ethtool.NewEthtool()
			if err != nil {
				return err
			}
			defer et.Close()
			_, err = et.SetChannels(end.ifname, c)
			return err
		})
		if err != nil {
			return fmt.Errorf("bench: %d queues on %s in %s: %w", n, end.ifname, end.h.Name, err)
		}
	}
	return nil
}

// startL2LB runs l2lb with args and a control socket beside statsFile in h's namespace and waits
// until the control socket reports it ready. pin runs it on CPU 1 (taskset).
func (e *env) startL2LB(ctx context.Context, h *testbed.Host, statsFile string, pin bool, args []string) (*balancer, error) {
	args = append(args[:1:1], append([]string{"--control", statsFile + ".sock"}, args[1:]...)...)
	var cmd *exec.Cmd
	if pin && haveTaskset() {
		// The generator is pinned to CPU 0 (see generator.run).
		cmd = h.Command("taskset", append([]string{"-c", "1", e.opts.Exe}, args...)...)
	} else {
		cmd = h.Command(e.opts.Exe, args...)
	}
	b, err := e.spawn(cmd, "l2lb "+h.Name, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBalancer, err)
	}
	b.statsFile = statsFile
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	go func() {
		select {
		case <-b.done:
			cancel()
		case <-wctx.Done():
		}
	}()
	if _, err := b.control().WaitReady(wctx); err != nil {
		select {
		case <-b.done:
			return nil, fmt.Errorf("%w: exited: %v; log: %s", ErrBalancer, b.waitErr, b.lastLog())
		default:
		}
		b.stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: not ready after 15 s (%v); log: %s", ErrBalancer, err, b.lastLog())
	}
	return b, nil
}

// control returns a client of the balancer's control socket.
func (b *balancer) control() *control.Client { return control.Dial(b.statsFile + ".sock") }

// spawn starts cmd (an `ip netns exec`, possibly through taskset, which
// both exec the program, so the pid is the program's own), registers it so
// close stops it, keeps the last lines of its stderr for error messages
// (echoed under label with -v) and passes each line to onLine (may be nil).
// The returned process's done closes once it has exited.
func (e *env) spawn(cmd *exec.Cmd, label string, onLine func(string)) (*balancer, error) {
	b := &balancer{cmd: cmd, done: make(chan struct{})}
	pr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b.pid = cmd.Process.Pid
	e.mu.Lock()
	e.procs = append(e.procs, b)
	e.mu.Unlock()
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			b.mu.Lock()
			b.tail = append(b.tail, line)
			if len(b.tail) > 20 {
				b.tail = b.tail[1:]
			}
			b.mu.Unlock()
			if e.opts.Verbose {
				e.logf("  %s: %s", label, line)
			}
			if onLine != nil {
				onLine(line)
			}
		}
	}()
	go func() {
		<-logDone // Wait closes the pipe: read it to the end first (os/exec)
		b.waitErr = cmd.Wait()
		close(b.done)
	}()
	return b, nil
}

// readyMembers counts the members the balancer's status marks ready.
func (b *balancer) readyMembers() (int, error) {
	st, err := b.control().Status()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range st.Members {
		if m.Ready {
			n++
		}
	}
	return n, nil
}

func (b *balancer) lastLog() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.tail, " | ")
}

// alive reports whether the process still runs.
func (b *balancer) alive() bool {
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// stop ends the balancer with SIGTERM (its normal shutdown) and SIGKILL
// after five seconds.
func (b *balancer) stop() {
	if !b.alive() {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

// stopBalancer stops the env's current balancer.
func (e *env) stopBalancer() {
	e.mu.Lock()
	b := e.bal
	e.bal = nil
	e.mu.Unlock()
	if b != nil {
		b.stop()
	}
}

func (e *env) logf(format string, args ...any) {
	if e.opts.Logf != nil {
		e.opts.Logf(format, args...)
	}
}

func haveTaskset() bool {
	_, err := exec.LookPath("taskset")
	return err == nil
}
