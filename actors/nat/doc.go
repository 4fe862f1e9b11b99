// Package nat holds the few fixed address mappings between what the guest
// sees and what the host sockets use (NAT): the host's loopback behind the
// gateway address, the host's own address behind --map-guest-addr, the DNS
// forwarder. Everything else the guest sees as it is.
package nat
