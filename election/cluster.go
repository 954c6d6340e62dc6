package election

import (
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is memberlist's customary port (DefaultLANConfig), used for the
// group's gossip unless configured otherwise.
const DefaultPort = 7946

// DefaultProbeInterval is how often each node probes one other member. With
// the settings Join derives from it, crash detection stays under 2 s for
// groups of up to four nodes (see DetectionBound).
const DefaultProbeInterval = 200 * time.Millisecond

// DefaultRejoinInterval is how often a node re-joins configured peers it does
// not see alive. memberlist only gossips to dead nodes for
// GossipToTheDeadTime (30 s) and push/pull only talks to live ones, so after a
// longer partition the two halves would never merge without this.
const DefaultRejoinInterval = 5 * time.Second

// suspicionMult is memberlist's SuspicionMult. memberlist waits for
// SuspicionMult-2 independent confirmations before it shortens a suspicion
// from SuspicionMaxTimeoutMult times the base timeout (state.go,
// suspectNode); with 2 it wants none and always uses the base timeout
// SuspicionMult * max(1, log10(N)) * ProbeInterval (util.go,
// suspicionTimeout), which makes detection time predictable.
const suspicionMult = 2

// updateTimeout bounds how long UpdateMeta waits for memberlist to send the
// new metadata; the update stays queued for gossip after that.
const updateTimeout = time.Second

// ErrNoName reports a ClusterConfig without a node name.
var ErrNoName = errors.New("election: cluster node name is empty")

// ErrBadBind reports a ClusterConfig whose Bind address is not set.
var ErrBadBind = errors.New("election: cluster bind address is not set")

// ErrClosed reports use of a Cluster after Shutdown.
var ErrClosed = errors.New("election: cluster is shut down")

// Membership is the narrow view of the group that the election loop needs.
// Cluster implements it with memberlist; tests use a fake.
type Membership interface {
	// View returns the current membership snapshot.
	View() View
	// Updated is signalled (coalesced) whenever the membership changes.
	Updated() <-chan struct{}
	// UpdateMeta announces new metadata for this node.
	UpdateMeta(NodeMeta) error
}

// ClusterConfig configures Join.
type ClusterConfig struct {
	// Name is this node's unique name in the group.
	Name string
	// Bind is the node's real address and gossip port (UDP and TCP).
	// Port 0 lets the kernel choose one, which tests use.
	Bind netip.AddrPort
	// Peers are "host:port" addresses of other members: the addresses CGP
	// sends in helper mode, or --peers in standalone mode.
	Peers []string
	// Meta is this node's initial metadata; its Name is replaced by Name.
	Meta NodeMeta
	// Log receives this package's events and, at Debug, memberlist's log
	// lines; nil discards them (memberlist never writes to stderr by itself
	// here).
	Log *slog.Logger
	// SecretKey, if set, encrypts gossip with AES (16, 24 or 32 bytes).
	SecretKey []byte

	// rejoinInterval replaces DefaultRejoinInterval when positive (tests).
	rejoinInterval time.Duration
}

// Cluster is this node's memberlist membership. It implements Membership.
type Cluster struct {
	cfg     ClusterConfig
	ml      *memberlist.Memberlist
	log     *slog.Logger
	updated chan struct{}
	stop    chan struct{}
	done    chan struct{}
	// local is memberlist's address of this node, read once in Join.
	local netip.AddrPort

	mu       sync.Mutex
	self     NodeMeta
	selfEnc  []byte
	members  map[string]Member
	peers    []string
	closed   bool
	badMeta  map[string]bool
	joinErrs string
	// addrs holds each other member's gossip address ("addr:port") as its
	// last memberlist event gave it. memberlist rewrites the *Node values it
	// hands out (Members, LocalNode) under its own lock whenever an alive
	// message arrives, so they may only be read inside its callbacks.
	addrs map[string]string
}

// DetectionBound returns the worst-case time, with the settings memberlist
// gets from a probe interval (Join uses DefaultProbeInterval), between the
// crash of one of n members and the others marking it dead:
//
//   - until some node probes it: each node probes the others round-robin,
//     one per interval, reshuffling after each round (state.go, probe), so
//     at most 2(n-1)-1 intervals;
//   - the probe itself fails after one interval (direct ping with
//     ProbeTimeout, then indirect and TCP pings until the interval ends);
//   - suspicion: suspicionMult * max(1, log10 n) intervals;
//   - the dead message is gossiped within one GossipInterval (interval/2).
//
// For n = 3 and 200 ms this is 1.3 s; n = 4 gives 1.7 s. Larger groups stay
// near 1 s in practice because n-1 nodes probe independently, but the strict
// bound grows by two intervals per node.
func DetectionBound(n int, probeInterval time.Duration) time.Duration {
	if n < 2 {
		n = 2
	}
	firstProbe := time.Duration(2*(n-1)-1) * probeInterval
	scale := math.Max(1, math.Log10(float64(n)))
	suspicion := time.Duration(float64(suspicionMult) * scale * float64(probeInterval))
	return firstProbe + probeInterval + suspicion + probeInterval/2
}

// memberlistConfig starts from memberlist.DefaultLANConfig and tightens the
// failure detector for the 2 s failover the issue asks for.
func memberlistConfig(cfg ClusterConfig, pi time.Duration, logger *log.Logger) *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.Name = wireName(cfg.Name)
	c.BindAddr = cfg.Bind.Addr().String()
	c.BindPort = int(cfg.Bind.Port())
	c.AdvertiseAddr = ""
	c.AdvertisePort = int(cfg.Bind.Port())
	c.ProbeInterval = pi
	// A LAN round trip is well under a millisecond; half the interval
	// leaves the rest of it for the indirect and TCP fallback pings.
	c.ProbeTimeout = pi / 2
	c.SuspicionMult = suspicionMult
	// Gossip twice per probe interval so the dead message (and metadata
	// updates such as Active) spread well within the detection budget.
	c.GossipInterval = pi / 2
	// TCP is used for push/pull and the fallback ping; 10 s would let a
	// dead peer stall a push/pull far beyond our budget.
	c.TCPTimeout = time.Second
	// Full state exchange every 5 s (default 30 s) repairs lost gossip
	// quickly; a group has a handful of nodes, so it is cheap.
	c.PushPullInterval = 5 * time.Second
	// Awareness stretches the probe interval when this node itself looks
	// degraded (Lifeguard); cap it at 2x so the bound above at most doubles
	// instead of growing 8x.
	c.AwarenessMaxMultiplier = 2
	c.SecretKey = cfg.SecretKey
	c.Logger = logger
	c.LogOutput = nil
	return c
}

// Join starts memberlist on cfg.Bind, announces cfg.Meta and joins
// cfg.Peers. Failing to reach any peer is not an error: the first node of a
// group starts alone, and the rejoin loop keeps trying.
func Join(cfg ClusterConfig) (*Cluster, error) {
	if cfg.Name == "" {
		return nil, ErrNoName
	}
	if !cfg.Bind.Addr().IsValid() {
		return nil, ErrBadBind
	}
	ri := cfg.rejoinInterval
	if ri <= 0 {
		ri = DefaultRejoinInterval
	}
	c := &Cluster{
		cfg:     cfg,
		log:     cfg.Log,
		updated: make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		members: make(map[string]Member),
		peers:   slices.Clone(cfg.Peers),
		badMeta: make(map[string]bool),
		addrs:   make(map[string]string),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	meta := cfg.Meta
	meta.Name = cfg.Name
	enc, err := EncodeMeta(meta)
	if err != nil {
		return nil, err
	}
	c.self, c.selfEnc = meta, enc

	// memberlist logs through a *log.Logger, one line per call, each
	// starting with its own "[LEVEL] memberlist:" tag; it is chatty, so all
	// of it goes out at Debug.
	mc := memberlistConfig(cfg, DefaultProbeInterval, slog.NewLogLogger(c.log.Handler(), slog.LevelDebug))
	d := &delegate{c}
	mc.Delegate, mc.Events, mc.Conflict = d, d, d
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("election: memberlist on %s: %w", cfg.Bind, err)
	}
	c.ml = ml
	// Nothing but a message from a peer about this node rewrites its record,
	// and no peer knows it yet.
	ln := ml.LocalNode()
	la, _ := netip.AddrFromSlice(ln.Addr)
	c.local = netip.AddrPortFrom(la.Unmap(), ln.Port)
	if len(c.peers) > 0 {
		if _, err := ml.Join(c.peers); err != nil {
			c.log.Info("joining the peers failed; retrying", "node", cfg.Name, "peers", c.peers, "err", err, "every", ri)
		}
	}
	go c.rejoinLoop(ri)
	return c, nil
}

// LocalAddr returns the address and port memberlist listens on (the chosen
// port when Bind had port 0).
func (c *Cluster) LocalAddr() netip.AddrPort { return c.local }

// View returns the current membership, members sorted by name, this node
// included with the metadata it announces.
func (c *Cluster) View() View {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := View{Self: c.cfg.Name, Members: make([]Member, 0, len(c.members)+1)}
	v.Members = append(v.Members, Member{NodeMeta: c.self, Alive: !c.closed})
	for name, m := range c.members {
		if name != c.cfg.Name {
			v.Members = append(v.Members, m)
		}
	}
	slices.SortFunc(v.Members, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return v
}

// Updated returns a channel signalled after membership or metadata changes.
// Signals coalesce: read View after each one.
func (c *Cluster) Updated() <-chan struct{} { return c.updated }

// UpdateMeta replaces this node's metadata and gossips it. An error from the
// broadcast wait leaves the update queued: it still spreads with gossip and
// push/pull.
func (c *Cluster) UpdateMeta(m NodeMeta) error {
	m.Name = c.cfg.Name
	enc, err := EncodeMeta(m)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.self, c.selfEnc = m, enc
	c.mu.Unlock()
	c.signal()
	return c.ml.UpdateNode(updateTimeout)
}

// JoinPeers joins more peers (for example a new address list from CGP) and
// keeps them in the rejoin set.
func (c *Cluster) JoinPeers(peers []string) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	for _, p := range peers {
		if !slices.Contains(c.peers, p) {
			c.peers = append(c.peers, p)
		}
	}
	c.mu.Unlock()
	_, err := c.ml.Join(peers)
	return err
}

// Leave announces that this node leaves the group, waiting up to timeout
// for the message to go out, and then shuts memberlist down.
func (c *Cluster) Leave(timeout time.Duration) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return ErrClosed
	}
	err := c.ml.Leave(timeout)
	return errors.Join(err, c.Shutdown())
}

// Shutdown stops memberlist without a leave message; the others see the node
// as crashed. It is safe to call more than once.
func (c *Cluster) Shutdown() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	return c.ml.Shutdown()
}

// rejoinLoop re-joins configured peers that are not alive members, so that
// the group merges again after a partition heals.
func (c *Cluster) rejoinLoop(every time.Duration) {
	defer close(c.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.mu.Lock()
		alive := map[string]bool{c.local.String(): true}
		for name, m := range c.members {
			if m.Alive {
				alive[c.addrs[name]] = true
			}
		}
		var missing []string
		for _, p := range c.peers {
			// Peers given by host name cannot be matched to a member
			// address; re-joining them is cheap and harmless.
			if ap, err := netip.ParseAddrPort(p); err == nil && alive[ap.String()] {
				continue
			}
			missing = append(missing, p)
		}
		c.mu.Unlock()
		if len(missing) == 0 {
			continue
		}
		_, err := c.ml.Join(missing)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		// Log only changes so that an unreachable peer does not fill
		// the log every few seconds.
		if msg != c.joinErrs && msg != "" {
			c.log.Info("rejoining peers failed", "node", c.cfg.Name, "peers", missing, "err", err)
		}
		c.joinErrs = msg
	}
}

// signal notes a change without blocking memberlist's callbacks.
func (c *Cluster) signal() {
	select {
	case c.updated <- struct{}{}:
	default:
	}
}

// namePrefix is put in front of a node's name in memberlist, and taken off what memberlist
// reports. memberlist v0.7.0 looks a destination up by its bare IP address as a node name
// (rawSendMsgPacket, net.go) and reads the record it found after dropping its lock, racing with
// aliveNode rewriting it (hashicorp/memberlist#113, seen by -race in the e2e suites). l2lb names
// nodes by their address by default, which is exactly that case; a prefix makes the lookup miss,
// so memberlist never reads a record outside its lock. Nothing else depends on the wire name.
const namePrefix = "l2lb/"

// wireName is name as memberlist carries it; nodeName undoes it (a name without the prefix, from
// an older l2lb, is taken as it is).
func wireName(name string) string { return namePrefix + name }

func nodeName(wire string) string { return strings.TrimPrefix(wire, namePrefix) }

// setMember records n (called from memberlist's event callbacks, which hold
// memberlist's node lock: it must not call back into memberlist).
func (c *Cluster) setMember(n *memberlist.Node, alive bool) {
	name := nodeName(n.Name)
	if name == c.cfg.Name {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addrs[name] = n.Address()
	m, ok := c.members[name]
	if alive || !ok {
		meta, err := DecodeMeta(n.Meta)
		if err != nil {
			// Keep the node visible but never a candidate; log once
			// per node until its metadata becomes readable.
			if !c.badMeta[name] {
				c.log.Warn("member announces unreadable metadata", "node", c.cfg.Name, "member", name, "err", err)
			}
			c.badMeta[name] = true
			meta = NodeMeta{}
		} else {
			delete(c.badMeta, name)
		}
		meta.Name = name
		m.NodeMeta = meta
	}
	m.Alive = alive
	c.members[name] = m
	c.signal()
}

// delegate adapts Cluster to memberlist's delegate interfaces.
type delegate struct{ c *Cluster }

// NodeMeta returns the encoded metadata; EncodeMeta already enforced limit.
func (d *delegate) NodeMeta(limit int) []byte {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	if len(d.c.selfEnc) > limit {
		return nil
	}
	return slices.Clone(d.c.selfEnc)
}

// NotifyMsg ignores user messages: all state travels in node metadata.
func (d *delegate) NotifyMsg([]byte) {}

// GetBroadcasts has no user broadcasts to add.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState has no user state for push/pull: metadata is exchanged anyway.
func (d *delegate) LocalState(join bool) []byte { return nil }

// MergeRemoteState has no user state to merge.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {}

// NotifyJoin records a member that joined or came back.
func (d *delegate) NotifyJoin(n *memberlist.Node) { d.c.setMember(n, true) }

// NotifyLeave records a member that left or was declared dead.
func (d *delegate) NotifyLeave(n *memberlist.Node) { d.c.setMember(n, false) }

// NotifyUpdate records a member's new metadata.
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.c.setMember(n, true) }

// NotifyConflict logs two nodes claiming the same name: memberlist keeps the
// first, and the second is not a member until it is renamed.
func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	d.c.log.Warn("name conflict: two nodes claim one name", "node", d.c.cfg.Name, "name", nodeName(existing.Name),
		"addr", existing.Address(), "other", other.Address())
}
