package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// iperfPort is the port the iperf3 servers listen on (iperf3's default).
const iperfPort = 5201

// iperfPersistence is the l2lb run -p the iperf3 leg runs the balancer with:
// an iperf3 test is a control connection plus a data connection, and both
// must reach the same server, as with any multi-connection protocol behind
// IPVS (its -p).
const iperfPersistence = "60"

// ErrIperf means an iperf3 transfer failed or reported no result.
var ErrIperf = errors.New("bench: iperf3 failed")

// iperfResult is the iperf3 leg of the tcp scenario: single-stream goodput
// in bits per second.
type iperfResult struct {
	version              string
	downDirect, upDirect float64
	// downDirectAgain is the direct download once more, after the transfers
	// through the VIP: the download ratios take the mean of the two as their
	// reference (downRef), so that a drift of the machine's speed during the
	// run weighs on the direct and the VIP side alike.
	downDirectAgain float64
	// downRouter and downRouterRPS are downloads with the client's packets
	// through f1 as a kernel router, inline and handed off by RPS.
	downRouter, downRouterRPS float64
	// vip holds the transfers through the VIP, by fast-path backend.
	vip map[string]iperfVIP
}

// iperfVIP is one backend's download and upload through the VIP, in bits
// per second.
type iperfVIP struct {
	down, up float64
}

// viaIperf3 measures a single-stream download and upload with iperf3 straight
// to the first backend and through the VIP (l2lb with workers workers and
// persistence, on each of backends in turn, in the same run), with client and
// server in processes of their own.
//
// Why beside the bench's own transfers: those run client and server as
// goroutines of this one process, sharing its Go scheduler, and their
// direct download swings from ~15 to ~29 Gbit/s between runs on 2 CPUs while
// the one through the VIP stays near 17. iperf3 is the tool operators
// compare with, and its two ends are separate processes, as two machines'
// would be.
func (e *env) viaIperf3(ctx context.Context, workers int, backends []string) (res iperfResult, err error) {
	out, err := exec.Command("iperf3", "--version").Output()
	if err != nil {
		return res, fmt.Errorf("%w: iperf3 --version: %w", ErrIperf, err)
	}
	res.version, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	stop, err := e.startIperfServers(ctx)
	if err != nil {
		return res, err
	}
	defer stop()
	direct := e.backends[0].Addr
	e.logf("tcp: download and upload direct, iperf3")
	if res.downDirect, err = e.iperf3(ctx, direct, true); err != nil {
		return res, err
	}
	if res.upDirect, err = e.iperf3(ctx, direct, false); err != nil {
		return res, err
	}
	if res.downRouter, res.downRouterRPS, err = e.iperfKernelRouter(ctx); err != nil {
		return res, err
	}
	res.vip = make(map[string]iperfVIP, len(backends))
	for _, b := range backends {
		v, err := e.iperf3VIP(ctx, b, workers)
		if err != nil {
			return res, err
		}
		res.vip[b] = v
	}
	e.logf("tcp: download direct again, iperf3")
	if res.downDirectAgain, err = e.iperf3(ctx, direct, true); err != nil {
		return res, err
	}
	return res, nil
}

// downRef is the reference of the download ratios: the mean of the direct
// downloads before and after the other legs (an A-B-A design). On this
// 2-CPU VM one direct iperf3 download varies by a quarter between runs
// (16.5 to 20.5 Gbit/s in one bench), and the legs it is compared with ran
// 6 to 20 s after it; bracketing them cancels a drift that is linear over
// the run, and the report shows the second against the first so the drift
// itself is visible.
func (r *iperfResult) downRef() float64 {
	if r.downDirectAgain > 0 {
		return (r.downDirect + r.downDirectAgain) / 2
	}
	return r.downDirect
}

// iperf3VIP runs the iperf3 download and upload through the VIP with l2lb on
// backend, and stops the balancer again.
func (e *env) iperf3VIP(ctx context.Context, backend string, workers int) (v iperfVIP, err error) {
	if _, err := e.startBalancer(ctx, backend, workers, "-p", iperfPersistence); err != nil {
		return v, err
	}
	defer e.stopBalancer()
	e.logf("tcp: download and upload via VIP, iperf3, %s", backend)
	if v.down, err = e.iperf3(ctx, e.vip, true); err != nil {
		return v, err
	}
	if v.up, err = e.iperf3(ctx, e.vip, false); err != nil {
		return v, err
	}
	return v, nil
}

// iperfKernelRouter measures the download through the VIP with f1 as the
// pps scenario's kernel router in the path of the client's packets (a
// permanent neighbour entry on the client sends the VIP to f1's MAC; the
// data comes straight from the backend, as through l2lb), first as it runs
// on veth and then with f1's receive processing handed to a CPU by RPS.
//
// Why both: on veth the router forwards inside the client's own send call,
// and the backend's ACK processing and next data run there too, so the
// client's receive queue is refilled before its read returns. A userspace
// forwarder is another thread, so its hop is asynchronous; RPS makes the
// kernel's hop asynchronous in the same way, as a real NIC's interrupt
// would, which makes it the fair reference for l2lb's download.
func (e *env) iperfKernelRouter(ctx context.Context) (inline, rps float64, err error) {
	if _, err := e.client.RunIP("neigh", "replace", e.vip.String(), "lladdr", e.lb.MAC.String(), "dev", "eth0", "nud", "permanent"); err != nil {
		return 0, 0, err
	}
	defer func() {
		// The client must ARP for the VIP again once l2lb answers for it.
		if _, derr := e.client.RunIP("neigh", "del", e.vip.String(), "dev", "eth0"); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	e.logf("tcp: download via kernel router, iperf3")
	if inline, err = e.iperf3(ctx, e.vip, true); err != nil {
		return 0, 0, err
	}
	if err := setRPS(e.lb, "eth0", allCPUsMask()); err != nil {
		return 0, 0, err
	}
	defer func() {
		if rerr := setRPS(e.lb, "eth0", "0"); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	e.logf("tcp: download via kernel router with RPS, iperf3")
	if rps, err = e.iperf3(ctx, e.vip, true); err != nil {
		return 0, 0, err
	}
	return inline, rps, nil
}

// startIperfServers starts `iperf3 -s` on every backend, waits until each
// listens, and returns the function that stops them.
func (e *env) startIperfServers(ctx context.Context) (stop func(), err error) {
	var cmds []*exec.Cmd
	stop = func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	}
	for _, h := range e.backends {
		// Pdeathsig in Host.Command: the server dies with the bench.
		c := h.Command("iperf3", "-s", "-p", strconv.Itoa(iperfPort))
		if err := c.Start(); err != nil {
			stop()
			return nil, fmt.Errorf("%w: server on %s: %w", ErrIperf, h.Name, err)
		}
		cmds = append(cmds, c)
	}
	for _, h := range e.backends {
		if err := waitListening(ctx, h, iperfPort, 5*time.Second); err != nil {
			stop()
			return nil, fmt.Errorf("%w: server on %s: %w", ErrIperf, h.Name, err)
		}
	}
	return stop, nil
}

// waitListening waits until a TCP socket in h's namespace listens on port.
// It reads the namespace's own /proc/thread-self/net/tcp and tcp6 instead of
// probing with a connection, which an iperf3 server would take for a test.
func waitListening(ctx context.Context, h *testbed.Host, port uint16, limit time.Duration) error {
	// Each line: slot, local address:port in hex, remote, state (0A is
	// TCP_LISTEN), as Documentation/networking/proc_net_tcp.rst lays it out.
	suffix := fmt.Sprintf(":%04X", port)
	deadline := time.Now().Add(limit)
	for {
		listening := false
		err := h.Do(func() error {
			for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
				b, err := os.ReadFile(f)
				if err != nil {
					continue // no IPv6
				}
				for _, l := range strings.Split(string(b), "\n") {
					fs := strings.Fields(l)
					if len(fs) > 3 && fs[3] == "0A" && strings.HasSuffix(fs[1], suffix) {
						listening = true
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if listening {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on port %d after %v", port, limit)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// iperfReport is the part of `iperf3 -J` output the bench reads.
type iperfReport struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// iperf3 runs one single-stream iperf3 test from the client to dst for the
// phase duration (-R for a download) and returns the receiver's goodput in
// bits per second.
func (e *env) iperf3(ctx context.Context, dst netip.Addr, download bool) (float64, error) {
	secs := max(1, int(e.opts.Duration.Round(time.Second)/time.Second))
	args := []string{"-c", dst.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs), "-J",
		"--connect-timeout", "3000"}
	if download {
		// --rcv-timeout (ms) is for the receiving side only.
		args = append(args, "-R", "--rcv-timeout", "5000")
	}
	cmd := e.client.Command("iperf3", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrIperf, err)
	}
	// iperf3's own timeouts bound a stalled test; this bounds everything
	// else, and Ctrl-C.
	limit := time.AfterFunc(time.Duration(secs+15)*time.Second, func() { cmd.Process.Kill() })
	defer limit.Stop()
	stopOnCancel := context.AfterFunc(ctx, func() { cmd.Process.Kill() })
	defer stopOnCancel()
	werr := cmd.Wait()
	var rep iperfReport
	jerr := json.Unmarshal(stdout.Bytes(), &rep)
	switch {
	case ctx.Err() != nil:
		return 0, ctx.Err()
	case jerr == nil && rep.Error != "":
		return 0, fmt.Errorf("%w: to %v: %s", ErrIperf, dst, rep.Error)
	case werr != nil:
		return 0, fmt.Errorf("%w: to %v: %v: %s", ErrIperf, dst, werr, strings.TrimSpace(stderr.String()))
	case jerr != nil:
		return 0, fmt.Errorf("%w: to %v: reading its JSON: %w", ErrIperf, dst, jerr)
	case !(rep.End.SumReceived.BitsPerSecond > 0):
		return 0, fmt.Errorf("%w: to %v: no bytes received", ErrIperf, dst)
	}
	return rep.End.SumReceived.BitsPerSecond, nil
}
