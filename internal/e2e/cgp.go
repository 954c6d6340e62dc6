package e2e

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// HelperLog says what a Helper writes to the test log.
type HelperLog int

const (
	// LogLines logs every line written to the helper and every line it writes, as they pass.
	LogLines HelperLog = iota
	// LogCommands logs the helper's "* " information lines and each command run with Do,
	// together with its answer and how long the answer took; DoQuiet's commands stay out
	// of the log, so that a test polling STATUS does not drown it. Because the log then
	// lacks most lines, the end of the test logs the last lines of the helper's trace when
	// the test has failed.
	LogCommands
)

// HelperOptions says how StartHelper runs `l2lb helper` and what it logs.
type HelperOptions struct {
	// Args are the options that come after "-i eth0 -f <vipFile>" and before
	// "--trace <file>", such as "-p", "15", "-t", "1".
	Args []string
	// Control adds "--control <trace file>.sock" after the trace option.
	Control bool
	// Log says what the helper writes to the test log.
	Log HelperLog
}

// Answer is one "<seq> <text>" line of a helper and the time it was read.
type Answer struct {
	// Text is the line without its sequence number.
	Text string
	// At is when the line was read.
	At time.Time
}

// lockedBuffer collects a child's standard error.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Helper is one `l2lb helper` child driven over its pipes as CommuniGate Pro drives it
// (docs/cgp-helper-protocol.md): "<seq> <command>" lines in, "<seq> <answer>" and "* <info>"
// lines out.
type Helper struct {
	t     *testing.T
	name  string // the frontend's role name
	log   HelperLog
	trace string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	err   *lockedBuffer

	readerDone chan struct{}
	exited     chan struct{} // closed when the process has been reaped
	waitErr    error         // valid after exited
	exitedAt   time.Time     // valid after exited

	mu       sync.Mutex
	seq      int
	pending  map[string]chan Answer
	infos    []string // "* " lines, without the "* "
	unknown  []string // answers to no pending command, and malformed lines
	logClose bool     // the test is over: stop logging
}

// StartHelper starts bin (the l2lb binary) as `helper -i eth0 -f vipFile`, then o.Args,
// a --trace file in a directory of its own (and with o.Control a --control socket beside
// it), then extra, in h's namespace as CGP would. When the test ends the helper's input
// is closed, it is killed if still running 2 s later, and any line that answered no
// command sent fails the test.
func StartHelper(t *testing.T, h *testbed.Host, bin, vipFile string, o HelperOptions, extra ...string) *Helper {
	t.Helper()
	dir := t.TempDir()
	hp := &Helper{t: t, name: h.Name, log: o.Log, trace: filepath.Join(dir, "trace"), err: &lockedBuffer{},
		readerDone: make(chan struct{}), exited: make(chan struct{}), pending: map[string]chan Answer{}}
	args := append([]string{"helper", "-i", "eth0", "-f", vipFile}, o.Args...)
	args = append(args, "--trace", hp.trace)
	if o.Control {
		args = append(args, "--control", hp.trace+".sock")
	}
	args = append(args, extra...)
	hp.cmd = h.Command(bin, args...)
	hp.cmd.Dir = dir // CGP runs helpers in its base directory
	hp.cmd.Stderr = hp.err
	var err error
	if hp.stdin, err = hp.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := hp.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: starting l2lb %s", h.Name, strings.Join(args, " "))
	if err := hp.cmd.Start(); err != nil {
		t.Fatalf("%s: starting l2lb helper: %v", h.Name, err)
	}
	go hp.read(stdout)
	go func() {
		<-hp.readerDone // Wait closes the pipe: read it to the end first (os/exec)
		hp.waitErr = hp.cmd.Wait()
		hp.exitedAt = time.Now()
		close(hp.exited)
	}()
	t.Cleanup(hp.cleanup)
	return hp
}

// Name returns the name of the testbed host the helper runs on.
func (hp *Helper) Name() string { return hp.name }

// ControlPath returns the helper's control socket (with HelperOptions.Control).
func (hp *Helper) ControlPath() string { return hp.trace + ".sock" }

// Pid returns the helper's process ID.
func (hp *Helper) Pid() int { return hp.cmd.Process.Pid }

// CloseInput closes the helper's standard input, as CGP ending would.
func (hp *Helper) CloseInput() error { return hp.stdin.Close() }

// Stderr returns what the helper has written to its standard error so far.
func (hp *Helper) Stderr() string { return hp.err.String() }

func (hp *Helper) logf(format string, args ...any) {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	if !hp.logClose {
		hp.t.Logf(format, args...)
	}
}

// seqLine matches an answer line: "<seq> <text>".
var seqLine = regexp.MustCompile(`^([0-9]+) (.+)$`)

func (hp *Helper) read(stdout io.Reader) {
	defer close(hp.readerDone)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 0, 4096), 4096+2) // the contract's line limit
	for sc.Scan() {
		line := sc.Text()
		now := time.Now()
		if hp.log == LogLines {
			hp.logf("%s > %s", hp.name, line)
		}
		if info, ok := strings.CutPrefix(line, "* "); ok {
			if hp.log == LogCommands {
				hp.logf("%s > %s", hp.name, line)
			}
			hp.mu.Lock()
			hp.infos = append(hp.infos, info)
			hp.mu.Unlock()
			continue
		}
		m := seqLine.FindStringSubmatch(line)
		hp.mu.Lock()
		var ch chan Answer
		if m != nil {
			ch = hp.pending[m[1]]
		}
		if ch != nil {
			delete(hp.pending, m[1])
			ch <- Answer{Text: m[2], At: now}
		} else {
			hp.unknown = append(hp.unknown, line)
		}
		hp.mu.Unlock()
	}
	if err := sc.Err(); err != nil {
		hp.logf("%s: reading stdout: %v", hp.name, err)
	}
}

// send writes "<seq> <command>" and returns the sequence number, the
// answer's channel and when the line was written.
func (hp *Helper) send(command string) (string, <-chan Answer, time.Time) {
	hp.t.Helper()
	hp.mu.Lock()
	hp.seq++
	seq := strconv.Itoa(hp.seq)
	ch := make(chan Answer, 1)
	hp.pending[seq] = ch
	hp.mu.Unlock()
	line := seq + " " + command
	if hp.log == LogLines {
		hp.logf("%s < %s", hp.name, line)
	}
	sent := time.Now()
	if _, err := io.WriteString(hp.stdin, line+"\n"); err != nil {
		hp.t.Fatalf("%s: writing %q: %v", hp.name, line, err)
	}
	return seq, ch, sent
}

// await waits at most limit for the answer on ch.
func (hp *Helper) await(seq string, ch <-chan Answer, limit time.Duration) Answer {
	hp.t.Helper()
	select {
	case a := <-ch:
		return a
	case <-hp.exited:
		select {
		case a := <-ch: // answered just before exiting (QUIT)
			return a
		default:
		}
		hp.t.Fatalf("%s: helper exited (%v) before answering command %s; stderr: %q", hp.name, hp.waitErr, seq, hp.err.String())
	case <-time.After(limit):
		hp.t.Fatalf("%s: no answer to command %s within %v", hp.name, seq, limit)
	}
	return Answer{}
}

// Do sends command, waits up to limit for its answer and fails the test
// unless the answer's text matches want (a regexp); it returns the answer
// and the time the command was sent.
func (hp *Helper) Do(command, want string, limit time.Duration) (Answer, time.Time) {
	hp.t.Helper()
	return hp.do(command, want, limit, hp.log == LogCommands)
}

// DoQuiet is Do without the log line LogCommands writes for the command
// (STATUS polling).
func (hp *Helper) DoQuiet(command, want string, limit time.Duration) (Answer, time.Time) {
	hp.t.Helper()
	return hp.do(command, want, limit, false)
}

func (hp *Helper) do(command, want string, limit time.Duration, logIt bool) (Answer, time.Time) {
	hp.t.Helper()
	seq, ch, sent := hp.send(command)
	a := hp.await(seq, ch, limit)
	if logIt {
		hp.logf("%s: %s %s -> %s %s (%v)", hp.name, seq, command, seq, a.Text, a.At.Sub(sent).Round(time.Millisecond))
	}
	if !regexp.MustCompile(want).MatchString(a.Text) {
		hp.t.Fatalf("%s: %s %s answered %q, want %s", hp.name, seq, command, a.Text, want)
	}
	return a, sent
}

// InfoLines returns the "* " lines the helper has written so far, without
// the "* ".
func (hp *Helper) InfoLines() []string {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	return append([]string(nil), hp.infos...)
}

// HasInfo reports whether an information line so far contains substr.
func (hp *Helper) HasInfo(substr string) bool {
	for _, l := range hp.InfoLines() {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

// WaitExit waits up to limit for the process to end; it returns when the
// process ended, how (Wait's error) and whether it did end in time.
func (hp *Helper) WaitExit(limit time.Duration) (time.Time, error, bool) {
	// Checked first on its own: with a limit already past, a select over both
	// would pick at random between an exit that happened and the timeout.
	select {
	case <-hp.exited:
		return hp.exitedAt, hp.waitErr, true
	default:
	}
	select {
	case <-hp.exited:
		return hp.exitedAt, hp.waitErr, true
	case <-time.After(limit):
		return time.Time{}, nil, false
	}
}

// traceTail returns the last max lines of the helper's trace (the lines
// exchanged and the helper's own log).
func (hp *Helper) traceTail(max int) string {
	data, err := os.ReadFile(hp.trace)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) > max {
		lines = lines[len(lines)-max:]
	}
	return strings.Join(lines, "\n")
}

// cleanup ends the process if the test did not (end of input first, as CGP
// stopping would; then SIGKILL) and checks that it said nothing unexpected.
func (hp *Helper) cleanup() {
	hp.stdin.Close()
	if _, _, ok := hp.WaitExit(2 * time.Second); !ok {
		hp.t.Errorf("%s: helper still running 2 s after the end of its input; killing it", hp.name)
		hp.cmd.Process.Kill()
		<-hp.exited
	}
	if hp.log == LogCommands && hp.t.Failed() {
		hp.t.Logf("%s trace (last lines):\n%s", hp.name, hp.traceTail(60))
	}
	hp.mu.Lock()
	hp.logClose = true
	unknown := hp.unknown
	hp.mu.Unlock()
	if len(unknown) > 0 {
		hp.t.Errorf("%s: lines that answer no command sent: %q", hp.name, unknown)
	}
	if race := RaceReport(hp.err.String()); race != "" {
		hp.t.Errorf("%s: the race detector reported in l2lb:\n%s", hp.name, race)
	}
}

// QuitAll sends QUIT to every helper before it waits for any, as CGP
// stopping a group would, then checks the contract for each: "<seq> OK"
// within limit, exit 0 within a second of the answer, nothing on standard
// error. A helper still running a second after its answer is reported with
// onHang (t.Fatalf to stop the test there, t.Errorf to go on checking the
// other helpers).
func QuitAll(t *testing.T, limit time.Duration, onHang func(format string, args ...any), hps ...*Helper) {
	t.Helper()
	type pending struct {
		seq string
		ch  <-chan Answer
	}
	var ps []pending
	for _, hp := range hps {
		seq, ch, _ := hp.send("QUIT")
		ps = append(ps, pending{seq, ch})
	}
	for i, hp := range hps {
		a := hp.await(ps[i].seq, ps[i].ch, limit)
		if a.Text != "OK" {
			t.Errorf("%s: QUIT answered %q, want OK", hp.name, a.Text)
		}
		// The exit time is taken by the goroutine that reaps the process,
		// so waiting for the helpers one after the other measures each
		// from its own answer.
		at, err, ok := hp.WaitExit(time.Until(a.At.Add(time.Second + 100*time.Millisecond)))
		if !ok {
			onHang("%s: still running 1 s after answering QUIT", hp.name)
			continue
		}
		if d := at.Sub(a.At); d > time.Second {
			t.Errorf("%s: exited %v after answering QUIT, want within 1 s", hp.name, d.Round(time.Millisecond))
		}
		if err != nil {
			t.Errorf("%s: exit after QUIT: %v, want status 0", hp.name, err)
		}
		if s := hp.err.String(); s != "" {
			t.Errorf("%s: wrote to standard error (CGP reads it only at exit; a full pipe blocks the helper): %q", hp.name, s)
		}
	}
}

// traceRecord matches a line of the --trace file: RFC 3339 UTC time with
// milliseconds, direction, the line.
var traceRecord = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ([<>]) (.*)$`)

// CheckTrace checks that the --trace file holds every wanted line, received
// ("<") or sent (">"), in this order, and only trace and log records.
func (hp *Helper) CheckTrace(want ...string) {
	hp.t.Helper()
	data, err := os.ReadFile(hp.trace)
	if err != nil {
		hp.t.Errorf("%s: reading the trace: %v", hp.name, err)
		return
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if m := traceRecord.FindStringSubmatch(l); m != nil {
			got = append(got, m[1]+" "+m[2])
		} else if !strings.HasPrefix(l, "time=") { // the helper's own log goes there too
			hp.t.Errorf("%s: trace line %q is neither a trace record nor a log record", hp.name, l)
		}
	}
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	if i < len(want) {
		hp.t.Errorf("%s: trace lacks %q (in order after the earlier ones); it has:\n%s", hp.name, want[i], strings.Join(got, "\n"))
	}
}
