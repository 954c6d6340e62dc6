// Package connsync is l2lb's connection-sync channel, the replacement for
// IPVS's sync daemon (ipvsadm --start-daemon master|backup --syncid N). The
// active balancer of a group replicates its connection entries and
// persistence templates to every standby, so that after a failover the
// standby keeps sending established flows to the frontends that hold them.
//
// A Conn is one UDP socket used in both directions. By default it speaks
// multicast on one interface to DefaultGroup with TTL 1 and loopback off;
// with Config.Peers set it speaks unicast to those peers instead. The active
// side's Replicator sends new entries in batches as they appear (Notify),
// re-sends every live entry once per refresh interval, spread over the
// interval, so a lost datagram heals by itself, and answers a standby's
// dump request (Conn.RequestDump) with a bulk dump ending in MsgDumpEnd.
//
// Records carry the member's real IPv4 address, never a node-local member
// ID, and the remaining lifetime rather than an absolute time, so the nodes
// need neither the same member numbering nor synchronised clocks.
//
// # Wire format, version 1
//
// All integers are big-endian (network byte order). A message is a 20-byte
// header, Count records of 24 bytes, and, when a key is configured, a 32-byte
// HMAC-SHA256 (RFC 2104) over everything before it. An encoded message is at
// most MaxMessage (1400) bytes, so it never fragments on a 1500-byte MTU;
// MaxRecords (56) records fit.
//
// Header:
//
//	offset size field
//	0      4    magic "L2SY"
//	4      1    version (1)
//	5      1    flags: bit 0 = HMAC trailer present; other bits 0
//	6      1    type: 1 update, 2 dump-request, 3 dump-end
//	7      1    reserved, 0
//	8      2    SyncID
//	10     2    Count (records that follow; 0 for dump-request, dump-end)
//	12     4    sender IPv4 address
//	16     4    sequence number (per sender, wraps)
//
// Record:
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
// Decode checks, in this order: length of magic and version (ErrShort),
// magic (ErrMagic), version (ErrVersion), header length (ErrShort), flags
// and reserved byte (ErrHeader), Count against MaxRecords and the exact
// datagram length (ErrCount), SyncID (ErrSyncID; a receiver configured with
// SyncID 0 accepts every group, as in IPVS), the MAC (ErrAuth), the type
// (ErrHeader), and every record (ErrRecord): known kind, a state that
// matches the protocol as conntrack assigns it, non-zero client and VIP, a
// unicast member address, zero reserved and template-unused fields. A
// receiving Conn drops and counts each rejected message under its reason
// (Stats), and never hands it to its callback.
//
// Replay of captured authenticated messages is not prevented: the sequence
// number restarts with the sender and only helps spotting loss. The damage
// a replay can do is bounded by the records' TTLs.
package connsync
