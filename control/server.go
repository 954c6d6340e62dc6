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
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where a running l2lb listens for control requests. /run is the FHS place for
// runtime sockets (FHS 3.0 §3.15) and is a tmpfs, so a socket never outlives a reboot.
const DefaultSocket = "/run/l2lb/l2lb.sock"

// readTimeout bounds how long a client may take to send its one request; a variable so the test
// of a silent client need not wait the full time.
var readTimeout = 5 * time.Second

// Limits of the control server.
const (
	// writeTimeout bounds how long a client may take to read the answer; a connection table of a
	// million entries is some hundred megabytes of JSON.
	writeTimeout = time.Minute
	// maxConcurrent bounds the connections served at once, so that a flood of clients cannot make
	// the balancer build many snapshots of a large table in parallel.
	maxConcurrent = 8
)

// Errors of the control server.
var (
	// ErrPeerNotAllowed means a peer that is neither root nor the server's own user connected.
	ErrPeerNotAllowed = errors.New("control: permission denied: peer is not root")
	// ErrSocketInUse means another process is already serving the control socket path.
	ErrSocketInUse = errors.New("control: socket already in use by a running l2lb")
	// ErrNotSocket means the socket path exists and is not a socket, so it is not ours to remove.
	ErrNotSocket = errors.New("control: path exists and is not a socket")
)

// Serve listens on the unix socket at path and answers control requests from p until ctx is done,
// then closes the listener, waits for the requests in progress and removes the socket.
//
// The directory of path is created with mode 0700 if missing and the socket gets mode 0600; a stale
// socket left by a crashed l2lb is replaced, one a live l2lb is serving is not (ErrSocketInUse).
// As defence in depth, a peer whose SO_PEERCRED user (unix(7)) is neither root nor the server's own
// effective user is answered with an error. Each connection carries one JSON request and gets one
// JSON answer; malformed or oversized requests get an error answer.
func Serve(ctx context.Context, path string, p Provider) error {
	ln, ino, err := listen(path)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var wg sync.WaitGroup
	sem := make(chan struct{}, maxConcurrent)
	var serveErr error
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil {
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					// Out of descriptors: back off instead of spinning; the operator's next
					// attempt will work once the pressure is gone.
					time.Sleep(100 * time.Millisecond)
					continue
				}
				serveErr = fmt.Errorf("control: accept on %s: %w", path, err)
			}
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			handle(conn, p)
		}()
	}
	ln.Close()
	wg.Wait()
	removeIfSame(path, ino)
	return serveErr
}

// listen creates the socket at path, 0600 from the first moment: it binds under a temporary name
// in the same (0700) directory, sets the mode, and renames the socket into place atomically, so the
// path never holds a socket with looser permissions. It returns the listener and the socket's
// identity, used to remove only our own socket on shutdown.
func listen(path string) (*net.UnixListener, os.FileInfo, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("control: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, nil, err
	}
	tmp := filepath.Join(dir, "."+filepath.Base(path)+"."+strconv.Itoa(os.Getpid())+".tmp")
	// A leftover from a crash between bind and rename is ours by name (pid-specific).
	os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("control: %w", err)
	}
	// The listener must not unlink the temporary name on Close: after the rename that name is
	// gone, and the final path is removed by Serve only if it is still ours.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, nil, fmt.Errorf("control: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, nil, fmt.Errorf("control: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("control: %w", err)
	}
	return ln, fi, nil
}

// removeStale removes a socket at path that nobody serves any more. A socket that accepts a
// connection belongs to a running l2lb and is left alone, as is anything that is not a socket.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%w: %s", ErrNotSocket, path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s", ErrSocketInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// Not the answer of a dead socket (e.g. EAGAIN from a live but saturated backlog):
		// removing it could cut a running balancer off from its operator.
		return fmt.Errorf("control: probing %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control: removing stale socket: %w", err)
	}
	return nil
}

// removeIfSame removes path if it is still the socket we created; another l2lb may have replaced
// a socket it found unanswered while we were shutting down.
func removeIfSame(path string, ours os.FileInfo) {
	fi, err := os.Lstat(path)
	if err == nil && os.SameFile(fi, ours) {
		os.Remove(path)
	}
}

// peerAllowed reports whether the peer of conn is root or the server's own effective user, from
// the credentials the kernel recorded at connect(2) (SO_PEERCRED, unix(7)).
func peerAllowed(conn *net.UnixConn) (bool, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return false, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return false, err
	}
	if credErr != nil {
		return false, credErr
	}
	return cred.Uid == 0 || int(cred.Uid) == os.Geteuid(), nil
}

// handle serves one connection: one request, one answer.
func handle(conn *net.UnixConn, p Provider) {
	defer conn.Close()
	var resp response
	func() {
		// A panic in the provider answers this request with an error instead of taking the
		// balancer, and every connection it forwards, down with it.
		defer func() {
			if r := recover(); r != nil {
				resp = response{Error: fmt.Sprintf("control: internal error: %v", r)}
			}
		}()
		resp = serveOne(conn, p)
	}()
	b, err := json.Marshal(resp)
	if err != nil {
		b, _ = json.Marshal(response{Error: "control: encoding answer: " + err.Error()})
	}
	conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	conn.Write(append(b, '\n'))
}

// serveOne checks the peer, reads and decodes the request and runs it.
func serveOne(conn *net.UnixConn, p Provider) response {
	ok, err := peerAllowed(conn)
	if err != nil {
		return response{Error: "control: reading peer credentials: " + err.Error()}
	}
	if !ok {
		return response{Error: ErrPeerNotAllowed.Error()}
	}
	conn.SetReadDeadline(time.Now().Add(readTimeout))
	b, err := readRequest(conn)
	if err != nil {
		return response{Error: err.Error()}
	}
	c, err := decodeRequest(b)
	if err != nil {
		return response{Error: err.Error()}
	}
	return run(c, p)
}

// run executes a validated command.
func run(c command, p Provider) response {
	switch c.cmd {
	case cmdStatus:
		s := p.Status()
		return response{OK: true, Status: &s}
	case cmdConns:
		return response{OK: true, Conns: p.Conns(c.vip, c.member)}
	case cmdWeight:
		if err := p.SetWeight(c.member, c.weight); err != nil {
			return response{Error: err.Error()}
		}
		return response{OK: true}
	case cmdReload:
		if err := p.Reload(); err != nil {
			return response{Error: err.Error()}
		}
		return response{OK: true}
	}
	// decodeRequest lets only known commands through.
	return response{Error: fmt.Sprintf("%v %q", ErrUnknownCommand, c.cmd)}
}

// readRequest reads one request: everything up to the first newline or the end of the stream,
// at most MaxRequestSize bytes.
func readRequest(r io.Reader) ([]byte, error) {
	buf := make([]byte, 0, 512)
	chunk := make([]byte, 512)
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			if i > MaxRequestSize {
				return nil, ErrRequestTooLarge
			}
			return buf[:i], nil
		}
		if len(buf) > MaxRequestSize {
			return nil, ErrRequestTooLarge
		}
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return nil, fmt.Errorf("control: reading request: %w", err)
		}
	}
}
