// Package helperproto speaks CommuniGate Pro's helper line protocol as l2lb's
// "External Load Balancer" helper: line framing with sequence numbers, the INTF
// handshake, QUIT, ERROR answers, "* " information lines, and the
// load-balancer vocabulary (ACTIVE, STANDBY, STATUS).
//
// The contract is docs/cgp-helper-protocol.md. Its framing is CGP's documented
// behaviour for every helper. The load-balancer words are l2lb's own definition
// because CGP's documentation of them is not available; all of them live in the
// Vocabulary table so that they can be matched to a live CGP from a recorded
// exchange (Config.Trace) by editing that table alone.
//
// This package writes nothing to os.Stderr: CGP reads a helper's standard error
// only after the helper exits, so a helper that writes to it while running can
// fill the pipe and block.
package helperproto

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// MaxLineBytes is the longest line of the protocol. CGP's helper framing
// limits an answer line to 4096 bytes; this package writes every output line,
// its terminating newline included, within that limit, and accepts input
// lines of up to MaxLineBytes bytes not counting the "\n" or "\r\n" that ends
// them. Longer input lines are refused with ErrTooLong.
const MaxLineBytes = 4096

// IntfVersion is the highest helper interface version this package speaks; it
// is the default for Config.MaxIntf.
const IntfVersion = 1

// NoLimit as VerbSpec.MaxArgs means the number of arguments is bounded only by
// MaxLineBytes.
const NoLimit = -1

// ErrEmpty reports a line with nothing but blanks on it.
var ErrEmpty = errors.New("empty line")

// ErrNoSeq reports a line whose first word has no digits, so it carries no
// sequence number at all (for example a bare command word).
var ErrNoSeq = errors.New("no sequence number")

// ErrBadSeq reports a line whose first word contains digits but is not a plain
// decimal number (a sign, a letter or a dot in it).
var ErrBadSeq = errors.New("bad sequence number")

// ErrTooLong reports an input line longer than MaxLineBytes. The text is the
// one CGP gets in the "<seq> ERROR line too long" answer.
var ErrTooLong = errors.New("line too long")

// ErrNoVerb reports a line with a sequence number and nothing after it.
var ErrNoVerb = errors.New("missing command")

// ErrUnknownVerb reports a command word that is not in Vocabulary. It is
// wrapped together with the word, giving the answer text
// "unknown command WORD".
var ErrUnknownVerb = errors.New("unknown command")

// ErrArgs reports a known command with too few or too many arguments, or with
// an argument of the wrong form (INTF without a decimal number).
var ErrArgs = errors.New("bad arguments")

// ErrBadAddr reports an address argument that is not a usable IPv4 unicast
// address.
var ErrBadAddr = errors.New("bad address")

// VerbKind says what a command means, independently of the word CGP uses for
// it; the session dispatches on the kind, so renaming a word in Vocabulary
// changes nothing else.
type VerbKind int

// The meanings of the commands of the contract.
const (
	// KindIntf is the interface-version handshake (framing, Part 1).
	KindIntf VerbKind = iota + 1
	// KindQuit stops the helper (framing, Part 1).
	KindQuit
	// KindActive makes this node the active balancer for the given members.
	KindActive
	// KindStandby makes this node a standby, optionally naming the active node.
	KindStandby
	// KindStatus asks for a one-line diagnostic summary.
	KindStatus
)

// String returns the name of the kind for diagnostics.
func (k VerbKind) String() string {
	switch k {
	case KindIntf:
		return "intf"
	case KindQuit:
		return "quit"
	case KindActive:
		return "active"
	case KindStandby:
		return "standby"
	case KindStatus:
		return "status"
	}
	return fmt.Sprintf("VerbKind(%d)", int(k))
}

// ArgKind says what form the arguments of a command take.
type ArgKind int

// The argument forms used by Vocabulary.
const (
	// ArgNone: the command takes no arguments (MinArgs and MaxArgs are 0).
	ArgNone ArgKind = iota
	// ArgNumber: every argument is an unsigned decimal number.
	ArgNumber
	// ArgAddr: every argument is an IPv4 unicast address; addresses may be
	// separated by blanks and/or commas, and duplicates are collapsed in
	// Command.Addrs.
	ArgAddr
)

// VerbSpec is one row of the vocabulary: a command word, its meaning and the
// rules for its arguments.
type VerbSpec struct {
	Word    string   // the word CGP sends, in upper case; matched case-insensitively
	Kind    VerbKind // what the word means
	MinArgs int      // fewest arguments (for ArgAddr: addresses, counted after splitting at commas)
	MaxArgs int      // most arguments, or NoLimit
	Args    ArgKind  // the form of every argument
}

// Vocabulary is the one place that maps command words to their meaning and
// argument rules. INTF and QUIT are CGP's documented framing; ACTIVE, STANDBY
// and STATUS are Part 2 of the contract, l2lb's own definition, to be checked
// against a trace of a live CGP.
var Vocabulary = []VerbSpec{
	{Word: "INTF", Kind: KindIntf, MinArgs: 1, MaxArgs: 1, Args: ArgNumber},
	{Word: "QUIT", Kind: KindQuit, MinArgs: 0, MaxArgs: 0, Args: ArgNone},
	{Word: "ACTIVE", Kind: KindActive, MinArgs: 1, MaxArgs: NoLimit, Args: ArgAddr},
	{Word: "STANDBY", Kind: KindStandby, MinArgs: 0, MaxArgs: 1, Args: ArgAddr},
	{Word: "STATUS", Kind: KindStatus, MinArgs: 0, MaxArgs: 0, Args: ArgNone},
}

// Lookup returns the Vocabulary entry for word, compared without regard to
// case, and whether there is one.
func Lookup(word string) (VerbSpec, bool) {
	for _, v := range Vocabulary {
		if strings.EqualFold(v.Word, word) {
			return v, true
		}
	}
	return VerbSpec{}, false
}

// Command is one parsed line from CGP.
type Command struct {
	Seq   string       // the sequence number exactly as sent (decimal digits); "" if the line has none
	Verb  string       // the Vocabulary word, in its table spelling; "" if unknown
	Kind  VerbKind     // the meaning of Verb; 0 if unknown
	Args  []string     // the arguments; for ArgAddr commands split at blanks and commas
	Addrs []netip.Addr // for ArgAddr commands: the addresses of Args, duplicates removed, first occurrence kept
	Raw   string       // the line without its line terminator (for an overlong line, its beginning)
}

// String formats c as a protocol line without a line terminator, with single
// blanks between words; parsing the result gives c again, except for Raw.
func (c Command) String() string {
	var b strings.Builder
	b.WriteString(c.Seq)
	b.WriteByte(' ')
	b.WriteString(c.Verb)
	for _, a := range c.Args {
		b.WriteByte(' ')
		b.WriteString(a)
	}
	return b.String()
}

// ParseLine parses one line from CGP. A final "\n" and then a final "\r" are
// removed first. Words are separated by runs of blanks (space or tab).
//
// On error the returned Command still carries Raw and, whenever the line
// starts with a valid sequence number, Seq (and Verb and Kind once known), so
// that the caller can answer "<seq> ERROR ..." instead of dropping the line.
// The errors wrap ErrEmpty, ErrNoSeq, ErrBadSeq, ErrTooLong, ErrNoVerb,
// ErrUnknownVerb, ErrArgs or ErrBadAddr.
func ParseLine(line string) (Command, error) {
	line = strings.TrimSuffix(line, "\n")
	line = strings.TrimSuffix(line, "\r")
	c := Command{Raw: line}
	if len(line) > MaxLineBytes {
		// Only the beginning of an overlong line is kept by the reader; the
		// sequence number is usable if its word ended within that beginning.
		if w, rest := nextWord(line); rest != "" && isDecimal(w) {
			c.Seq = w
		}
		return c, ErrTooLong
	}
	words := splitBlanks(line)
	if len(words) == 0 {
		return c, ErrEmpty
	}
	if !isDecimal(words[0]) {
		if strings.ContainsAny(words[0], "0123456789") {
			return c, fmt.Errorf("%w %q", ErrBadSeq, words[0])
		}
		return c, ErrNoSeq
	}
	c.Seq = words[0]
	if len(words) == 1 {
		return c, ErrNoVerb
	}
	spec, ok := Lookup(words[1])
	if !ok {
		return c, fmt.Errorf("%w %s", ErrUnknownVerb, words[1])
	}
	c.Verb, c.Kind = spec.Word, spec.Kind
	args := words[2:]
	if spec.Args == ArgAddr {
		args = splitCommas(args)
	}
	if len(args) > 0 {
		c.Args = args
	}
	if len(args) < spec.MinArgs || (spec.MaxArgs != NoLimit && len(args) > spec.MaxArgs) {
		return c, fmt.Errorf("%w: %s takes %s, got %d", ErrArgs, spec.Word, argCount(spec), len(args))
	}
	switch spec.Args {
	case ArgNumber:
		for _, a := range args {
			if !isDecimal(a) {
				return c, fmt.Errorf("%w: %s needs a decimal number, got %q", ErrArgs, spec.Word, a)
			}
		}
	case ArgAddr:
		addrs, err := parseAddrs(args)
		if err != nil {
			return c, err
		}
		c.Addrs = addrs
	}
	return c, nil
}

// argCount describes the argument count rule of spec for an error message.
func argCount(spec VerbSpec) string {
	one, many := "argument", "arguments"
	if spec.Args == ArgAddr {
		one, many = "address", "addresses"
	}
	unit := func(n int) string {
		if n == 1 {
			return one
		}
		return many
	}
	switch {
	case spec.MaxArgs == NoLimit:
		return fmt.Sprintf("at least %d %s", spec.MinArgs, unit(spec.MinArgs))
	case spec.MinArgs == spec.MaxArgs:
		return fmt.Sprintf("%d %s", spec.MinArgs, unit(spec.MinArgs))
	default:
		return fmt.Sprintf("%d to %d %s", spec.MinArgs, spec.MaxArgs, unit(spec.MaxArgs))
	}
}

// parseAddrs parses member addresses and removes duplicates, keeping the
// first occurrence so that the order CGP gave is preserved.
func parseAddrs(args []string) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(args))
	for _, a := range args {
		ip, err := ParseAddr(a)
		if err != nil {
			return nil, err
		}
		dup := false
		for _, seen := range out {
			if seen == ip {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, ip)
		}
	}
	return out, nil
}

// ParseAddr parses a member address: dotted-decimal IPv4 without leading
// zeros (netip refuses them because inet_aton would read them as octal). It
// refuses addresses that cannot be a member's real address on the LAN, since
// the balancer must resolve each member's MAC with ARP: 0.0.0.0 ("this host",
// RFC 1122 section 3.2.1.3), 127.0.0.0/8 (loopback, same section), 224.0.0.0/4
// (multicast, RFC 5771) and 255.255.255.255 (limited broadcast, RFC 919). The
// error wraps ErrBadAddr.
func ParseAddr(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w %q: not an IPv4 address", ErrBadAddr, s)
	}
	var why string
	switch {
	case !ip.Is4():
		why = "not an IPv4 address"
	case ip.IsUnspecified():
		why = "unspecified address"
	case ip.IsLoopback():
		why = "loopback address"
	case ip.IsMulticast():
		why = "multicast address"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "broadcast address"
	default:
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("%w %q: %s", ErrBadAddr, s, why)
}

// isBlank reports whether b separates words on a line.
func isBlank(b byte) bool { return b == ' ' || b == '\t' }

// nextWord returns the first word of s and what follows it (starting with the
// blank after the word, or "" when the word runs to the end of s).
func nextWord(s string) (word, rest string) {
	i := 0
	for i < len(s) && isBlank(s[i]) {
		i++
	}
	j := i
	for j < len(s) && !isBlank(s[j]) {
		j++
	}
	return s[i:j], s[j:]
}

// splitBlanks splits s into words separated by runs of blanks. Unlike
// strings.Fields it does not treat \r, \v or Unicode spaces as separators, so
// a stray control character stays inside a word and makes that word invalid
// instead of silently changing the meaning of the line.
func splitBlanks(s string) []string {
	var words []string
	for {
		w, rest := nextWord(s)
		if w == "" {
			return words
		}
		words = append(words, w)
		s = rest
	}
}

// splitCommas splits every word at commas and drops the empty pieces, so that
// "a,b", "a, b" and "a ,, b" all name the two addresses a and b.
func splitCommas(words []string) []string {
	var out []string
	for _, w := range words {
		for _, p := range strings.Split(w, ",") {
			if p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// isDecimal reports whether s is a non-empty string of ASCII digits.
func isDecimal(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
