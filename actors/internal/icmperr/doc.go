// Package icmperr turns errors queued on a host socket (IP_RECVERR) into
// the ICMP errors the guest would have seen, quoting its own packet.
package icmperr
