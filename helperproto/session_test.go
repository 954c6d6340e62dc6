package helperproto

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeHandler records the calls a Session makes.
type fakeHandler struct {
	mu         sync.Mutex
	calls      []string
	activeErr  error
	standbyErr error
	closeErr   error
	status     string
	onActive   func(members []netip.Addr)
	periodic   atomic.Int64
	closes     atomic.Int64
}

func (h *fakeHandler) record(s string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, s)
}

func (h *fakeHandler) Active(members []netip.Addr) error {
	parts := make([]string, len(members))
	for i, m := range members {
		parts[i] = m.String()
	}
	h.record("Active " + strings.Join(parts, " "))
	if h.onActive != nil {
		h.onActive(members)
	}
	return h.activeErr
}

func (h *fakeHandler) Standby(active netip.Addr) error {
	if active.IsValid() {
		h.record("Standby " + active.String())
	} else {
		h.record("Standby -")
	}
	return h.standbyErr
}

func (h *fakeHandler) Status() string { h.record("Status"); return h.status }
func (h *fakeHandler) Periodic()      { h.periodic.Add(1) }
func (h *fakeHandler) Close() error   { h.closes.Add(1); h.record("Close"); return h.closeErr }

func (h *fakeHandler) Calls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls)
}

// roleCalls returns the Active and Standby calls only.
func (h *fakeHandler) roleCalls() []string {
	var out []string
	for _, c := range h.Calls() {
		if strings.HasPrefix(c, "Active") || strings.HasPrefix(c, "Standby") {
			out = append(out, c)
		}
	}
	return out
}

// runInput runs a session over a fixed input and returns its output lines.
func runInput(t *testing.T, h *fakeHandler, input string, mod func(*Config)) []string {
	t.Helper()
	var out bytes.Buffer
	cfg := Config{In: strings.NewReader(input), Out: &out, Handler: h, Timeout: time.Hour}
	if mod != nil {
		mod(&cfg)
	}
	if err := NewSession(cfg).Run(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := h.closes.Load(); n != 1 {
		t.Fatalf("Close called %d times, want 1", n)
	}
	return outputLines(t, out.String())
}

// outputLines splits output into lines and checks the framing every output
// line must have: "\n"-terminated, at most MaxLineBytes with the newline, and
// starting with a sequence number and a blank or with "* ".
func outputLines(t testing.TB, out string) []string {
	t.Helper()
	if out == "" {
		return nil
	}
	if !strings.HasSuffix(out, "\n") {
		t.Fatalf("output does not end with a newline: %q", out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	for _, l := range lines {
		checkFraming(t, l)
	}
	return lines
}

var answerRE = regexp.MustCompile(`^[0-9]+ [^ ]`)

func checkFraming(t testing.TB, l string) {
	t.Helper()
	if len(l)+1 > MaxLineBytes {
		t.Fatalf("output line of %d bytes (with newline) exceeds %d", len(l)+1, MaxLineBytes)
	}
	if !strings.HasPrefix(l, "* ") && !answerRE.MatchString(l) {
		t.Fatalf("output line %.80q is neither an answer nor an information line", l)
	}
	if strings.ContainsRune(l, '\r') {
		t.Fatalf("output line %.80q contains CR", l)
	}
}

// cgp is a scripted CommuniGate Pro talking to a running session over pipes.
type cgp struct {
	t      *testing.T
	w      *io.PipeWriter
	lines  chan string
	runErr chan error
}

// startCGP runs a session whose output goes through a large bufio.Writer, so
// an answer only arrives if the session flushes it.
func startCGP(t *testing.T, h *fakeHandler, mod func(*Config)) (*cgp, *Session) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	cfg := Config{In: inR, Out: bufio.NewWriterSize(outW, 1<<16), Handler: h, Timeout: time.Hour}
	if mod != nil {
		mod(&cfg)
	}
	s := NewSession(cfg)
	c := &cgp{t: t, w: inW, lines: make(chan string, 100), runErr: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	go func() {
		err := s.Run()
		outW.Close()
		c.runErr <- err
	}()
	t.Cleanup(func() {
		inW.Close()
		outR.Close()
	})
	return c, s
}

func (c *cgp) send(line string) {
	c.t.Helper()
	done := make(chan error, 1)
	go func() { _, err := io.WriteString(c.w, line+"\n"); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			c.t.Fatalf("send %q: %v", line, err)
		}
	case <-time.After(2 * time.Second):
		c.t.Fatalf("send %q: helper does not read", line)
	}
}

func (c *cgp) expect(want ...string) {
	c.t.Helper()
	for _, w := range want {
		select {
		case got, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("output ended, want %q", w)
			}
			checkFraming(c.t, got)
			if got != w {
				c.t.Fatalf("got %q, want %q", got, w)
			}
		case <-time.After(2 * time.Second):
			c.t.Fatalf("no answer within 2s (unflushed?), want %q", w)
		}
	}
}

func (c *cgp) expectRunEnd(within time.Duration) error {
	c.t.Helper()
	select {
	case err := <-c.runErr:
		return err
	case <-time.After(within):
		c.t.Fatalf("Run did not return within %v", within)
		return nil
	}
}

// TestExampleSession plays the example session of the contract, one command
// at a time, waiting for each answer.
func TestExampleSession(t *testing.T) {
	h := &fakeHandler{}
	c, s := startCGP(t, h, nil)
	h.onActive = func(m []netip.Addr) {
		s.Info("active: VIPs 10.0.0.200 on eth0, members 10.0.0.11 (self, weight 100) 10.0.0.12 10.0.0.13")
	}
	c.send("1 INTF 3")
	c.expect("1 INTF 1")
	c.send("2 STANDBY 10.0.0.11")
	c.expect("2 OK")
	c.send("3 ACTIVE 10.0.0.11 10.0.0.12 10.0.0.13")
	c.expect("* active: VIPs 10.0.0.200 on eth0, members 10.0.0.11 (self, weight 100) 10.0.0.12 10.0.0.13", "3 OK")
	h.onActive = nil
	c.send("4 ACTIVE 10.0.0.11,10.0.0.13")
	c.expect("4 OK")
	start := time.Now()
	c.send("5 QUIT")
	c.expect("5 OK")
	if err := c.expectRunEnd(time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("QUIT to return: %v", time.Since(start))
	want := []string{"Standby 10.0.0.11", "Active 10.0.0.11 10.0.0.12 10.0.0.13", "Active 10.0.0.11 10.0.0.13", "Close"}
	if got := h.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
}

func TestAnswers(t *testing.T) {
	long := strings.Repeat("s", 2*MaxLineBytes)
	tests := []struct {
		name   string
		h      *fakeHandler
		maxIf  int
		in     string
		out    []string
		calls  []string // every call but Close, which must come last and once
		anyOut bool     // only check the framing of out's first line via prefix
	}{
		{name: "intf lower", in: "1 INTF 3\n", out: []string{"1 INTF 1"}},
		{name: "intf equal", in: "1 INTF 1\n", out: []string{"1 INTF 1"}},
		{name: "intf zero", in: "1 INTF 0\n", out: []string{"1 ERROR interface version 0 not supported"}},
		{name: "intf huge", in: "1 INTF 999999999999999999999999999\n", out: []string{"1 INTF 1"}},
		{name: "intf max 2, offered 3", maxIf: 2, in: "1 INTF 3\n", out: []string{"1 INTF 2"}},
		{name: "intf max 2, offered 1", maxIf: 2, in: "1 INTF 1\n", out: []string{"1 INTF 1"}},
		{name: "intf not a number", in: "1 INTF x\n", out: []string{`1 ERROR bad arguments: INTF needs a decimal number, got "x"`}},
		{name: "quit", in: "5 QUIT\n", out: []string{"5 OK"}},
		{name: "quit lower case CRLF", in: "5 quit\r\n", out: []string{"5 OK"}},
		{name: "nothing after quit is read", in: "5 QUIT\n6 ACTIVE 10.0.0.1\n7 STATUS\n", out: []string{"5 OK"}},
		{name: "active", in: "3 ACTIVE 10.0.0.11 10.0.0.12\n", out: []string{"3 OK"}, calls: []string{"Active 10.0.0.11 10.0.0.12"}},
		{name: "active duplicates collapsed", in: "3 ACTIVE 10.0.0.11,10.0.0.12 10.0.0.11\n", out: []string{"3 OK"},
			calls: []string{"Active 10.0.0.11 10.0.0.12"}},
		{name: "active handler error", h: &fakeHandler{activeErr: errors.New("interface eth9 missing")},
			in: "3 ACTIVE 10.0.0.11\n", out: []string{"3 ERROR interface eth9 missing"}, calls: []string{"Active 10.0.0.11"}},
		{name: "handler error with newline stays one line", h: &fakeHandler{activeErr: errors.New("a\nb\r\nc")},
			in: "3 ACTIVE 10.0.0.11\n", out: []string{"3 ERROR a b  c"}, calls: []string{"Active 10.0.0.11"}},
		{name: "standby without address", in: "2 STANDBY\n", out: []string{"2 OK"}, calls: []string{"Standby -"}},
		{name: "standby with address", in: "2 STANDBY 10.0.0.11\n", out: []string{"2 OK"}, calls: []string{"Standby 10.0.0.11"}},
		{name: "standby handler error", h: &fakeHandler{standbyErr: errors.New("no")},
			in: "2 STANDBY\n", out: []string{"2 ERROR no"}, calls: []string{"Standby -"}},
		{name: "status", h: &fakeHandler{status: "role standby, VIPs 192.0.2.10, members none, connections 0"},
			in: "9 STATUS\n", out: []string{"9 OK role standby, VIPs 192.0.2.10, members none, connections 0"}, calls: []string{"Status"}},
		{name: "status empty", in: "9 STATUS\n", out: []string{"9 OK"}, calls: []string{"Status"}},
		{name: "status multi-line flattened", h: &fakeHandler{status: "a\nb"}, in: "9 STATUS\n", out: []string{"9 OK a b"}, calls: []string{"Status"}},
		{name: "status cut to the line limit", h: &fakeHandler{status: long}, in: "9 STATUS\n",
			out: []string{"9 OK " + long[:MaxLineBytes-1-len("9 OK ")]}, calls: []string{"Status"}},
		{name: "repeated seq and command are answered again", in: "3 ACTIVE 10.0.0.11\n3 ACTIVE 10.0.0.11\n",
			out: []string{"3 OK", "3 OK"}, calls: []string{"Active 10.0.0.11", "Active 10.0.0.11"}},
		{name: "answers keep the seq as sent", in: "0007 STATUS\n", out: []string{"0007 OK"}, calls: []string{"Status"}},

		// Malformed input: an ERROR answer or a "* " line, and no role change.
		{name: "unknown verb", in: "3 FROB x\n", out: []string{"3 ERROR unknown command FROB"}},
		{name: "unknown verb then more", in: "3 FROB\n4 STATUS\n", out: []string{"3 ERROR unknown command FROB", "4 OK"}, calls: []string{"Status"}},
		{name: "unknown verb with control chars", in: "3 FR\x1bOB\n", out: []string{"3 ERROR unknown command FR OB"}},
		{name: "no seq", in: "ACTIVE 10.0.0.1\n", out: []string{`* ignored line (no sequence number): "ACTIVE 10.0.0.1"`}},
		{name: "info line from CGP", in: "* hello\n", out: []string{`* ignored line (no sequence number): "* hello"`}},
		{name: "non-numeric seq", in: "x1 ACTIVE 10.0.0.1\n", out: []string{`* ignored line (bad sequence number "x1"): "x1 ACTIVE 10.0.0.1"`}},
		{name: "empty line", in: "\n", out: []string{`* ignored line (empty line): ""`}},
		{name: "seq only", in: "4\n", out: []string{"4 ERROR missing command"}},
		{name: "bad address", in: "3 ACTIVE 10.0.0.11 10.0.0.300\n", out: []string{`3 ERROR bad address "10.0.0.300": not an IPv4 address`}},
		{name: "bad address after commas", in: "3 ACTIVE 10.0.0.11,127.0.0.1\n", out: []string{`3 ERROR bad address "127.0.0.1": loopback address`}},
		{name: "empty active", in: "3 ACTIVE\n", out: []string{"3 ERROR bad arguments: ACTIVE takes at least 1 address, got 0"}},
		{name: "bad standby address", in: "2 STANDBY 10.0.0.1x\n", out: []string{`2 ERROR bad address "10.0.0.1x": not an IPv4 address`}},
		{name: "two standby addresses", in: "2 STANDBY 10.0.0.1 10.0.0.2\n", out: []string{"2 ERROR bad arguments: STANDBY takes 0 to 1 address, got 2"}},
		{name: "unterminated last line is not obeyed", in: "3 ACTIVE 10.0.0.11", out: []string{`* ignored unterminated last line: "3 ACTIVE 10.0.0.11"`}},
		{name: "NUL bytes", in: "\x00\x00\n3\x00 QUIT\n", out: []string{`* ignored line (no sequence number): "\x00\x00"`,
			`* ignored line (bad sequence number "3\x00"): "3\x00 QUIT"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.h
			if h == nil {
				h = &fakeHandler{}
			}
			out := runInput(t, h, tt.in, func(c *Config) { c.MaxIntf = tt.maxIf })
			if !slices.Equal(out, tt.out) {
				t.Errorf("output\n%q\nwant\n%q", out, tt.out)
			}
			calls := h.Calls()
			if len(calls) == 0 || calls[len(calls)-1] != "Close" {
				t.Fatalf("calls %q do not end with Close", calls)
			}
			if got := calls[:len(calls)-1]; !slices.Equal(got, tt.calls) {
				t.Errorf("calls %q, want %q", got, tt.calls)
			}
		})
	}
}

func TestOverlongLines(t *testing.T) {
	exact := "1 STATUS" + strings.Repeat(" ", MaxLineBytes-len("1 STATUS"))
	tests := []struct {
		name string
		in   string
		out  []string
	}{
		{"seq readable", "7 ACTIVE " + strings.Repeat("10.0.0.1 ", 2000) + "\n8 STATUS\n",
			[]string{"7 ERROR line too long", "8 OK"}},
		{"no seq", strings.Repeat("x", 3*MaxLineBytes) + "\n8 STATUS\n",
			[]string{`* ignored line (line too long): "` + strings.Repeat("x", quoteMax) + `"...`, "8 OK"}},
		{"exactly the limit", exact + "\n", []string{"1 OK"}},
		{"exactly the limit with CRLF", exact + "\r\n", []string{"1 OK"}},
		{"one byte over", exact + " \n2 STATUS\n", []string{"1 ERROR line too long", "2 OK"}},
		{"one byte over with CRLF", exact + " \r\n2 STATUS\n", []string{"1 ERROR line too long", "2 OK"}},
		{"two overlong lines in a row", "3 " + strings.Repeat("y", 10000) + "\n4 " + strings.Repeat("z", 5000) + "\n5 STATUS\n",
			[]string{"3 ERROR line too long", "4 ERROR line too long", "5 OK"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &fakeHandler{}
			out := runInput(t, h, tt.in, nil)
			if !slices.Equal(out, tt.out) {
				t.Errorf("output\n%.200q\nwant\n%.200q", out, tt.out)
			}
			if rc := h.roleCalls(); rc != nil {
				t.Errorf("overlong line caused role calls %q", rc)
			}
		})
	}
}

// endlessLine yields n bytes of 'x', then a newline and tail, without ever
// holding the line in memory.
type endlessLine struct {
	n    int
	tail *strings.Reader
}

func (e *endlessLine) Read(p []byte) (int, error) {
	if e.n > 0 {
		k := min(len(p), e.n)
		for i := range k {
			p[i] = 'x'
		}
		e.n -= k
		return k, nil
	}
	return e.tail.Read(p)
}

func TestOverlongLineBoundedMemory(t *testing.T) {
	const lineBytes = 64 << 20
	h := &fakeHandler{}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	out := runInput(t, h, "", func(c *Config) {
		c.In = &endlessLine{n: lineBytes, tail: strings.NewReader("\n1 STATUS\n")}
	})
	runtime.ReadMemStats(&after)
	if !slices.Equal(out, []string{`* ignored line (line too long): "` + strings.Repeat("x", quoteMax) + `"...`, "1 OK"}) {
		t.Errorf("output %q", out)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Errorf("reading a %d-byte line allocated %d bytes", lineBytes, alloc)
	}
}

func TestEOFClosesOnce(t *testing.T) {
	h := &fakeHandler{}
	c, _ := startCGP(t, h, nil)
	c.send("3 ACTIVE 10.0.0.11")
	c.expect("3 OK")
	start := time.Now()
	c.w.Close()
	if err := c.expectRunEnd(time.Second); err != nil {
		t.Fatalf("Run after EOF: %v", err)
	}
	t.Logf("EOF to return: %v", time.Since(start))
	if n := h.closes.Load(); n != 1 {
		t.Errorf("Close called %d times", n)
	}
}

func TestCloseErrorReported(t *testing.T) {
	h := &fakeHandler{closeErr: errors.New("lo busy")}
	out := runInput(t, h, "5 QUIT\n", nil)
	if want := []string{"5 OK", "* close: lo busy"}; !slices.Equal(out, want) {
		t.Errorf("output %q, want %q", out, want)
	}
}

func TestPeriodicDuringSilence(t *testing.T) {
	h := &fakeHandler{}
	c, _ := startCGP(t, h, func(cfg *Config) { cfg.Timeout = 20 * time.Millisecond })
	deadline := time.Now().Add(3 * time.Second)
	for h.periodic.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("Periodic called %d times in 3s with a 20ms timeout", h.periodic.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if rc := h.roleCalls(); rc != nil {
		t.Errorf("silence caused role calls %q", rc)
	}
	c.w.Close()
	if err := c.expectRunEnd(time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestPeriodicWhileBusy checks that a steady stream of commands, each
// arriving well within the timeout, does not starve the periodic work.
func TestPeriodicWhileBusy(t *testing.T) {
	h := &fakeHandler{}
	c, _ := startCGP(t, h, func(cfg *Config) { cfg.Timeout = 20 * time.Millisecond })
	start := time.Now()
	for i := 1; time.Since(start) < 300*time.Millisecond; i++ {
		c.send(fmt.Sprintf("%d STATUS", i))
		c.expect(fmt.Sprintf("%d OK", i))
		time.Sleep(2 * time.Millisecond)
	}
	if n := h.periodic.Load(); n < 3 {
		t.Errorf("Periodic called %d times during 300ms of traffic with a 20ms timeout", n)
	}
	c.w.Close()
	if err := c.expectRunEnd(time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestTrace(t *testing.T) {
	var trace bytes.Buffer
	h := &fakeHandler{}
	now := time.Date(2026, 11, 25, 4, 0, 0, 0, time.FixedZone("CET", 3600))
	clock := func() time.Time { now = now.Add(1500 * time.Microsecond); return now }
	in := "1 INTF 3\r\nnoise\n7 " + strings.Repeat("q", 5000) + "\n5 QUIT\n"
	out := runInput(t, h, in, func(c *Config) { c.Trace = &trace; c.Now = clock })
	want := []string{
		"2026-11-25T03:00:00.001Z < 1 INTF 3",
		"2026-11-25T03:00:00.003Z > 1 INTF 1",
		"2026-11-25T03:00:00.004Z < noise",
		`2026-11-25T03:00:00.006Z > * ignored line (no sequence number): "noise"`,
		"2026-11-25T03:00:00.007Z < 7 " + strings.Repeat("q", readBufBytes-2) + " ... (" + fmt.Sprint(5000+2-readBufBytes) + " more bytes discarded)",
		"2026-11-25T03:00:00.009Z > 7 ERROR line too long",
		"2026-11-25T03:00:00.010Z < 5 QUIT",
		"2026-11-25T03:00:00.012Z > 5 OK",
	}
	got := strings.Split(strings.TrimSuffix(trace.String(), "\n"), "\n")
	if !slices.Equal(got, want) {
		t.Errorf("trace\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(out) != 4 {
		t.Errorf("output %q", out)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestTraceFailureDisablesTrace(t *testing.T) {
	h := &fakeHandler{}
	out := runInput(t, h, "1 INTF 1\n2 STATUS\n", func(c *Config) { c.Trace = failWriter{errors.New("disk full")} })
	want := []string{"* trace disabled: disk full", "1 INTF 1", "2 OK"}
	if !slices.Equal(out, want) {
		t.Errorf("output %q, want %q", out, want)
	}
}

func TestOutputFailureStopsRun(t *testing.T) {
	h := &fakeHandler{}
	err := NewSession(Config{In: strings.NewReader("1 INTF 1\n2 ACTIVE 10.0.0.1\n"), Out: failWriter{io.ErrClosedPipe},
		Handler: h, Timeout: time.Hour}).Run()
	if !errors.Is(err, ErrOutput) || !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Run = %v, want ErrOutput wrapping io.ErrClosedPipe", err)
	}
	if got := h.Calls(); !slices.Equal(got, []string{"Close"}) {
		t.Errorf("calls %q, want only Close", got)
	}
}

// flushFail accepts writes but fails to flush them.
type flushFail struct{ bytes.Buffer }

func (f *flushFail) Flush() error { return errors.New("flush failed") }

func TestFlushFailureStopsRun(t *testing.T) {
	h := &fakeHandler{}
	err := NewSession(Config{In: strings.NewReader("1 INTF 1\n"), Out: &flushFail{}, Handler: h, Timeout: time.Hour}).Run()
	if !errors.Is(err, ErrOutput) {
		t.Fatalf("Run = %v, want ErrOutput", err)
	}
	if h.closes.Load() != 1 {
		t.Errorf("Close called %d times", h.closes.Load())
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestInputFailure(t *testing.T) {
	h := &fakeHandler{}
	boom := errors.New("EIO")
	err := NewSession(Config{In: errReader{boom}, Out: io.Discard, Handler: h}).Run()
	if !errors.Is(err, ErrInput) || !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want ErrInput wrapping %v", err, boom)
	}
	if h.closes.Load() != 1 {
		t.Errorf("Close called %d times", h.closes.Load())
	}
}

func TestConfigAndRunTwice(t *testing.T) {
	h := &fakeHandler{}
	for _, cfg := range []Config{
		{Out: io.Discard, Handler: h},
		{In: strings.NewReader(""), Handler: h},
		{In: strings.NewReader(""), Out: io.Discard},
	} {
		if err := NewSession(cfg).Run(); !errors.Is(err, ErrConfig) {
			t.Errorf("Run with %+v = %v, want ErrConfig", cfg, err)
		}
	}
	s := NewSession(Config{In: strings.NewReader(""), Out: io.Discard, Handler: h})
	if err := s.Run(); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(); !errors.Is(err, ErrRunTwice) {
		t.Errorf("second Run = %v, want ErrRunTwice", err)
	}
	if n := h.closes.Load(); n != 1 {
		t.Errorf("Close called %d times", n)
	}
}

func TestInfoCleansAndCuts(t *testing.T) {
	var out bytes.Buffer
	s := NewSession(Config{Out: &out})
	s.Info("two\nlines\r%s", "x")
	s.Info("%s", strings.Repeat("é", MaxLineBytes)) // 2-byte runes: the cut must not split one
	lines := outputLines(t, out.String())
	if len(lines) != 2 || lines[0] != "* two lines x" {
		t.Fatalf("lines %.100q", lines)
	}
	if want := "* " + strings.Repeat("é", (MaxLineBytes-1-2)/2); lines[1] != want {
		t.Errorf("long line has %d bytes, want %d", len(lines[1]), len(want))
	}
}

// lineChecker is an output that fails the test if a Write is not exactly one
// whole line; the Session must serialise its writes, so the checker needs no
// lock (the race detector would see it otherwise).
type lineChecker struct {
	t     *testing.T
	lines []string
}

func (l *lineChecker) Write(p []byte) (int, error) {
	s := string(p)
	if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") {
		l.t.Errorf("write of %.80q is not one whole line", s)
	}
	l.lines = append(l.lines, strings.TrimSuffix(s, "\n"))
	return len(p), nil
}

func TestConcurrentInfo(t *testing.T) {
	const goroutines, perG, commands = 4, 200, 300
	h := &fakeHandler{status: strings.Repeat("S", 3000)}
	out := &lineChecker{t: t}
	var in strings.Builder
	for i := 1; i <= commands; i++ {
		fmt.Fprintf(&in, "%d STATUS\n", i)
	}
	s := NewSession(Config{In: strings.NewReader(in.String()), Out: out, Handler: h, Timeout: time.Hour})
	pad := strings.Repeat("i", 2000)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perG {
				s.Info("g%d i%d %s", g, i, pad)
			}
		}()
	}
	if err := s.Run(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	infoRE := regexp.MustCompile(`^\* g[0-9]+ i[0-9]+ ` + pad + `$`)
	var infos, answers int
	next := 1
	for _, l := range out.lines {
		checkFraming(t, l)
		switch {
		case strings.HasPrefix(l, "* "):
			if !infoRE.MatchString(l) {
				t.Fatalf("damaged info line %.80q", l)
			}
			infos++
		default:
			if want := fmt.Sprintf("%d OK %s", next, h.status); l != want {
				t.Fatalf("answer %.40q, want %.40q", l, want)
			}
			next++
			answers++
		}
	}
	if infos != goroutines*perG || answers != commands {
		t.Errorf("%d info lines and %d answers, want %d and %d", infos, answers, goroutines*perG, commands)
	}
}

// TestNoStderr runs malformed and failing input with os.Stderr redirected to
// a pipe and checks that nothing arrives there.
func TestNoStderr(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stderr
	os.Stderr = w
	restore := sync.OnceFunc(func() { os.Stderr = saved; w.Close() })
	t.Cleanup(restore)
	h := &fakeHandler{activeErr: errors.New("x"), closeErr: errors.New("y")}
	in := "1 INTF x\nQUIT\n3 ACTIVE 10.0.0.1\n4 FROB\n" + strings.Repeat("z", 9000) + "\n\x00\n9 ACTIVE"
	runInput(t, h, in, func(c *Config) { c.Trace = failWriter{errors.New("t")} })
	restore()
	got, _ := io.ReadAll(r)
	r.Close()
	if len(got) != 0 {
		t.Errorf("wrote to stderr: %q", got)
	}
}

func FuzzSession(f *testing.F) {
	f.Add([]byte("1 INTF 3\n2 STANDBY 10.0.0.11\n3 ACTIVE 10.0.0.11 10.0.0.12 10.0.0.13\n4 ACTIVE 10.0.0.11,10.0.0.13\n5 QUIT\n"))
	f.Add([]byte("x\n\n\r\n9 STATUS\r\n7 FROB\n3 ACTIVE\n3 ACTIVE 1.2.3.4.5\n2 STANDBY a b"))
	f.Add([]byte("8 " + strings.Repeat("a", MaxLineBytes) + "\n1 QUIT"))
	f.Fuzz(func(t *testing.T, input []byte) {
		h := &fakeHandler{status: "role standby\nsecond line"}
		var out bytes.Buffer
		err := NewSession(Config{In: bytes.NewReader(input), Out: &out, Handler: h, Timeout: time.Hour}).Run()
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if n := h.closes.Load(); n != 1 {
			t.Fatalf("Close called %d times", n)
		}
		// Every answer must carry the sequence number some input line began with.
		seqs := map[string]bool{}
		for _, l := range strings.Split(string(input), "\n") {
			if w, _ := nextWord(strings.TrimSuffix(l, "\r")); isDecimal(w) {
				seqs[w] = true
			}
		}
		for _, l := range outputLines(t, out.String()) {
			if strings.HasPrefix(l, "* ") {
				continue
			}
			if seq, _, _ := strings.Cut(l, " "); !seqs[seq] {
				t.Fatalf("answer %.80q carries a seq that no input line began with", l)
			}
		}
		// A role change needs a well-formed, newline-terminated command line.
		for _, c := range h.roleCalls() {
			if !bytes.Contains(input, []byte("\n")) {
				t.Fatalf("role call %q from input without a complete line", c)
			}
		}
	})
}
