package ops

import (
	"bytes"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// finTimeout is the balancer's --tcpfin-timeout in the drain test. A
// finished TCP flow stays in the table for the closing timeout (IPVS'
// default is 120 s) and `drain --wait` waits for it; 2 s keeps the test
// short without changing what is tested.
const finTimeout = 2 * time.Second

// loadConn is one connection of the background load.
type loadConn struct {
	start time.Time
	name  string
	err   error
}

// load opens NAME connections to the VIP from every source until stopped,
// each from a source port of its own (see uniquePort).
type load struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	n     atomic.Int64
	mu    sync.Mutex
	conns []loadConn
}

func startLoad(workers int, raddr netip.AddrPort) *load {
	l := &load{stopc: make(chan struct{})}
	srcs := sources()
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stopc:
					return
				default:
				}
				s := srcs[int(l.n.Add(1))%len(srcs)]
				start := time.Now()
				_, name, err := askOnce(s, raddr)
				l.mu.Lock()
				l.conns = append(l.conns, loadConn{start, name, err})
				l.mu.Unlock()
				// A steady few hundred connections a second: enough load,
				// and CPU left for the balancer on a small machine.
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	return l
}

func (l *load) stop() []loadConn {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]loadConn(nil), l.conns...)
}

// Issue 6, acceptance 2: a drain under load. With connections opening all
// the time and long downloads in progress, `l2lb drain MEMBER --wait`
// quiesces the member at once (no new connection reaches it), lets its
// established connections finish normally (every download completes with
// the right SHA-256), and returns only once they are gone.
//
// Persistence is off (-p 0): with -p N, IPVS semantics (kept by l2lb) send
// a persistent client's new connections to its quiesced member while its
// template lives, which drain --wait then also waits for.
func TestDrainUnderLoad(t *testing.T) {
	needBed(t)
	b := startBalancer(t, "-p", "0", "--tcpfin-timeout", finTimeout.String())
	drained := suite.Bed.Frontends[1] // f2: a forwarded member, not the balancer itself
	raddr := netip.AddrPortFrom(vip(), tcpPort)

	l := startLoad(4, raddr)
	defer l.stop()

	// Long downloads, read slowly so that they stay established through the
	// drain; `l2lb conns --member` tells which ones the drained member serves.
	const size = 32 << 20
	var downloads []*download
	defer func() {
		for _, d := range downloads {
			d.finish(30 * time.Second)
		}
	}()
	onDrained := map[*download]bool{}
	srcs := sources()
	for i := 0; i < 30 && len(onDrained) < 2; i++ {
		d, err := startDownload(srcs[i%len(srcs)], raddr, size)
		if err != nil {
			t.Fatal(err)
		}
		downloads = append(downloads, d)
		if len(downloads) >= 6 {
			rows := b.connsOf(t, "--member", drained.Addr.String())
			for _, d := range downloads {
				if rows[d.local.String()] == "ESTABLISHED" {
					onDrained[d] = true
				}
			}
		}
	}
	if len(onDrained) < 2 {
		t.Fatalf("none of %d downloads but %d landed on %s; the test needs two", len(downloads), len(onDrained), drained.Name)
	}
	t.Logf("%d downloads, %d of them on %s", len(downloads), len(onDrained), drained.Name)
	time.Sleep(500 * time.Millisecond) // some load before the drain

	// The drain, in the background as an operator would run it.
	drainStart := time.Now()
	cmd := exec.Command(suite.Bin, "drain", "--control", b.ctl, "--wait", "--timeout", "60s", drained.Addr.String())
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	drainDone := make(chan error, 1)
	var drainEnd atomic.Int64
	go func() {
		err := cmd.Wait()
		drainEnd.Store(time.Now().UnixNano())
		drainDone <- err
	}()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	}()

	// "At once": the weight is 0 as soon as the command has talked to the
	// balancer.
	var quiesced time.Time
	for {
		st := b.status(t)
		if member(t, st, drained.Addr).Weight == 0 {
			quiesced = time.Now()
			break
		}
		if time.Since(drainStart) > 2*time.Second {
			t.Fatalf("%s still has weight %d 2 s after `l2lb drain` started", drained.Addr, member(t, st, drained.Addr).Weight)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%s quiesced %v after the drain command started", drained.Name, quiesced.Sub(drainStart).Round(time.Millisecond))

	// Load goes on for 2 s against the quiesced member; its downloads are
	// still established and drain --wait is still waiting.
	time.Sleep(2 * time.Second)
	rows := b.connsOf(t, "--member", drained.Addr.String())
	for d := range onDrained {
		if st := rows[d.local.String()]; st != "ESTABLISHED" {
			t.Errorf("download %v on the drained %s is %q in `l2lb conns`, want ESTABLISHED", d.local, drained.Name, st)
		}
	}
	select {
	case err := <-drainDone:
		drainDone <- err
		t.Fatalf("drain --wait returned while downloads on %s were still established: %v\n%s%s", drained.Name, err, out.String(), errOut.String())
	default:
	}
	conns := l.stop()

	// Release the downloads: every one completes with the right bytes.
	var lastOnDrained time.Time
	for _, d := range downloads {
		if err := d.finish(30 * time.Second); err != nil {
			t.Errorf("download %v (on %s: %v): %v", d.local, drained.Name, onDrained[d], err)
		}
		if end := time.Unix(0, d.ended.Load()); onDrained[d] && end.After(lastOnDrained) {
			lastOnDrained = end
		}
	}

	// New connections stopped reaching the drained member at once, and
	// none of the load failed.
	var after, afterOnDrained, before, beforeOnDrained, failed int
	for _, c := range conns {
		switch {
		case c.err != nil:
			failed++
			if failed <= 5 {
				t.Errorf("load connection started %v after the drain: %v", c.start.Sub(drainStart).Round(time.Millisecond), c.err)
			}
		case c.start.After(quiesced):
			after++
			if c.name == drained.Name {
				afterOnDrained++
			}
		case c.start.Before(drainStart):
			before++
			if c.name == drained.Name {
				beforeOnDrained++
			}
		}
	}
	t.Logf("load: %d connections before the drain (%d on %s), %d after the weight was 0 (%d on %s), %d failed",
		before, beforeOnDrained, drained.Name, after, afterOnDrained, drained.Name, failed)
	if failed > 0 {
		t.Errorf("%d of %d load connections failed", failed, len(conns))
	}
	if beforeOnDrained == 0 {
		t.Errorf("no load connection reached %s before the drain; the test proves nothing", drained.Name)
	}
	if after < 50 {
		t.Errorf("only %d load connections after the drain; want at least 50", after)
	}
	if afterOnDrained > 0 {
		t.Errorf("%d of %d new connections opened after %s was quiesced still reached it", afterOnDrained, after, drained.Name)
	}

	// drain --wait returns once the member's flows are gone: after its
	// last download ended, within the closing timeout plus its polling.
	select {
	case err := <-drainDone:
		if err != nil {
			t.Fatalf("l2lb drain --wait: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
		}
	case <-time.After(finTimeout + 20*time.Second):
		t.Fatalf("l2lb drain --wait did not return %v after the downloads ended\nstdout:\n%s", finTimeout+20*time.Second, out.String())
	}
	ended := time.Unix(0, drainEnd.Load())
	t.Logf("drain --wait returned %v after the last download on %s ended; output:\n%s",
		ended.Sub(lastOnDrained).Round(time.Millisecond), drained.Name, out.String())
	if ended.Before(lastOnDrained) {
		t.Errorf("drain --wait returned %v before the last download on %s ended", lastOnDrained.Sub(ended), drained.Name)
	}
	// The flow goes on for finTimeout after the client's FIN; the drain
	// polls every 0.5 s and the table sweeps expired entries periodically.
	if slack := finTimeout + 5*time.Second; ended.Sub(lastOnDrained) > slack {
		t.Errorf("drain --wait returned %v after the last download on %s ended, want within %v",
			ended.Sub(lastOnDrained), drained.Name, slack)
	}
	if !strings.Contains(out.String(), "drained") {
		t.Errorf("drain --wait output does not say the member is drained:\n%s", out.String())
	}
	m := member(t, b.status(t), drained.Addr)
	if m.Flows != 0 || m.Templates != 0 || m.Weight != 0 {
		t.Errorf("after drain --wait, %s has %d flows, %d templates, weight %d; want 0, 0, 0", drained.Addr, m.Flows, m.Templates, m.Weight)
	}
}
