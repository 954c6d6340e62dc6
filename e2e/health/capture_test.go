package health

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/l2lb/l2lb/internal/testbed"
)

// probeKey is one service port a probe went to: the IP protocol and the destination port.
type probeKey struct {
	proto layers.IPProtocol
	port  uint16
}

// probeCapture counts, on one frontend's interface, the probe traffic from and to the probe
// source (testbed.Capture records no Ethernet source of received SYNs, which is what shows the
// DSR path).
type probeCapture struct {
	conn *packet.Conn
	done chan struct{}
	vip  netip.Addr
	self netip.Addr
	vmac net.HardwareAddr

	mu sync.Mutex
	// viaVMAC counts TCP SYNs and UDP datagrams from the probe source to the VIP whose Ethernet
	// source is the virtual MAC, by service port: the DSR path.
	viaVMAC map[probeKey]int
	// otherMAC counts probe-source frames to the VIP from any other Ethernet source.
	otherMAC int
	// toSelf counts frames from the probe source to the frontend's own address: probes that
	// bypass the VIP.
	toSelf int
	// replies counts frames from the VIP to the probe source sent to the virtual MAC.
	replies int
	err     error
}

// captureProbes starts counting probe frames on h's eth0.
func captureProbes(h *testbed.Host, vip netip.Addr, vmac net.HardwareAddr) (*probeCapture, error) {
	c := &probeCapture{done: make(chan struct{}), vip: vip, self: h.Addr, vmac: vmac, viaVMAC: map[probeKey]int{}}
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Ifname)
		if err != nil {
			return err
		}
		c.conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w", h.Name, err)
	}
	go c.run()
	return c, nil
}

func (c *probeCapture) run() {
	defer close(c.done)
	buf := make([]byte, 1<<16+64) // GSO frames on veth reach 64 KiB
	var (
		eth layers.Ethernet
		ip  layers.IPv4
		tcp layers.TCP
		udp layers.UDP
	)
	df := gopacket.NilDecodeFeedback
	for {
		n, _, err := c.conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				c.mu.Lock()
				c.err = err
				c.mu.Unlock()
			}
			return
		}
		if eth.DecodeFromBytes(buf[:n], df) != nil || eth.EthernetType != layers.EthernetTypeIPv4 ||
			ip.DecodeFromBytes(eth.Payload, df) != nil {
			continue
		}
		src, _ := netip.AddrFromSlice(ip.SrcIP.To4())
		dst, _ := netip.AddrFromSlice(ip.DstIP.To4())
		c.mu.Lock()
		switch {
		case src == probeSource && dst == c.self:
			c.toSelf++
		case src == probeSource && dst == c.vip:
			var k probeKey
			switch ip.Protocol {
			case layers.IPProtocolTCP:
				if tcp.DecodeFromBytes(ip.Payload, df) == nil && tcp.SYN && !tcp.ACK {
					k = probeKey{layers.IPProtocolTCP, uint16(tcp.DstPort)}
				}
			case layers.IPProtocolUDP:
				if udp.DecodeFromBytes(ip.Payload, df) == nil {
					k = probeKey{layers.IPProtocolUDP, uint16(udp.DstPort)}
				}
			}
			switch {
			case !bytes.Equal(eth.SrcMAC, c.vmac):
				c.otherMAC++
			case k.port != 0:
				c.viaVMAC[k]++
			}
		case src == c.vip && dst == probeSource && bytes.Equal(eth.DstMAC, c.vmac):
			c.replies++
		}
		c.mu.Unlock()
	}
}

// stop ends the capture after what is queued has been read.
func (c *probeCapture) stop() error {
	_ = c.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	<-c.done
	c.conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
