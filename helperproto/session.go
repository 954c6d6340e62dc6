package helperproto

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// DefaultTimeout is the wait bound used when Config.Timeout is not set; it is
// the documented default of the helper's -t option.
const DefaultTimeout = 15 * time.Second

// traceTimeLayout is RFC 3339 in UTC with milliseconds, e.g.
// "2026-11-25T03:00:00.000Z": sortable, and fine enough to line a trace up
// with CGP's own log.
const traceTimeLayout = "2006-01-02T15:04:05.000Z"

// quoteMax bounds how much of an ignored line is quoted back in a "* " line.
const quoteMax = 80

// ErrConfig reports a Config without an input, an output or a Handler.
var ErrConfig = errors.New("helperproto: incomplete config")

// ErrRunTwice reports a second call of Session.Run.
var ErrRunTwice = errors.New("helperproto: Run called twice")

// ErrOutput reports that an answer could not be written to CGP; the session
// stops because CGP cannot hear it any more.
var ErrOutput = errors.New("helperproto: writing answer")

// ErrInput reports a read error on the input other than its end.
var ErrInput = errors.New("helperproto: reading commands")

// Handler is what the balancer implements. All calls come from the goroutine
// that runs Session.Run, one at a time and in the order of the input, so a
// Handler needs no locking against itself. Every command must be answered
// promptly (CGP kills a helper that exceeds its Time-out) and must be safe to
// repeat, because CGP re-sends pending commands after restarting a helper.
type Handler interface {
	// Active makes this node the active balancer for members (at least one
	// IPv4 unicast address, no duplicates). A nil error is answered
	// "<seq> OK", an error "<seq> ERROR <error text>".
	Active(members []netip.Addr) error
	// Standby makes this node a standby. active is the current active
	// balancer, or the zero netip.Addr (not IsValid) when CGP did not name it.
	Standby(active netip.Addr) error
	// Status returns a one-line summary: role, VIPs, members, connections.
	// It is answered "<seq> OK <summary>", cut to the line limit.
	Status() string
	// Periodic does the periodic work (re-announcing VIPs, expiring table
	// entries, refreshing MACs). It is called at least once every
	// Config.Timeout while the session waits for input.
	Periodic()
	// Close releases everything. It is called exactly once, on QUIT or at the
	// end of the input, after which Run returns.
	Close() error
}

// Config configures a Session.
type Config struct {
	// In carries CGP's commands (the helper's standard input).
	In io.Reader
	// Out receives answers and "* " lines (the helper's standard output).
	// Every line is written with one Write call; if Out has a
	// "Flush() error" method (a *bufio.Writer, say) it is called after every
	// line, because an unflushed answer never reaches CGP.
	Out io.Writer
	// Handler carries out the commands.
	Handler Handler
	// Timeout bounds every wait for input (the -t option): Handler.Periodic
	// is called at least this often. Zero or less means DefaultTimeout.
	Timeout time.Duration
	// Trace, if not nil, receives every line read and written, one a line:
	// "2026-11-25T03:00:00.000Z < 1 INTF 3" for a line from CGP and
	// "2026-11-25T03:00:00.000Z > 1 INTF 1" for a line to CGP. A write error
	// turns tracing off (announced by a "* " line) instead of stopping the
	// helper.
	Trace io.Writer
	// MaxIntf is the highest interface version spoken; zero means
	// IntfVersion.
	MaxIntf int
	// Now returns the current time for trace timestamps; nil means time.Now.
	Now func() time.Time
}

// Session runs the helper protocol over one pair of pipes.
type Session struct {
	cfg     Config
	timeout time.Duration
	maxIntf uint64
	now     func() time.Time

	mu    sync.Mutex // serialises every write to Out and Trace so lines never interleave
	trace io.Writer  // nil once tracing failed

	ran       atomic.Bool
	closeOnce sync.Once
	done      chan struct{} // closed when Run returns; releases the reader goroutine
}

// NewSession returns a session for cfg; nothing is read or written until Run.
func NewSession(cfg Config) *Session {
	s := &Session{
		cfg:     cfg,
		timeout: cfg.Timeout,
		maxIntf: IntfVersion,
		now:     cfg.Now,
		trace:   cfg.Trace,
		done:    make(chan struct{}),
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if cfg.MaxIntf > 0 {
		s.maxIntf = uint64(cfg.MaxIntf)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// Info writes an information line "* <message>". It is safe to call from any
// goroutine, before, during or after Run; the line is written whole, never
// interleaved with another line. Line breaks and other control characters in
// the message become blanks, and a line longer than MaxLineBytes is cut. A
// write error is dropped: an information line is only logged by CGP, and a
// broken output also fails the next answer, which stops Run.
func (s *Session) Info(format string, args ...any) {
	_ = s.writeLine("* " + fmt.Sprintf(format, args...))
}

// inputLine is one line delivered by the reader goroutine.
type inputLine struct {
	text    string // the line with its terminator; for an overlong line only its beginning
	skipped int    // bytes of an overlong line that were discarded
	partial bool   // the input ended before the line's "\n"
	err     error  // the input ended (io.EOF) or failed; no text
}

// readBufBytes holds a longest allowed line with a "\r\n" terminator, so any
// line that does not fit is known to be too long.
const readBufBytes = MaxLineBytes + 2

// Run reads commands until QUIT or the end of the input and answers each one.
// It calls Handler.Periodic at least every Timeout while it waits, and
// Handler.Close exactly once before it returns. It returns nil after QUIT or
// at the end of the input (both are a normal stop for CGP, and a failing
// Close is reported on a "* " line). It returns an error wrapping ErrOutput
// if an answer cannot be written, ErrInput if reading fails other than by
// reaching the end, ErrConfig if In, Out or Handler is missing, and ErrRunTwice
// on a second call.
//
// Input is read by a separate goroutine with a fixed buffer, so an endless
// line costs no more memory than MaxLineBytes. If Run returns on QUIT while In
// is still open, that goroutine stays blocked in In.Read until In delivers
// data, fails or ends; in the helper, where In is the standard input, the
// process exits right after.
func (s *Session) Run() error {
	if s.cfg.In == nil || s.cfg.Out == nil || s.cfg.Handler == nil {
		return ErrConfig
	}
	if !s.ran.CompareAndSwap(false, true) {
		return ErrRunTwice
	}
	defer close(s.done)
	lines := make(chan inputLine)
	go s.read(lines)

	tick := time.NewTicker(s.timeout)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			s.cfg.Handler.Periodic()
		case in := <-lines:
			if in.err != nil {
				s.close()
				if errors.Is(in.err, io.EOF) {
					return nil
				}
				return fmt.Errorf("%w: %w", ErrInput, in.err)
			}
			quit, err := s.handle(in)
			if err != nil {
				s.close()
				return fmt.Errorf("%w: %w", ErrOutput, err)
			}
			if quit {
				s.close()
				return nil
			}
		}
	}
}

// close calls Handler.Close once and reports its failure as a "* " line, since
// there is no command left to answer with it.
func (s *Session) close() {
	s.closeOnce.Do(func() {
		if err := s.cfg.Handler.Close(); err != nil {
			s.Info("close: %v", err)
		}
	})
}

// read delivers input lines to out until the input ends or Run returns. It
// uses bufio.Reader.ReadSlice so that an overlong line is consumed in
// buffer-sized pieces and only its beginning is kept.
func (s *Session) read(out chan<- inputLine) {
	br := bufio.NewReaderSize(s.cfg.In, readBufBytes)
	send := func(l inputLine) bool {
		select {
		case out <- l:
			return true
		case <-s.done:
			return false
		}
	}
	for {
		b, err := br.ReadSlice('\n')
		in := inputLine{text: string(b)}
		for errors.Is(err, bufio.ErrBufferFull) {
			b, err = br.ReadSlice('\n')
			in.skipped += len(b)
			if err == nil {
				in.skipped-- // the "\n" is the terminator, not part of the line
			}
		}
		if err != nil {
			if len(in.text) > 0 {
				in.partial = true
				if !send(in) {
					return
				}
			}
			send(inputLine{err: err})
			return
		}
		if !send(in) {
			return
		}
	}
}

// handle answers one input line. quit is true after an answered QUIT; err is
// set when the answer could not be written.
func (s *Session) handle(in inputLine) (quit bool, err error) {
	text := strings.TrimSuffix(in.text, "\n")
	switch {
	case in.partial:
		s.traceLine("<", text)
		// A line cut off by the end of the input may be a truncated command
		// ("ACTIVE" with only some of the members), so it is not obeyed.
		s.Info("ignored unterminated last line: %s", quote(text))
		return false, nil
	case in.skipped > 0:
		s.traceLine("<", fmt.Sprintf("%s ... (%d more bytes discarded)", text, in.skipped))
	default:
		s.traceLine("<", strings.TrimSuffix(text, "\r"))
	}

	cmd, perr := ParseLine(text)
	if perr != nil {
		if cmd.Seq == "" {
			s.Info("ignored line (%v): %s", perr, quote(cmd.Raw))
			return false, nil
		}
		return false, s.answer(cmd.Seq, "ERROR "+perr.Error())
	}

	h := s.cfg.Handler
	switch cmd.Kind {
	case KindIntf:
		if len(cmd.Args) != 1 {
			// Only if Vocabulary's INTF row is edited to allow another count.
			return false, s.answer(cmd.Seq, "ERROR INTF needs one version number")
		}
		return false, s.answer(cmd.Seq, s.intf(cmd.Args[0]))
	case KindQuit:
		return true, s.answer(cmd.Seq, "OK")
	case KindActive:
		return false, s.answer(cmd.Seq, result(h.Active(cmd.Addrs)))
	case KindStandby:
		var active netip.Addr
		if len(cmd.Addrs) > 0 {
			active = cmd.Addrs[0]
		}
		return false, s.answer(cmd.Seq, result(h.Standby(active)))
	case KindStatus:
		st := h.Status()
		if st == "" {
			return false, s.answer(cmd.Seq, "OK")
		}
		return false, s.answer(cmd.Seq, "OK "+st)
	}
	// Only reachable if Vocabulary gains a word of a kind added without a
	// case above.
	return false, s.answer(cmd.Seq, fmt.Sprintf("ERROR command %s (%v) not implemented", cmd.Verb, cmd.Kind))
}

// intf answers the handshake: the highest version spoken that is not above
// the one CGP offers (contract, Part 1). Versions start at 1, so an offer of 0
// has no such version and is refused.
func (s *Session) intf(arg string) string {
	n, err := strconv.ParseUint(arg, 10, 64)
	if err != nil {
		// arg is all digits (ParseLine checked), so only a value beyond
		// uint64 fails, and that is above every version we speak.
		n = s.maxIntf
	}
	m := min(n, s.maxIntf)
	if m < 1 {
		return "ERROR interface version " + arg + " not supported"
	}
	return "INTF " + strconv.FormatUint(m, 10)
}

// result turns a Handler error into answer text.
func result(err error) string {
	if err != nil {
		return "ERROR " + err.Error()
	}
	return "OK"
}

// answer writes "<seq> <text>".
func (s *Session) answer(seq, text string) error {
	return s.writeLine(seq + " " + text)
}

// writeLine sanitises and cuts line, writes it to Out with one Write, flushes,
// and traces it.
func (s *Session) writeLine(line string) error {
	line = cut(clean(line), MaxLineBytes-1) + "\n"
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := io.WriteString(s.cfg.Out, line)
	if f, ok := s.cfg.Out.(interface{ Flush() error }); ok && err == nil {
		err = f.Flush()
	}
	s.traceLocked(">", line[:len(line)-1])
	return err
}

// traceLine traces one line under the output lock.
func (s *Session) traceLine(dir, line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.traceLocked(dir, line)
}

// traceLocked appends "<time> <dir> <line>" to the trace; s.mu must be held.
func (s *Session) traceLocked(dir, line string) {
	if s.trace == nil {
		return
	}
	rec := s.now().UTC().Format(traceTimeLayout) + " " + dir + " " + clean(line) + "\n"
	if _, err := io.WriteString(s.trace, rec); err != nil {
		s.trace = nil
		// Announced on Out directly: s.mu is held, and the helper must not
		// write to stderr while it runs.
		msg := cut(clean("* trace disabled: "+err.Error()), MaxLineBytes-1) + "\n"
		if _, werr := io.WriteString(s.cfg.Out, msg); werr == nil {
			if f, ok := s.cfg.Out.(interface{ Flush() error }); ok {
				_ = f.Flush()
			}
		}
	}
}

// clean replaces ASCII control characters with blanks so that a message can
// never break the one-line framing or forge a line of its own.
func clean(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
	if i < 0 {
		return s
	}
	// Byte-wise, so that bytes of invalid UTF-8 pass through unchanged and
	// the length stays the same.
	b := []byte(s)
	for ; i < len(b); i++ {
		if b[i] < 0x20 || b[i] == 0x7f {
			b[i] = ' '
		}
	}
	return string(b)
}

// cut shortens s to at most n bytes without splitting a UTF-8 sequence.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && i > n-utf8.UTFMax && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

// quote quotes the beginning of an ignored line for a "* " line.
func quote(s string) string {
	if len(s) > quoteMax {
		return strconv.Quote(cut(s, quoteMax)) + "..."
	}
	return strconv.Quote(s)
}
