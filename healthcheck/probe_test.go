package healthcheck

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l2lb/l2lb/services"
)

var quick = services.Check{Interval: time.Second, Timeout: 200 * time.Millisecond, Rise: 1, Fall: 1}

// serveLines accepts connections and answers each with the script: lines
// to send, "<" to read one line first. An empty script accepts and stays
// silent.
func serveLines(t *testing.T, ln net.Listener, script ...string) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for _, s := range script {
					if s == "<" {
						if _, err := r.ReadString('\n'); err != nil {
							return
						}
						continue
					}
					fmt.Fprintf(c, "%s\r\n", s)
				}
				time.Sleep(2 * time.Second) // silent until the client gives up
			}()
		}
	}()
}

func TestProbesAgainstScriptedServers(t *testing.T) {
	ns := newNS(t)
	cases := []struct {
		name   string
		probe  ProbeFunc
		script []string
		want   error // nil: pass
	}{
		{"imap ok", ProbeIMAP, []string{"* OK ready", "<", "* BYE", "a1 OK done"}, nil},
		{"imap preauth", ProbeIMAP, []string{"* PREAUTH hi", "<", "a1 ok"}, nil},
		{"imap bye", ProbeIMAP, []string{"* BYE too busy"}, ErrReply},
		{"imap silent", ProbeIMAP, nil, ErrExchange},
		{"imap no logout answer", ProbeIMAP, []string{"* OK", "<"}, ErrExchange},
		{"imap logout refused", ProbeIMAP, []string{"* OK", "<", "a1 BAD no"}, ErrReply},
		{"pop3 ok", ProbePOP3, []string{"+OK hi", "<", "+OK bye"}, nil},
		{"pop3 err", ProbePOP3, []string{"-ERR busy"}, ErrReply},
		{"pop3 silent", ProbePOP3, nil, ErrExchange},
		{"smtp ok", ProbeSMTP, []string{"220 hi", "<", "250-hi", "250 PIPELINING", "<", "221 bye"}, nil},
		{"smtp 554", ProbeSMTP, []string{"554 go away"}, ErrReply},
		{"smtp silent", ProbeSMTP, nil, ErrExchange},
		{"smtp EHLO silent", ProbeSMTP, []string{"220 hi", "<"}, ErrExchange},
		{"http silent", ProbeHTTP, nil, ErrExchange},
		{"tls silent", ProbeTLS, nil, ErrExchange},
		{"sip tcp silent", ProbeSIPTCP, nil, ErrExchange},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ln := ns.listen(t, "tcp", fmt.Sprintf("127.0.0.1:%d", 20000+i))
			serveLines(t, ln, tc.script...)
			addr := netip.MustParseAddrPort(ln.Addr().String())
			start := time.Now()
			err := tc.probe(context.Background(), ns, addr, quick)
			took := time.Since(start)
			if tc.want == nil && err != nil {
				t.Fatalf("probe failed: %v", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("probe: %v, want %v", err, tc.want)
			}
			// A silent server must fail at the timeout, not hang.
			if took > quick.Timeout+time.Second {
				t.Fatalf("probe took %s with timeout %s", took, quick.Timeout)
			}
		})
	}
	// Nothing listens: the connect fails (RST from the kernel).
	if err := ProbeTCP(context.Background(), ns, netip.MustParseAddrPort("127.0.0.1:1"), quick); !errors.Is(err, ErrConnect) {
		t.Errorf("closed port: %v", err)
	}
	ln := ns.listen(t, "tcp", "127.0.0.1:0")
	serveLines(t, ln)
	if err := ProbeTCP(context.Background(), ns, netip.MustParseAddrPort(ln.Addr().String()), quick); err != nil {
		t.Errorf("open port: %v", err)
	}
	// A cancelled parent context stops a probe at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ProbeIMAP(ctx, ns, netip.MustParseAddrPort(ln.Addr().String()), quick); err == nil {
		t.Error("probe with a cancelled context passed")
	}
}

// sipUAS answers each OPTIONS datagram with the responses reply builds from
// the request's Via, Call-ID and the other header fields.
func sipUAS(t *testing.T, pc net.PacketConn, reply func(req *textproto.MIMEHeader) []string) {
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			r := textproto.NewReader(bufio.NewReader(strings.NewReader(string(buf[:n]))))
			line, _ := r.ReadLine()
			h, err := r.ReadMIMEHeader()
			if err != nil || !strings.HasPrefix(line, "OPTIONS sip:") {
				t.Errorf("malformed request %q: %v", line, err)
				return
			}
			for _, resp := range reply(&h) {
				pc.WriteTo([]byte(resp), from)
			}
		}
	}()
}

func response(code string, h *textproto.MIMEHeader, callID string) string {
	return "SIP/2.0 " + code + "\r\nVia: " + h.Get("Via") + "\r\nCall-ID: " + callID +
		"\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
}

func TestSIPUDP(t *testing.T) {
	ns := newNS(t)
	pc := ns.listenUDP(t, "127.0.0.1:5070")
	var checked atomic.Bool
	sipUAS(t, pc, func(h *textproto.MIMEHeader) []string {
		// RFC 3261 §8.1.1: the mandatory header fields are present.
		for _, k := range []string{"Via", "Max-Forwards", "To", "From", "Call-Id", "Cseq", "Contact", "Content-Length"} {
			if h.Get(k) == "" {
				t.Errorf("request lacks %s", k)
			}
		}
		if !strings.Contains(h.Get("Via"), ";branch=z9hG4bK") || !strings.Contains(h.Get("From"), ";tag=") {
			t.Errorf("Via %q From %q", h.Get("Via"), h.Get("From"))
		}
		checked.Store(true)
		id := h.Get("Call-Id")
		return []string{
			response("200 OK", h, "other@elsewhere"), // another transaction: ignored
			"garbage\r\n\r\n",                        // malformed: ignored
			response("100 Trying", h, id),            // provisional: ignored
			response("404 Not Here", h, id),          // final: alive
		}
	})
	addr := netip.MustParseAddrPort("127.0.0.1:5070")
	if err := ProbeSIPUDP(context.Background(), ns, addr, quick); err != nil {
		t.Fatal(err)
	}
	if !checked.Load() {
		t.Fatal("server saw no request")
	}

	pc2 := ns.listenUDP(t, "127.0.0.1:5071")
	sipUAS(t, pc2, func(h *textproto.MIMEHeader) []string {
		return []string{response("180 Ringing", h, h.Get("Call-Id"))}
	})
	start := time.Now()
	err := ProbeSIPUDP(context.Background(), ns, netip.MustParseAddrPort("127.0.0.1:5071"), quick)
	if !errors.Is(err, ErrExchange) || time.Since(start) > quick.Timeout+time.Second {
		t.Fatalf("only a provisional response: %v after %s", err, time.Since(start))
	}
	// Nothing listens: ICMP port unreachable fails the probe.
	if err := ProbeSIPUDP(context.Background(), ns, netip.MustParseAddrPort("127.0.0.1:5072"), quick); err == nil {
		t.Fatal("probe of a closed UDP port passed")
	}
}

func TestViaBranch(t *testing.T) {
	for in, want := range map[string]string{
		"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport":          "z9hG4bKabc",
		"SIP/2.0/UDP h ; BRANCH = z9hG4bKx , SIP/2.0/UDP o;branch=zz": "z9hG4bKx",
		"SIP/2.0/UDP h": "",
		"":              "",
	} {
		if got := viaBranch(in); got != want {
			t.Errorf("viaBranch(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzReadSIPResponse(f *testing.F) {
	f.Add("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\ni: x\r\nl: 0\r\n\r\n")
	f.Add("SIP/2.0 100 Trying\r\n\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		r := textproto.NewReader(bufio.NewReader(strings.NewReader(in)))
		resp, err := readSIPResponse(r)
		if err == nil && (resp.status < 100 || resp.status > 699 || resp.bodyLen < 0 || resp.bodyLen > maxReply) {
			t.Fatalf("accepted %+v", resp)
		}
	})
}
