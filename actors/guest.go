package actors

// What frames a flow builds for the guest have in common.

// DefaultTTL is the TTL / hop limit of packets gopasta makes for the guest.
const DefaultTTL = 64
