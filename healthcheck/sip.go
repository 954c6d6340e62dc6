package healthcheck

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/l2lb/l2lb/services"
)

// branchMagic starts every RFC 3261 branch parameter (§8.1.1.7), telling
// the server the request follows RFC 3261 transaction matching.
const branchMagic = "z9hG4bK"

// maxSIPDatagram is the largest UDP payload (RFC 768 length field).
const maxSIPDatagram = 65535

// ProbeSIPUDP sends an OPTIONS request (RFC 3261 §11) in a UDP datagram and
// waits for a response of the same transaction (Call-ID and top Via branch,
// §17.1.3). Provisional 1xx responses are skipped; any final response,
// status 200 or above, proves a SIP server is processing requests: a 404 or
// 483 comes from a live proxy, which is what the balancer needs to know.
// Datagrams of other transactions and malformed ones are ignored until the
// timeout.
func ProbeSIPUDP(ctx context.Context, d Dialer, addr netip.AddrPort, c services.Check) error {
	return session(ctx, d, "udp", addr, c, func(ctx context.Context, conn net.Conn) error {
		req, callID, branch := sipOptions("UDP", addr, conn.LocalAddr())
		if _, err := conn.Write(req); err != nil {
			return fmt.Errorf("%w: send OPTIONS: %w", ErrExchange, err)
		}
		buf := make([]byte, maxSIPDatagram)
		var last error
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if last != nil {
					return fmt.Errorf("%w: OPTIONS: %w (last datagram: %w)", ErrExchange, err, last)
				}
				return fmt.Errorf("%w: OPTIONS: %w", ErrExchange, err)
			}
			r := textproto.NewReader(bufio.NewReader(bytes.NewReader(buf[:n])))
			resp, err := readSIPResponse(r)
			if err != nil {
				last = err
				continue
			}
			if resp.match(callID, branch) {
				return nil
			}
		}
	})
}

// ProbeSIPTCP sends an OPTIONS request over a TCP connection and reads
// responses from the stream (framed by Content-Length, RFC 3261 §18.3)
// until the final one of the transaction; like ProbeSIPUDP, any final
// status is alive.
func ProbeSIPTCP(ctx context.Context, d Dialer, addr netip.AddrPort, c services.Check) error {
	return session(ctx, d, "tcp", addr, c, func(ctx context.Context, conn net.Conn) error {
		req, callID, branch := sipOptions("TCP", addr, conn.LocalAddr())
		if _, err := conn.Write(req); err != nil {
			return fmt.Errorf("%w: send OPTIONS: %w", ErrExchange, err)
		}
		br := bufio.NewReader(io.LimitReader(conn, maxReply))
		r := textproto.NewReader(br)
		for {
			resp, err := readSIPResponse(r)
			if err != nil {
				return fmt.Errorf("%w: OPTIONS: %w", ErrExchange, err)
			}
			if _, err := io.CopyN(io.Discard, br, resp.bodyLen); err != nil {
				return fmt.Errorf("%w: OPTIONS body: %w", ErrExchange, err)
			}
			if resp.match(callID, branch) {
				return nil
			}
		}
	})
}

// sipResponse is what a probe needs of a SIP response.
type sipResponse struct {
	status  int
	callID  string
	branch  string // of the top Via
	bodyLen int64
}

// match reports whether r ends the probe's transaction: a final response
// with our Call-ID and branch. A matching 1xx does not end it.
func (r sipResponse) match(callID, branch string) bool {
	return r.callID == callID && r.branch == branch && r.status >= 200
}

// readSIPResponse reads a status line (RFC 3261 §7.2) and the header
// fields, which share the syntax of RFC 5322 headers that net/textproto
// reads. Compact header names (§7.3.3) are understood.
func readSIPResponse(r *textproto.Reader) (sipResponse, error) {
	var resp sipResponse
	line, err := r.ReadLine()
	if err != nil {
		return resp, err
	}
	proto, rest, _ := strings.Cut(line, " ")
	code, _, _ := strings.Cut(rest, " ")
	if !strings.EqualFold(proto, "SIP/2.0") || len(code) != 3 {
		return resp, fmt.Errorf("%w: status line %q", ErrReply, clip(line))
	}
	resp.status, err = strconv.Atoi(code)
	if err != nil || resp.status < 100 || resp.status > 699 {
		return resp, fmt.Errorf("%w: status line %q", ErrReply, clip(line))
	}
	h, err := r.ReadMIMEHeader()
	if err != nil {
		return resp, fmt.Errorf("%w: header: %w", ErrReply, err)
	}
	resp.callID = strings.TrimSpace(first(h, "Call-Id", "I"))
	resp.branch = viaBranch(first(h, "Via", "V"))
	if cl := strings.TrimSpace(first(h, "Content-Length", "L")); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 || n > maxReply {
			return resp, fmt.Errorf("%w: Content-Length %q", ErrReply, clip(cl))
		}
		resp.bodyLen = n
	}
	return resp, nil
}

// first returns the first value of the header under its long or compact
// name.
func first(h textproto.MIMEHeader, long, compact string) string {
	if v := h.Values(long); len(v) > 0 {
		return v[0]
	}
	return h.Get(compact)
}

// viaBranch returns the branch parameter of the first via-parm of a Via
// header value (RFC 3261 §20.42: several may share one header, separated by
// commas).
func viaBranch(via string) string {
	top, _, _ := strings.Cut(via, ",")
	params := strings.Split(top, ";")
	for _, p := range params[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(strings.TrimSpace(k), "branch") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// sipOptions builds an OPTIONS request with the header fields RFC 3261
// §8.1.1 requires (Via, Max-Forwards, To, From with tag, Call-ID, CSeq),
// Contact and Content-Length 0 (mandatory on TCP, §18.3). Via carries rport
// (RFC 3581) so a server behind NAT answers the port the probe came from.
func sipOptions(transport string, to netip.AddrPort, local net.Addr) (req []byte, callID, branch string) {
	sentBy := "l2lb.invalid"
	if ap, err := netip.ParseAddrPort(local.String()); err == nil {
		sentBy = ap.String()
	}
	branch = branchMagic + rand.Text()
	callID = rand.Text() + "@l2lb"
	tag := rand.Text()[:10]
	uri := "sip:" + to.String()
	var b strings.Builder
	fmt.Fprintf(&b, "OPTIONS %s SIP/2.0\r\n", uri)
	fmt.Fprintf(&b, "Via: SIP/2.0/%s %s;branch=%s;rport\r\n", transport, sentBy, branch)
	b.WriteString("Max-Forwards: 70\r\n") // RFC 3261 §8.1.1.6
	fmt.Fprintf(&b, "To: <%s>\r\n", uri)
	fmt.Fprintf(&b, "From: <sip:l2lb@%s>;tag=%s\r\n", sentBy, tag)
	fmt.Fprintf(&b, "Call-ID: %s\r\n", callID)
	b.WriteString("CSeq: 1 OPTIONS\r\n")
	fmt.Fprintf(&b, "Contact: <sip:l2lb@%s;transport=%s>\r\n", sentBy, strings.ToLower(transport))
	b.WriteString("Accept: application/sdp\r\n")
	b.WriteString("User-Agent: l2lb-healthcheck\r\n")
	b.WriteString("Content-Length: 0\r\n\r\n")
	return []byte(b.String()), callID, branch
}
