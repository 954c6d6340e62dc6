// Package healthcheck probes the balanced services the way a client sees
// them and turns the results into per-frontend health with rise/fall
// hysteresis.
//
// A probe is a real protocol exchange (SMTP greeting and EHLO, IMAP and
// POP3 greetings, an HTTP GET, a TLS handshake, a SIP OPTIONS transaction,
// or a bare TCP connect) over a connection from a caller-supplied Dialer.
// The caller hands in one Dialer per frontend (in production one that
// reaches the VIP through that frontend's MAC); this package knows nothing
// of how the packets travel. Every probe is bounded by its check's timeout
// through the context and the connection deadline, so a server that accepts
// the connection but never speaks fails within the timeout.
//
// Monitor runs the probes of every (frontend, service) pair on their
// intervals, applies rise/fall per pair, tracks the cluster-wide quorum and
// publishes a Snapshot that encodes compactly for gossip to a standby.
package healthcheck

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/smtp"
	"net/textproto"
	"strings"
	"time"

	"github.com/l2lb/l2lb/services"
)

// Dialer opens the connection of a probe; *net.Dialer satisfies it. network
// is "tcp" or "udp" and address a "host:port" with a literal IP.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// ProbeFunc runs one probe of a service at addr over a connection from d and
// returns nil if the service answered as a healthy one does. c supplies the
// timeout and the kind-specific settings.
type ProbeFunc func(ctx context.Context, d Dialer, addr netip.AddrPort, c services.Check) error

// Sentinel errors; probe errors wrap one of them (and the underlying I/O
// error, such as os.ErrDeadlineExceeded, where there is one).
var (
	// ErrUnknownKind reports a check kind or kind/protocol pair this
	// package has no probe for.
	ErrUnknownKind = errors.New("healthcheck: unknown check kind")
	// ErrConnect reports a connection that could not be opened.
	ErrConnect = errors.New("healthcheck: connect failed")
	// ErrExchange reports an I/O failure or timeout after the connection
	// was open: the banner or response never came.
	ErrExchange = errors.New("healthcheck: no answer")
	// ErrReply reports an answer that is not what a healthy server sends:
	// a wrong greeting, a refused command, a status outside the range.
	ErrReply = errors.New("healthcheck: unexpected reply")
)

// maxReply bounds what a probe reads from a server, so a misbehaving one
// cannot make the balancer buffer without limit.
const maxReply = 64 << 10

// ProbeFor returns the probe of a check kind on a service protocol
// (services.ProtoTCP or services.ProtoUDP).
func ProbeFor(kind, proto string) (ProbeFunc, error) {
	if proto == services.ProtoUDP {
		if kind == services.KindSIP {
			return ProbeSIPUDP, nil
		}
		return nil, fmt.Errorf("%w: %s over %s", ErrUnknownKind, kind, proto)
	}
	if proto != services.ProtoTCP {
		return nil, fmt.Errorf("%w: protocol %q", ErrUnknownKind, proto)
	}
	switch kind {
	case services.KindTCP:
		return ProbeTCP, nil
	case services.KindSMTP:
		return ProbeSMTP, nil
	case services.KindIMAP:
		return ProbeIMAP, nil
	case services.KindPOP3:
		return ProbePOP3, nil
	case services.KindHTTP:
		return ProbeHTTP, nil
	case services.KindTLS:
		return ProbeTLS, nil
	case services.KindSIP:
		return ProbeSIPTCP, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownKind, kind)
}

// bound derives the context of one probe: the caller's, shortened to the
// check's timeout.
func bound(ctx context.Context, c services.Check) (context.Context, context.CancelFunc) {
	if c.Timeout > 0 {
		return context.WithTimeout(ctx, c.Timeout)
	}
	return context.WithCancel(ctx)
}

// session runs fn on a probe connection to addr over network, bounded by c's timeout: the
// preamble every probe but the HTTP one shares.
func session(ctx context.Context, d Dialer, network string, addr netip.AddrPort, c services.Check,
	fn func(ctx context.Context, conn net.Conn) error) error {
	ctx, cancel := bound(ctx, c)
	defer cancel()
	conn, closeConn, err := dial(ctx, d, network, addr)
	if err != nil {
		return err
	}
	defer closeConn()
	return fn(ctx, conn)
}

// dial opens the probe connection, sets its deadline from ctx and arranges
// for a cancelled ctx to interrupt blocked I/O. The returned close function
// releases both.
func dial(ctx context.Context, d Dialer, network string, addr netip.AddrPort) (net.Conn, func(), error) {
	conn, err := d.DialContext(ctx, network, addr.String())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s %s: %w", ErrConnect, network, addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			_ = conn.Close()
			return nil, nil, fmt.Errorf("%w: set deadline: %w", ErrExchange, err)
		}
	}
	stop := context.AfterFunc(ctx, func() {
		// A deadline in the past wakes every blocked Read and Write.
		_ = conn.SetDeadline(time.Unix(1, 0))
	})
	return conn, func() { stop(); _ = conn.Close() }, nil
}

// exchangeErr classifies err from a step of a text protocol: a
// *textproto.Error is a refusal by the server, anything else an I/O
// failure.
func exchangeErr(step string, err error) error {
	var te *textproto.Error
	if errors.As(err, &te) {
		return fmt.Errorf("%w: %s: %w", ErrReply, step, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrExchange, step, err)
}

// limitedConn is a connection whose reads stop after maxReply bytes.
type limitedConn struct {
	net.Conn
	r io.Reader
}

func limit(conn net.Conn) net.Conn { return limitedConn{conn, io.LimitReader(conn, maxReply)} }

func (c limitedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func textConn(conn net.Conn) *textproto.Conn { return textproto.NewConn(limit(conn)) }

// ProbeTCP succeeds when the TCP handshake with addr completes.
func ProbeTCP(ctx context.Context, d Dialer, addr netip.AddrPort, c services.Check) error {
	return session(ctx, d, "tcp", addr, c, func(context.Context, net.Conn) error { return nil })
}

// ProbeSMTP waits for the 220 greeting, sends EHLO c.SMTPHelo and expects
// 250, then QUIT (RFC 5321 §3.1, §4.1.1.1, §4.1.1.10). A server that
// rejects EHLO but accepts HELO still passes: net/smtp falls back as RFC
// 5321 §3.2 allows.
func ProbeSMTP(ctx context.Context, d Dialer, addr netip.AddrPort, c services.Check) error {
	return session(ctx, d, "tcp", addr, c, func(ctx context.Context, conn net.Conn) error {
		cl, err := smtp.NewClient(limit(conn), addr.Addr().String())
		if err != nil {
			return exchangeErr("greeting", err)
		}
		helo := c.SMTPHelo
		if helo == "" {
			helo = services.DefaultSMTPHelo
		}
		if err := cl.Hello(helo); err != nil {
			return exchangeErr("EHLO", err)
		}
		if err := cl.Quit(); err != nil {
			return exchangeErr("QUIT", err)
		}
		return nil
	})
}

// ProbeIMAP expects the untagged greeting "* OK" or "* PREAUTH" (RFC 9051
// §7.1; "* BYE" means the server refuses clients) and then logs out with
// "a1 LOGOUT", expecting the tagged OK (RFC 9051 §6.1.3).
func ProbeIMAP(ctx context.Context, d Dialer, addr netip.AddrPort, c services.Check) error {
	return session(ctx, d, "tcp", addr, c, func(ctx context.Context, conn net.Conn) error {
		tc := textConn(conn)
		line, err := tc.ReadLine()
		if err != nil {
			return exchangeErr("greeting", err)
		}
		if !hasWordPrefix(line, "* OK") && !hasWordPrefix(line, "* PREAUTH") {
			return fmt.Errorf("%w: greeting %q", ErrReply, clip(line))
		}
		if err := tc.PrintfLine("a1 LOGOUT"); err != nil {
			return exchangeErr("LOGOUT", err)
		}
		// The server sends an untagged BYE, then the tagged completion; bound
		// the untagged lines a broken server might stream instead.
		for range 16 {
			line, err := tc.ReadLine()
			if err != nil {
				return exchangeErr("LOGOUT", err)
			}
			if hasWordPrefix(line, "a1") {
				if !hasWordPrefix(line, "a1 OK") {
					return fmt.Errorf("%w: LOGOUT answered %q", ErrReply, clip(line))
				}
				return nil
			}
		}
		return fmt.Errorf("%w: no tagged answer to LOGOUT", ErrReply)
	})
}

// ProbePOP3 expects the "+OK" greeting and a "+OK" answer to QUIT (RFC 1939
// §4, §6).
func ProbePOP3(ctx context.Context, d Dialer, addr netip.AddrPort, c services.Check) error {
	return session(ctx, d, "tcp", addr, c, func(ctx context.Context, conn net.Conn) error {
		tc := textConn(conn)
		line, err := tc.ReadLine()
		if err != nil {
			return exchangeErr("greeting", err)
		}
		if !hasWordPrefix(line, "+OK") {
			return fmt.Errorf("%w: greeting %q", ErrReply, clip(line))
		}
		if err := tc.PrintfLine("QUIT"); err != nil {
			return exchangeErr("QUIT", err)
		}
		if line, err = tc.ReadLine(); err != nil {
			return exchangeErr("QUIT", err)
		}
		if !hasWordPrefix(line, "+OK") {
			return fmt.Errorf("%w: QUIT answered %q", ErrReply, clip(line))
		}
		return nil
	})
}

// ProbeHTTP sends GET c.HTTPPath with Host c.HTTPHost (default: addr) and
// expects a status from c.HTTPExpectLo to c.HTTPExpectHi. Redirects are not
// followed: a 3xx is the answer of the server probed.
func ProbeHTTP(ctx context.Context, d Dialer, addr netip.AddrPort, c services.Check) error {
	ctx, cancel := bound(ctx, c)
	defer cancel()
	path := c.HTTPPath
	if path == "" {
		path = services.DefaultHTTPPath
	}
	lo, hi := c.HTTPExpectLo, c.HTTPExpectHi
	if lo == 0 {
		lo, hi = services.DefaultHTTPExpectLo, services.DefaultHTTPExpectHi
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			conn, err := d.DialContext(ctx, network, addr.String())
			if err != nil {
				return nil, fmt.Errorf("%w: %s %s: %w", ErrConnect, network, addr, err)
			}
			return conn, nil
		},
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: maxReply,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+path, nil)
	if err != nil {
		return fmt.Errorf("%w: request for %q: %w", ErrUnknownKind, path, err)
	}
	if c.HTTPHost != "" {
		req.Host = c.HTTPHost
	}
	req.Header.Set("User-Agent", "l2lb-healthcheck")
	cl := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := cl.Do(req)
	if err != nil {
		if errors.Is(err, ErrConnect) {
			return err
		}
		return fmt.Errorf("%w: GET %s: %w", ErrExchange, path, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxReply))
	_ = resp.Body.Close()
	if resp.StatusCode < lo || resp.StatusCode > hi {
		return fmt.Errorf("%w: GET %s: status %d, want %d-%d", ErrReply, path, resp.StatusCode, lo, hi)
	}
	return nil
}

// ProbeTLS succeeds when a TLS handshake completes. The certificate is
// verified (system roots, name c.TLSServerName or else the VIP) only with
// c.TLSVerify: a check proves the service runs, and self-signed internal
// certificates are common.
func ProbeTLS(ctx context.Context, d Dialer, addr netip.AddrPort, c services.Check) error {
	return session(ctx, d, "tcp", addr, c, func(ctx context.Context, conn net.Conn) error {
		cfg := &tls.Config{ServerName: c.TLSServerName, InsecureSkipVerify: !c.TLSVerify}
		if cfg.ServerName == "" && c.TLSVerify {
			// Go verifies an IP ServerName against the certificate's IP SANs
			// and sends no SNI for it (RFC 6066 §3 forbids literal addresses).
			cfg.ServerName = addr.Addr().String()
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			var ve *tls.CertificateVerificationError
			var ae tls.AlertError
			if errors.As(err, &ve) || errors.As(err, &ae) {
				return fmt.Errorf("%w: TLS handshake: %w", ErrReply, err)
			}
			return fmt.Errorf("%w: TLS handshake: %w", ErrExchange, err)
		}
		_ = tc.Close() // sends close_notify
		return nil
	})
}

// hasWordPrefix reports whether line starts with prefix, compared without
// regard to case (IMAP atoms and POP3 status indicators are
// case-insensitive), followed by a blank or the end of the line.
func hasWordPrefix(line, prefix string) bool {
	if len(line) < len(prefix) || !strings.EqualFold(line[:len(prefix)], prefix) {
		return false
	}
	return len(line) == len(prefix) || line[len(prefix)] == ' '
}

// clip shortens a server line for an error message.
func clip(s string) string {
	const n = 80
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
