package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Parameters of the failover scenario.
const (
	// failoverFlows long-lived TCP uploads run through the VIP.
	failoverFlows = 16
	// Each flow writes flowChunk bytes every flowPace (1.6 MB/s, 25 MB/s in
	// all): enough to see every 10 ms whether data moves, little enough
	// that the flows do not starve the cluster's own gossip on 2 CPUs.
	flowChunk = 16 << 10
	flowPace  = 10 * time.Millisecond
	// flowSndBuf caps each flow's send buffer, so a stalled path blocks the
	// writer within milliseconds instead of filling megabytes of
	// autotuned buffer (tcp(7) tcp_wmem).
	flowSndBuf = 64 << 10
	// sampleEvery is the timeline's sampling period and so the resolution
	// of the outage figure.
	sampleEvery = 20 * time.Millisecond
	// membershipPort is memberlist's default port, which `l2lb run --bind`
	// defaults to.
	membershipPort = 7946
	// settle is how long the flows run before and after each event.
	settle = 3 * time.Second
	// recoverLimit bounds the wait for a new active node.
	recoverLimit = 20 * time.Second
)

// ErrNoActive means no cluster node took the active role in time.
var ErrNoActive = errors.New("bench: no active node")

// clusterNode is one `l2lb run --peers` process.
type clusterNode struct {
	host *testbed.Host
	prio int
	proc *balancer
}

// flow is one long-lived client connection.
type flow struct {
	local netip.AddrPort
	conn  net.Conn
	dead  atomic.Bool
	ctr   *atomic.Uint64 // server-side received bytes
}

// sample is one point of the failover timeline.
type sample struct {
	t     time.Duration
	bytes uint64 // all flows' bytes received by the servers
	open  int    // flows not reset or failed
	per   []uint64
}

// active reports whether the node's status says it is the active node.
func (n *clusterNode) active() bool {
	st, err := n.proc.control().Status()
	return err == nil && st.Role == control.RoleActive
}

// waitActive waits for one of nodes (still running) to be active.
func waitActive(ctx context.Context, nodes []*clusterNode, limit time.Duration) (*clusterNode, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n.proc.alive() && n.active() {
				return n, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("%w within %v", ErrNoActive, limit)
}

// runFailover is one run of the failover scenario: a three-node cluster
// (f1 > f2 > f3 in priority), long-lived flows through the VIP, SIGTERM to
// the active node (a planned stop), then SIGKILL to the next active one
// (a crash).
func (e *env) runFailover(ctx context.Context, sc *Scenario) (err error) {
	sc.note("%d TCP uploads through the VIP at %d kB/%v each; outage = longest time no byte reached any server, sampled every %v; kept = flows that neither failed nor stalled (moved data in the last second)",
		failoverFlows, flowChunk>>10, flowPace, sampleEvery)
	// Every node is a frontend in cluster mode, so f1 holds the VIP again
	// for this scenario (the kernel-router setup took it away).
	vip32 := netip.PrefixFrom(e.vip, 32).String()
	if _, err := e.lb.RunIP("addr", "add", vip32, "dev", "lo"); err != nil {
		return err
	}
	defer e.lb.RunIP("addr", "del", vip32, "dev", "lo")
	if err := e.listenF1(); err != nil {
		return err
	}
	var peers []string
	hosts := append([]*testbed.Host{e.lb}, e.backends...)
	for _, h := range hosts {
		peers = append(peers, netip.AddrPortFrom(h.Addr, membershipPort).String())
	}
	var nodes []*clusterNode
	defer func() {
		for _, n := range nodes {
			n.proc.stop()
		}
	}()
	e.runN++
	for i, h := range hosts {
		n := &clusterNode{host: h, prio: 200 - 50*i}
		stats := filepath.Join(e.dir, fmt.Sprintf("cluster-%s-%d.json", h.Name, e.runN))
		args := []string{"run", "-i", "eth0", "-f", e.vipFile, "-p", "0", "--vmac", benchVMAC.String(),
			"--peers", strings.Join(peers, ","), "--priority", strconv.Itoa(n.prio), "--stats-file", stats}
		e.logf("failover: starting %s (priority %d)", h.Name, n.prio)
		if n.proc, err = e.startL2LB(ctx, h, stats, false, args); err != nil {
			return err
		}
		nodes = append(nodes, n)
		if i == 0 {
			// f1 alone first, so it is elected before the others join
			// (without --preempt they would otherwise keep the role).
			if _, err := waitActive(ctx, nodes, 10*time.Second); err != nil {
				return err
			}
		}
	}
	// Let membership and the sync channel settle, then check the roles.
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return err
	}
	first, err := waitActive(ctx, nodes, 5*time.Second)
	if err != nil {
		return err
	}

	flows, err := e.openFlows(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	var samples []sample
	var smu sync.Mutex
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tk := time.NewTicker(sampleEvery)
		defer tk.Stop()
		for {
			s := sample{t: time.Since(start), per: make([]uint64, len(flows))}
			for i, f := range flows {
				s.per[i] = f.ctr.Load()
				s.bytes += s.per[i]
				if !f.dead.Load() {
					s.open++
				}
			}
			smu.Lock()
			samples = append(samples, s)
			smu.Unlock()
			select {
			case <-tk.C:
			case <-stopSampling:
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for _, f := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.pump()
		}()
	}
	defer func() {
		for _, f := range flows {
			f.conn.Close()
		}
		wg.Wait()
	}()

	type event struct {
		at    time.Duration
		label string
	}
	var events []event
	if err := sleepCtx(ctx, settle); err != nil {
		return err
	}
	// Planned stop of the active node.
	events = append(events, event{time.Since(start), "SIGTERM " + first.host.Name})
	e.logf("failover: SIGTERM to the active node %s", first.host.Name)
	first.proc.cmd.Process.Signal(syscall.SIGTERM)
	second, err := waitActive(ctx, without(nodes, first), recoverLimit)
	if err != nil {
		return err
	}
	if err := sleepCtx(ctx, settle); err != nil {
		return err
	}
	// Crash of the new active node.
	events = append(events, event{time.Since(start), "SIGKILL " + second.host.Name})
	e.logf("failover: SIGKILL to the active node %s", second.host.Name)
	second.proc.cmd.Process.Signal(syscall.SIGKILL)
	if _, err := waitActive(ctx, without(without(nodes, first), second), recoverLimit); err != nil {
		return err
	}
	if err := sleepCtx(ctx, settle); err != nil {
		return err
	}
	end := time.Since(start)
	close(stopSampling)
	<-sampled

	smu.Lock()
	defer smu.Unlock()
	for i, ev := range events {
		until := end
		if i+1 < len(events) {
			until = events[i+1].at
		}
		out, recovered := outage(samples, ev.at, until)
		kind := strings.Fields(ev.label)[0]
		if !recovered {
			sc.note("run %d: traffic did not resume after %s", e.runN, ev.label)
		}
		sc.add(kind+" outage", "ms", float64(out.Milliseconds()))
		sc.add(kind+" flows kept", "flows", float64(keptAt(samples, until)))
	}
	sc.add("flows", "flows", failoverFlows)
	if e.opts.PlotDir != "" {
		tl := timeline(samples, len(flows))
		tl.Title = fmt.Sprintf("l2lb failover, run %d: %d flows through %s", e.runN, len(flows), e.vip)
		for _, ev := range events {
			tl.Markers = append(tl.Markers, Marker{T: ev.at.Seconds(), Label: ev.label})
		}
		path := filepath.Join(e.opts.PlotDir, fmt.Sprintf("failover-%d.svg", e.runN))
		if err := os.WriteFile(path, tl.SVG(), 0o644); err != nil {
			return err
		}
		e.logf("failover: plot written to %s", path)
	}
	return nil
}

// listenF1 makes f1 serve the bench's protocols on the VIP (once).
func (e *env) listenF1() error {
	e.mu.Lock()
	done := e.f1Serving
	e.f1Serving = true
	e.mu.Unlock()
	if done {
		return nil
	}
	ln, err := e.lb.ListenTCP(netip.AddrPortFrom(e.vip, transferPort))
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.listeners = append(e.listeners, ln)
	e.mu.Unlock()
	go e.serve(ln, transferPort)
	return nil
}

// openFlows connects the long-lived flows and finds each one's server-side
// counter.
func (e *env) openFlows(ctx context.Context) ([]*flow, error) {
	var flows []*flow
	fail := func(err error) ([]*flow, error) {
		for _, f := range flows {
			f.conn.Close()
		}
		return nil, err
	}
	for range failoverFlows {
		c, err := e.client.DialTCP(netip.AddrPort{}, netip.AddrPortFrom(e.vip, transferPort), 5*time.Second)
		if err != nil {
			return fail(err)
		}
		c.(*net.TCPConn).SetWriteBuffer(flowSndBuf)
		f := &flow{local: c.LocalAddr().(*net.TCPAddr).AddrPort(), conn: c}
		flows = append(flows, f)
		if _, err := c.Write([]byte{'F'}); err != nil {
			return fail(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, f := range flows {
		for {
			if v, ok := e.flowRx.Load(f.local); ok {
				f.ctr = v.(*atomic.Uint64)
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fail(fmt.Errorf("%w: no server saw the flow from %v", ErrTransfer, f.local))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return flows, nil
}

// pump writes to the flow at its pace until the connection fails or is
// closed.
func (f *flow) pump() {
	buf := make([]byte, flowChunk)
	next := time.Now()
	for {
		if _, err := f.conn.Write(buf); err != nil {
			f.dead.Store(true)
			return
		}
		next = next.Add(flowPace)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		} else {
			next = time.Now()
		}
	}
}

// outage returns the longest time in [from, until] during which the servers
// received nothing, measured between the samples that saw progress, and
// whether traffic was moving again in the last recoveredWithin of the
// window; if not, the outage runs to the end of the window.
func outage(ss []sample, from, until time.Duration) (time.Duration, bool) {
	var worst time.Duration
	last := time.Duration(-1)
	for i := 1; i < len(ss); i++ {
		s := ss[i]
		if s.t < from-sampleEvery || s.t > until {
			continue
		}
		if last < 0 {
			last = ss[i-1].t
		}
		if s.bytes > ss[i-1].bytes {
			worst = max(worst, s.t-last)
			last = s.t
		}
	}
	if last < 0 {
		return 0, false
	}
	if until-last > recoveredWithin {
		return max(worst, until-last), false
	}
	return worst, true
}

// recoveredWithin: traffic that moved this close to the end of a window
// counts as flowing; it is ten sampling periods, so scheduling jitter of
// the sampler on a busy machine does not read as a stall.
const recoveredWithin = 10 * sampleEvery

// keptAt counts the flows that are open and moved data in the second
// before t.
func keptAt(ss []sample, t time.Duration) int {
	var a, b *sample
	for i := range ss {
		if ss[i].t <= t-time.Second {
			a = &ss[i]
		}
		if ss[i].t <= t {
			b = &ss[i]
		}
	}
	if a == nil || b == nil {
		return 0
	}
	n := 0
	for i := range b.per {
		if b.per[i] > a.per[i] {
			n++
		}
	}
	return min(n, b.open)
}

// timeline turns samples into 100 ms throughput buckets and flow counts.
func timeline(ss []sample, nflows int) *Timeline {
	const bucket = 100 * time.Millisecond
	thr := Series{Name: "delivered throughput", Unit: "Mbit/s", Color: "#1f77b4"}
	open := Series{Name: "connections open", Unit: "flows", Color: "#2ca02c"}
	moving := Series{Name: "connections moving data (last 200 ms)", Unit: "flows", Color: "#ff7f0e"}
	j := 0
	for i := range ss {
		if ss[i].t-ss[j].t >= bucket {
			d := (ss[i].t - ss[j].t).Seconds()
			thr.Points = append(thr.Points, Point{ss[i].t.Seconds(), float64(ss[i].bytes-ss[j].bytes) * 8 / d / 1e6})
			j = i
		}
		open.Points = append(open.Points, Point{ss[i].t.Seconds(), float64(ss[i].open)})
		k := i
		for k > 0 && ss[i].t-ss[k].t < 200*time.Millisecond {
			k--
		}
		n := 0
		for f := 0; f < nflows && f < len(ss[i].per); f++ {
			if ss[i].per[f] > ss[k].per[f] {
				n++
			}
		}
		moving.Points = append(moving.Points, Point{ss[i].t.Seconds(), float64(n)})
	}
	return &Timeline{Series: []Series{thr, open, moving}}
}

func without(ns []*clusterNode, x *clusterNode) []*clusterNode {
	var out []*clusterNode
	for _, n := range ns {
		if n != x {
			out = append(out, n)
		}
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
