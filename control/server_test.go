package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeProvider is a Provider with canned answers that records what it was asked.
type fakeProvider struct {
	mu         sync.Mutex
	status     Status
	conns      []Conn
	weights    map[netip.Addr]uint32
	reloadErr  error
	reloads    int
	lastVIP    netip.Addr
	lastMember netip.Addr
	// onStatus, if set, changes the status before each snapshot (e.g. flows ending).
	onStatus func(*Status)
	panicky  bool
}

func (f *fakeProvider) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.panicky {
		panic("provider exploded")
	}
	if f.onStatus != nil {
		f.onStatus(&f.status)
	}
	s := f.status
	s.Members = clone(f.status.Members)
	return s
}

func clone[T any](s []T) []T { return append([]T(nil), s...) }

func (f *fakeProvider) Conns(vip, member netip.Addr) []Conn {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastVIP, f.lastMember = vip, member
	var out []Conn
	for _, c := range f.conns {
		if vip.IsValid() && !strings.HasPrefix(c.VIP, vip.String()+":") {
			continue
		}
		if member.IsValid() && !strings.HasPrefix(c.Member, member.String()+":") {
			continue
		}
		out = append(out, c)
	}
	return out
}

func (f *fakeProvider) SetWeight(member netip.Addr, weight uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.status.Members {
		if f.status.Members[i].Addr == member.String() {
			f.status.Members[i].Weight = weight
			if f.weights == nil {
				f.weights = map[netip.Addr]uint32{}
			}
			f.weights[member] = weight
			return nil
		}
	}
	return fmt.Errorf("%w %s", ErrUnknownMember, member)
}

func (f *fakeProvider) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reloads++
	return f.reloadErr
}

func sampleStatus() Status {
	return Status{
		Mode: ModeCluster, Node: "fe1", Role: RoleActive,
		Since:       time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC),
		Transitions: 4, Interface: "eth0", VirtualMAC: "02:00:5e:00:01:01",
		VIPs: []string{"192.0.2.10", "192.0.2.48/29"},
		Members: []Member{
			{Addr: "192.0.2.11", MAC: "02:00:00:00:00:0b", Weight: 100, Local: true, Ready: true, Healthy: true,
				PortLo: 50000, PortHi: 54000, Flows: 6, Templates: 2, Packets: 345, Bytes: 23456},
			{Addr: "192.0.2.12", MAC: "02:00:00:00:00:0c", Weight: 50, Ready: true, Healthy: false,
				PortLo: 55000, PortHi: 59000, Flows: 3, Templates: 1, Packets: 12, Bytes: 3400},
		},
		Table: Table{Flows: 9, Templates: 3, Limit: 1000},
		Sync: Sync{Peers: []string{"192.0.2.2", "192.0.2.3"}, SentMessages: 100, ReceivedMessages: 50, Rejected: 2,
			RejectedByReason: map[string]uint64{"bad-mac": 2},
			LastReceived:     time.Date(2024, 5, 6, 8, 10, 9, 0, time.UTC)},
		Verdicts: map[string]uint64{"forward": 340, "local": 17, "drop": 5},
		Drops:    map[string]uint64{"no-member": 2, "table-full": 3},
		ARP:      ARP{Replies: 7, Announced: 3, Conflicts: 1},
		PerVIP:   map[string]Traffic{"192.0.2.10": {Packets: 357, Bytes: 26856}},
	}
}

// startServer runs Serve on a socket in a fresh directory and returns the socket path; the server
// is stopped, and its return value checked, at cleanup.
func startServer(t *testing.T, p Provider) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "l2lb.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, path, p) }()
	waitForSocket(t, path, done)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket %s left behind after shutdown (%v)", path, err)
		}
	})
	return path
}

func waitForSocket(t *testing.T, path string, done <-chan error) {
	t.Helper()
	for range 500 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-done:
			t.Fatalf("Serve returned early: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("socket %s never accepted a connection", path)
}

// rawRequest sends b as is and returns the decoded answer.
func rawRequest(t *testing.T, path string, b []byte) response {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// Write in the background: an oversized request is answered before it is fully written.
	go func() {
		c.Write(b)
		c.(*net.UnixConn).CloseWrite()
	}()
	var resp response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		t.Fatalf("reading answer to %.60q: %v", b, err)
	}
	return resp
}

func TestRoundTrip(t *testing.T) {
	f := &fakeProvider{status: sampleStatus(), conns: []Conn{
		{Proto: "TCP", Client: "198.51.100.7:40000", VIP: "192.0.2.10:25", Member: "192.0.2.11:25", State: "ESTABLISHED", ExpiresIn: 899 * time.Second},
		{Proto: "TCP", Client: "198.51.100.8:40001", VIP: "192.0.2.10:110", Member: "192.0.2.12:110", State: "FIN_WAIT", ExpiresIn: 90 * time.Second},
		{Proto: "UDP", Client: "198.51.100.9:5060", VIP: "192.0.2.49:5060", Member: "192.0.2.12:5060", State: "UDP", ExpiresIn: 5 * time.Minute},
	}}
	c := Dial(startServer(t, f))

	got, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if want := sampleStatus(); !reflect.DeepEqual(got, want) {
		t.Errorf("Status over the socket differs:\n got %+v\nwant %+v", got, want)
	}

	all, err := c.Conns(netip.Addr{}, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(all, f.conns) {
		t.Errorf("Conns() = %+v, want %+v", all, f.conns)
	}
	if f.lastVIP.IsValid() || f.lastMember.IsValid() {
		t.Errorf("unfiltered Conns reached the provider with filters %v %v", f.lastVIP, f.lastMember)
	}
	vip, member := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.12")
	some, err := c.Conns(vip, member)
	if err != nil {
		t.Fatal(err)
	}
	if len(some) != 1 || some[0] != f.conns[1] {
		t.Errorf("Conns(%v, %v) = %+v, want only %+v", vip, member, some, f.conns[1])
	}
	if f.lastVIP != vip || f.lastMember != member {
		t.Errorf("provider saw filters %v %v, want %v %v", f.lastVIP, f.lastMember, vip, member)
	}

	if err := c.SetWeight(member, 7); err != nil {
		t.Fatal(err)
	}
	if f.weights[member] != 7 {
		t.Errorf("weight of %v = %d, want 7", member, f.weights[member])
	}
	err = c.SetWeight(netip.MustParseAddr("192.0.2.99"), 1)
	var re *RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Message, "unknown member") {
		t.Errorf("SetWeight of an unknown member: %v, want a RemoteError naming the unknown member", err)
	}

	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.reloadErr = errors.New("/etc/sysconfig/vipaddrs:3: Incorrect mask")
	f.mu.Unlock()
	err = c.Reload()
	if !errors.As(err, &re) || re.Message != "/etc/sysconfig/vipaddrs:3: Incorrect mask" {
		t.Errorf("Reload error = %v, want the provider's file:line text unchanged", err)
	}
	if f.reloads != 2 {
		t.Errorf("provider reloaded %d times, want 2", f.reloads)
	}
}

func TestMalformedRequests(t *testing.T) {
	f := &fakeProvider{status: sampleStatus()}
	path := startServer(t, f)
	huge := append([]byte(`{"cmd":"status","vip":"`), bytes.Repeat([]byte("a"), 1<<20)...)
	tests := []struct {
		name, req, want string
	}{
		{"not json", "hello\n", "bad request"},
		{"empty", "", "bad request"},
		{"unknown command", `{"cmd":"shutdown"}` + "\n", `unknown command "shutdown"`},
		{"unknown field", `{"cmd":"status","force":true}` + "\n", "unknown field"},
		{"trailing data", `{"cmd":"status"} {"cmd":"reload"}` + "\n", "data after"},
		{"bad member", `{"cmd":"weight","member":"frontend-2","weight":1}` + "\n", "member"},
		{"negative weight", `{"cmd":"weight","member":"192.0.2.11","weight":-1}` + "\n", "bad request"},
		{"weight too big", `{"cmd":"weight","member":"192.0.2.11","weight":4294967296}` + "\n", "bad request"},
		{"weight missing", `{"cmd":"weight","member":"192.0.2.11"}` + "\n", "needs a member and a weight"},
		{"status with args", `{"cmd":"status","member":"192.0.2.11"}` + "\n", "takes no arguments"},
		{"oversized", string(huge), "too large"},
		{"oversized line", string(huge) + "\n", "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := rawRequest(t, path, []byte(tt.req))
			if resp.OK || !strings.Contains(resp.Error, tt.want) {
				t.Errorf("answer %+v, want an error containing %q", resp, tt.want)
			}
		})
	}
	if f.weights != nil || f.reloads != 0 {
		t.Errorf("a malformed request reached the provider: weights %v reloads %d", f.weights, f.reloads)
	}
	// The server is still there.
	if _, err := Dial(path).Status(); err != nil {
		t.Fatalf("status after malformed requests: %v", err)
	}
}

func TestRequestWithoutNewlineAtEOF(t *testing.T) {
	path := startServer(t, &fakeProvider{status: sampleStatus()})
	resp := rawRequest(t, path, []byte(`{"cmd":"status"}`))
	if !resp.OK || resp.Status == nil || resp.Status.Node != "fe1" {
		t.Errorf("answer %+v, want the status", resp)
	}
}

func TestSilentClientTimesOut(t *testing.T) {
	old := readTimeout
	readTimeout = 200 * time.Millisecond
	t.Cleanup(func() { readTimeout = old })
	path := startServer(t, &fakeProvider{status: sampleStatus()})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var resp response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		t.Fatalf("no answer to a silent client: %v", err)
	}
	if !strings.Contains(resp.Error, "timeout") {
		t.Errorf("answer %+v, want a timeout error", resp)
	}
}

func TestProviderPanicIsAnswered(t *testing.T) {
	f := &fakeProvider{status: sampleStatus(), panicky: true}
	c := Dial(startServer(t, f))
	if _, err := c.Status(); err == nil || !strings.Contains(err.Error(), "provider exploded") {
		t.Errorf("Status with a panicking provider: %v, want an internal error", err)
	}
	f.mu.Lock()
	f.panicky = false
	f.mu.Unlock()
	if _, err := c.Status(); err != nil {
		t.Errorf("server did not survive the panic: %v", err)
	}
}

func TestConcurrentClients(t *testing.T) {
	c := Dial(startServer(t, &fakeProvider{status: sampleStatus()}))
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			s, err := c.Status()
			if err == nil && s.Node != "fe1" {
				err = fmt.Errorf("node %q", s.Node)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestSocketPermissions(t *testing.T) {
	path := startServer(t, &fakeProvider{status: sampleStatus()})
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("created directory mode %v, want 0700", di.Mode().Perm())
	}
	// No temporary name is left beside the socket.
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Errorf("directory holds %v, want only the socket", ents)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l2lb.sock")
	// A crashed l2lb leaves its socket file with nobody listening.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := net.Dial("unix", path); !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("stale socket setup: dial gave %v, want connection refused", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, path, &fakeProvider{status: sampleStatus()}) }()
	waitForSocket(t, path, done)
	if _, err := Dial(path).Status(); err != nil {
		t.Errorf("status through the replaced socket: %v", err)
	}

	// A live socket is not taken over.
	err = Serve(context.Background(), path, &fakeProvider{})
	if !errors.Is(err, ErrSocketInUse) {
		t.Errorf("second Serve on a live socket: %v, want ErrSocketInUse", err)
	}
	if _, err := Dial(path).Status(); err != nil {
		t.Errorf("first server lost its socket to the second: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestPathNotSocketIsLeftAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l2lb.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Serve(context.Background(), path, &fakeProvider{})
	if !errors.Is(err, ErrNotSocket) {
		t.Errorf("Serve over a regular file: %v, want ErrNotSocket", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Errorf("regular file changed: %q %v", b, err)
	}
}

// TestNonRootPeerRefused connects from a thread whose effective user is nobody and checks that the
// SO_PEERCRED check refuses it even though the socket's mode lets it connect.
func TestNonRootPeerRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test needs root to connect as another user")
		}
		t.Skip("needs root to connect as another user")
	}
	// A directory anyone can traverse, so that only the peer check stands in the way.
	dir, err := os.MkdirTemp("", "l2lb-control-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "l2lb.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	f := &fakeProvider{status: sampleStatus()}
	go func() { done <- Serve(ctx, path, f) }()
	t.Cleanup(func() { cancel(); <-done })
	waitForSocket(t, path, done)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}

	const nobody = 65534
	type result struct {
		resp response
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread's credentials change and it is never unlocked: when this goroutine ends
		// the runtime discards the thread, so no other goroutine ever runs as nobody.
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), nobody, ^uintptr(0)); e != 0 {
			ch <- result{err: fmt.Errorf("setresuid: %w", e)}
			return
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(request{Cmd: cmdReload}.encode())
		var resp response
		err = json.NewDecoder(c).Decode(&resp)
		ch <- result{resp, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.resp.OK || r.resp.Error != ErrPeerNotAllowed.Error() {
		t.Errorf("answer to a non-root peer %+v, want %q", r.resp, ErrPeerNotAllowed)
	}
	if f.reloads != 0 {
		t.Errorf("a non-root peer made the provider reload")
	}
	// Root, on any thread, still gets through.
	if err := Dial(path).Reload(); err != nil {
		t.Errorf("root refused: %v", err)
	}
}

func TestClientWithoutServer(t *testing.T) {
	_, err := Dial(filepath.Join(t.TempDir(), "none.sock")).Status()
	if err == nil || !strings.Contains(err.Error(), "is l2lb running") {
		t.Errorf("Status without a server: %v", err)
	}
}

func TestReadRequestLimits(t *testing.T) {
	exact := bytes.Repeat([]byte("x"), MaxRequestSize)
	if b, err := readRequest(bytes.NewReader(exact)); err != nil || len(b) != MaxRequestSize {
		t.Errorf("request of exactly MaxRequestSize: %d bytes, %v", len(b), err)
	}
	if _, err := readRequest(bytes.NewReader(append(exact, 'x'))); !errors.Is(err, ErrRequestTooLarge) {
		t.Errorf("request one byte over: %v, want ErrRequestTooLarge", err)
	}
	b, err := readRequest(io.MultiReader(strings.NewReader(`{"cmd":`), strings.NewReader("\"status\"}\nignored")))
	if err != nil || string(b) != `{"cmd":"status"}` {
		t.Errorf("request split over reads: %q %v", b, err)
	}
}
