package conntrack

import (
	"strconv"
	"time"
)

// Protocol numbers from the IANA "Assigned Internet Protocol Numbers" registry
// (RFC 790 / RFC 5237), as carried in the IPv4 header's Protocol field and
// the IPv6 Next Header field (Key.Proto, Key6.Proto).
const (
	// ProtoICMP is ICMP (RFC 792), the ICMP of IPv4 flows.
	ProtoICMP = 1
	// ProtoICMPv6 is ICMPv6 (RFC 4443), the ICMP of IPv6 flows: a Key6 with
	// it is an ICMP flow (StateICMP), and a Key6 with ProtoICMP is a flow
	// of some other protocol (StateOther), as a Key with ProtoICMPv6 is.
	ProtoICMPv6 = 58
	// ProtoTCP is TCP (RFC 9293).
	ProtoTCP = 6
	// ProtoUDP is UDP (RFC 768).
	ProtoUDP = 17
)

// TCP header flag bits (RFC 9293 section 3.1), in the layout of byte 13 of the
// TCP header, which is what callers pass as tcpFlags.
const (
	// FlagFIN is the TCP FIN bit.
	FlagFIN = 0x01
	// FlagSYN is the TCP SYN bit.
	FlagSYN = 0x02
	// FlagRST is the TCP RST bit.
	FlagRST = 0x04
	// FlagACK is the TCP ACK bit.
	FlagACK = 0x10
)

// State is the protocol state of a flow as the balancer sees it. TCP flows
// move between the four TCP states; other protocols keep one state for life.
type State uint8

// The states of a flow. The TCP ones are a reduced form of the IPVS TCP states
// seen by a direct-routing balancer, which only observes the client-to-server
// half of each connection (the "input only" table of ip_vs_proto_tcp.c).
const (
	// StateSynRecv is a TCP flow whose SYN was seen but no ACK yet
	// (IPVS SYN_RECV).
	StateSynRecv State = iota
	// StateEstablished is a TCP flow that completed its handshake, or one
	// first seen mid-stream (IPVS ESTABLISHED).
	StateEstablished
	// StateClosing is a TCP flow whose client sent a FIN
	// (IPVS FIN_WAIT / CLOSE_WAIT).
	StateClosing
	// StateClose is a TCP flow whose client sent a RST (IPVS CLOSE).
	StateClose
	// StateUDP is any UDP flow.
	StateUDP
	// StateICMP is any ICMP flow: ICMP for IPv4, ICMPv6 for IPv6.
	StateICMP
	// StateOther is a flow of any other IP protocol.
	StateOther

	numStates
)

var stateNames = [numStates]string{
	StateSynRecv:     "SYN_RECV",
	StateEstablished: "ESTABLISHED",
	StateClosing:     "CLOSING",
	StateClose:       "CLOSE",
	StateUDP:         "UDP",
	StateICMP:        "ICMP",
	StateOther:       "OTHER",
}

// String returns the state's name in the style of ipvsadm -L -c.
func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Timeouts is how long a flow lives after its last frame, per state. The
// defaults are those of IPVS (ip_vs_proto_tcp.c / ip_vs_proto_udp.c, shown by
// ipvsadm -L --timeout), except that IPVS's separate FIN_WAIT, CLOSE_WAIT and
// TIME_WAIT collapse into TCPClosing because a DSR balancer sees one direction.
type Timeouts struct {
	// TCPSynRecv applies after a SYN (IPVS SYN_RECV, 60 s).
	TCPSynRecv time.Duration
	// TCPEstablished applies to an open connection (IPVS ESTABLISHED, 900 s).
	TCPEstablished time.Duration
	// TCPClosing applies after a FIN (IPVS FIN_WAIT / CLOSE_WAIT, 120 s).
	TCPClosing time.Duration
	// TCPClose applies after a RST (IPVS CLOSE, 10 s).
	TCPClose time.Duration
	// UDP applies to UDP flows (IPVS udp, 300 s).
	UDP time.Duration
	// ICMP applies to ICMP flows (IPVS icmp, 60 s).
	ICMP time.Duration
	// Other applies to every other protocol (60 s, like ICMP).
	Other time.Duration
}

// DefaultTimeouts returns the IPVS default timeouts.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		TCPSynRecv:     60 * time.Second,
		TCPEstablished: 900 * time.Second,
		TCPClosing:     120 * time.Second,
		TCPClose:       10 * time.Second,
		UDP:            300 * time.Second,
		ICMP:           60 * time.Second,
		Other:          60 * time.Second,
	}
}

// withDefaults replaces every zero or negative field by its default, so a
// caller can override one timeout and leave the rest alone.
func (to Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts()
	fix := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	fix(&to.TCPSynRecv, d.TCPSynRecv)
	fix(&to.TCPEstablished, d.TCPEstablished)
	fix(&to.TCPClosing, d.TCPClosing)
	fix(&to.TCPClose, d.TCPClose)
	fix(&to.UDP, d.UDP)
	fix(&to.ICMP, d.ICMP)
	fix(&to.Other, d.Other)
	return to
}

func (to Timeouts) byState() [numStates]time.Duration {
	return [numStates]time.Duration{
		StateSynRecv:     to.TCPSynRecv,
		StateEstablished: to.TCPEstablished,
		StateClosing:     to.TCPClosing,
		StateClose:       to.TCPClose,
		StateUDP:         to.UDP,
		StateICMP:        to.ICMP,
		StateOther:       to.Other,
	}
}

// firstState is the state of a new flow of protocol proto whose first frame
// carries tcpFlags.
func firstState(proto uint8, tcpFlags uint8) State {
	switch proto {
	case ProtoTCP:
		// A first frame without SYN is a connection picked up mid-stream
		// (after a failover), so it is treated as open, as IPVS does for an
		// ACK in state NONE. RST and FIN take precedence as on a known flow.
		switch {
		case tcpFlags&FlagRST != 0:
			return StateClose
		case tcpFlags&FlagFIN != 0:
			return StateClosing
		case tcpFlags&FlagSYN != 0:
			return StateSynRecv
		default:
			return StateEstablished
		}
	case ProtoUDP:
		return StateUDP
	case ProtoICMP:
		return StateICMP
	default:
		return StateOther
	}
}

// proto6 maps an IPv6 flow's protocol onto the IPv4 number firstState and
// validState treat alike: ICMPv6 is IPv6's ICMP, and ICMP's number means in
// IPv6 what ICMPv6's means in IPv4, some other protocol. It swaps the two
// and leaves the rest alone.
func proto6(p uint8) uint8 {
	switch p {
	case ProtoICMPv6:
		return ProtoICMP
	case ProtoICMP:
		return ProtoICMPv6
	}
	return p
}

// firstState6 is firstState for an IPv6 flow.
func firstState6(proto uint8, tcpFlags uint8) State { return firstState(proto6(proto), tcpFlags) }

// nextState advances a flow in state s on a client frame with tcpFlags. Only
// TCP states move; RST beats FIN beats SYN beats ACK, as a frame may carry
// several of them.
func nextState(s State, tcpFlags uint8) State {
	if s > StateClose {
		return s
	}
	switch {
	case tcpFlags&FlagRST != 0:
		return StateClose
	case tcpFlags&FlagFIN != 0:
		if s == StateClose {
			// A FIN after a RST does not reopen anything.
			return StateClose
		}
		return StateClosing
	case tcpFlags&FlagSYN != 0:
		if s == StateClosing || s == StateClose {
			// The client reused the 4-tuple for a new connection; it stays
			// with the same member (IPVS: SYN in CLOSE/FIN_WAIT -> SYN_RECV).
			return StateSynRecv
		}
		// A retransmitted SYN keeps SYN_RECV; a SYN on an open
		// connection does not reset it (IPVS: SYN in ESTABLISHED stays).
		return s
	case tcpFlags&FlagACK != 0:
		if s == StateSynRecv {
			return StateEstablished
		}
		return s
	default:
		return s
	}
}
