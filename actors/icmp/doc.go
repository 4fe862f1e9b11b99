// Package icmp carries the guest's ICMP and ICMPv6 echo requests through
// unprivileged ping sockets, one actor per echo identifier (icmp.go).
package icmp
