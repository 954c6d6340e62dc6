package testbed

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The name protocol. Over TCP the client sends one line:
//
//	NAME\n             server answers "<name>\n" and closes
//	DOWNLOAD <n>\n     server sends n bytes of Stream(n) and closes
//	UPLOAD <n>\n<n bytes>  server answers "<hex sha256 of the bytes>\n"
//
// Over UDP any datagram is answered with "<name> <hex sha256 of payload>".
// The server names itself with the host's role name (f1, f2, ...), which is
// how tests see which frontend handled a flow.

// MaxTransfer bounds DOWNLOAD and UPLOAD sizes, so a corrupted request
// cannot make a server stream for ever.
const MaxTransfer = 1 << 30

// maxLine bounds a request line.
const maxLine = 128

// serverIdle is how long a server connection may sit without progress.
const serverIdle = 30 * time.Second

// chunk is the I/O unit for transfers.
const chunk = 64 << 10

// Stream returns the deterministic pseudo-random byte stream a DOWNLOAD of n
// bytes carries; it is seeded by n alone, so both ends can produce it.
func Stream(n int64) io.Reader {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:8], uint64(n))
	copy(seed[8:], "l2lb testbed download")
	return io.LimitReader(rand.NewChaCha8(seed), n)
}

// ServeName starts name servers on addr (a VIP or the host's own address, of
// either family: call it once per address, e.g. for bed.VIPs[0] and
// bed.VIPs6[0]) for every TCP and UDP port given, inside the host's
// namespace. stop closes
// the listeners and any open connection and waits for the handlers; it is
// idempotent, and Close calls it too.
func (h *Host) ServeName(addr netip.Addr, tcpPorts, udpPorts []uint16) (stop func(), err error) {
	s := &nameServer{h: h, conns: map[net.Conn]struct{}{}}
	stop = s.stop
	defer func() {
		if err != nil {
			s.stop()
			stop = nil
		}
	}()
	for _, p := range tcpPorts {
		ln, err := h.ListenTCP(netip.AddrPortFrom(addr, p))
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.lns = append(s.lns, ln)
		s.mu.Unlock()
		s.wg.Add(1)
		go s.acceptLoop(ln)
	}
	for _, p := range udpPorts {
		uc, err := h.ListenUDP(netip.AddrPortFrom(addr, p))
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.ucs = append(s.ucs, uc)
		s.mu.Unlock()
		s.wg.Add(1)
		go s.udpLoop(uc)
	}
	if err := h.bed.onClose(s.stop); err != nil {
		return nil, err
	}
	return stop, nil
}

type nameServer struct {
	h    *Host
	wg   sync.WaitGroup
	once sync.Once

	mu     sync.Mutex
	closed bool
	lns    []*net.TCPListener
	ucs    []*net.UDPConn
	conns  map[net.Conn]struct{}
}

func (s *nameServer) stop() {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		for _, ln := range s.lns {
			ln.Close()
		}
		for _, uc := range s.ucs {
			uc.Close()
		}
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
}

func (s *nameServer) acceptLoop(ln *net.TCPListener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.h.bed.logf("testbed: %s: accept on %v: %v", s.h.Name, ln.Addr(), err)
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			if err := s.h.serveConn(c); err != nil {
				s.h.bed.logf("testbed: %s: serving %v: %v", s.h.Name, c.RemoteAddr(), err)
			}
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// serveConn answers one request of the name protocol on c.
func (h *Host) serveConn(c net.Conn) error {
	dc := &idleConn{Conn: c, idle: serverIdle}
	br := bufio.NewReaderSize(dc, chunk)
	cmd, n, err := readRequest(br)
	if err != nil {
		return err
	}
	switch cmd {
	case "NAME":
		if _, err := io.WriteString(dc, h.Name+"\n"); err != nil {
			return err
		}
		h.names.Add(1)
	case "DOWNLOAD":
		if _, err := io.CopyBuffer(dc, Stream(n), make([]byte, chunk)); err != nil {
			return err
		}
		h.downloads.Add(1)
	case "UPLOAD":
		sum := sha256.New()
		if _, err := io.CopyN(sum, br, n); err != nil {
			return fmt.Errorf("%w: upload of %d bytes: %w", ErrProtocol, n, err)
		}
		if _, err := io.WriteString(dc, hex.EncodeToString(sum.Sum(nil))+"\n"); err != nil {
			return err
		}
		h.uploads.Add(1)
	}
	return nil
}

// readRequest parses a request line.
func readRequest(br *bufio.Reader) (cmd string, n int64, err error) {
	var line []byte
	for {
		b, err := br.ReadByte()
		if err != nil {
			return "", 0, fmt.Errorf("%w: reading request: %w", ErrProtocol, err)
		}
		if b == '\n' {
			break
		}
		if len(line) >= maxLine {
			return "", 0, fmt.Errorf("%w: request line longer than %d bytes", ErrProtocol, maxLine)
		}
		line = append(line, b)
	}
	f := strings.Fields(string(line))
	switch {
	case len(f) == 1 && f[0] == "NAME":
		return "NAME", 0, nil
	case len(f) == 2 && (f[0] == "DOWNLOAD" || f[0] == "UPLOAD"):
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || n < 0 || n > MaxTransfer {
			return "", 0, fmt.Errorf("%w: bad size in %q", ErrProtocol, line)
		}
		return f[0], n, nil
	}
	return "", 0, fmt.Errorf("%w: unknown request %q", ErrProtocol, line)
}

func (s *nameServer) udpLoop(uc *net.UDPConn) {
	defer s.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.h.bed.logf("testbed: %s: udp read on %v: %v", s.h.Name, uc.LocalAddr(), err)
			}
			return
		}
		sum := sha256.Sum256(buf[:n])
		reply := s.h.Name + " " + hex.EncodeToString(sum[:])
		// Counted before replying so that a client holding the reply
		// always sees the count.
		s.h.datagrams.Add(1)
		if _, err := uc.WriteToUDPAddrPort([]byte(reply), from); err != nil {
			s.h.bed.logf("testbed: %s: udp reply to %v: %v", s.h.Name, from, err)
		}
	}
}

// idleConn pushes the deadline forward before every read and write, so the
// timeout bounds inactivity rather than the whole transfer.
type idleConn struct {
	net.Conn
	idle time.Duration
}

// Deadline errors are ignored: some net.Conns (net.Pipe) refuse deadlines
// once the peer has closed, and the Read or Write that follows reports the
// real state.
func (c *idleConn) Read(b []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	n, err := c.Conn.Read(b)
	return n, timeoutErr(err)
}

func (c *idleConn) Write(b []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	n, err := c.Conn.Write(b)
	return n, timeoutErr(err)
}

// timeoutErr adds ErrTimeout to deadline errors so callers can test for it.
func timeoutErr(err error) error {
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		return errors.Join(ErrTimeout, err)
	}
	return err
}

// AskNameOver sends NAME on an established connection and returns the
// server's name. Every read and write is bounded by idle.
func AskNameOver(c net.Conn, idle time.Duration) (string, error) {
	dc := &idleConn{Conn: c, idle: idle}
	if _, err := io.WriteString(dc, "NAME\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(dc, maxLine+1))
	if err != nil {
		return "", err
	}
	name, ok := bytes.CutSuffix(b, []byte("\n"))
	if !ok || len(name) == 0 || bytes.ContainsAny(name, " \n") {
		return "", fmt.Errorf("%w: bad NAME answer %q", ErrProtocol, b)
	}
	return string(name), nil
}

// DownloadOver sends DOWNLOAD n on an established connection, reads the
// answer to EOF and checks its length and SHA-256 against Stream(n).
func DownloadOver(c net.Conn, n int64, idle time.Duration) error {
	dc := &idleConn{Conn: c, idle: idle}
	if _, err := fmt.Fprintf(dc, "DOWNLOAD %d\n", n); err != nil {
		return err
	}
	got := sha256.New()
	// Read one byte more than asked for so that excess data is detected.
	m, err := io.CopyBuffer(got, io.LimitReader(dc, n+1), make([]byte, chunk))
	if err != nil {
		return fmt.Errorf("download after %d of %d bytes: %w", m, n, err)
	}
	if m != n {
		return fmt.Errorf("%w: downloaded %d bytes, want %d", ErrMismatch, m, n)
	}
	want := sha256.New()
	if _, err := io.Copy(want, Stream(n)); err != nil {
		return err
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("%w: sha256 of %d downloaded bytes is %x, want %x", ErrMismatch, n, got.Sum(nil), want.Sum(nil))
	}
	return nil
}

// UploadOver sends UPLOAD n followed by n random bytes on an established
// connection and checks that the server's SHA-256 matches.
func UploadOver(c net.Conn, n int64, idle time.Duration) error {
	dc := &idleConn{Conn: c, idle: idle}
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], rand.Uint64())
	binary.LittleEndian.PutUint64(seed[8:], rand.Uint64())
	want := sha256.New()
	payload := io.TeeReader(io.LimitReader(rand.NewChaCha8(seed), n), want)
	bw := bufio.NewWriterSize(dc, chunk)
	if _, err := fmt.Fprintf(bw, "UPLOAD %d\n", n); err != nil {
		return err
	}
	if m, err := io.Copy(bw, payload); err != nil {
		return fmt.Errorf("upload after %d of %d bytes: %w", m, n, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("upload of %d bytes: %w", n, err)
	}
	b, err := io.ReadAll(io.LimitReader(dc, maxLine+1))
	if err != nil {
		return fmt.Errorf("reading upload checksum: %w", err)
	}
	wantHex := hex.EncodeToString(want.Sum(nil)) + "\n"
	if string(b) != wantHex {
		return fmt.Errorf("%w: server's sha256 of %d uploaded bytes is %q, want %q", ErrMismatch, n, b, wantHex)
	}
	return nil
}

// AskName connects from laddr (any local address if invalid) to raddr,
// asks NAME and returns the server's name.
func (h *Host) AskName(laddr netip.Addr, raddr netip.AddrPort) (string, error) {
	c, err := h.dial(laddr, raddr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	name, err := AskNameOver(c, h.bed.opts.Timeout)
	if err != nil {
		return "", fmt.Errorf("testbed: %s: NAME %v->%v: %w", h.Name, c.LocalAddr(), raddr, err)
	}
	return name, nil
}

// Download connects from laddr to raddr, downloads n bytes and verifies
// them. It returns the local address and port the connection used.
func (h *Host) Download(laddr netip.Addr, raddr netip.AddrPort, n int64) (netip.AddrPort, error) {
	c, err := h.dial(laddr, raddr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	if err := DownloadOver(c, n, h.bed.opts.Timeout); err != nil {
		return local, fmt.Errorf("testbed: %s: DOWNLOAD %v->%v: %w", h.Name, local, raddr, err)
	}
	return local, nil
}

// Upload connects from laddr to raddr, uploads n bytes and verifies the
// server's checksum. It returns the local address and port the connection
// used.
func (h *Host) Upload(laddr netip.Addr, raddr netip.AddrPort, n int64) (netip.AddrPort, error) {
	c, err := h.dial(laddr, raddr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	if err := UploadOver(c, n, h.bed.opts.Timeout); err != nil {
		return local, fmt.Errorf("testbed: %s: UPLOAD %v->%v: %w", h.Name, local, raddr, err)
	}
	return local, nil
}

// UDPAsk sends one datagram of size random bytes from laddr (a fresh
// ephemeral port each call; any local address if invalid) to raddr, of
// either family, and returns the name in the answer, after checking the
// answer's SHA-256 of the payload. Datagrams larger than the path MTU are
// fragmented by the sender, in IPv6 as in IPv4.
func (h *Host) UDPAsk(laddr netip.Addr, raddr netip.AddrPort, size int) (string, error) {
	limit := 65507 // largest UDP payload in IPv4 (RFC 791, RFC 768)
	if network("udp", raddr.Addr()) == "udp6" {
		limit = 65527 // in IPv6 without jumbograms: 65535 minus the UDP header (RFC 8200)
	}
	if size < 0 || size > limit {
		return "", fmt.Errorf("%w: UDP payload size %d", ErrBadOptions, size)
	}
	var c *net.UDPConn
	err := h.Do(func() error {
		var la *net.UDPAddr
		if laddr.IsValid() {
			la = net.UDPAddrFromAddrPort(netip.AddrPortFrom(laddr, 0))
		}
		var err error
		c, err = net.DialUDP(network("udp", raddr.Addr()), la, net.UDPAddrFromAddrPort(raddr))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("testbed: %s: udp %v->%v: %w", h.Name, laddr, raddr, err)
	}
	defer c.Close()
	payload := make([]byte, size)
	for i := 0; i < size; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rand.Uint64())
		copy(payload[i:], w[:])
	}
	sum := sha256.Sum256(payload)
	want := " " + hex.EncodeToString(sum[:])
	if err := c.SetDeadline(time.Now().Add(h.bed.opts.Timeout)); err != nil {
		return "", err
	}
	if _, err := c.Write(payload); err != nil {
		return "", fmt.Errorf("testbed: %s: udp send %v->%v: %w", h.Name, c.LocalAddr(), raddr, err)
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("testbed: %s: udp answer %v<-%v: %w", h.Name, c.LocalAddr(), raddr, timeoutErr(err))
	}
	name, ok := strings.CutSuffix(string(buf[:n]), want)
	if !ok || name == "" || strings.Contains(name, " ") {
		return "", fmt.Errorf("%w: testbed: %s: udp answer %q to %d bytes, want \"<name>%s\"", ErrMismatch, h.Name, buf[:n], size, want)
	}
	return name, nil
}
