// Package connsync is l2lb's connection-sync channel, the replacement for
// IPVS's sync daemon (ipvsadm --start-daemon master|backup --syncid N). The
// active balancer of a group replicates its connection entries and
// persistence templates to every standby, so that after a failover the
// standby keeps sending established flows to the frontends that hold them.
//
// A Conn is one UDP socket over IPv4 used in both directions. By default it
// speaks multicast on one interface to DefaultGroup with TTL 1 and loopback
// off; with Config.Peers set it speaks unicast to those peers instead. The
// active side's Replicator sends new entries in batches as they appear
// (Notify), re-sends every live entry once per refresh interval, spread over
// the interval, so a lost datagram heals by itself, and answers a standby's
// dump request (Conn.RequestDump) with a bulk dump ending in MsgDumpEnd.
//
// Records carry the member's real address (IPv4 or IPv6), never a
// node-local member ID, and the remaining lifetime rather than an absolute
// time, so the nodes need neither the same member numbering nor
// synchronised clocks. A record's client and VIP are both IPv4 or both IPv6;
// its member is either, whatever the flow's family (Record lists the rules
// a record must meet).
//
// # Wire format
//
// There are two versions, which differ only in the size of their records.
// Version 1 carries records whose client, VIP and member are all IPv4 in 24
// bytes; version 2 carries every other record in 60 bytes, with 16-byte
// addresses. A message holds the records of one version only: a batch is
// split into version 1 messages for its IPv4 records and version 2 messages
// for the rest (Conn.Send and the Replicator do so). A node that speaks only
// version 1 thus still gets every IPv4 record from a newer one during a
// rolling upgrade, and drops the version 2 messages as ErrVersion. A message
// without records (a dump request, a dump end) is always version 1.
//
// All integers are big-endian (network byte order). A message is a 20-byte
// header, Count records, and, when a key is configured, a 32-byte
// HMAC-SHA256 (RFC 2104) over everything before it. An encoded message is at
// most MaxMessage (1400) bytes, so it never fragments on a 1500-byte MTU:
// MaxRecordsV1 (56) version 1 records or MaxRecordsV2 (22) version 2 records
// fit.
//
// Header (both versions):
//
//	offset size field
//	0      4    magic "L2SY"
//	4      1    version (1 or 2)
//	5      1    flags: bit 0 = HMAC trailer present; other bits 0
//	6      1    type: 1 update, 2 dump-request, 3 dump-end, 4 health
//	7      1    reserved, 0
//	8      2    SyncID
//	10     2    Count (records that follow; 0 for dump-request, dump-end;
//	            at least 1 in version 2; for health, the payload's length
//	            in bytes, 1 to MaxHealthPayload, version 1 only)
//	12     4    sender IPv4 address
//	16     4    sequence number (per sender, wraps)
//
// Version 1 record (24 bytes):
//
//	offset size field
//	0      1    kind: 1 flow, 2 persistence template
//	1      1    state (conntrack.State; 0 for a template)
//	2      1    IP protocol (0 for a template)
//	3      1    reserved, 0
//	4      4    source (client) IPv4 address
//	8      4    destination (VIP) IPv4 address
//	12     2    source port (0 for a template)
//	14     2    destination port (0 for a template)
//	16     4    member (frontend real) IPv4 address
//	20     4    remaining lifetime in milliseconds
//
// Version 2 record (60 bytes): version 1's, with byte 3 holding address
// flags and every address in 16 bytes:
//
//	offset size field
//	0      1    kind: 1 flow, 2 persistence template
//	1      1    state (conntrack.State; 0 for a template)
//	2      1    IP protocol (0 for a template)
//	3      1    address flags:
//	              bit 0 (0x01) source and destination are IPv4
//	              bit 1 (0x02) member is IPv4
//	              bits 2-7 reserved, 0
//	4      16   source (client) address
//	20     16   destination (VIP) address
//	36     2    source port (0 for a template)
//	38     2    destination port (0 for a template)
//	40     16   member (frontend real) address
//	56     4    remaining lifetime in milliseconds
//
// An address whose flag is set is IPv4, written IPv4-mapped
// (::ffff:a.b.c.d, RFC 4291 section 2.5.5.2); one whose flag is clear is
// IPv6 and must not be IPv4-mapped. Both flags set is refused: such a
// record belongs in a version 1 message. So every record has exactly one
// encoding, and a message exactly one version.
//
// Decode checks, in this order: length of magic and version (ErrShort),
// magic (ErrMagic), version (ErrVersion), header length (ErrShort), flags
// and reserved byte (ErrHeader), Count against the version's maximum, the
// exact datagram length for the version's record size, and a version 2
// message without records (ErrCount), SyncID (ErrSyncID; a receiver
// configured with SyncID 0 accepts every group, as in IPVS), the MAC
// (ErrAuth), the type and records in a message of another type than update
// (ErrHeader, ErrCount), and every record (ErrRecord): known kind, zero
// reserved byte (version 1) or valid address flags whose addresses have the
// form they say (version 2), a state that matches the protocol as conntrack
// assigns it (ICMP is protocol 1 for an IPv4 flow, ICMPv6 58 for an IPv6
// one), valid client and VIP of one family, a unicast member address, zero
// template-unused fields. A receiving Conn drops and counts each rejected
// message under its reason (Stats), and never hands it to its callback.
// Decode accepts exactly what Encode produces: an accepted message
// re-encodes to the same bytes.
//
// Replay of captured authenticated messages is not prevented: the sequence
// number restarts with the sender and only helps spotting loss. The damage
// a replay can do is bounded by the records' TTLs.
package connsync
