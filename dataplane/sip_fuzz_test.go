package dataplane

import (
	"bufio"
	"bytes"
	"net/textproto"
	"strings"
	"testing"
	"unsafe"
)

// FuzzCallID checks the Call-ID extractor: it never panics, returns a non-empty, trimmed subslice
// of the bytes it may read, and agrees with an independent header parser.
//
// The oracle is the standard library's net/textproto MIME header reader, not a SIP stack: the
// brief's github.com/emiago/sipgo would need a go.mod change for a test-only dependency, which this
// package's owner may not make. SIP headers are MIME-style headers (RFC 3261 §7.3 defers to RFC
// 2822's syntax), so textproto's line splitting, CRLF/LF handling, folding, trimming and
// case-insensitive names are a faithful oracle where the two grammars overlap. Where they do not,
// the input is not compared: textproto rejects tabs before the colon (SIP allows them) and
// non-token names, it cannot tell the order of "Call-ID" and "i" headers, and it joins a folded
// value into one with spaces (which CallID never returns, a Call-ID having no whitespace).
func FuzzCallID(f *testing.F) {
	for _, s := range []string{
		string(invite("a84b4c76e66710@pc33.atlanta.example.com")),
		"SIP/2.0 180 Ringing\r\ni: x@y\r\n\r\n",
		"BYE sip:b@x SIP/2.0\nCall-ID:\n  folded\n\n",
		"BYE sip:b@x SIP/2.0\r\nCall-ID : spaced\r\n\r\n",
		"\r\n\r\n",
		"BYE sip:b@x SIP/2.0\r\nCall-ID: cut",
		"BYE sip:b@x SIP/2.0\r\nTo: a\r\n b\r\nCall-ID: z\r\n\r\n",
		"OPTIONS sip:b@x SIP/2.0\r\nCall-Id: one\r\ncall-id: two\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		v, ok := CallID(msg)
		read := msg[:min(len(msg), MaxSIPScan)]
		if ok {
			if len(v) == 0 || !within(v, read) {
				t.Fatalf("CallID(%q) = %q: not a non-empty subslice of the first %d bytes", msg, v, len(read))
			}
			if bytes.IndexFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
				t.Fatalf("CallID(%q) = %q: holds whitespace or a control character", msg, v)
			}
		} else if v != nil {
			t.Fatalf("not found but returned %q", v)
		}
		want, comparable := textprotoCallID(read)
		if !comparable {
			return
		}
		if ok != (want != "") || string(v) != want {
			t.Fatalf("CallID(%q) = %q, %v; net/textproto reads %q", msg, v, ok, want)
		}
	})
}

// textprotoCallID reads the Call-ID of msg with net/textproto, and reports whether the input is
// one the two parsers should agree on (see FuzzCallID).
func textprotoCallID(msg []byte) (string, bool) {
	body := bytes.TrimLeft(msg, "\r\n") // RFC 3261 §7.5, which textproto knows nothing of
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
	start, err := r.ReadLine()
	if err != nil || !sipStartLine(start) {
		// Only the ends of the line tell a SIP start line; no SIP message, nothing to compare
		// beyond CallID finding none, which the caller's check covers when it says not found.
		return "", err == nil
	}
	h, err := r.ReadMIMEHeader()
	if err != nil {
		return "", false // no end of headers inside the bytes, or a line textproto refuses
	}
	// textproto canonicalises a name ("call-id" -> "Call-Id") unless it holds a space (before
	// the colon, go.dev/issue/34540), which it keeps as it came.
	var vals []string
	for k, vv := range h {
		if n := asciiLower(strings.TrimRight(k, " ")); n == "call-id" || n == "i" {
			if vals != nil {
				return "", false // two spellings: which came first is lost
			}
			vals = vv
		}
	}
	if vals == nil {
		return "", true
	}
	return checkedValue(vals[0])
}

// asciiLower lowercases ASCII letters only (strings.ToLower and EqualFold also map, or fold,
// letters such as U+212A KELVIN SIGN onto ASCII ones).
func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, s)
}

// checkedValue returns textproto's value of a header with its trailing spaces trimmed (textproto
// trims them per line), or false when it was joined from folded lines.
func checkedValue(v string) (string, bool) {
	v = strings.TrimRight(v, " \t")
	return v, !strings.ContainsAny(v, " \t")
}

// sipStartLine is RFC 3261 §7.1's start-line test written independently of isSIPStartLine.
func sipStartLine(line string) bool {
	u := asciiLower(line)
	return strings.HasPrefix(u, "sip/2.0 ") || strings.HasSuffix(u, " sip/2.0")
}

// within reports whether v lies inside b's memory.
func within(v, b []byte) bool {
	if len(b) == 0 {
		return false
	}
	pv, pb := uintptr(unsafe.Pointer(unsafe.SliceData(v))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return pv >= pb && pv+uintptr(len(v)) <= pb+uintptr(len(b))
}
