package connsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultGroup is the multicast group and port used when Config.Group is
// not set. 239.255.0.0/16 is the IPv4 Local Scope of administratively scoped
// multicast (RFC 2365 section 6.1), which scope-boundary routers never
// forward off the site, and TTL 1 keeps it on the link anyway. It differs
// from IPVS's 224.0.0.81 so both sync protocols can share a LAN during a
// migration; the port is IPVS's sync port 8848 (IP_VS_SYNC_PORT).
var DefaultGroup = netip.MustParseAddrPort("239.255.108.50:8848")

// recvBuffer is the socket receive buffer asked for: a bulk dump arrives as
// a burst, and the default (net.core.rmem_default, about 208 KiB) holds
// fewer than a hundred sync datagrams.
const recvBuffer = 4 << 20

// readBuffer is larger than MaxMessage, so an oversized datagram is seen
// as oversized (and rejected) rather than silently truncated to a valid
// length.
const readBuffer = 2048

// Errors returned by Listen and the connection.
var (
	// ErrConfig means Config is invalid.
	ErrConfig = errors.New("connsync: invalid config")
	// ErrClosed means the connection has been closed.
	ErrClosed = errors.New("connsync: connection closed")
	// ErrPeer means a datagram came from an address that is not a
	// configured peer (unicast mode only).
	ErrPeer = errors.New("connsync: datagram from unknown peer")
)

// Config sets up a Conn.
type Config struct {
	// SyncID is the group's sync ID (ipvsadm --syncid, l2lb -s). Sent
	// messages carry it; received ones must match it unless it is 0,
	// which accepts every group as IPVS does.
	SyncID uint16
	// Key, when non-empty, authenticates every message with HMAC-SHA256.
	// All nodes of a group need the same key (or all none).
	Key []byte
	// Interface is the network interface multicast is sent and received
	// on (l2lb -i). Required in multicast mode, unused with Peers.
	Interface string
	// Group is the multicast group and port; the zero value means
	// DefaultGroup. In unicast mode its port is the local port to listen
	// on.
	Group netip.AddrPort
	// Peers, when non-empty, switches to unicast: messages go to each
	// peer, and datagrams from any other address are dropped.
	Peers []netip.AddrPort
	// Local is this node's real IPv4 address: the sender address of its
	// messages and the address its own looped-back messages are
	// recognised by. In multicast mode it defaults to the interface's
	// first IPv4 address; in unicast mode it is required and the socket is
	// bound to it.
	Local netip.Addr
	// Log receives warnings (a missing key, the first rejection of each
	// kind, send and read failures); nil discards them.
	Log *slog.Logger
}

// Stats counts a connection's traffic. Every rejected datagram is counted
// under exactly one Rejected field.
type Stats struct {
	// SentMessages and SentRecords count what was handed to the socket
	// (per destination in unicast mode).
	SentMessages, SentRecords uint64
	// SendErrors counts sends the socket refused.
	SendErrors uint64
	// ReceivedMessages and ReceivedRecords count accepted messages and
	// their records (dump requests and dump ends included).
	ReceivedMessages, ReceivedRecords uint64
	// DumpRequests counts accepted dump requests.
	DumpRequests uint64
	// Own counts this node's own messages, looped back and ignored.
	Own uint64
	// ReadErrors counts socket read failures other than closing.
	ReadErrors uint64
	// Rejected messages by reason; each matches the sentinel error of the
	// same name (ErrShort, ErrMagic, ...; Peer is ErrPeer).
	RejectedShort, RejectedMagic, RejectedVersion, RejectedHeader,
	RejectedCount, RejectedSyncID, RejectedAuth, RejectedRecord,
	RejectedPeer uint64
}

// Rejected returns the total number of rejected datagrams.
func (s Stats) Rejected() uint64 {
	return s.RejectedShort + s.RejectedMagic + s.RejectedVersion + s.RejectedHeader +
		s.RejectedCount + s.RejectedSyncID + s.RejectedAuth + s.RejectedRecord + s.RejectedPeer
}

// Reasons a datagram is rejected, in the order of Stats' fields.
const (
	rejShort = iota
	rejMagic
	rejVersion
	rejHeader
	rejCount
	rejSyncID
	rejAuth
	rejRecord
	rejPeer
	numRej
)

var rejErrs = [numRej]error{ErrShort, ErrMagic, ErrVersion, ErrHeader, ErrCount, ErrSyncID, ErrAuth, ErrRecord, ErrPeer}

// Conn is one UDP socket that sends and receives sync messages. Send and
// RequestDump may be called from any goroutine; Receive from one.
type Conn struct {
	uc     *net.UDPConn
	syncID uint16
	key    []byte
	local  netip.Addr
	dests  []netip.AddrPort // the group, or the unicast peers
	peers  []netip.Addr     // accepted sources in unicast mode
	log    *slog.Logger
	seq    atomic.Uint32
	closed atomic.Bool

	sendMu  sync.Mutex
	sendBuf []byte
	sendMAC *macState // the key's HMAC state for sending; nil without a key

	sentMsgs, sentRecs, sendErrs      atomic.Uint64
	recvMsgs, recvRecs, dumpReqs, own atomic.Uint64
	readErrs                          atomic.Uint64
	rejected                          [numRej]atomic.Uint64
	rejLogged                         [numRej]atomic.Bool
	lastSendLog                       atomic.Int64
}

// Listen opens the sync socket described by cfg: multicast on
// cfg.Interface, or unicast to cfg.Peers when set. Without a key it logs a
// warning, since anyone on the link could then inject flows.
func Listen(cfg Config) (*Conn, error) {
	group := cfg.Group
	if !group.IsValid() {
		group = DefaultGroup
	}
	if group.Port() == 0 {
		return nil, fmt.Errorf("%w: group %v has no port", ErrConfig, group)
	}
	c := &Conn{
		syncID:  cfg.SyncID,
		key:     append([]byte(nil), cfg.Key...),
		log:     cfg.Log,
		sendBuf: make([]byte, 0, MaxMessage),
		sendMAC: newMAC(cfg.Key),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	// A random first sequence number makes a restarted sender's messages
	// distinguishable from its previous life's in a capture.
	c.seq.Store(rand.Uint32())
	var err error
	if len(cfg.Peers) > 0 {
		err = c.listenUnicast(cfg, group.Port())
	} else {
		err = c.listenMulticast(cfg, group)
	}
	if err != nil {
		return nil, err
	}
	if err := c.tune(len(cfg.Peers) == 0); err != nil {
		c.uc.Close()
		return nil, err
	}
	if len(c.key) == 0 {
		c.log.Warn("no sync key set: sync messages are not authenticated and anyone on the link can inject connection entries")
	}
	return c, nil
}

func (c *Conn) listenUnicast(cfg Config, port uint16) error {
	if !cfg.Local.Is4() || cfg.Local.IsUnspecified() {
		return fmt.Errorf("%w: unicast mode needs Local, an IPv4 address (got %v)", ErrConfig, cfg.Local)
	}
	for _, p := range cfg.Peers {
		if !p.Addr().Is4() || !validMember(p.Addr()) || p.Port() == 0 {
			return fmt.Errorf("%w: peer %v is not an IPv4 unicast address with a port", ErrConfig, p)
		}
		c.dests = append(c.dests, p)
		c.peers = append(c.peers, p.Addr())
	}
	c.local = cfg.Local
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Local, port)))
	if err != nil {
		return fmt.Errorf("connsync: listen %v:%d: %w", cfg.Local, port, err)
	}
	c.uc = uc
	return nil
}

func (c *Conn) listenMulticast(cfg Config, group netip.AddrPort) error {
	if !group.Addr().Is4() || !group.Addr().IsMulticast() {
		return fmt.Errorf("%w: group %v is not an IPv4 multicast address", ErrConfig, group)
	}
	if cfg.Interface == "" {
		return fmt.Errorf("%w: multicast mode needs Interface", ErrConfig)
	}
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return fmt.Errorf("connsync: interface %q: %w", cfg.Interface, err)
	}
	c.local = cfg.Local
	if !c.local.IsValid() {
		if c.local, err = firstIPv4(ifi); err != nil {
			return err
		}
	}
	if !c.local.Is4() || c.local.IsUnspecified() {
		return fmt.Errorf("%w: Local %v is not an IPv4 address", ErrConfig, c.local)
	}
	// ListenMulticastUDP binds the group address (so unrelated unicast to
	// the port is not received), sets IP_MULTICAST_IF and joins the group
	// on ifi; tune sets the rest.
	uc, err := net.ListenMulticastUDP("udp4", ifi, net.UDPAddrFromAddrPort(group))
	if err != nil {
		return fmt.Errorf("connsync: join %v on %s: %w", group, cfg.Interface, err)
	}
	c.uc = uc
	c.dests = []netip.AddrPort{group}
	return nil
}

func firstIPv4(ifi *net.Interface) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("connsync: addresses of %s: %w", ifi.Name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && ip.Is4() {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: interface %s has no IPv4 address; set Local", ErrConfig, ifi.Name)
}

// tune sets socket options: a large receive buffer for dump bursts and, for
// multicast, TTL 1 (never routed off the link), no loopback of our own
// messages, and IP_MULTICAST_ALL off so the socket receives the group only
// from the interface it joined on (ip(7)).
func (c *Conn) tune(multicast bool) error {
	rc, err := c.uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("connsync: socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		// SO_RCVBUFFORCE may exceed net.core.rmem_max but needs
		// CAP_NET_ADMIN (socket(7)); fall back to the capped SO_RCVBUF.
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, recvBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, recvBuffer)
		}
		if !multicast {
			return
		}
		for _, o := range [...][2]int{
			{unix.IP_MULTICAST_TTL, 1},
			{unix.IP_MULTICAST_LOOP, 0},
			{unix.IP_MULTICAST_ALL, 0},
		} {
			if e := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, o[0], o[1]); e != nil {
				serr = fmt.Errorf("connsync: setsockopt %d: %w", o[0], e)
				return
			}
		}
	})
	if err != nil {
		return fmt.Errorf("connsync: socket: %w", err)
	}
	return serr
}

// LocalAddr returns the socket's bound address.
func (c *Conn) LocalAddr() netip.AddrPort {
	return c.uc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Sender returns the address this node's messages carry as their sender.
func (c *Conn) Sender() netip.Addr { return c.local }

// Send sends recs as update messages, to the group or to every peer. The
// records version 1 carries (client, VIP and member IPv4) go in version 1
// messages of at most MaxRecordsV1 records, the others in version 2
// messages of at most MaxRecordsV2; no message mixes them, so a node that
// speaks only version 1 still gets every IPv4 record. The version 1
// messages go first; within each version the records keep their order.
// Invalid records are left out and the rest is sent: Send then returns
// ErrRecord (wrapped, naming the first invalid record). It returns the
// errors joined, ErrClosed after Close. Sending allocates nothing unless
// something fails.
func (c *Conn) Send(recs []Record) error {
	var errs []error
	bad, first := 0, -1
	for _, v := range [...]int{Version1, Version2} {
		b, f, err := c.sendVersion(v, recs)
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			errs = append(errs, err)
		}
		if bad += b; f >= 0 && (first < 0 || f < first) {
			first = f
		}
	}
	if bad > 0 {
		errs = append(errs, fmt.Errorf("%w: %d of %d records not sent, the first at index %d", ErrRecord, bad, len(recs), first))
	}
	return errors.Join(errs...)
}

// sendVersion sends the records of recs that have version v's addresses
// (v1Shaped or not), in as few messages as they fit, encoding them straight
// into the send buffer. It returns how many of those records are invalid
// and the index of the first, -1 for none.
func (c *Conn) sendVersion(v int, recs []Record) (bad, first int, err error) {
	maxRecs, recLen := MaxRecordsV1, RecordLenV1
	if v == Version2 {
		maxRecs, recLen = MaxRecordsV2, RecordLenV2
	}
	first = -1
	var errs []error
	for i := 0; i < len(recs); {
		if c.closed.Load() {
			return bad, first, ErrClosed
		}
		c.sendMu.Lock()
		b := c.sendBuf[:HeaderLen]
		n := 0
		for ; i < len(recs) && n < maxRecs; i++ {
			r := &recs[i]
			if v1Shaped(r) != (v == Version1) {
				continue
			}
			var ok bool
			if v == Version1 {
				ok = putRecordV1(b[len(b):len(b)+recLen], r)
			} else {
				ok = putRecordV2(b[len(b):len(b)+recLen], r)
			}
			if !ok {
				if bad++; first < 0 {
					first = i
				}
				continue
			}
			b = b[:len(b)+recLen]
			n++
		}
		if n == 0 {
			c.sendMu.Unlock()
			break
		}
		putHeader(b, v, c.header(MsgUpdate), n, c.sendMAC != nil)
		if c.sendMAC != nil {
			b = c.sendMAC.appendMAC(b)
		}
		err := c.transmitLocked(b, n)
		c.sendMu.Unlock()
		if errors.Is(err, ErrClosed) {
			return bad, first, err
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return bad, first, errors.Join(errs...)
}

// RequestDump asks the active balancer for a bulk dump; a standby calls it
// when it starts or rejoins.
func (c *Conn) RequestDump() error { return c.sendEmpty(MsgDumpRequest) }

// SendDumpEnd marks the end of a bulk dump.
func (c *Conn) SendDumpEnd() error { return c.sendEmpty(MsgDumpEnd) }

// SendHealth sends payload (1 to MaxHealthPayload bytes) in a MsgHealth
// message.
func (c *Conn) SendHealth(payload []byte) error {
	if c.closed.Load() {
		return ErrClosed
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	h := c.header(MsgHealth)
	h.Payload = payload
	b, err := encode(c.sendBuf[:0], h, nil, c.sendMAC)
	if err != nil {
		return err
	}
	return c.transmitLocked(b, 0)
}

// sendEmpty sends a message of type t without records (version 1).
func (c *Conn) sendEmpty(t MsgType) error {
	if c.closed.Load() {
		return ErrClosed
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	b, err := encode(c.sendBuf[:0], c.header(t), nil, c.sendMAC)
	if err != nil {
		return err
	}
	return c.transmitLocked(b, 0)
}

// header returns the header of this node's next message of type t.
func (c *Conn) header(t MsgType) Header {
	return Header{Type: t, SyncID: c.syncID, Sender: c.local, Seq: c.seq.Add(1)}
}

// transmitLocked sends message b, which carries n records, to every
// destination; sendMu is held.
func (c *Conn) transmitLocked(b []byte, n int) error {
	var errs []error
	for _, d := range c.dests {
		if _, err := c.uc.WriteToUDPAddrPort(b, d); err != nil {
			if c.closed.Load() || errors.Is(err, net.ErrClosed) {
				return ErrClosed
			}
			c.sendErrs.Add(1)
			errs = append(errs, fmt.Errorf("connsync: send to %v: %w", d, err))
			continue
		}
		c.sentMsgs.Add(1)
		c.sentRecs.Add(uint64(n))
	}
	if err := errors.Join(errs...); err != nil {
		// At most one log line a second: a dead peer must not flood.
		now := time.Now().UnixNano()
		if last := c.lastSendLog.Load(); now-last > int64(time.Second) && c.lastSendLog.CompareAndSwap(last, now) {
			c.log.Warn("sync send failed", "err", err)
		}
		return err
	}
	return nil
}

// Receive reads messages until Close, calling fn for each accepted update,
// dump end or health message and onDumpRequest for each accepted dump
// request. from is the datagram's source address. recs and h.Payload are
// only valid during the call. Own
// messages and rejected datagrams are counted and never passed on. It
// returns nil after Close.
func (c *Conn) Receive(fn func(from netip.Addr, h Header, recs []Record), onDumpRequest func(from netip.Addr)) error {
	buf := make([]byte, readBuffer)
	recs := make([]Record, 0, MaxRecords)
	mac := newMAC(c.key) // this Receive's own, so the sender's is never shared
	for {
		n, src, err := c.uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if c.closed.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			c.readErrs.Add(1)
			c.log.Warn("sync read failed", "err", err)
			// A persistent error must not spin a core.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		from := src.Addr().Unmap()
		if c.peers != nil && !c.isPeer(from) {
			c.reject(ErrPeer, from)
			continue
		}
		var h Header
		h, recs, err = decode(buf[:n], mac, c.syncID, recs)
		if err != nil {
			c.reject(err, from)
			continue
		}
		if h.Sender == c.local || from == c.local {
			c.own.Add(1)
			continue
		}
		c.recvMsgs.Add(1)
		c.recvRecs.Add(uint64(len(recs)))
		switch h.Type {
		case MsgDumpRequest:
			c.dumpReqs.Add(1)
			if onDumpRequest != nil {
				onDumpRequest(from)
			}
		default:
			if fn != nil {
				fn(from, h, recs)
			}
		}
	}
}

func (c *Conn) isPeer(a netip.Addr) bool {
	for _, p := range c.peers {
		if p == a {
			return true
		}
	}
	return false
}

// reject counts a rejected datagram and logs the first one of each reason;
// later ones are only counted, so a flood of garbage cannot flood the log.
// Another group's messages are normal on a shared LAN, so that reason is
// logged at Info, the others at Warn.
func (c *Conn) reject(err error, from netip.Addr) {
	for i, e := range rejErrs {
		if errors.Is(err, e) {
			c.rejected[i].Add(1)
			if c.rejLogged[i].CompareAndSwap(false, true) {
				level := slog.LevelWarn
				if i == rejSyncID {
					level = slog.LevelInfo
				}
				c.log.Log(context.Background(), level, "dropped a sync datagram; further drops of this kind are only counted",
					"from", from, "err", err)
			}
			return
		}
	}
	// Decode returns nothing else; count it as a header error rather than
	// lose it.
	c.rejected[rejHeader].Add(1)
}

// Stats returns a snapshot of the counters.
func (c *Conn) Stats() Stats {
	return Stats{
		SentMessages:     c.sentMsgs.Load(),
		SentRecords:      c.sentRecs.Load(),
		SendErrors:       c.sendErrs.Load(),
		ReceivedMessages: c.recvMsgs.Load(),
		ReceivedRecords:  c.recvRecs.Load(),
		DumpRequests:     c.dumpReqs.Load(),
		Own:              c.own.Load(),
		ReadErrors:       c.readErrs.Load(),
		RejectedShort:    c.rejected[rejShort].Load(),
		RejectedMagic:    c.rejected[rejMagic].Load(),
		RejectedVersion:  c.rejected[rejVersion].Load(),
		RejectedHeader:   c.rejected[rejHeader].Load(),
		RejectedCount:    c.rejected[rejCount].Load(),
		RejectedSyncID:   c.rejected[rejSyncID].Load(),
		RejectedAuth:     c.rejected[rejAuth].Load(),
		RejectedRecord:   c.rejected[rejRecord].Load(),
		RejectedPeer:     c.rejected[rejPeer].Load(),
	}
}

// Close closes the socket; Receive then returns nil and sends fail with
// ErrClosed.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.uc.Close()
}
