package health

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/realservers"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Ports of TestChecksThroughDSR's services, the well-known ones (RFC 5321, RFC 9051, RFC 1939,
// RFC 9110, RFC 3261), and an echo port for the plain TCP check.
const (
	smtpPort = 25
	imapPort = 143
	pop3Port = 110
	httpPort = 80
	tlsPort  = 443
	sipPort  = 5060
	echoPort = 7 // RFC 862
)

// webHost is the Host header the http check sends and nginx insists on.
const webHost = "mail.example.com"

// dsrServices is the services file body of TestChecksThroughDSR.
func dsrServices() string {
	return "service smtp 25/tcp\n" + timing("smtp") + "    smtp-helo probe.example.com\n" +
		"service imap 143/tcp\n" + timing("imap") +
		"service pop3 110/tcp\n" + timing("pop3") +
		"service web 80/tcp\n" + timing("http") + "    http-path " + realservers.HealthPath + "\n    http-host " + webHost + "\n" +
		"service tls 443/tcp\n" + timing("tls") +
		"service sip 5060/udp\n" + timing("sip") +
		"service siptcp 5060/tcp\n" + timing("sip") +
		"service echo 7/tcp\n" + timing("tcp")
}

// allServices are the stanza names of dsrServices.
var allServices = []string{"smtp", "imap", "pop3", "web", "tls", "sip", "siptcp", "echo"}

// frontendServers are the real servers of one frontend, bound to the VIP.
type frontendServers struct {
	nginx, dovecot, smtp, kamailio, echo *realservers.Server
}

func startServers(t *testing.T, f *testbed.Host, vip netip.Addr) *frontendServers {
	t.Helper()
	ap := func(p uint16) netip.AddrPort { return netip.AddrPortFrom(vip, p) }
	return &frontendServers{
		nginx: realservers.Nginx(t, f, realservers.NginxConfig{HTTP: []netip.AddrPort{ap(httpPort)}, TLS: []netip.AddrPort{ap(tlsPort)},
			HealthHost: webHost, CertNames: []string{webHost}}),
		dovecot:  realservers.Dovecot(t, f, realservers.DovecotConfig{Addr: vip, IMAPPort: imapPort, POP3Port: pop3Port}),
		smtp:     realservers.Aiosmtpd(t, f, ap(smtpPort)),
		kamailio: realservers.Kamailio(t, f, realservers.KamailioConfig{UDP: []netip.AddrPort{ap(sipPort)}, TCP: []netip.AddrPort{ap(sipPort)}}),
		echo:     realservers.Echo(t, f, f.Name, ap(echoPort)),
	}
}

// echoConn is a connection to the VIP's echo port that a given frontend accepted.
type echoConn struct {
	c  net.Conn
	br *bufio.Reader
}

// dialEchoOn connects to the VIP's echo port from the clients' addresses until the banner says
// frontend want accepted the connection.
func dialEchoOn(t *testing.T, bed *testbed.Bed, want string) *echoConn {
	t.Helper()
	raddr := netip.AddrPortFrom(bed.VIPs[0], echoPort)
	srcs := sources(bed)
	for i := 0; i < 60; i++ {
		s := srcs[i%len(srcs)]
		c, err := s.Host.DialTCP(netip.AddrPortFrom(s.Addr, 0), raddr, 3*time.Second)
		if err != nil {
			t.Fatalf("echo connection from %v: %v", s, err)
		}
		ec := &echoConn{c: c, br: bufio.NewReader(c)}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		banner, err := ec.br.ReadString('\n')
		if err != nil {
			t.Fatalf("echo banner from %v: %v", s, err)
		}
		if strings.TrimSpace(banner) == want {
			t.Cleanup(func() { c.Close() })
			return ec
		}
		c.Close()
	}
	t.Fatalf("60 echo connections and none reached %s", want)
	return nil
}

// roundTrip sends a line and checks that it is echoed within 3 s.
func (ec *echoConn) roundTrip(line string) error {
	ec.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(ec.c, line); err != nil {
		return err
	}
	got, err := ec.br.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != line {
		return fmt.Errorf("echoed %q, want %q", got, line)
	}
	return nil
}

// TestChecksThroughDSR runs `l2lb run` in static mode on f1 with every service checked on every
// frontend, then takes each kind of server on f2 down and up again: f2's check of that service
// turns unhealthy within interval × fall + timeout (+ slack), f2 then gets no new connections
// while an established connection to it keeps working, and once the server is back f2 is healthy
// within interval × rise (+ slack) and gets new connections again. A capture on f2 shows that the
// probes came from the probe source to the VIP with the virtual MAC as Ethernet source (the DSR
// path) and never to f2's own address.
func TestChecksThroughDSR(t *testing.T) {
	bed := suite.NewBed(t, "the health-check tests", testbed.Options{Frontends: 3, Clients: 2})
	vip := bed.VIPs[0]
	f1, f2, f3 := bed.Frontends[0], bed.Frontends[1], bed.Frontends[2]
	servers := map[string]*frontendServers{}
	for _, f := range bed.Frontends {
		servers[f.Name] = startServers(t, f, vip)
	}
	serveNames(t, bed)
	vipFile, svcFile := writeConfig(t, bed, dsrServices())
	args := []string{"run", "-i", "eth0", "-f", vipFile, "-p", "0", "--services", svcFile}
	addrs := []netip.Addr{f1.Addr, f2.Addr, f3.Addr}
	for _, a := range addrs {
		args = append(args, "--member", a.String())
	}
	b := e2e.StartBalancer(t, f1, suite.Bin, args)
	t.Cleanup(func() {
		b.Stop(t, bed.Clients...)
		if t.Failed() {
			t.Logf("l2lb log:\n%s", b.LogText())
		}
	})
	b.WaitReady(t)

	// The capture starts before the checks can pass, so it sees the first probes.
	st, err := statusOf(b.Control)
	if err != nil {
		t.Fatal(err)
	}
	vmac, err := net.ParseMAC(st.VirtualMAC)
	if err != nil {
		t.Fatalf("status virtual_mac %q: %v", st.VirtualMAC, err)
	}
	capt, err := captureProbes(f2, vip, vmac)
	if err != nil {
		t.Fatal(err)
	}
	_, took := waitStatus(t, b.Control, 20*time.Second, allHealthy(addrs, allServices))
	t.Logf("every member passes every check %v after the balancer was ready", took.Round(time.Millisecond))
	time.Sleep(2 * checkInterval) // a few more probes on the wire
	if err := capt.stop(); err != nil {
		t.Fatalf("capture on f2: %v", err)
	}
	t.Logf("f2's capture: probe SYNs/datagrams from %v to the VIP with the virtual MAC %v: %v; with another MAC: %d; to f2's own address: %d; replies to the virtual MAC: %d",
		probeSource, vmac, capt.viaVMAC, capt.otherMAC, capt.toSelf, capt.replies)
	for _, k := range []probeKey{{layers.IPProtocolTCP, smtpPort}, {layers.IPProtocolTCP, imapPort}, {layers.IPProtocolTCP, pop3Port},
		{layers.IPProtocolTCP, httpPort}, {layers.IPProtocolTCP, tlsPort}, {layers.IPProtocolTCP, sipPort},
		{layers.IPProtocolTCP, echoPort}, {layers.IPProtocolUDP, sipPort}} {
		if capt.viaVMAC[k] == 0 {
			t.Errorf("f2 saw no probe to the VIP's %v port %d from %v with the virtual MAC as source", k.proto, k.port, probeSource)
		}
	}
	if capt.otherMAC != 0 || capt.toSelf != 0 {
		t.Errorf("probes that bypass the DSR path reached f2: %d with another source MAC, %d to f2's own address", capt.otherMAC, capt.toSelf)
	}
	if capt.replies == 0 {
		t.Error("f2 sent no reply from the VIP to the probe source's virtual MAC")
	}

	// One established connection to f2 lives through every round.
	est := dialEchoOn(t, bed, f2.Name)
	if err := est.roundTrip("before"); err != nil {
		t.Fatal(err)
	}
	s2 := servers[f2.Name]
	rounds := []struct {
		server   string
		services []string
		stop     func()
		start    func()
	}{
		{"nginx", []string{"web", "tls"}, func() { s2.nginx.Pause(t) }, func() { s2.nginx.Resume(t) }},
		{"dovecot", []string{"imap", "pop3"}, func() { s2.dovecot.Pause(t) }, func() { s2.dovecot.Resume(t) }},
		{"aiosmtpd", []string{"smtp"}, func() { s2.smtp.Pause(t) }, func() { s2.smtp.Resume(t) }},
		{"kamailio", []string{"sip", "siptcp"}, func() { s2.kamailio.Pause(t) }, func() { s2.kamailio.Resume(t) }},
		// A paused process's listener still completes handshakes, which is all the tcp check
		// asks: the echo server closes its listener instead (refused with a reset), and a new
		// process takes the port again. The established connection stays on the old one.
		{"echo", []string{"echo"}, func() { s2.echo.CloseListeners(t) },
			func() { realservers.Echo(t, f2, f2.Name, netip.AddrPortFrom(vip, echoPort)) }},
	}
	for i, r := range rounds {
		t.Logf("--- round %d: %s on f2 stops (%v)", i+1, r.server, r.services)
		r.stop()
		st, took := waitStatus(t, b.Control, downBound, func(st control.Status) (bool, string) {
			for _, s := range r.services {
				if c, ok := checkOf(st, f2.Addr, s); !ok || c.Healthy {
					return false, fmt.Sprintf("f2's %s check still healthy", s)
				}
			}
			if m, _ := memberOf(st, f2.Addr); m.Healthy {
				return false, "f2 still healthy"
			}
			return true, ""
		})
		m2, _ := memberOf(st, f2.Addr)
		t.Logf("%s: f2 unhealthy %v after the stop (bound %v): weight %d;%s", r.server, took.Round(time.Millisecond), downBound, m2.Weight,
			members(control.Status{Members: []control.Member{m2}}))
		if m2.Weight != 0 {
			t.Errorf("%s: unhealthy f2 has weight %d, want 0", r.server, m2.Weight)
		}
		for _, s := range r.services {
			if c, _ := checkOf(st, f2.Addr, s); c.Error == "" || c.Since.IsZero() {
				t.Errorf("%s: f2's %s check is unhealthy without an error or a since time: %+v", r.server, s, c)
			}
		}
		if ok, why := allHealthy([]netip.Addr{f1.Addr, f3.Addr}, allServices)(st); !ok {
			t.Errorf("%s stopped on f2 only, but %s", r.server, why)
		}
		per, errs := askNames(bed, 12)
		t.Logf("%s: new connections while f2 is unhealthy: %v", r.server, per)
		if per[f2.Name] != 0 {
			t.Errorf("%s: %d new connections reached the unhealthy f2", r.server, per[f2.Name])
		}
		for _, err := range errs {
			t.Errorf("%s: new connection while f2 is unhealthy: %v", r.server, err)
		}
		if err := est.roundTrip(fmt.Sprintf("while %s is down", r.server)); err != nil {
			t.Errorf("%s: the established connection to f2 broke while f2 was unhealthy: %v", r.server, err)
		}

		r.start()
		_, took = waitStatus(t, b.Control, upBound, allHealthy(addrs, allServices))
		t.Logf("%s: f2 healthy again %v after the restart (bound %v)", r.server, took.Round(time.Millisecond), upBound)
		if n, ok := askUntil(bed, f2.Name, 60); !ok {
			t.Errorf("%s: none of %d new connections reached f2 after it recovered", r.server, n)
		} else {
			t.Logf("%s: new connection %d after the recovery reached f2", r.server, n)
		}
	}
	if err := est.roundTrip("after"); err != nil {
		t.Errorf("the established connection to f2 broke: %v", err)
	}
}
