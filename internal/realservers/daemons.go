package realservers

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// HealthPath is the request target nginx answers with 204 on its HTTP listeners (NginxConfig);
// every other target gets 404.
const HealthPath = "/healthz"

// NginxConfig says what Nginx listens on.
type NginxConfig struct {
	// HTTP are plain HTTP listeners: HealthPath answers 204 (421 when HealthHost is set and the
	// Host header differs), everything else 404.
	HTTP []netip.AddrPort
	// TLS are TLS listeners with a fresh self-signed certificate (CertNames and the TLS
	// listeners' addresses); every request gets 200.
	TLS []netip.AddrPort
	// HealthHost, if set, is the only Host header HealthPath accepts (RFC 9110 section 15.5.20:
	// 421 Misdirected Request otherwise), so a test can tell that the check sends it.
	HealthHost string
	// CertNames are the DNS names of the certificate.
	CertNames []string
}

// Nginx starts nginx in the foreground with a private configuration (no access log, temporary
// files in a directory of its own, one worker).
func Nginx(t testing.TB, ns Namespace, c NginxConfig) *Server {
	t.Helper()
	RequireProgram(t, "nginx")
	dir := TempDir(t)
	var ips []netip.Addr
	for _, a := range c.TLS {
		ips = append(ips, a.Addr())
	}
	cert, key := SelfSigned(t, dir, ips, c.CertNames)
	health := "return 204;"
	if c.HealthHost != "" {
		health = fmt.Sprintf(`if ($host != %q) { return 421; } return 204;`, c.HealthHost)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr;
events { worker_connections 256; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
`, dir)
	if len(c.HTTP) > 0 {
		b.WriteString("\tserver {\n")
		for _, a := range c.HTTP {
			fmt.Fprintf(&b, "\t\tlisten %s;\n", a)
		}
		fmt.Fprintf(&b, "\t\tlocation = %s { %s }\n\t\tlocation / { return 404; }\n\t}\n", HealthPath, health)
	}
	if len(c.TLS) > 0 {
		b.WriteString("\tserver {\n")
		for _, a := range c.TLS {
			fmt.Fprintf(&b, "\t\tlisten %s ssl;\n", a)
		}
		fmt.Fprintf(&b, "\t\tssl_certificate %s;\n\t\tssl_certificate_key %s;\n\t\tlocation / { return 200; }\n\t}\n", cert, key)
	}
	b.WriteString("}\n")
	conf := filepath.Join(dir, "nginx.conf")
	WriteFile(t, conf, b.String())
	return Start(t, ns, "nginx", "-e", "stderr", "-p", dir, "-c", conf, "-g", "daemon off;")
}

// DovecotConfig says where Dovecot listens.
type DovecotConfig struct {
	// Addr is the one listening address.
	Addr netip.Addr
	// IMAPPort and POP3Port are the ports of the two protocols (RFC 9051, RFC 1939).
	IMAPPort, POP3Port uint16
}

// Dovecot starts Dovecot in the foreground with a private configuration: IMAP and POP3 without
// TLS, a static password database and no mailboxes (health checks never log in).
func Dovecot(t testing.TB, ns Namespace, c DovecotConfig) *Server {
	t.Helper()
	RequireProgram(t, "dovecot")
	dir := TempDir(t)
	for _, d := range []string{"run", "state"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "dovecot.conf")
	WriteFile(t, conf, fmt.Sprintf(`
protocols = imap pop3
listen = %[2]s
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = /dev/stderr
ssl = no
auth_mechanisms = plain
passdb {
  driver = static
  args = password=unused
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=%[1]s/home
}
service imap-login {
  inet_listener imap {
    port = %[3]d
  }
}
service pop3-login {
  inet_listener pop3 {
    port = %[4]d
  }
}
`, dir, c.Addr, c.IMAPPort, c.POP3Port))
	return Start(t, ns, "dovecot", "-F", "-c", conf)
}

// Aiosmtpd starts Python's aiosmtpd SMTP server (RFC 5321) on an IPv4 address, without
// setuid (-n); it accepts and discards mail.
func Aiosmtpd(t testing.TB, ns Namespace, addr netip.AddrPort) *Server {
	t.Helper()
	Require(t, ns.Command(Python, "-c", "import aiosmtpd").Run() == nil,
		"python3-aiosmtpd is not installed for "+Python)
	// aiosmtpd splits -l at its last colon and passes the host as is, so no brackets.
	return Start(t, ns, Python, "-m", "aiosmtpd", "-n", "-l", fmt.Sprintf("%s:%d", addr.Addr(), addr.Port()))
}

// KamailioConfig says where kamailio listens.
type KamailioConfig struct {
	// UDP and TCP are its SIP listeners (RFC 3261 section 18).
	UDP, TCP []netip.AddrPort
}

// Kamailio starts kamailio in the foreground with a configuration that answers OPTIONS with 200
// and any other request with 501, statelessly (only the sl module).
func Kamailio(t testing.TB, ns Namespace, c KamailioConfig) *Server {
	t.Helper()
	RequireProgram(t, "kamailio")
	dir := TempDir(t)
	var b strings.Builder
	b.WriteString("#!KAMAILIO\ndebug=1\nlog_stderror=yes\nchildren=1\ntcp_children=1\n")
	for _, a := range c.UDP {
		fmt.Fprintf(&b, "listen=udp:%s\n", a)
	}
	for _, a := range c.TCP {
		fmt.Fprintf(&b, "listen=tcp:%s\n", a)
	}
	b.WriteString(`loadmodule "sl.so"
request_route {
	if (method=="OPTIONS") { sl_send_reply("200", "OK"); exit; }
	sl_send_reply("501", "Not Implemented");
}
`)
	cfg := filepath.Join(dir, "kamailio.cfg")
	WriteFile(t, cfg, b.String())
	return Start(t, ns, "kamailio", "-DD", "-E", "-f", cfg, "-P", filepath.Join(dir, "kamailio.pid"), "-Y", dir, "-m", "16", "-M", "4")
}

// EchoReady is the line the echo server prints once every listener is open.
const EchoReady = "echo: listening"

// echoScript is the echo server: asyncio, one task per connection. With a banner it first
// sends the banner and a newline (a client learns which host accepted it), then echoes every
// byte. SIGUSR1 closes the listeners and keeps the accepted connections echoing, as a service
// that stops taking new connections does.
const echoScript = `
import asyncio, signal, sys

banner = sys.argv[1].encode()
addrs = sys.argv[2:]

async def handle(reader, writer):
    try:
        if banner:
            writer.write(banner + b"\n")
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()

async def main():
    servers = []
    for a in addrs:
        host, _, port = a.rpartition(":")
        servers.append(await asyncio.start_server(handle, host.strip("[]"), int(port), reuse_address=True))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: [s.close() for s in servers])
    print("` + EchoReady + `", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
`

// Echo starts a TCP echo server process on addrs. A non-empty banner is sent, with a newline,
// before the echo on every connection. It waits until the server listens.
func Echo(t testing.TB, ns Namespace, banner string, addrs ...netip.AddrPort) *Server {
	t.Helper()
	args := []string{"-c", echoScript, banner}
	for _, a := range addrs {
		args = append(args, a.String())
	}
	s := Start(t, ns, Python, args...)
	if !s.WaitOutput(EchoReady, 10*time.Second) {
		t.Fatalf("echo server on %v not listening: %s", addrs, s.Output())
	}
	return s
}

// CloseListeners makes an Echo server close its listening sockets (SIGUSR1, which only the
// process itself is sent); its accepted connections keep echoing. New connections are then
// refused with a reset.
func (s *Server) CloseListeners(t testing.TB) {
	t.Helper()
	if !s.Running() {
		t.Fatalf("%s: %v", s.name, ErrNotRunning)
	}
	if err := s.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatalf("SIGUSR1 to %s: %v", s.name, err)
	}
}
