// Package afxdp is the AF_XDP receive/transmit backend of the fast path: a minimal XDP program,
// built in Go with github.com/cilium/ebpf's asm package (no C toolchain), that redirects frames
// to the balancer's virtual MAC into an XSKMAP, and AF_XDP sockets
// (Documentation/networking/af_xdp.rst) whose UMEM and rings are set up with golang.org/x/sys/unix.
//
// One Socket serves one receive queue. Received frames stay in the socket's UMEM until the done
// callback of ReceiveBlocks has run; a forwarded frame, rewritten in place, is transmitted from
// the same UMEM frame and returns to the fill ring through the completion ring. Frames that are
// not in the UMEM (ARP replies, announcements) are copied into a pool of transmit frames.
//
// Transmission needs a system call in copy mode (sendto(2) or poll(2) on the socket; veth and
// most NICs have no zero-copy transmit). What a done callback sends is left for the poll(2)
// the receive loop makes next when its ring is empty, which transmits the tx ring before it
// sleeps (xsk_poll in net/xdp/xsk.c), so a wake-up costs one system call instead of two. The
// deferral is bounded: at most 32 descriptors (one call's budget), at most maxDeferBatches
// busy batches, and a sendto(2) after the first poll(2) that is seen not to transmit, after
// which kicks are never deferred again.
//
// The program only takes frames whose destination is the virtual MAC: ARP requests and
// neighbour solicitations arrive on broadcast and multicast addresses the host itself needs,
// and XDP cannot clone a frame, so they stay with the kernel and the balancer reads them from a
// filtered packet socket beside the AF_XDP one (Config.Control).
//
// AF_XDP carries no offload metadata: frames of same-host senders arrive with partial TCP/UDP
// checksums, which Config.FixPartialChecksums completes (csum.go), and in generic mode GRO
// super-frames do not fit a UMEM frame and are dropped (Attach warns; native mode on veth gets
// wire-sized frames because veth turns its peer's GSO off).
//
// The program is attached as a BPF link: it is detached when the Program is closed or the
// process dies, so nothing outlives a crashed balancer (fail-closed, as the virtual-MAC design
// wants).
package afxdp
