package dispatcher

import (
	"sync/atomic"

	"github.com/gopasta/gopasta/link/wire"
)

// counter indexes the dispatcher's counters. The first wire.NumReasons
// entries are the parser's drop reasons, under the names wire.Reason gives
// them; the rest are the dispatcher's own.
type counter int

const (
	cFramesIn counter = counter(wire.NumReasons) + iota
	cBatches
	cToFlows
	cDirect

	cDropFamily
	cDropUnknownProto
	cDropBadDest
	cDropNoTCP
	cDropNoUDP
	cDropNoICMP
	cDropICMPOther
	cDropInboxFull
	cDropFlowLimit
	cDropOutFull
	cDropGuestFault
	cInboxHighWater

	cFlowsStarted
	cFlowsNotStarted
	cFlowsEnded
	cFlowsEndedStale
	cFlowsRegistered
	cRegisterConflict

	cARPReplies
	cARPIgnored
	cNDPAdverts
	cRouterAdverts
	cNDPIgnored
	cNDPInvalid
	cDHCPOffers
	cDHCPAcks
	cDHCPNaks
	cDHCPIgnored
	cDHCPInvalid
	cDHCPv6Advertises
	cDHCPv6Replies
	cDHCPv6Ignored
	cDHCPv6Invalid
	cReplyTooBig
	cPanics

	numCounters
)

var counterNames = [numCounters]string{
	cFramesIn: "frames_in",
	cBatches:  "batches_in",
	cToFlows:  "frames_to_flows",
	cDirect:   "frames_direct",

	cDropFamily:       "drop_family_disabled",
	cDropUnknownProto: "drop_unknown_proto",
	cDropBadDest:      "drop_bad_dest",
	cDropNoTCP:        "drop_no_tcp",
	cDropNoUDP:        "drop_no_udp",
	cDropNoICMP:       "drop_no_icmp",
	cDropICMPOther:    "drop_icmp_other",
	cDropInboxFull:    "drop_inbox_full",
	cDropFlowLimit:    "drop_flow_limit",
	cDropOutFull:      "drop_out_full",
	cDropGuestFault:   "drop_guest_memory_fault",
	cInboxHighWater:   "inbox_high_water",

	cFlowsStarted:     "flows_started",
	cFlowsNotStarted:  "flows_not_started",
	cFlowsEnded:       "flows_ended",
	cFlowsEndedStale:  "flows_ended_stale",
	cFlowsRegistered:  "flows_registered",
	cRegisterConflict: "flows_register_conflict",

	cARPReplies:       "arp_replies",
	cARPIgnored:       "arp_ignored",
	cNDPAdverts:       "ndp_neighbor_adverts",
	cRouterAdverts:    "ndp_router_adverts",
	cNDPIgnored:       "ndp_ignored",
	cNDPInvalid:       "drop_ndp_invalid",
	cDHCPOffers:       "dhcp_offers",
	cDHCPAcks:         "dhcp_acks",
	cDHCPNaks:         "dhcp_naks",
	cDHCPIgnored:      "dhcp_ignored",
	cDHCPInvalid:      "drop_dhcp_invalid",
	cDHCPv6Advertises: "dhcpv6_advertises",
	cDHCPv6Replies:    "dhcpv6_replies",
	cDHCPv6Ignored:    "dhcpv6_ignored",
	cDHCPv6Invalid:    "drop_dhcpv6_invalid",
	cReplyTooBig:      "drop_reply_too_big",
	cPanics:           "dispatcher_panics",
}

func init() {
	for r := 1; r < wire.NumReasons; r++ {
		counterNames[r] = wire.Reason(r).Error()
	}
}

// counters are written by the dispatcher goroutine and read by Stats from
// any goroutine. Per-frame counts are accumulated per batch and added once,
// so the hot path pays one atomic add per batch, not per frame.
type counters [numCounters]atomic.Uint64

// Stats returns a snapshot of the dispatcher's counters by name, plus
// "flows_active", the size of the flow table. Counters that are zero are
// included, so that callers can rely on every name being present.
//
// Names: frames_in, batches_in, frames_to_flows; the parser's drop reasons
// (drop_short, drop_unknown_ethertype, drop_arp_malformed, drop_ip_version,
// drop_ip_header, drop_ip_length, drop_ip_checksum, drop_fragment,
// drop_loopback, drop_bad_source, drop_martian, drop_l4_header, drop_l4_checksum); the
// dispatcher's drops (drop_family_disabled, drop_unknown_proto,
// drop_bad_dest, drop_no_tcp, drop_no_udp, drop_no_icmp, drop_icmp_other,
// drop_inbox_full, drop_flow_limit, drop_out_full, drop_ndp_invalid,
// drop_dhcp_invalid, drop_dhcpv6_invalid, drop_reply_too_big: a service
// reply that would not fit the MTU); dispatcher_panics (frames whose
// handling panicked, each dropped; see recoverFrame); inbox_high_water, the most
// frames ever seen queued in one actor's inbox right after a hand-over
// (near actors.InboxDepth: an actor fell behind); flow events (flows_started,
// flows_not_started, flows_ended, flows_ended_stale, flows_registered,
// flows_register_conflict); and link services (arp_replies, arp_ignored,
// ndp_neighbor_adverts, ndp_router_adverts, ndp_ignored, dhcp_offers,
// dhcp_acks, dhcp_naks, dhcp_ignored, dhcpv6_advertises, dhcpv6_replies,
// dhcpv6_ignored).
func (d *Dispatcher) Stats() map[string]uint64 {
	m := make(map[string]uint64, numCounters+1)
	for i := 1; i < int(numCounters); i++ {
		m[counterNames[i]] = d.n[i].Load()
	}
	m["flows_active"] = uint64(d.active.Load())
	return m
}
