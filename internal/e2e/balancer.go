package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Balancer is an `l2lb run` process in a testbed namespace whose standard error is kept,
// line by line, for the test's messages.
type Balancer struct {
	// Cmd is the process.
	Cmd *exec.Cmd
	// Control is its control socket.
	Control string
	// VMAC is what a client's ARP for the VIP resolved to (set by ResolveVIP).
	VMAC net.HardwareAddr

	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done

	mu  sync.Mutex
	log []string
}

// StartBalancer starts bin with args in h's namespace and keeps its standard error. Unless args
// name a control socket (--control PATH), one in a temporary directory is added. The caller
// stops it (Stop), normally from a t.Cleanup registered right away, and waits for it to be ready
// (WaitReady).
func StartBalancer(t *testing.T, h *testbed.Host, bin string, args []string) *Balancer {
	t.Helper()
	b := &Balancer{done: make(chan struct{})}
	for i, a := range args {
		if a == "--control" && i+1 < len(args) {
			b.Control = args[i+1]
		}
	}
	if b.Control == "" {
		b.Control = filepath.Join(t.TempDir(), "control.sock")
		args = append(args[:1:1], append([]string{"--control", b.Control}, args[1:]...)...)
	}
	b.Cmd = h.Command(bin, args...)
	stderr, err := b.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("starting in %s: l2lb %s", h.NS, strings.Join(args, " "))
	if err := b.Cmd.Start(); err != nil {
		t.Fatalf("starting l2lb: %v", err)
	}
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			b.mu.Lock()
			b.log = append(b.log, sc.Text())
			b.mu.Unlock()
		}
	}()
	go func() {
		<-logDone // Wait must not run before the pipe is drained (os/exec docs)
		b.waitErr = b.Cmd.Wait()
		close(b.done)
	}()
	return b
}

// WaitReady fails the test unless the balancer reports ready on its control socket within
// 10 s.
func (b *Balancer) WaitReady(t *testing.T) {
	t.Helper()
	if err := WaitReady(b.Control, 10*time.Second, b.done); err != nil {
		t.Fatalf("%v (exit: %v)\nlog:\n%s", err, b.WaitErr(), b.LogText())
	}
}

// ResolveVIP resolves vip by ARP from client until it is answered, and keeps the answer in
// VMAC; it fails the test if no answer came by deadline or the balancer exited.
func (b *Balancer) ResolveVIP(t *testing.T, client *testbed.Host, vip netip.Addr, deadline time.Time) {
	t.Helper()
	for {
		mac, err := client.ARPResolve(vip)
		if err == nil {
			b.VMAC = mac
			return
		}
		if time.Now().After(deadline) || !b.Running() {
			t.Fatalf("nobody answers ARP for the VIP %v: %v\nlog:\n%s", vip, err, b.LogText())
		}
	}
}

// LogText returns the last 200 lines of the balancer's standard error.
func (b *Balancer) LogText() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := b.log
	if len(lines) > 200 {
		lines = lines[len(lines)-200:]
	}
	return strings.Join(lines, "\n")
}

// LogContains reports whether a line of the balancer's log contains all of parts.
func (b *Balancer) LogContains(parts ...string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range b.log {
		ok := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// Running reports whether the process has not exited yet.
func (b *Balancer) Running() bool {
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// WaitErr returns how the process exited; it is meaningful once Running reports false.
func (b *Balancer) WaitErr() error {
	if b.Running() {
		return nil
	}
	return b.waitErr
}

// Stop sends SIGTERM and fails the test unless the balancer exits 0 within 10 s (it is
// killed then). Before that it waits (WaitClosed) for the connections of hosts that a
// test closed to finish their FIN/ACK exchange through the balancer: stopping it earlier
// leaves half-closed connections retransmitting into the next test.
func (b *Balancer) Stop(t *testing.T, hosts ...*testbed.Host) {
	t.Helper()
	if b.Running() {
		if err := WaitClosed(hosts...); err != nil {
			t.Logf("note: before stopping l2lb: %v", err)
		}
	}
	if b.Running() {
		b.Cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-b.done:
		if b.waitErr != nil {
			t.Errorf("l2lb did not exit 0 on SIGTERM: %v", b.waitErr)
		}
		if race := RaceReport(b.LogText()); race != "" {
			t.Errorf("the race detector reported in l2lb:\n%s", race)
		}
	case <-time.After(10 * time.Second):
		b.Cmd.Process.Kill()
		<-b.done
		t.Errorf("l2lb still running 10 s after SIGTERM; killed")
	}
}

// WaitReady waits up to limit until the balancer serving the control socket at path reports
// ready (control.Client.WaitReady), or fails early when exited is closed (the process ended).
// It is the one way the end-to-end tests wait for a balancer: no log text is parsed.
func WaitReady(path string, limit time.Duration, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	if _, err := control.Dial(path).WaitReady(ctx); err != nil {
		select {
		case <-exited:
			return fmt.Errorf("l2lb exited before it was ready (%w)", err)
		default:
		}
		return fmt.Errorf("l2lb not ready within %v: %w", limit, err)
	}
	return nil
}
