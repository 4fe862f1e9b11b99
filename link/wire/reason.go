package wire

// Reason says why ParseFrame refused a frame. It is an error (so that
// ParseFrame has the ordinary Go signature) and, being a one-byte value, it
// converts to an error without allocating. Its text is the name of the drop
// counter the dispatcher keeps for it, so that logs, Stats and tests all use
// the same words.
type Reason uint8

// Reasons a frame is dropped during parsing.
const (
	// ReasonNone is not a drop; it is never returned as an error.
	ReasonNone Reason = iota
	// ReasonShort: a header or a length field runs past the frame.
	ReasonShort
	// ReasonEtherType: neither IPv4, IPv6 nor ARP.
	ReasonEtherType
	// ReasonARP: an ARP packet that is not Ethernet/IPv4 ARP.
	ReasonARP
	// ReasonIPVersion: the IP version nibble does not match the EtherType.
	ReasonIPVersion
	// ReasonIPHeader: IHL below 5, or a malformed IPv6 extension header.
	ReasonIPHeader
	// ReasonIPLength: total/payload length shorter than the headers or
	// longer than the frame.
	ReasonIPLength
	// ReasonIPChecksum: the IPv4 header checksum is wrong.
	ReasonIPChecksum
	// ReasonFragment: an IPv4 fragment or an IPv6 fragment header; gopasta
	// hands whole datagrams to host sockets and does not reassemble.
	ReasonFragment
	// ReasonLoopback: a loopback source or destination address, in any
	// spelling, which must never appear on a link (RFC 1122 3.2.1.3,
	// RFC 4291 2.5.3).
	ReasonLoopback
	// ReasonBadSource: a multicast or broadcast source address.
	ReasonBadSource
	// ReasonMartian: a source or destination the address policy refuses
	// that is not loopback (see GuestAddrReason): 0.0.0.0/8 other than
	// an unspecified source, or an IPv4 address spelt as IPv6.
	ReasonMartian
	// ReasonL4Header: a transport header that is short or inconsistent
	// (TCP data offset, UDP length, port zero).
	ReasonL4Header
	// ReasonL4Checksum: a TCP, UDP, ICMP or ICMPv6 checksum is wrong (or
	// a zero UDP checksum over IPv6).
	ReasonL4Checksum

	numReasons
)

var reasonNames = [numReasons]string{
	ReasonNone:       "ok",
	ReasonShort:      "drop_short",
	ReasonEtherType:  "drop_unknown_ethertype",
	ReasonARP:        "drop_arp_malformed",
	ReasonIPVersion:  "drop_ip_version",
	ReasonIPHeader:   "drop_ip_header",
	ReasonIPLength:   "drop_ip_length",
	ReasonIPChecksum: "drop_ip_checksum",
	ReasonFragment:   "drop_fragment",
	ReasonLoopback:   "drop_loopback",
	ReasonBadSource:  "drop_bad_source",
	ReasonMartian:    "drop_martian",
	ReasonL4Header:   "drop_l4_header",
	ReasonL4Checksum: "drop_l4_checksum",
}

// NumReasons is one more than the largest Reason, for arrays indexed by it.
const NumReasons = int(numReasons)

// Error returns the drop counter's name.
func (r Reason) Error() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "drop_unknown_reason"
}

// String is Error.
func (r Reason) String() string { return r.Error() }
