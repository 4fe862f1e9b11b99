// Package icmp carries the guest's ICMP and ICMPv6 echo requests through
// unprivileged ping sockets, one actor per echo flow (guest address,
// identifier and destination; icmp.go).
package icmp
