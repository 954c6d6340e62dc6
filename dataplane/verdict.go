package dataplane

// Verdict says what the fast path did with one frame.
type Verdict uint8

// Verdicts returned by Engine.Process.
const (
	// VerdictIgnored means the frame was not balancer input (another destination MAC, a frame of
	// our own) and was left alone; it is not a drop.
	VerdictIgnored Verdict = iota
	// VerdictForward means the frame was rewritten for another frontend and must be sent on the
	// interface.
	VerdictForward
	// VerdictLocal means the frame belongs to this node's own frontend and must be re-injected on
	// lo (design notes: exactly-once local delivery).
	VerdictLocal
	// VerdictARPReply means an ARP request for a VIP was answered; the reply frame is in
	// Result.Reply.
	VerdictARPReply
	// VerdictDrop means the frame was dropped; Result.Reason says why.
	VerdictDrop
	// VerdictNDPReply means an IPv6 neighbour solicitation for a VIP was answered; the
	// advertisement is in Result.Reply.
	VerdictNDPReply
	numVerdicts
)

var verdictNames = [...]string{
	VerdictIgnored:  "ignored",
	VerdictForward:  "forwarded",
	VerdictLocal:    "local",
	VerdictARPReply: "arp_reply",
	VerdictDrop:     "dropped",
	VerdictNDPReply: "ndp_reply",
}

// String returns the verdict's metric name.
func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return "unknown"
}

// Reason says why a frame was dropped, or what else was noticed about it.
type Reason uint8

// Drop reasons. Every malformed or unusable frame is counted under exactly one of them.
const (
	ReasonNone Reason = iota
	// ReasonRunt is a frame shorter than an Ethernet header.
	ReasonRunt
	// ReasonVLAN is an 802.1Q/802.1ad tagged frame: l2lb serves the untagged interface it is
	// given; run it on the VLAN sub-interface (e.g. eth0.100) to balance tagged traffic.
	ReasonVLAN
	// ReasonNotIP is a frame to the balancer's MAC that is neither IPv4, IPv6 nor ARP.
	ReasonNotIP
	// ReasonIPTruncated is a frame too short for its IPv4 or IPv6 header.
	ReasonIPTruncated
	// ReasonIPVersion is an IPv4 ethertype with another version in the header.
	ReasonIPVersion
	// ReasonIPHeaderLen is an IHL below 5 words.
	ReasonIPHeaderLen
	// ReasonIPTotalLen is an IPv4 total length below the header length or beyond the frame, or an
	// IPv6 payload length of zero (jumbograms are not supported) or beyond the frame.
	ReasonIPTotalLen
	// ReasonIPChecksum is an IPv4 header whose checksum is wrong.
	ReasonIPChecksum
	// ReasonL4Truncated is a TCP, UDP or ICMP header cut short.
	ReasonL4Truncated
	// ReasonTCPDataOffset is a TCP data offset below 5 words.
	ReasonTCPDataOffset
	// ReasonICMPInner is an ICMP error whose quoted header is unusable.
	ReasonICMPInner
	// ReasonNotVIP is an IPv4 frame to the balancer's MAC whose destination is not a VIP.
	ReasonNotVIP
	// ReasonFragmentUnknown is a non-first fragment whose first fragment was never seen.
	ReasonFragmentUnknown
	// ReasonNoMember means no frontend could take a new flow (none ready, all weight 0).
	ReasonNoMember
	// ReasonInactive is VIP traffic that arrived while this node is not the active balancer.
	ReasonInactive
	// ReasonMemberGone is a frame of a flow whose frontend was removed, dropped under the expire
	// option (IPVS expire_nodest_conn).
	ReasonMemberGone
	// ReasonTxError is a frame the kernel refused to send.
	ReasonTxError
	// ReasonARPMalformed is an ARP frame that could not be parsed.
	ReasonARPMalformed
	// ReasonMemberPending is a frame of a flow (or persistent client) whose frontend's MAC is not
	// resolved yet; it is dropped rather than moved, and TCP retransmits it.
	ReasonMemberPending
	// ReasonCaptureTruncated is a frame the kernel handed over cut short (larger than the ring's
	// frame room); forwarding it would corrupt it.
	ReasonCaptureTruncated
	// ReasonIPv6ExtChain is an IPv6 extension-header chain that is cut short, longer than
	// maxExtHeaders, has a Hop-by-Hop header that is not first or two Fragment headers.
	ReasonIPv6ExtChain
	// ReasonNDPMalformed is a neighbour solicitation or advertisement that could not be parsed.
	ReasonNDPMalformed
	numReasons
)

var reasonNames = [...]string{
	ReasonNone:             "none",
	ReasonRunt:             "runt",
	ReasonVLAN:             "vlan_tagged",
	ReasonNotIP:            "not_ip",
	ReasonIPTruncated:      "ip_truncated",
	ReasonIPVersion:        "ip_version",
	ReasonIPHeaderLen:      "ip_header_len",
	ReasonIPTotalLen:       "ip_total_len",
	ReasonIPChecksum:       "ip_checksum",
	ReasonL4Truncated:      "l4_truncated",
	ReasonTCPDataOffset:    "tcp_data_offset",
	ReasonICMPInner:        "icmp_inner",
	ReasonNotVIP:           "not_vip",
	ReasonFragmentUnknown:  "fragment_unknown",
	ReasonNoMember:         "no_member",
	ReasonInactive:         "inactive",
	ReasonMemberGone:       "member_gone",
	ReasonTxError:          "tx_error",
	ReasonARPMalformed:     "arp_malformed",
	ReasonMemberPending:    "member_pending",
	ReasonCaptureTruncated: "capture_truncated",
	ReasonIPv6ExtChain:     "ipv6_ext_chain",
	ReasonNDPMalformed:     "ndp_malformed",
}

// String returns the reason's metric name.
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// Result is the outcome of processing one frame.
type Result struct {
	Verdict Verdict
	Reason  Reason
	// Member is the frontend the frame went to (VerdictForward, VerdictLocal).
	Member uint32
	// Reply is the frame to send for VerdictARPReply and VerdictNDPReply (without a virtio
	// header). It points into the caller's scratch buffer and is valid until the next call.
	Reply []byte
	// NewFlow reports that the frame started a flow (it was scheduled).
	NewFlow bool
	// TableFull reports a new flow forwarded without a table entry because the table is at its
	// configured limit.
	TableFull bool
	// NoCallID reports a UDP datagram to a Call-ID port (Config.CallIDPorts) that carried no SIP
	// Call-ID (a keep-alive, a non-SIP datagram, a first fragment cut short): it was handled by
	// its 5-tuple.
	NoCallID bool
	// NewDialog reports that the frame started a SIP dialog (it was scheduled by its Call-ID).
	NewDialog bool
	// Conflict reports an ARP or NDP frame from another host claiming one of our VIPs while we
	// answer for them (see Conflict).
	Conflict bool
	// Cacheable reports, with VerdictForward, a datagram of a known UDP flow over IPv4 (not a
	// fragment, not dispatched by SIP Call-ID), or an ACK without SYN, FIN or RST of a known
	// TCP flow over IPv4, whose member keeps it: the XDP flow cache may forward the flow's later
	// datagrams, or ACK-only segments, as this frame was (flowcache.go).
	Cacheable bool

	// vip is the VIP counter ProcessHint left for Counters.Record or RecordBatch to count the
	// frame on (nil once counted, and for every other verdict).
	vip *vipCounter
}
