package bench

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// The HAProxy comparison of the tcp scenario (issue 5): the same transfers
// through HAProxy in TCP mode on the balancer node, the proxy a user
// without ip_vs would otherwise pick.

// haproxyPort is HAProxy's listening port on the balancer node's own
// address; it is neither transferPort nor connPort, so nothing else in the
// bench answers there.
const haproxyPort = 5003

// haproxySplice are the splice(2) options the comparison runs HAProxy with
// (defaults section). Forcing kernel splicing in both directions was by far
// the fastest of the three settings measured on the bench topology (2
// vCPUs, no other work, kernel 6.18, HAProxy 2.6.12, 3 s phases, medians of
// 3): download 12.6 Gbit/s forced, 6.7 with splice-auto, 6.6 without
// splicing; upload 10.8, 6.8 and 6.9. HAProxy at its best is the fair
// reference for a claim of beating it.
var haproxySplice = []string{"option splice-request", "option splice-response"}

// ErrHAProxy means HAProxy did not start, did not accept connections or
// reported nonsense on its stats socket.
var ErrHAProxy = errors.New("bench: haproxy failed")

// haproxyResult is one pass of the HAProxy leg.
type haproxyResult struct {
	// down and up are the download and upload goodput in bit/s of one
	// stream; downN and upN of e.opts.Streams parallel streams (0 if
	// Streams is 1).
	down, up, downN, upN float64
	// downBy and upBy name the backend HAProxy sent each transfer to.
	downBy, upBy string
	// pid and dir are the HAProxy process and its temporary directory,
	// both gone when the leg returns; kept so a test can check that.
	pid int
	dir string
	// threads is HAProxy's nbthread.
	threads int
}

// haproxyConfig returns the configuration the leg runs: TCP mode, round
// robin over every backend's own address (each transfer is one connection,
// so one backend serves it, as with l2lb), no health checks (their probes
// would be traffic the other legs do not have) and no logging.
func (e *env) haproxyConfig(sock string, threads int, splice []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global\n\tnbthread %d\n\tmaxconn 1000\n\tstats socket %s mode 600 level user\n\n", threads, sock)
	// The timeouts only bound a stuck leg: every phase ends in seconds.
	fmt.Fprintf(&b, "defaults\n\tmode tcp\n\ttimeout connect 5s\n\ttimeout client 30s\n\ttimeout server 30s\n")
	for _, o := range splice {
		fmt.Fprintf(&b, "\t%s\n", o)
	}
	fmt.Fprintf(&b, "\nfrontend bench\n\tbind %s\n\tdefault_backend members\n\n", netip.AddrPortFrom(e.lb.Addr, haproxyPort))
	fmt.Fprintf(&b, "backend members\n\tbalance roundrobin\n")
	for _, h := range e.backends {
		fmt.Fprintf(&b, "\tserver %s %s\n", h.Name, netip.AddrPortFrom(h.Addr, transferPort))
	}
	return b.String()
}

// viaHAProxy starts HAProxy on the balancer node, measures a download and
// an upload through it with e.transfer, and stops it (SIGTERM, SIGKILL after
// five seconds) and removes its directory before returning, whatever
// happened, including ctx ending. l2lb must not be running meanwhile.
func (e *env) viaHAProxy(ctx context.Context, splice []string) (res haproxyResult, err error) {
	if res.dir, err = os.MkdirTemp("", "l2lb-haproxy-"); err != nil {
		return res, err
	}
	defer func() {
		if rerr := os.RemoveAll(res.dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	cfg := filepath.Join(res.dir, "haproxy.cfg")
	sock := filepath.Join(res.dir, "stats.sock")
	// With --pin l2lb gets CPU 1 alone; HAProxy then gets the same CPU and
	// one thread, otherwise one thread per CPU as its manual advises for a
	// dedicated node.
	res.threads = runtime.NumCPU()
	pin := e.opts.Pin && haveTaskset()
	if pin {
		res.threads = 1
	}
	if err := os.WriteFile(cfg, []byte(e.haproxyConfig(sock, res.threads, splice)), 0o600); err != nil {
		return res, err
	}
	// -db: foreground, no daemon, so the pid is HAProxy's own and it dies
	// with us (Pdeathsig in Host.Command).
	args := []string{"-f", cfg, "-db"}
	if pin {
		args = append([]string{"-c", "1", "haproxy"}, args...)
	}
	name := "haproxy"
	if pin {
		name = "taskset"
	}
	// Registered with the env too, so close stops it if we never get to.
	p, err := e.spawn(e.lb.Command(name, args...), "haproxy", nil)
	if err != nil {
		return res, fmt.Errorf("%w: %w", ErrHAProxy, err)
	}
	res.pid = p.pid
	defer p.stop()

	addr := netip.AddrPortFrom(e.lb.Addr, haproxyPort)
	if err := e.waitAccepting(ctx, p, addr); err != nil {
		return res, err
	}
	for _, upload := range []bool{false, true} {
		// The readiness probe's session may reach its backend's counter only after the probe
		// returned: read the counters until they hold still, or the probe is counted as part of
		// the download (TestHAProxyLeg once saw "f2+f3").
		before, err := stableSessions(ctx, sock)
		if err != nil {
			return res, err
		}
		v, err := e.transfer(ctx, addr, upload)
		if err != nil {
			return res, fmt.Errorf("via HAProxy: %w; haproxy log: %s", err, p.lastLog())
		}
		after, err := haproxySessions(sock)
		if err != nil {
			return res, err
		}
		var by []string
		for srv, n := range after {
			if n > before[srv] {
				by = append(by, srv)
			}
		}
		if upload {
			res.up, res.upBy = v, strings.Join(by, "+")
		} else {
			res.down, res.downBy = v, strings.Join(by, "+")
		}
		if n := e.opts.Streams; n > 1 {
			v, err := e.transferN(ctx, addr, upload, n)
			if err != nil {
				return res, fmt.Errorf("via HAProxy, %d streams: %w; haproxy log: %s", n, err, p.lastLog())
			}
			if upload {
				res.upN = v
			} else {
				res.downN = v
			}
		}
	}
	return res, nil
}

// waitAccepting waits until a TCP connect from the client to addr succeeds,
// for up to ten seconds. The probe connection reaches a backend, which
// closes it at once (no command byte); it moves HAProxy's round robin on by
// one, which is why the leg asks HAProxy which server served each transfer.
func (e *env) waitAccepting(ctx context.Context, p *balancer, addr netip.AddrPort) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := e.client.DialTCP(netip.AddrPort{}, addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: not accepting on %v after 10 s: %v; log: %s", ErrHAProxy, addr, err, p.lastLog())
		}
		select {
		case <-p.done:
			return fmt.Errorf("%w: exited: %v; log: %s", ErrHAProxy, p.waitErr, p.lastLog())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// haproxySessions asks HAProxy's stats socket for the cumulative session
// count (stot) of every server of the "members" backend.
func haproxySessions(sock string) (map[string]uint64, error) {
	c, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%w: stats socket: %w", ErrHAProxy, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// Without "prompt" the socket answers one command and closes.
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return nil, fmt.Errorf("%w: stats socket: %w", ErrHAProxy, err)
	}
	raw, err := io.ReadAll(c)
	if err != nil {
		return nil, fmt.Errorf("%w: stats socket: %w", ErrHAProxy, err)
	}
	return parseHAProxyStat(string(raw))
}

// parseHAProxyStat reads the CSV of `show stat` (HAProxy management guide,
// section 9.1: a header line "# pxname,svname,..." then one line per
// proxy, frontend, server and backend) and returns stot per server of the
// "members" backend.
func parseHAProxyStat(s string) (map[string]uint64, error) {
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(s, "# ")))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil || len(recs) == 0 {
		return nil, fmt.Errorf("%w: show stat: %v in %q", ErrHAProxy, err, s)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	px, sv, st := col["pxname"], col["svname"], col["stot"]
	if st == 0 {
		return nil, fmt.Errorf("%w: show stat: no stot column in %q", ErrHAProxy, recs[0])
	}
	out := map[string]uint64{}
	for _, rec := range recs[1:] {
		if len(rec) <= st || rec[px] != "members" || rec[sv] == "BACKEND" {
			continue
		}
		n, err := strconv.ParseUint(rec[st], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: show stat: stot %q of %s", ErrHAProxy, rec[st], rec[sv])
		}
		out[rec[sv]] = n
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: show stat: no server of backend members in %q", ErrHAProxy, s)
	}
	return out, nil
}

// stableSessions returns HAProxy's per-server session counts once two reads 50 ms apart agree
// (at most 1 s).
func stableSessions(ctx context.Context, sock string) (map[string]uint64, error) {
	prev, err := haproxySessions(sock)
	for i := 0; err == nil && i < 20; i++ {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		var cur map[string]uint64
		if cur, err = haproxySessions(sock); err == nil && maps.Equal(cur, prev) {
			return cur, nil
		}
		prev = cur
	}
	return prev, err
}
