// Package realservers starts the real daemons the health checks are tested against — nginx
// (HTTP and TLS), Dovecot (IMAP and POP3), aiosmtpd (SMTP), kamailio (SIP over UDP and TCP) and a
// small echo server — inside a network namespace, for tests only.
//
// Every server runs in its own process group, so SIGSTOP reaches its worker processes too: the
// listening sockets stay open and the kernel keeps completing TCP handshakes, but nothing
// answers, which is the failure a health check has to catch beyond a plain connect. Servers are
// killed (SIGCONT, then SIGKILL to the group) in t.Cleanup, and their output is logged when the
// test failed.
//
// A missing program fails the test when CI=true and skips it otherwise (Require), as every
// namespace test of the module does.
package realservers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrNotRunning means a signal was sent to a server that has already exited.
var ErrNotRunning = errors.New("realservers: server is not running")

// Python is Debian's interpreter, the one python3-aiosmtpd installs into (a python3 earlier in
// PATH, such as a pyenv shim, lacks the module).
const Python = "/usr/bin/python3"

// Namespace runs programs inside a network namespace. *testbed.Host satisfies it; so does any
// type whose Command wraps `ip netns exec NAME`.
type Namespace interface {
	// Command returns a command that runs name with args inside the namespace. The program
	// must be exec'd in place (as `ip netns exec` does), so that the process started is the
	// server itself.
	Command(name string, args ...string) *exec.Cmd
}

// Require fails the test under CI=true and skips it elsewhere when ok is false; why says what is
// missing.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s", why)
	}
	t.Skipf("skipping: %s", why)
}

// RequireProgram is Require for an executable found in PATH or given by its path.
func RequireProgram(t testing.TB, name string) {
	t.Helper()
	_, err := exec.LookPath(name)
	Require(t, err == nil, name+" is not installed")
}

// Server is a daemon started in a namespace in its own process group.
type Server struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed once the process has been reaped
	err  error         // Wait's result, valid after done
}

// Start runs name with args in ns in a process group of its own and registers its clean-up
// (SIGCONT and SIGKILL to the group, then Wait; the output is logged if the test failed). It
// fails (CI=true) or skips the test when name is not installed.
func Start(t testing.TB, ns Namespace, name string, args ...string) *Server {
	t.Helper()
	RequireProgram(t, name)
	cmd := ns.Command(name, args...)
	// A group of its own: signals to -pid reach the workers a daemon forks. Pdeathsig: a test
	// binary killed outright takes the daemon with it.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pdeathsig = true, syscall.SIGKILL
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	s := &Server{name: filepath.Base(name), cmd: cmd, out: out, done: make(chan struct{})}
	go func() { s.err = cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		pg := -cmd.Process.Pid
		_ = syscall.Kill(pg, syscall.SIGCONT)
		_ = syscall.Kill(pg, syscall.SIGKILL)
		<-s.done
		if t.Failed() {
			t.Logf("%s output:\n%s", s.name, s.out.String())
		}
	})
	return s
}

// Name returns the program's base name.
func (s *Server) Name() string { return s.name }

// Pid returns the process ID of the server (and of its process group).
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Output returns what the server has written to its standard output and error so far.
func (s *Server) Output() string { return s.out.String() }

// Running reports whether the process has not exited.
func (s *Server) Running() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Signal sends sig to the server's whole process group.
func (s *Server) Signal(sig syscall.Signal) error {
	if !s.Running() {
		return fmt.Errorf("%s: %w (%v)", s.name, ErrNotRunning, s.err)
	}
	if err := syscall.Kill(-s.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("realservers: %v to %s: %w", sig, s.name, err)
	}
	return nil
}

// Pause stops the server's processes (SIGSTOP): the sockets stay open, nothing answers.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	if err := s.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
}

// Resume lets a paused server run again (SIGCONT).
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	if err := s.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}

// WaitOutput waits up to limit until the server's output contains substr.
func (s *Server) WaitOutput(substr string, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		if strings.Contains(s.Output(), substr) {
			return true
		}
		if time.Now().After(deadline) || !s.Running() {
			return strings.Contains(s.Output(), substr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer collects a server's output; Output may read it while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TempDir returns a fresh directory, removed when the test ends, that daemons dropping their
// privileges (nginx workers, Dovecot's login processes) can traverse: t.TempDir is 0700.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "l2lbrs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// WriteFile writes text to path (mode 0644) or fails the test.
func WriteFile(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// SelfSigned writes a fresh ECDSA P-256 certificate for the given addresses and names, valid for
// an hour either side of now, and its key, as PEM files in dir.
func SelfSigned(t testing.TB, dir string, ips []netip.Addr, names []string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cn := "realservers.invalid"
	if len(names) > 0 {
		cn = names[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, a := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(a.AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	WriteFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	WriteFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})))
	return certFile, keyFile
}
