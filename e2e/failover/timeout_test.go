package failover

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// clockRate runs the balancer's connection-table clock 60 times faster than real time
// (balancer.TestClockRateEnv, dataplane.Engine.SetClockRate), so 20 minutes pass in 20 s. Only
// the table's timeouts are affected; the kernels, the TCP stacks and the balancer's other
// timers run in real time, so the connections themselves are real and idle for real.
const clockRate = 60

// TestIdleIMAPSurvives is issue 13's per-service timeout acceptance: an IMAP-like connection
// (port 143, `idle-timeout 30m` in the services file) stays silent for 20 minutes of the
// table's clock and keeps its entry and its frontend, while an SMTP-like one on port 25, under
// IPVS's default 900 s, loses its entry after 15.
func TestIdleIMAPSurvives(t *testing.T) {
	bed := newBed(t)
	vip := bed.VIPs[0]
	for _, f := range bed.Frontends {
		for _, port := range []uint16{25, 143} {
			serveNamedEcho(t, f, netip.AddrPortFrom(vip, port))
		}
	}
	dir := t.TempDir()
	vipFile, svcFile := filepath.Join(dir, "vipaddrs"), filepath.Join(dir, "services")
	if err := os.WriteFile(vipFile, []byte(vip.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	svc := "service imap 143/tcp\n    idle-timeout 30m\nservice smtp 25/tcp\n"
	if err := os.WriteFile(svcFile, []byte(svc), 0o644); err != nil {
		t.Fatal(err)
	}
	var members []string
	for _, f := range bed.Frontends {
		members = append(members, f.Addr.String())
	}
	b := e2e.StartBalancerEnv(t, bed.Frontends[0], suite.Bin, []string{"run", "-i", "eth0", "-f", vipFile,
		"--member", strings.Join(members, ","), "--services", svcFile, "--metrics", "off"},
		[]string{fmt.Sprintf("%s=%d", balancer.TestClockRateEnv, clockRate)})
	t.Cleanup(func() { b.Stop(t, bed.Frontends...) })
	b.WaitReady(t)

	c := bed.Clients[0]
	open := func(port uint16) (net.Conn, *bufio.Reader, string) {
		conn, err := c.DialTCP(netip.AddrPortFrom(c.Addr, 0), netip.AddrPortFrom(vip, port), 3*time.Second)
		if err != nil {
			t.Fatalf("connect to port %d: %v", port, err)
		}
		t.Cleanup(func() { conn.Close() })
		// Go's dialer turns TCP keep-alives on (every 15 s), and each probe would refresh the
		// entry: an idle IMAP client sends nothing at all.
		if err := conn.(*net.TCPConn).SetKeepAlive(false); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		return conn, r, roundTrip(t, conn, r, "hello")
	}
	imap, imapR, imapFE := open(143)
	smtp, smtpR, smtpFE := open(25)
	t.Logf("IMAP-like connection on %s, SMTP-like on %s", imapFE, smtpFE)

	silence := 20 * time.Second // 20 minutes of the table's clock
	time.Sleep(silence)
	conns, err := control.Dial(b.Control).Conns(vip, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	var imapEntry, smtpEntry *control.Conn
	for i := range conns {
		switch conns[i].Client {
		case imap.LocalAddr().String():
			imapEntry = &conns[i]
		case smtp.LocalAddr().String():
			smtpEntry = &conns[i]
		}
	}
	switch {
	case imapEntry == nil:
		t.Errorf("after 20 idle minutes the IMAP connection's entry is gone, want it kept by its 30-minute port timeout; table: %+v", conns)
	case imapEntry.State != "ESTABLISHED" || imapEntry.ExpiresIn > 10*time.Minute+time.Minute:
		t.Errorf("IMAP entry after 20 idle minutes: %+v, want ESTABLISHED with about 10 minutes left", *imapEntry)
	default:
		t.Logf("after 20 idle minutes (20 s at clock rate %d): IMAP entry %s, %v left", clockRate, imapEntry.State, imapEntry.ExpiresIn.Round(time.Second))
	}
	if smtpEntry != nil {
		t.Errorf("after 20 idle minutes the SMTP connection's entry is still there (%+v), want it expired by the 900 s default", *smtpEntry)
	}
	if fe := roundTrip(t, imap, imapR, "still there"); fe != imapFE {
		t.Errorf("the IMAP connection was answered by %s after the silence, by %s before", fe, imapFE)
	}
	t.Logf("SMTP connection after the silence answered by %s (its flow was scheduled anew)", roundTrip(t, smtp, smtpR, "late"))
}

// serveNamedEcho serves addr on f: every line is echoed back prefixed with f's name.
func serveNamedEcho(t *testing.T, f *testbed.Host, addr netip.AddrPort) {
	t.Helper()
	ln, err := f.ListenTCP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// No TCP keep-alives from the server either (Go's default is every 15 s): the
			// client's ACK to each would refresh the entry.
			c.(*net.TCPConn).SetKeepAlive(false)
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", f.Name, sc.Text()); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// roundTrip sends line and returns the name of the frontend that echoed it.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		t.Fatalf("write %q: %v", line, err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read the echo of %q: %v", line, err)
	}
	name, rest, _ := strings.Cut(strings.TrimSpace(got), " ")
	if rest != line {
		t.Fatalf("echo %q, want %q", got, line)
	}
	return name
}
