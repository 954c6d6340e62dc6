// Package demo is the scenario of `l2lb demo`: it builds a throw-away namespace testbed (a switch,
// two clients, three frontends with an IPv4 and an IPv6 VIP on lo), runs `l2lb run` on frontend 1
// as the active balancer for both VIPs, sends real TCP and UDP through each VIP, over IPv4 and over
// IPv6, and reports where it went. Everything it creates is removed at the end, also on Ctrl-C;
// nothing on the host changes.
package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Options configure the demo.
type Options struct {
	// Binary is the l2lb executable run as the balancer.
	Binary string
	// Conns is the number of TCP connections opened through each VIP (IPv4 and IPv6).
	Conns int
	// Persistence and SelfWeight are passed to l2lb run as -p and -r.
	Persistence, SelfWeight int
	// Keep keeps the testbed and the balancer until Ctrl-C.
	Keep bool
}

// readyWait bounds the wait for the balancer's control socket to report it ready, with every
// member's MAC resolved.
const readyWait = 10 * time.Second

// Run runs the demo, writing the report to stdout and progress and the balancer's log to stderr.
func Run(o Options, stdout, stderr io.Writer) error {
	logf := func(f string, a ...any) { fmt.Fprintf(stderr, "demo: "+f+"\n", a...) }
	logf("building the testbed (namespaces l2lb-%d-*)", os.Getpid())
	bed, err := testbed.New(testbed.Options{Logf: func(f string, a ...any) {}})
	if err != nil {
		return err
	}
	var closeOnce sync.Once
	cleanup := func() { closeOnce.Do(func() { bed.Close(); logf("testbed removed") }) }
	defer cleanup()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		if _, ok := <-sig; ok {
			logf("interrupted: cleaning up")
			cleanup()
			os.Exit(130)
		}
	}()

	vip, vip6 := bed.VIPs[0], bed.VIPs6[0]
	dir, err := os.MkdirTemp("", "l2lb-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	vipFile := filepath.Join(dir, "vipaddrs")
	if err := os.WriteFile(vipFile, []byte("# demo VIPs\n"+vip.String()+"\n"+vip6.String()+"\n"), 0o644); err != nil {
		return err
	}
	for _, f := range bed.Frontends {
		for _, v := range []netip.Addr{vip, vip6} {
			if _, err := f.ServeName(v, []uint16{25}, []uint16{5060}); err != nil {
				return err
			}
		}
	}
	f1 := bed.Frontends[0]
	ctl := filepath.Join(dir, "control.sock")
	runArgs := []string{"run", "-i", f1.Ifname, "-f", vipFile, "-p", strconv.Itoa(o.Persistence),
		"-r", strconv.Itoa(o.SelfWeight), "--control", ctl}
	for _, f := range bed.Frontends {
		runArgs = append(runArgs, "--member", f.Addr.String())
	}
	logf("starting: ip netns exec %s l2lb %s", f1.NS, strings.Join(runArgs, " "))
	bal, err := startBalancer(f1, o.Binary, runArgs, stderr)
	if err != nil {
		return err
	}
	defer func() {
		bal.Process.Signal(syscall.SIGTERM)
		bal.Wait()
	}()
	client := control.Dial(ctl)
	if err := waitMembers(client, len(bed.Frontends)); err != nil {
		return err
	}

	// The same traffic through each VIP, from every address of the clients of its family; the
	// clients find the IPv4 VIP's MAC by ARP and the IPv6 VIP's by neighbour discovery.
	v4, v6 := &family{vip: vip}, &family{vip: vip6}
	for _, c := range bed.Clients {
		v4.srcs = append(v4.srcs, source{c, c.Addr})
		for _, x := range c.Extra {
			v4.srcs = append(v4.srcs, source{c, x})
		}
		v6.srcs = append(v6.srcs, source{c, c.Addr6})
		for _, x := range c.Extra6 {
			v6.srcs = append(v6.srcs, source{c, x})
		}
	}
	var failures int
	families := []*family{v4, v6}
	for _, fam := range families {
		fam.tcp, fam.udp = map[string]int{}, map[string]int{}
		start := time.Now()
		for i := 0; i < o.Conns; i++ {
			s := fam.srcs[i%len(fam.srcs)]
			name, err := s.h.AskName(s.addr, netip.AddrPortFrom(fam.vip, 25))
			if err != nil {
				failures++
				continue
			}
			fam.tcp[name]++
		}
		fam.elapsed = time.Since(start)
		for i := 0; i < 60; i++ {
			s := fam.srcs[i%len(fam.srcs)]
			name, err := s.h.UDPAsk(s.addr, netip.AddrPortFrom(fam.vip, 5060), 3000)
			if err != nil {
				failures++
				continue
			}
			fam.udp[strings.Fields(name)[0]]++
		}
		c1 := bed.Clients[0]
		_, fam.dlErr = c1.Download(netip.Addr{}, netip.AddrPortFrom(fam.vip, 25), 20<<20)
		_, fam.ulErr = c1.Upload(netip.Addr{}, netip.AddrPortFrom(fam.vip, 25), 20<<20)
	}

	fmt.Fprintf(stdout, "\nl2lb demo: VIPs %s and %s balanced by %s (%s, %s), members %d, -p %d, -r %d\n\n", vip, vip6, f1.Name,
		f1.Addr, f1.Addr6, len(bed.Frontends), o.Persistence, o.SelfWeight)
	fmt.Fprintf(stdout, "%-10s %-14s %-16s %6s %6s %6s %6s\n", "frontend", "address", "address6", "tcp", "udp", "tcp6", "udp6")
	var names []string
	for _, f := range bed.Frontends {
		names = append(names, f.Name)
	}
	sort.Strings(names)
	for _, n := range names {
		h := bed.Host(n)
		fmt.Fprintf(stdout, "%-10s %-14s %-16s %6d %6d %6d %6d\n", n, h.Addr, h.Addr6, v4.tcp[n], v4.udp[n], v6.tcp[n], v6.udp[n])
	}
	fmt.Fprintf(stdout, "\n%d TCP connections over IPv4 in %v (%.0f/s), %d over IPv6 in %v (%.0f/s); 60 UDP datagrams of 3000 bytes (fragmented) each; %d failures\n",
		o.Conns, v4.elapsed.Round(time.Millisecond), float64(o.Conns)/v4.elapsed.Seconds(),
		o.Conns, v6.elapsed.Round(time.Millisecond), float64(o.Conns)/v6.elapsed.Seconds(), failures)
	for _, fam := range families {
		fmt.Fprintf(stdout, "20 MB download through %s: %s; 20 MB upload: %s\n", netip.AddrPortFrom(fam.vip, 25), okOr(fam.dlErr), okOr(fam.ulErr))
	}
	if st, err := client.Status(); err == nil {
		flows := fmt.Sprint(st.Table.Flows)
		c4, err4 := client.Conns(vip, netip.Addr{})
		c6, err6 := client.Conns(vip6, netip.Addr{})
		if err4 == nil && err6 == nil {
			flows = fmt.Sprintf("%d (IPv4 %d, IPv6 %d)", st.Table.Flows, len(c4), len(c6))
		}
		fmt.Fprintf(stdout, "balancer: forwarded %d, local %d, arp replies %d, ndp replies %d, flows in the table %s, drops %v\n",
			st.Verdicts["forwarded"], st.Verdicts["local"], st.ARP.Replies, st.ARP.NDPReplies, flows, st.Drops)
	}
	if o.Keep {
		logf("testbed kept; try:  l2lb status --control %s   l2lb conns --vip %s --control %s", ctl, vip6, ctl)
		logf("  metrics and status page: ip netns exec %s curl -s http://127.0.0.1:9781/metrics", f1.NS)
		logf("Ctrl-C removes the testbed")
		select {}
	}
	for _, fam := range families {
		if fam.dlErr != nil || fam.ulErr != nil {
			failures++
		}
	}
	if failures > 0 {
		return fmt.Errorf("%d requests failed", failures)
	}
	return nil
}

// source is a client address connections are made from.
type source struct {
	h    *testbed.Host
	addr netip.Addr
}

// family is what the demo sent through one VIP, from where, and where it went.
type family struct {
	vip          netip.Addr
	srcs         []source       // the client addresses of the VIP's family
	tcp, udp     map[string]int // answers per frontend
	elapsed      time.Duration  // for the TCP connections
	dlErr, ulErr error          // the 20 MB download and upload
}

// waitMembers waits until the balancer reports ready with n members, every one ready (its MAC
// resolved, or local).
func waitMembers(c *control.Client, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyWait)
	defer cancel()
	if _, err := c.WaitReady(ctx); err != nil {
		return fmt.Errorf("balancer not ready: %w", err)
	}
	for {
		st, err := c.Status()
		if err == nil && len(st.Members) == n && allReady(st) {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("balancer did not resolve every member's MAC within " + readyWait.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func allReady(st control.Status) bool {
	for _, m := range st.Members {
		if !m.Ready {
			return false
		}
	}
	return true
}

func okOr(err error) string {
	if err != nil {
		return "FAILED: " + err.Error()
	}
	return "ok (sha256 verified)"
}

// startBalancer runs the balancer in h's namespace and copies its log to logw.
func startBalancer(h *testbed.Host, exe string, args []string, logw io.Writer) (*exec.Cmd, error) {
	cmd := h.Command(exe, args...)
	pr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintln(logw, "  l2lb:", sc.Text())
		}
	}()
	return cmd, nil
}
