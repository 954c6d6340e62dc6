package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// cmdDemo builds a namespace testbed (a switch, two clients, three frontends with the VIP on lo),
// runs `l2lb run` on frontend 1 as the active balancer, sends real TCP and UDP traffic through the
// VIP and prints where it went. Everything it creates is removed at the end, also on Ctrl-C.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", stderr)
	conns := fs.Int("conns", 300, "TCP connections to open through the VIP")
	persist := fs.Int("p", 0, "persistence seconds passed to l2lb run")
	self := fs.Int("r", 100, "weight of frontend 1 (the active balancer) passed to l2lb run")
	keep := fs.Bool("keep", false, "keep the testbed and the balancer running until Ctrl-C")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "l2lb demo: must run as root (it builds network namespaces); try: sudo l2lb demo")
		return 1
	}
	if err := demo(stdout, stderr, *conns, *persist, *self, *keep); err != nil {
		fmt.Fprintln(stderr, "l2lb demo:", err)
		return 1
	}
	return 0
}

func demo(stdout, stderr io.Writer, conns, persist, self int, keep bool) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
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

	vip := bed.VIPs[0]
	dir, err := os.MkdirTemp("", "l2lb-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	vipFile := filepath.Join(dir, "vipaddrs")
	if err := os.WriteFile(vipFile, []byte("# demo VIPs\n"+vip.String()+"\n"), 0o644); err != nil {
		return err
	}
	for _, f := range bed.Frontends {
		if _, err := f.ServeName(vip, []uint16{25}, []uint16{5060}); err != nil {
			return err
		}
	}
	f1 := bed.Frontends[0]
	statsFile := filepath.Join(dir, "stats.json")
	ctl := filepath.Join(dir, "control.sock")
	runArgs := []string{"run", "-i", f1.Ifname, "-f", vipFile, "-p", strconv.Itoa(persist), "-r", strconv.Itoa(self),
		"--stats-file", statsFile, "--control", ctl}
	for _, f := range bed.Frontends {
		runArgs = append(runArgs, "--member", f.Addr.String())
	}
	logf("starting: ip netns exec %s l2lb %s", f1.NS, strings.Join(runArgs, " "))
	bal, ready, err := startBalancer(f1, exe, runArgs, stderr)
	if err != nil {
		return err
	}
	defer func() {
		bal.Process.Signal(syscall.SIGTERM)
		bal.Wait()
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		return errors.New("balancer not ready after 10 s")
	}
	// Give the balancer a moment to resolve the frontends' MACs by ARP.
	time.Sleep(1500 * time.Millisecond)

	counts := map[string]int{}
	var failures int
	srcs := []struct {
		h    *testbed.Host
		addr netip.Addr
	}{}
	for _, c := range bed.Clients {
		srcs = append(srcs, struct {
			h    *testbed.Host
			addr netip.Addr
		}{c, c.Addr})
		for _, x := range c.Extra {
			srcs = append(srcs, struct {
				h    *testbed.Host
				addr netip.Addr
			}{c, x})
		}
	}
	start := time.Now()
	for i := 0; i < conns; i++ {
		s := srcs[i%len(srcs)]
		name, err := s.h.AskName(s.addr, netip.AddrPortFrom(vip, 25))
		if err != nil {
			failures++
			continue
		}
		counts[name]++
	}
	elapsed := time.Since(start)
	udp := map[string]int{}
	for i := 0; i < 60; i++ {
		s := srcs[i%len(srcs)]
		name, err := s.h.UDPAsk(s.addr, netip.AddrPortFrom(vip, 5060), 3000)
		if err != nil {
			failures++
			continue
		}
		udp[strings.Fields(name)[0]]++
	}
	c1 := bed.Clients[0]
	dlErr := func() error { _, err := c1.Download(netip.Addr{}, netip.AddrPortFrom(vip, 25), 20<<20); return err }()
	ulErr := func() error { _, err := c1.Upload(netip.Addr{}, netip.AddrPortFrom(vip, 25), 20<<20); return err }()

	fmt.Fprintf(stdout, "\nl2lb demo: VIP %s balanced by %s (%s), members %d, -p %d, -r %d\n\n", vip, f1.Name, f1.Addr,
		len(bed.Frontends), persist, self)
	fmt.Fprintf(stdout, "%-10s %-14s %8s %8s\n", "frontend", "address", "tcp", "udp")
	var names []string
	for _, f := range bed.Frontends {
		names = append(names, f.Name)
	}
	sort.Strings(names)
	for _, n := range names {
		h := bed.Host(n)
		fmt.Fprintf(stdout, "%-10s %-14s %8d %8d\n", n, h.Addr, counts[n], udp[n])
	}
	fmt.Fprintf(stdout, "\n%d TCP connections in %v (%.0f/s), %d failures\n", conns, elapsed.Round(time.Millisecond),
		float64(conns)/elapsed.Seconds(), failures)
	fmt.Fprintf(stdout, "20 MB download through the VIP: %s; 20 MB upload: %s\n", okOr(dlErr), okOr(ulErr))
	time.Sleep(1100 * time.Millisecond) // let the balancer write a fresh stats snapshot
	if b, err := os.ReadFile(statsFile); err == nil {
		var snap statsSnapshot
		if json.Unmarshal(b, &snap) == nil {
			fmt.Fprintf(stdout, "balancer: forwarded %d, local %d, arp replies %d, new flows %d, drops %v\n",
				snap.Verdicts["forwarded"], snap.Verdicts["local"], snap.Verdicts["arp_reply"], snap.NewFlows, snap.Drops)
		}
	}
	if keep {
		logf("testbed kept; try:  l2lb status --control %s   l2lb conns --control %s", ctl, ctl)
		logf("  metrics and status page: ip netns exec %s curl -s http://127.0.0.1:9781/metrics", f1.NS)
		logf("Ctrl-C removes the testbed")
		select {}
	}
	if failures > 0 || dlErr != nil || ulErr != nil {
		return fmt.Errorf("%d requests failed", failures)
	}
	return nil
}

func okOr(err error) string {
	if err != nil {
		return "FAILED: " + err.Error()
	}
	return "ok (sha256 verified)"
}

// startBalancer runs `l2lb run` in h's namespace, copies its log to logw, and closes ready when it
// logs msg=ready.
func startBalancer(h *testbed.Host, exe string, args []string, logw io.Writer) (cmdProc, <-chan struct{}, error) {
	cmd := h.Command(exe, args...)
	pr, err := cmd.StderrPipe()
	if err != nil {
		return cmdProc{}, nil, err
	}
	if err := cmd.Start(); err != nil {
		return cmdProc{}, nil, err
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logw, "  l2lb:", line)
			if strings.Contains(line, "msg=ready") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	return cmdProc{cmd.Process, cmd.Wait}, ready, nil
}

type cmdProc struct {
	Process *os.Process
	Wait    func() error
}
