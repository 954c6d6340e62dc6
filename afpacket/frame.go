package afpacket

// FrameOf returns a Frame for wire, a buffer that starts with a virtio_net_hdr of VnetHdrLen
// bytes followed by an Ethernet frame, as a PACKET_VNET_HDR socket hands them over. It lets code
// that consumes Frames (the dataplane's workers) be driven by sockets other than the ring, fakes
// in tests above all. It returns nil if wire is shorter than the header.
func FrameOf(wire []byte) *Frame {
	if len(wire) < VnetHdrLen {
		return nil
	}
	return &Frame{Data: wire[VnetHdrLen:], VnetHdr: wire[:VnetHdrLen], wire: wire}
}
